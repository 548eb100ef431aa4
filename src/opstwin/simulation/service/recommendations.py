"""``POST /sim/recommend``: candidate values of a twin's setpoint, ranked by simulation.

A request names a twin, one of its process models, and a setpoint (asset and id) that the model
takes as an input. :func:`plan_recommendation` checks it against the twin model — the setpoint
must feed the model, candidates must lie within the setpoint's bounds (422 pointing at the
offending one) — and yields a :class:`RecommendationTask`. Candidates come from the request (a
list, or ``{"low", "high", "steps"}``) or from the twin's playbook for an anomaly
(``"anomaly": {"kind", "metric"}``), which may also supply the process model and the objective.

The task is stored with the run (``request.recommend``), so a background worker — which compiles
runs from their stored request — rebuilds it (:meth:`RecommendationTask.from_request`). It runs in
the service's worker thread like any run (:mod:`.execution`): the
:class:`~opstwin.simulation.recommend.SetpointRecommender` simulates every candidate and
do-nothing (the current value) on common random numbers, then the recommended value (or the
current one when nothing is recommended) is run once more through the coupler for the record's
``outputs`` — same seed, so the same numbers as its candidate run.

``p_improvement`` is P(improvement > 0) of the recommended value against do-nothing. When the
recommendation *is* do-nothing, every paired difference is exactly zero; ties count half, so it is
0.5 (no evidence either way) with an expected improvement of 0 ± 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.simulation.coupler import HybridCoupler
from opstwin.simulation.distributions import Constant
from opstwin.simulation.model import ProcessModel
from opstwin.simulation.monte_carlo import RunSettings
from opstwin.simulation.recommend import (
    MAX_CANDIDATES,
    Objective,
    Recommendation,
    RiskConstraint,
    SetpointRecommender,
)
from opstwin.simulation.results import CI_LEVEL, SimulationResult
from opstwin.twins.model import (
    Playbook,
    PlaybookAction,
    SetpointInput,
    SetpointSpec,
    TwinSpec,
)
from opstwin.twins.model import (
    ProcessModel as ProcessModelSpec,
)


def _invalid(pointer: str, detail: str, **extensions: Any) -> ValidationFailed:
    """A 422 about one field of the request (``pointer``); :mod:`.requests` imports this module,
    so its ``limit_error`` cannot be used here."""
    return ValidationFailed(
        detail, errors=[FieldError(detail=detail, pointer=pointer)], extensions=extensions
    )


ENGINE_REASON = (
    "recommendations use the classical engine: candidates are compared sample by sample "
    "on common random numbers"
)


@dataclass(frozen=True, slots=True, eq=False)
class RecommendationTask:
    """A checked recommendation request: which input to vary, over which values, judged how."""

    input: str
    asset_id: str
    setpoint: str
    current: float
    candidates: tuple[float, ...]
    objective: Objective
    constraint: RiskConstraint | None
    source: str
    """``request``, or ``playbook:<id>`` when the candidates came from a playbook."""

    @classmethod
    def from_request(cls, stored: Mapping[str, Any]) -> RecommendationTask:
        """The task a stored ``request.recommend`` (:meth:`to_request`) describes."""
        objective = stored["objective"]
        raw = stored.get("constraint")
        constraint = None
        if raw is not None:
            op: Literal[">=", "<="] = ">=" if ">=" in raw else "<="
            constraint = RiskConstraint(
                output=str(raw["output"]),
                threshold=float(raw[op]),
                statistic=str(raw["statistic"]),
                op=op,
            )
        return cls(
            input=str(stored["input"]),
            asset_id=str(stored["asset_id"]),
            setpoint=str(stored["setpoint"]),
            current=float(stored["current"]),
            candidates=tuple(float(v) for v in stored["candidates"]),
            objective=Objective(
                output=str(objective["output"]),
                statistic=str(objective["statistic"]),
                direction="minimize" if objective["goal"] == "minimize" else "maximize",
            ),
            constraint=constraint,
            source=str(stored["source"]),
        )

    @property
    def value_count(self) -> int:
        """Distinct values simulated: the candidates and do-nothing."""
        return len({self.current, *self.candidates})

    def to_request(self) -> dict[str, Any]:
        """The recommendation's part of the stored request (``request.recommend`` of sim.v1)."""
        return {
            "asset_id": self.asset_id,
            "setpoint": self.setpoint,
            "input": self.input,
            "current": self.current,
            "candidates": list(self.candidates),
            "source": self.source,
            "objective": _objective_json(self.objective),
            "constraint": None if self.constraint is None else _constraint_json(self.constraint),
        }

    def run(
        self, coupler: HybridCoupler, model: ProcessModel, settings: RunSettings
    ) -> SimulationResult:
        """Rank the candidates, then summarise the recommended value (blocking: numpy work)."""
        recommendation = SetpointRecommender().recommend(
            model,
            setpoint=self.input,
            current=self.current,
            candidates=self.candidates,
            objective=self.objective,
            settings=settings,
            constraint=self.constraint,
        )
        chosen = self.current if recommendation.recommended is None else recommendation.recommended
        result = coupler.run(
            model.with_input(self.input, Constant(chosen)), settings, engine="classical"
        )
        return replace(
            result,
            engine_reason=ENGINE_REASON,
            samples_used=recommendation.samples_per_candidate * len(recommendation.ranking),
            duration_ms=recommendation.duration_ms + result.duration_ms,
            recommendation=self.report(recommendation),
        )

    def report(self, recommendation: Recommendation) -> dict[str, Any]:
        """The ``recommendation`` block of the sim.v1 record."""
        body = recommendation.to_dict()
        improvement: dict[str, Any] | None = body["improvement"]
        do_nothing = recommendation.recommended == self.current
        if improvement is None and do_nothing:
            improvement = {
                "statistic": self.objective.statistic,
                "value": 0.0,
                "standard_error": 0.0,
                "ci": {"level": CI_LEVEL, "interval": [0.0, 0.0]},
                "mean_difference": 0.0,
                "mean_difference_se": 0.0,
                "p_improvement": 0.5,
            }
        return {
            "asset_id": self.asset_id,
            "setpoint": self.setpoint,
            "input": self.input,
            "source": self.source,
            "objective": _objective_json(self.objective),
            "constraint": None if self.constraint is None else _constraint_json(self.constraint),
            "current": self.current,
            "recommended": recommendation.recommended,
            "do_nothing": do_nothing,
            "reason": recommendation.reason,
            "expected_improvement": improvement,
            "p_improvement": None if improvement is None else improvement["p_improvement"],
            "ranking": body["ranking"],
            "samples_per_candidate": recommendation.samples_per_candidate,
            "duration_ms": recommendation.duration_ms,
        }


def _objective_json(objective: Objective) -> dict[str, Any]:
    return {
        "output": objective.output,
        "goal": objective.direction,
        "statistic": objective.statistic,
    }


def _constraint_json(constraint: RiskConstraint) -> dict[str, Any]:
    return {
        "output": constraint.output,
        "statistic": constraint.statistic,
        constraint.op: constraint.threshold,
    }


def plan_recommendation(twin: TwinSpec, body: Mapping[str, Any]) -> tuple[str, RecommendationTask]:
    """The process model id and the task of a request (``SimRecommendIn`` dumped by alias).

    422 with a pointer into the request when something does not fit the twin model.
    """
    asset_id, setpoint_id = str(body["asset_id"]), str(body["setpoint"])
    asset = twin.asset(asset_id)
    if asset is None:
        raise _invalid("/asset_id", f"twin {twin.id!r} has no asset {asset_id!r}")
    setpoint = asset.setpoints.get(setpoint_id)
    if setpoint is None:
        known = ", ".join(asset.setpoints) or "none"
        raise _invalid(
            "/setpoint", f"asset {asset_id!r} has no setpoint {setpoint_id!r} (it has: {known})"
        )
    playbook, action = (None, None)
    if body.get("anomaly") is not None:
        playbook, action = _playbook_action(twin, body["anomaly"], asset_id, setpoint_id)
    process_model_id = body.get("process_model")
    if process_model_id is None and playbook is not None and playbook.objective is not None:
        process_model_id = playbook.objective.process_model
    if process_model_id is None:
        raise _invalid(
            "/process_model", "name the process model (or an anomaly whose playbook names one)"
        )
    spec = next((pm for pm in twin.process_models if pm.id == process_model_id), None)
    if spec is None:
        known = ", ".join(pm.id for pm in twin.process_models) or "none"
        raise _invalid(
            "/process_model",
            f"twin {twin.id!r} has no process model {process_model_id!r} (it has: {known})",
        )
    input_name = _setpoint_input(spec, asset_id, setpoint_id)
    objective = _objective(body.get("objective"), playbook, spec)
    constraint = _constraint(body.get("constraint"), spec)
    if body.get("candidates") is not None:
        candidates = _request_candidates(body["candidates"], setpoint)
        source = "request"
    elif action is not None and playbook is not None:
        candidates = _playbook_candidates(action, setpoint, playbook)
        source = f"playbook:{playbook.id}"
    else:
        raise _invalid(
            "/candidates",
            "give candidates (a list, or {low, high, steps}), or an anomaly whose playbook "
            "lists candidates for this setpoint",
        )
    current = setpoint.current if setpoint.current is not None else setpoint.default
    task = RecommendationTask(
        input=input_name,
        asset_id=asset_id,
        setpoint=setpoint_id,
        current=float(current),
        candidates=tuple(candidates),
        objective=objective,
        constraint=constraint,
        source=source,
    )
    return spec.id, task


def _setpoint_input(spec: ProcessModelSpec, asset_id: str, setpoint_id: str) -> str:
    for name, source in spec.inputs.items():
        if (
            isinstance(source, SetpointInput)
            and source.asset == asset_id
            and source.setpoint == setpoint_id
        ):
            return name
    raise _invalid(
        "/setpoint",
        f"process model {spec.id!r} does not take setpoint {asset_id}/{setpoint_id} as an input",
    )


def _objective(
    raw: Mapping[str, Any] | None, playbook: Playbook | None, spec: ProcessModelSpec
) -> Objective:
    if raw is None:
        if playbook is None or playbook.objective is None:
            raise _invalid(
                "/objective", "give the objective (or an anomaly whose playbook names one)"
            )
        objective = Objective(output=playbook.objective.kpi, direction=playbook.objective.goal)
    else:
        objective = Objective(
            output=str(raw["output"]), statistic=raw["statistic"], direction=raw["goal"]
        )
    if objective.output not in spec.outputs:
        raise _invalid(
            "/objective/output",
            f"{objective.output!r} is not an output of process model {spec.id!r} "
            f"(it has: {', '.join(spec.outputs)})",
        )
    return objective


def _constraint(raw: Mapping[str, Any] | None, spec: ProcessModelSpec) -> RiskConstraint | None:
    if raw is None:
        return None
    given = [op for op in (">=", "<=") if raw.get(op) is not None]
    if len(given) != 1:
        raise _invalid("/constraint", "give exactly one of '>=' or '<=' with a threshold")
    op: Literal[">=", "<="] = ">=" if given[0] == ">=" else "<="
    output = str(raw["output"])
    if output not in spec.outputs:
        raise _invalid(
            "/constraint/output", f"{output!r} is not an output of process model {spec.id!r}"
        )
    return RiskConstraint(
        output=output, threshold=float(raw[op]), statistic=str(raw["statistic"]), op=op
    )


def _out_of_bounds(
    pointer: str, value: float, setpoint: SetpointSpec, why: str
) -> ValidationFailed:
    bounds = setpoint.bounds
    detail = f"{why} {value:g} is outside the setpoint's bounds [{bounds.low:g}, {bounds.high:g}]"
    return ValidationFailed(
        detail,
        errors=[FieldError(detail=detail, pointer=pointer)],
        extensions={"bounds": {"low": bounds.low, "high": bounds.high}},
    )


def _request_candidates(raw: Any, setpoint: SetpointSpec) -> list[float]:
    if isinstance(raw, Mapping):
        low, high, steps = float(raw["low"]), float(raw["high"]), int(raw["steps"])
        if not low < high:
            raise _invalid("/candidates", "low must be below high")
        if not 2 <= steps <= MAX_CANDIDATES:
            raise _invalid("/candidates/steps", f"steps must be 2 to {MAX_CANDIDATES}")
        for end, value in (("low", low), ("high", high)):
            if not setpoint.bounds.contains(value):
                raise _out_of_bounds(f"/candidates/{end}", value, setpoint, f"candidates.{end}")
        return [float(v) for v in np.linspace(low, high, steps)]
    values = [float(v) for v in raw]
    if not 1 <= len(values) <= MAX_CANDIDATES:
        raise _invalid("/candidates", f"give 1 to {MAX_CANDIDATES} candidate values")
    for i, value in enumerate(values):
        if not setpoint.bounds.contains(value):
            raise _out_of_bounds(f"/candidates/{i}", value, setpoint, f"candidate {i}:")
    return values


def _playbook_action(
    twin: TwinSpec, anomaly: Mapping[str, Any], asset_id: str, setpoint_id: str
) -> tuple[Playbook, PlaybookAction]:
    kind, metric = str(anomaly["kind"]), str(anomaly["metric"])
    anomaly_asset = str(anomaly.get("asset_id") or asset_id)
    spec = twin.asset(anomaly_asset)
    canonical = (spec.canonical_metric(metric) if spec else None) or metric
    for playbook in twin.playbooks:
        if playbook.asset != anomaly_asset or playbook.metric != canonical:
            continue
        if kind not in playbook.kinds:
            continue
        for action in playbook.actions:
            if (action.asset or playbook.asset) == asset_id and action.setpoint == setpoint_id:
                return playbook, action
    raise _invalid(
        "/anomaly",
        f"no playbook of twin {twin.id!r} lists candidates for setpoint {asset_id}/{setpoint_id} "
        f"on a {kind} of {anomaly_asset}/{canonical}",
    )


def _playbook_candidates(
    action: PlaybookAction, setpoint: SetpointSpec, playbook: Playbook
) -> list[float]:
    values: Sequence[float] = action.candidates or []
    if action.search is not None:  # the twin model gives exactly one of candidates and search
        values = np.linspace(action.search.low, action.search.high, action.search.steps).tolist()
    if len(values) > MAX_CANDIDATES:
        raise _invalid(
            "/anomaly",
            f"playbook {playbook.id!r} lists {len(values)} candidates; at most {MAX_CANDIDATES} "
            "can be simulated — give candidates in the request",
        )
    for value in values:
        if not setpoint.bounds.contains(value):
            raise _out_of_bounds("/anomaly", value, setpoint, f"playbook {playbook.id!r} candidate")
    return [float(v) for v in values]
