"""What a proposal is scored on: the evidence gathered for it, and the simulation behind it.

:class:`EvidenceGatherer` collects, for one proposal,

* the **anomaly** it answers (``anomaly_id``: must belong to the same twin);
* the **simulation**: the given ``sim_id`` when its recommendation covers this setpoint and value,
  else a run of its own — ``POST /sim/recommend`` with the proposed value as the only candidate
  against do-nothing, on the process model and objective of the twin's playbook for the anomaly
  (or for the setpoint), else of the first process model that takes the setpoint as an input and
  has an output with a goal. No process model takes the setpoint: the component is *missing*
  (neutral), with the reason;
* the **telemetry window**: quality scores of the samples of the setpoint's metric (else of the
  asset) over the last ``evidence_window_s``, and how many samples its sampling period promised;
* the **history**: verified outcomes of this action type on the asset and on its asset class;
* the **votes** cast so far.

It returns the scorer's :class:`~opstwin.policy.confidence.Evidence` and the JSON summary frozen
into the proposal's content (``evidence``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.actions import repository as repo
from opstwin.config import ActionSettings
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.errors import FieldError, NotFound, OpsTwinError, ValidationFailed
from opstwin.policy.confidence import (
    Evidence,
    HistoryEvidence,
    SimulationEvidence,
    TelemetryWindow,
    Vote,
)
from opstwin.twins.model import AssetSpec, SetpointInput, SetpointSpec, TwinSpec

if TYPE_CHECKING:
    from opstwin.simulation.service import SimulationService


TARGET_RSE = 0.01
"""Relative standard error under which the objective's estimate counts as converged (the
simulator's default target)."""


def invalid(pointer: str, detail: str) -> ValidationFailed:
    return ValidationFailed(detail, errors=[FieldError(detail=detail, pointer=pointer)])


@dataclass(frozen=True, slots=True)
class Target:
    """The setpoint a proposal changes, resolved against the twin model (desired values laid
    over it)."""

    twin: TwinSpec
    asset: AssetSpec
    setpoint_id: str
    spec: SetpointSpec

    @property
    def current(self) -> float:
        return self.spec.current if self.spec.current is not None else self.spec.default


@dataclass(frozen=True, slots=True)
class Gathered:
    evidence: Evidence
    summary: dict[str, Any]
    sim_id: str | None


@dataclass(frozen=True, slots=True)
class SimPlan:
    process_model: str
    objective: dict[str, str]
    source: str


def simulation_plan(
    twin: TwinSpec, asset_id: str, setpoint_id: str, anomaly: Mapping[str, Any] | None
) -> SimPlan | None:
    """Which process model and objective judge a change of (asset, setpoint)."""
    takes = {
        pm.id
        for pm in twin.process_models
        if any(
            isinstance(src, SetpointInput) and src.asset == asset_id and src.setpoint == setpoint_id
            for src in pm.inputs.values()
        )
    }
    if not takes:
        return None
    playbooks = list(twin.playbooks)
    if anomaly is not None:
        kind, metric, where = anomaly.get("kind"), anomaly.get("metric"), anomaly.get("asset_id")
        playbooks.sort(
            key=lambda pb: not (pb.asset == where and pb.metric == metric and kind in pb.kinds)
        )
    for pb in playbooks:
        if pb.objective is None or pb.objective.process_model not in takes:
            continue
        if any((a.asset or pb.asset) == asset_id and a.setpoint == setpoint_id for a in pb.actions):
            return SimPlan(
                pb.objective.process_model,
                {"output": pb.objective.kpi, "goal": pb.objective.goal, "statistic": "p50"},
                f"playbook:{pb.id}",
            )
    for pm in twin.process_models:
        if pm.id not in takes:
            continue
        for name, kpi in pm.outputs.items():
            if kpi.goal is not None:
                return SimPlan(
                    pm.id, {"output": name, "goal": kpi.goal, "statistic": "p50"}, "process_model"
                )
    return None


def candidate_outcome(record: Mapping[str, Any], value: float) -> dict[str, Any] | None:
    """The ranking entry of ``value`` in a recommendation run (None: not simulated there)."""
    rec = record.get("recommendation") or {}
    for entry in rec.get("ranking") or []:
        if abs(float(entry["value"]) - value) <= 1e-9 * max(1.0, abs(value)):
            return dict(entry)
    return None


class EvidenceGatherer:
    def __init__(
        self, settings: ActionSettings, simulation: SimulationService | None, clock: Clock
    ) -> None:
        self._settings = settings
        self._simulation = simulation
        self._clock = clock

    async def gather(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        principal_id: str,
        target: Target,
        *,
        value: float,
        action_type: str,
        anomaly_id: str | None,
        sim_id: str | None,
        votes: Sequence[Vote] = (),
    ) -> Gathered:
        anomaly = await self._anomaly(conn, tenant_id, target, anomaly_id)
        sim_summary, sim_evidence, used_sim = await self._simulation_evidence(
            conn, tenant_id, principal_id, target, value, anomaly, sim_id
        )
        telemetry, telemetry_summary = await self._telemetry(conn, tenant_id, target, anomaly)
        history = HistoryEvidence(
            action_type=action_type,
            asset=await repo.verified_outcomes(
                conn, tenant_id, action_type, asset_id=target.asset.id
            ),
            asset_class=target.asset.type,
            asset_class_outcomes=None
            if target.asset.type is None
            else await repo.verified_outcomes(
                conn, tenant_id, action_type, asset_class=target.asset.type
            ),
        )
        summary = {
            "anomaly": anomaly,
            "simulation": sim_summary,
            "telemetry": telemetry_summary,
            "history": {
                "action_type": action_type,
                "asset": {"successes": history.asset.successes, "failures": history.asset.failures},
                "asset_class": target.asset.type,
            },
            "votes": [
                {
                    "principal_id": v.principal_id,
                    "approve": v.approve,
                    "confidence": v.confidence,
                    "rationale": v.rationale,
                }
                for v in votes
            ],
            "current_value": target.current,
        }
        evidence = Evidence(
            history=history, telemetry=telemetry, simulation=sim_evidence, votes=tuple(votes)
        )
        return Gathered(evidence, summary, used_sim)

    async def _anomaly(
        self, conn: AsyncConnection, tenant_id: str, target: Target, anomaly_id: str | None
    ) -> dict[str, Any] | None:
        if anomaly_id is None:
            return None
        found = await repo.anomaly_record(conn, tenant_id, anomaly_id)
        if found is None:
            raise invalid("/anomaly_id", f"no anomaly {anomaly_id!r} in this tenant")
        status, record = found
        if record.get("twin_id") != target.twin.id:
            raise invalid(
                "/anomaly_id", f"anomaly {anomaly_id!r} belongs to twin {record.get('twin_id')!r}"
            )
        return {
            "anomaly_id": anomaly_id,
            "status": status,
            "asset_id": record.get("asset_id"),
            "metric": record.get("metric"),
            "kind": record.get("kind"),
            "severity": record.get("severity"),
            "score": record.get("score"),
            "ts": record.get("ts"),
        }

    async def _simulation_evidence(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        principal_id: str,
        target: Target,
        value: float,
        anomaly: Mapping[str, Any] | None,
        sim_id: str | None,
    ) -> tuple[dict[str, Any], SimulationEvidence | None, str | None]:
        if self._simulation is None:
            return {"missing": "simulation is not available on this server"}, None, None
        record: dict[str, Any] | None = None
        note = None
        if sim_id is not None:
            try:
                record = await self._simulation.get(conn, tenant_id, sim_id)
            except NotFound:
                raise invalid("/sim_id", f"no simulation run {sim_id!r} in this tenant") from None
            if record["status"] != "succeeded":
                raise invalid("/sim_id", f"simulation {sim_id!r} is {record['status']}")
            rec = record.get("recommendation") or {}
            covers = (
                rec.get("asset_id") == target.asset.id
                and rec.get("setpoint") == target.setpoint_id
                and (record.get("model_ref") or {}).get("twin_id") == target.twin.id
                and candidate_outcome(record, value) is not None
            )
            if not covers:
                note = f"simulation {sim_id} does not rank {value:g} for this setpoint"
                record = None
        if record is None:
            plan = simulation_plan(target.twin, target.asset.id, target.setpoint_id, anomaly)
            if plan is None:
                reason = (
                    f"no process model of twin {target.twin.id!r} takes "
                    f"{target.asset.id}/{target.setpoint_id} as an input"
                )
                return {"missing": reason, "note": note}, None, None
            try:
                record = await self._run(
                    conn, tenant_id, principal_id, target, value, plan, anomaly
                )
            except OpsTwinError as exc:
                reason = f"the simulation could not run: {exc.detail}"
                return {"missing": reason, "note": note}, None, None
        entry = candidate_outcome(record, value) or {}
        improvement = entry.get("improvement") or {}
        p = 0.5 if entry.get("is_current") else improvement.get("p_improvement")
        rec = record.get("recommendation") or {}
        objective = rec.get("objective") or {}
        outputs = record.get("outputs") or {}
        chosen = (
            rec.get("recommended") if rec.get("recommended") is not None else rec.get("current")
        )
        predicted = (
            outputs.get(objective.get("output", ""))
            if chosen is not None and abs(float(chosen) - value) <= 1e-9 * max(1.0, abs(value))
            else None
        )
        summary = {
            "sim_id": record["sim_id"],
            "process_model": (record.get("model_ref") or {}).get("process_model"),
            "objective": objective,
            "current": rec.get("current"),
            "value": value,
            "recommended": rec.get("recommended"),
            "p_improvement": p,
            "expected_improvement": improvement.get("value"),
            "candidate_objective": entry.get("objective"),
            "converged": record.get("converged"),
            "samples": record.get("samples_used"),
            "predicted": predicted,
            "note": note,
        }
        if p is None:
            summary["missing"] = "the simulation did not compare this value with do-nothing"
            return summary, None, record["sim_id"]
        # A run is "converged" when every output's error is small; what the decision relies on
        # is the objective, so its own relative error decides when it is known.
        rse = None if predicted is None else predicted.get("rse")
        converged = bool(record.get("converged")) or (rse is not None and rse < TARGET_RSE)
        summary["converged_objective"] = converged
        evidence = SimulationEvidence(
            p_improvement=float(p),
            converged=converged,
            sim_id=record["sim_id"],
            samples=record.get("samples_used"),
        )
        return summary, evidence, record["sim_id"]

    async def _run(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        principal_id: str,
        target: Target,
        value: float,
        plan: SimPlan,
        anomaly: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """A recommendation run judging ``value`` against do-nothing; a tracking-error input
        reads the readings since the anomaly the proposal answers opened."""
        from opstwin.simulation.schemas import SimRecommendIn

        assert self._simulation is not None
        body = SimRecommendIn.model_validate(
            {
                "twin_id": target.twin.id,
                "process_model": plan.process_model,
                "asset_id": target.asset.id,
                "setpoint": target.setpoint_id,
                "candidates": [value],
                "objective": plan.objective,
                "samples": self._settings.sim_samples,
            }
        )
        since = None if anomaly is None or not anomaly.get("ts") else str(anomaly["ts"])
        prepared = await self._simulation.prepare_recommendation(
            conn,
            tenant_id,
            body.model_dump(by_alias=True),
            tracking_since_us=None if since is None else to_micros(datetime.fromisoformat(since)),
        )
        reply = await self._simulation.submit(
            prepared,
            tenant_id=tenant_id,
            principal_id=principal_id,
            idempotency_key=None,
            req_hash="",
        )
        record: dict[str, Any] = jsonutil.loads(reply.body)
        if record.get("status") != "succeeded":
            raise OpsTwinError(f"simulation {record.get('sim_id')} is {record.get('status')}")
        return record

    async def _telemetry(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        target: Target,
        anomaly: Mapping[str, Any] | None,
    ) -> tuple[TelemetryWindow, dict[str, Any]]:
        metric = target.spec.metric
        period = None
        if metric is not None and metric in target.asset.metrics:
            period = target.asset.metrics[metric].sampling_period_s
        window_s = self._settings.evidence_window_s
        since_us = to_micros(self._clock.now()) - round(window_s * 1_000_000)
        scores = await repo.quality_window(
            conn, tenant_id, target.twin.id, target.asset.id, metric, since_us
        )
        expected = None if period is None else max(1, int(window_s / period))
        summary = {
            "metric": metric,
            "window_s": window_s,
            "samples": len(scores),
            "expected_samples": expected,
            "mean_quality": None if not scores else sum(scores) / len(scores),
        }
        return TelemetryWindow(quality_scores=scores, expected_samples=expected), summary
