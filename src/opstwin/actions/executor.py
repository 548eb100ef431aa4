"""ActionExecutor: carries approved proposals out on the assets, verifies them, rolls back.

One background task per process (``OPSTWIN_ACTIONS_ENABLED``) drives every proposal that needs
the platform, woken by commits of the proposal service and by a poll
(``OPSTWIN_ACTIONS_POLL_INTERVAL_S``) for deadlines and other processes' changes:

* ``awaiting_approval`` / ``approved`` past ``approval_expires_at`` → ``expired`` (default deny);
* ``approved`` with an approval the platform may execute (automatic, or delegated by the
  approver) → ``executing`` (actor ``system``, recorded as such in the audit);
* ``executing`` → the writes, then ``verifying``;
* ``verifying`` once its window has passed → ``succeeded``, or a rollback → ``rolled_back`` (or
  ``failed`` when even the rollback cannot be done).

**Execution** reads the setpoint back first and records that *before-value* (what a rollback
restores) in the action before writing anything. Writes are absolute; a change faster than the
setpoint's ``ramp_rate_per_s`` is written as intermediate values ``ramp_write_interval_s``
apart. Each write has its own idempotency key (``<action id>:w<n>``) and its progress is stored
after it, so a process killed mid-way resumes with the same keys and the asset applies each
write once. A write whose outcome is unknown (:class:`OutcomeUnknown`) is reconciled by reading
back: the value is there → done; it is not → the same key is written again (never a fresh,
blind write), at most ``reconcile_attempts`` times, then the action fails.

**Verification** waits the policy's window, then judges the telemetry after the settling part
of it (``settle_fraction``): the setpoint's metric must average inside its normal range, and
when the simulation predicted the objective KPI for this value and the KPI is measured by some
asset of the twin, its average must lie within the predicted 5th–95th percentile range. No
telemetry to judge is a failure (an unverifiable change is not kept).

**Rollback** re-checks the bounds guard against the twin model in force, writes the before-value
(key ``<action id>:rollback``), reads it back and records ``rolled_back`` only when the read-back
matches; otherwise the proposal ends ``failed`` with the reason. Manual rollback of a
``succeeded`` proposal within its window does the same in the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping
from typing import Any, Protocol

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.actions import repository as repo
from opstwin.actions.actuators.base import (
    Actuator,
    ActuatorError,
    OutcomeUnknown,
    SetpointRef,
)
from opstwin.actions.service import ProposalService
from opstwin.actions.workflow import Actor, Proposal, Transition
from opstwin.config import ActionSettings
from opstwin.kit.clock import Clock, from_micros, rfc3339, to_micros
from opstwin.kit.db import Database
from opstwin.kit.errors import Conflict, OpsTwinError, ServiceUnavailable
from opstwin.twins.desired import desired_values, with_desired
from opstwin.twins.model import AssetSpec, SetpointSpec, TwinSpec
from opstwin.twins.registry import TwinRegistry

log = structlog.get_logger("opstwin.actions.executor")

_WORK_STATES = ("awaiting_approval", "approved", "executing", "verifying")


class ActuatorLookup(Protocol):
    def get(self, name: str) -> Actuator: ...


def ramp_writes(
    before: float, steps: tuple[float, ...], rate_per_s: float | None, interval_s: float
) -> list[float]:
    """The absolute values to write, in order, so no step moves faster than ``rate_per_s``
    when they are written ``interval_s`` apart (the last value of each step exactly)."""
    out: list[float] = []
    last = before
    for step in steps:
        if rate_per_s is not None and rate_per_s > 0:
            most = rate_per_s * interval_s
            n = max(1, math.ceil(abs(step - last) / most - 1e-9))
            out += [last + (step - last) * k / n for k in range(1, n)]
        out.append(step)
        last = step
    return out


def _close(a: float, b: float, spec: SetpointSpec, tolerance: float) -> bool:
    width = max(spec.bounds.high - spec.bounds.low, 1e-12)
    return abs(a - b) <= tolerance * width + 1e-12


class ExecutionFailed(Exception):
    """The action cannot go on; ``str()`` is the reason recorded with ``fail``."""


class ActionExecutor:
    """The background worker described in the module docstring."""

    def __init__(
        self,
        *,
        service: ProposalService,
        db: Database,
        twins: TwinRegistry,
        actuators: ActuatorLookup,
        clock: Clock,
        settings: ActionSettings,
    ) -> None:
        self._service = service
        self._db = db
        self._twins = twins
        self._actuators = actuators
        self._clock = clock
        self._settings = settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        service.add_listener(self.poke)

    def poke(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="opstwin-action-executor")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._running.clear()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed pass is logged and retried at the next poll
                log.exception("executor pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval_s)

    async def run_once(self) -> None:
        """One pass over every proposal that needs the platform; long work runs in tasks."""
        async with self._db.read() as conn:
            pending = await repo.proposals_in(conn, _WORK_STATES)
        now = self._clock.now()
        for proposal in pending:
            key = f"{proposal.tenant_id}/{proposal.proposal_id}"
            if key in self._running:
                continue
            expired = (
                proposal.approval_expires_at is not None and now >= proposal.approval_expires_at
            )
            if proposal.state in ("awaiting_approval", "approved") and expired:
                await self._system(proposal, "expire")
            elif proposal.state == "approved":
                approval = proposal.approval
                if approval is not None and approval.executed_by == "platform":
                    await self._system(proposal, "start_execution")
                    self.poke()
            elif proposal.state in ("executing", "verifying"):
                if proposal.state == "verifying" and not await self._window_passed(proposal):
                    continue
                self._running[key] = asyncio.create_task(self._drive(key, proposal))

    async def _drive(self, key: str, proposal: Proposal) -> None:
        try:
            if proposal.state == "executing":
                await self.execute(proposal)
            else:
                await self.verify(proposal)
        except asyncio.CancelledError:
            raise
        except Exception:  # logged; the proposal keeps its state and is retried next pass
            log.exception("action step failed", proposal_id=proposal.proposal_id)
        finally:
            self._running.pop(key, None)
            self.poke()

    async def _system(
        self,
        proposal: Proposal,
        event: Any,
        *,
        reason: str | None = None,
        execution: Mapping[str, Any] | None = None,
    ) -> Proposal | None:
        """Fire a platform event if the proposal is still where we saw it."""
        async with self._db.write() as tx:
            current = await self._service.load_for_update(
                tx, proposal.tenant_id, proposal.proposal_id
            )
            if current.state != proposal.state:
                return None
            try:
                transition: Transition = self._service.workflow.apply(
                    current, event, Actor.system(current.tenant_id), reason=reason
                )
            except OpsTwinError as exc:
                log.info(
                    "transition refused",
                    proposal_id=proposal.proposal_id,
                    event_name=event,
                    reason=exc.detail,
                )
                return None
            return await self._service.record(tx, [transition], execution=execution)

    # -- facts -------------------------------------------------------------------------------

    async def _twin(self, conn: AsyncConnection, proposal: Proposal) -> TwinSpec:
        draft = proposal.draft
        twin = await self._twins.get(conn, proposal.tenant_id, draft.twin_id)
        return with_desired(
            twin.spec, await desired_values(conn, proposal.tenant_id, draft.twin_id)
        )

    def _ref(self, proposal: Proposal, twin: TwinSpec) -> tuple[SetpointRef, AssetSpec]:
        draft = proposal.draft
        asset = twin.asset(draft.asset_id)
        spec = asset.setpoints.get(draft.setpoint) if asset else None
        if asset is None or spec is None:
            raise ExecutionFailed(
                f"the twin model no longer declares {draft.asset_id}/{draft.setpoint}"
            )
        return (
            SetpointRef(proposal.tenant_id, draft.twin_id, draft.asset_id, draft.setpoint, spec),
            asset,
        )

    async def _execution(self, proposal: Proposal) -> dict[str, Any]:
        assert proposal.action is not None
        async with self._db.read() as conn:
            stored = await repo.load_action(conn, proposal.tenant_id, proposal.action.action_id)
        return dict((stored or {}).get("execution") or {})

    async def _save_execution(self, proposal: Proposal, execution: Mapping[str, Any]) -> None:
        assert proposal.action is not None
        async with self._db.write() as tx:
            await self._service.save_action(tx, proposal.action, proposal, execution)

    async def _window_passed(self, proposal: Proposal) -> bool:
        execution = await self._execution(proposal)
        started = (execution.get("verification") or {}).get("started_at_us")
        if started is None:
            return True
        window = float((proposal.content or {}).get("windows", {}).get("verification_window_s", 0))
        return to_micros(self._clock.now()) >= int(started) + round(window * 1_000_000)

    # -- writing -----------------------------------------------------------------------------

    async def _write(self, actuator: Actuator, ref: SetpointRef, value: float, key: str) -> float:
        """Write ``value`` under ``key``, reconciling an unknown outcome by reading back."""
        timeout = self._settings.write_timeout_s
        tolerance = self._settings.readback_tolerance
        attempts = self._settings.reconcile_attempts
        for attempt in range(attempts + 1):
            try:
                read_back = await asyncio.wait_for(
                    actuator.write(ref, value, idempotency_key=key), timeout
                )
            except (OutcomeUnknown, TimeoutError) as exc:
                log.warning(
                    "write outcome unknown; reading back",
                    setpoint=ref.path,
                    key=key,
                    attempt=attempt + 1,
                    error=str(exc) or type(exc).__name__,
                )
                try:
                    now = await asyncio.wait_for(actuator.read(ref), timeout)
                except (ActuatorError, TimeoutError):
                    now = None
                if now is not None and _close(now, value, ref.spec, tolerance):
                    return now
                continue  # not applied (or unreadable): the same key again
            if not _close(read_back, value, ref.spec, tolerance):
                raise ExecutionFailed(
                    f"{ref.path} reads back {read_back:g} after writing {value:g}"
                )
            return read_back
        raise ExecutionFailed(
            f"the write of {value:g} to {ref.path} stayed undetermined after {attempts} read-backs"
        )

    async def _write_all(
        self,
        actuator: Actuator,
        ref: SetpointRef,
        values: list[float],
        prefix: str,
        execution: dict[str, Any],
        progress_key: str,
        proposal: Proposal,
    ) -> None:
        done = int(execution.get(progress_key, 0))
        log_key = "writes" if progress_key == "next_write" else "rollback_writes"
        for index in range(done, len(values)):
            if index > done:
                await asyncio.sleep(self._settings.ramp_write_interval_s)  # the ramp's pace
            key = f"{prefix}{index}" if len(values) > 1 or prefix.endswith(":w") else prefix
            read_back = await self._write(actuator, ref, values[index], key)
            execution.setdefault(log_key, []).append(
                {
                    "key": key,
                    "value": values[index],
                    "read_back": read_back,
                    "at": rfc3339(self._clock.now()),
                }
            )
            execution[progress_key] = index + 1
            await self._save_execution(proposal, execution)

    # -- executing ---------------------------------------------------------------------------

    async def execute(self, proposal: Proposal) -> None:
        """``executing`` → the writes → ``verifying`` (or ``failed``)."""
        action = proposal.action
        assert action is not None
        execution = await self._execution(proposal)
        try:
            async with self._db.read() as conn:
                twin = await self._twin(conn, proposal)
            ref, _ = self._ref(proposal, twin)
            actuator = self._lookup(ref)
            if "before_value" not in execution:
                before = await asyncio.wait_for(actuator.read(ref), self._settings.write_timeout_s)
                source = "read_back"
                if before is None:  # the asset reports nothing: the desired state is all we know
                    before, source = ref.spec.current, "desired_state"
                    if before is None:
                        before = ref.spec.default
                execution["before_value"] = before
                execution["before_source"] = source
                execution["writes_planned"] = ramp_writes(
                    before,
                    action.steps,
                    ref.spec.ramp_rate_per_s,
                    self._settings.ramp_write_interval_s,
                )
                await self._save_execution(proposal, execution)
            await self._write_all(
                actuator,
                ref,
                [float(v) for v in execution["writes_planned"]],
                f"{action.action_id}:w",
                execution,
                "next_write",
                proposal,
            )
        except (ActuatorError, ExecutionFailed, TimeoutError, OpsTwinError) as exc:
            await self._fail(proposal, execution, f"execution failed: {_reason(exc)}")
            return
        execution["verification"] = {"started_at_us": to_micros(self._clock.now())}
        async with self._db.write() as tx:
            current = await self._service.load_for_update(
                tx, proposal.tenant_id, proposal.proposal_id
            )
            if current.state != "executing":
                return
            transition = self._service.workflow.apply(
                current, "begin_verification", Actor.system(current.tenant_id)
            )
            await repo.write_setpoint(
                tx,
                proposal.tenant_id,
                action.twin_id,
                action.asset_id,
                action.setpoint,
                action.target,
                action.action_id,
                to_micros(self._clock.now()),
            )
            await self._service.record(tx, [transition], execution=execution)
        log.info(
            "action executed; verifying",
            proposal_id=proposal.proposal_id,
            action_id=action.action_id,
            setpoint=ref.path,
            before=execution["before_value"],
            target=action.target,
        )

    def _lookup(self, ref: SetpointRef) -> Actuator:
        try:
            return self._actuators.get(ref.spec.actuator)
        except ActuatorError:
            raise
        except KeyError:
            raise ExecutionFailed(
                f"no actuator named {ref.spec.actuator!r} is configured"
            ) from None

    async def _fail(self, proposal: Proposal, execution: dict[str, Any], reason: str) -> None:
        execution["error"] = reason
        log.warning("action failed", proposal_id=proposal.proposal_id, reason=reason)
        await self._system(proposal, "fail", reason=reason, execution=execution)

    # -- verifying ---------------------------------------------------------------------------

    async def verify(self, proposal: Proposal) -> None:
        """Judge the window's telemetry; success, or roll back."""
        execution = await self._execution(proposal)
        verification = dict(execution.get("verification") or {})
        started = int(verification.get("started_at_us", to_micros(self._clock.now())))
        window = float((proposal.content or {}).get("windows", {}).get("verification_window_s", 0))
        now_us = to_micros(self._clock.now())
        settle_us = started + round(self._settings.settle_fraction * window * 1_000_000)
        async with self._db.read() as conn:
            twin = await self._twin(conn, proposal)
            checks = await self._checks(conn, proposal, twin, settle_us, now_us)
        verification.update(
            {
                "judged_from": rfc3339(from_micros(settle_us)),
                "judged_until": rfc3339(from_micros(now_us)),
                "checks": checks,
                "ok": all(c["ok"] for c in checks),
            }
        )
        execution["verification"] = verification
        if verification["ok"]:
            await self._system(proposal, "verify_success", execution=execution)
            log.info("action verified", proposal_id=proposal.proposal_id)
            return
        failed = "; ".join(c["detail"] for c in checks if not c["ok"])
        await self.rollback(proposal, execution, f"verification failed: {failed}", None)

    async def _checks(
        self,
        conn: AsyncConnection,
        proposal: Proposal,
        twin: TwinSpec,
        since_us: int,
        until_us: int,
    ) -> list[dict[str, Any]]:
        draft = proposal.draft
        ref, asset = self._ref(proposal, twin)
        checks: list[dict[str, Any]] = []
        metric = ref.spec.metric
        if metric is not None:
            values = await repo.metric_values(
                conn, proposal.tenant_id, draft.twin_id, draft.asset_id, metric, since_us, until_us
            )
            spec = asset.metrics.get(metric)
            normal = spec.normal_range if spec else None
            where = f"{draft.asset_id}/{metric}"
            if not values:
                checks.append(
                    {
                        "check": "controlled_metric",
                        "metric": where,
                        "ok": False,
                        "detail": f"no telemetry of {where} to judge",
                    }
                )
            else:
                mean = sum(values) / len(values)
                low = normal.low if normal and normal.low is not None else -math.inf
                high = normal.high if normal and normal.high is not None else math.inf
                ok = low <= mean <= high
                checks.append(
                    {
                        "check": "controlled_metric",
                        "metric": where,
                        "samples": len(values),
                        "mean": mean,
                        "normal_range": [low, high] if normal else None,
                        "ok": ok,
                        "detail": f"{where} averaged {mean:.4g}"
                        + ("" if ok else f", outside its normal range [{low:g}, {high:g}]"),
                    }
                )
        simulation = ((proposal.content or {}).get("evidence") or {}).get("simulation") or {}
        predicted = simulation.get("predicted")
        kpi = (simulation.get("objective") or {}).get("output")
        if predicted and kpi:
            measured_by = next((a for a in twin.assets if kpi in a.metrics), None)
            if measured_by is not None:
                values = await repo.metric_values(
                    conn, proposal.tenant_id, draft.twin_id, measured_by.id, kpi, since_us, until_us
                )
                if values:
                    mean = sum(values) / len(values)
                    low, high = float(predicted["p5"]), float(predicted["p95"])
                    ok = low <= mean <= high
                    checks.append(
                        {
                            "check": "predicted_kpi",
                            "metric": f"{measured_by.id}/{kpi}",
                            "samples": len(values),
                            "mean": mean,
                            "predicted": [low, high],
                            "ok": ok,
                            "detail": f"{kpi} averaged {mean:.4g}"
                            + ("" if ok else f", outside the predicted [{low:.4g}, {high:.4g}]"),
                        }
                    )
        if not checks:
            checks.append(
                {
                    "check": "none",
                    "ok": False,
                    "detail": f"setpoint {ref.path} has no metric to verify it by",
                }
            )
        return checks

    # -- rolling back ------------------------------------------------------------------------

    async def rollback(
        self,
        proposal: Proposal,
        execution: dict[str, Any],
        reason: str,
        actor: Actor | None,
    ) -> Proposal | None:
        """Restore the before-value; ``actor`` None: the automatic rollback of a verification."""
        action = proposal.action
        assert action is not None
        before = execution.get("before_value")
        event_actor = actor or Actor.system(proposal.tenant_id)
        try:
            if before is None:
                raise ExecutionFailed("no before-value was recorded")
            async with self._db.read() as conn:
                twin = await self._twin(conn, proposal)
            ref, _ = self._ref(proposal, twin)
            bounds = ref.spec.bounds
            if not bounds.low <= float(before) <= bounds.high:
                raise ExecutionFailed(
                    f"the before-value {before:g} is outside the bounds now in force "
                    f"[{bounds.low:g}, {bounds.high:g}] (RejectSetpointOutsideBounds)"
                )
            actuator = self._lookup(ref)
            if "rollback_planned" not in execution:
                execution["rollback_planned"] = ramp_writes(
                    action.target,
                    (float(before),),
                    ref.spec.ramp_rate_per_s,
                    self._settings.ramp_write_interval_s,
                )
                execution["rollback_reason"] = reason
                await self._save_execution(proposal, execution)
            await self._write_all(
                actuator,
                ref,
                [float(v) for v in execution["rollback_planned"]],
                f"{action.action_id}:rollback",
                execution,
                "next_rollback_write",
                proposal,
            )
            restored = await self._await_reached(actuator, ref, float(before), action.target)
            execution["rollback_read_back"] = restored
        except (ActuatorError, ExecutionFailed, TimeoutError, OpsTwinError) as exc:
            if actor is not None:
                raise ServiceUnavailable(f"the rollback could not be done: {_reason(exc)}") from exc
            await self._fail(proposal, execution, f"{reason}; rollback failed: {_reason(exc)}")
            return None
        async with self._db.write() as tx:
            current = await self._service.load_for_update(
                tx, proposal.tenant_id, proposal.proposal_id
            )
            if current.state != proposal.state:
                raise Conflict(
                    f"proposal {proposal.proposal_id} is {current.state} now",
                    extensions={"state": current.state},
                )
            transition = self._service.workflow.apply(
                current, "rollback", event_actor, reason=reason
            )
            await repo.write_setpoint(
                tx,
                proposal.tenant_id,
                action.twin_id,
                action.asset_id,
                action.setpoint,
                float(before),
                action.action_id,
                to_micros(self._clock.now()),
            )
            final = await self._service.record(tx, [transition], execution=execution)
        log.info(
            "action rolled back",
            proposal_id=proposal.proposal_id,
            restored=before,
            reason=reason,
        )
        return final

    async def _await_reached(
        self, actuator: Actuator, ref: SetpointRef, value: float, start: float
    ) -> float:
        """Read back until the asset reports ``value`` (it may still be ramping toward it):
        within the ramp's own duration plus the write timeout, else ExecutionFailed."""
        rate = ref.spec.ramp_rate_per_s
        ramp_s = abs(value - start) / rate if rate else 0.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ramp_s + self._settings.write_timeout_s
        while True:
            now = await asyncio.wait_for(actuator.read(ref), self._settings.write_timeout_s)
            if now is not None and _close(now, value, ref.spec, self._settings.readback_tolerance):
                return now
            if loop.time() >= deadline:
                raise ExecutionFailed(f"{ref.path} reads back {now}, not {value:g}")
            await asyncio.sleep(min(0.05, self._settings.ramp_write_interval_s))

    async def manual_rollback(self, actor: Actor, proposal_id: str, reason: str) -> dict[str, Any]:
        """A supervisor's or executor's rollback of a ``succeeded`` proposal (in the request)."""
        async with self._db.read() as conn:
            proposal = await repo.load_proposal(conn, actor.tenant_id, proposal_id)
        if proposal is None:
            from opstwin.kit.errors import NotFound

            raise NotFound(f"no proposal {proposal_id!r} in this tenant")
        # Check role, state, window and reason before touching the asset (pure: nothing stored).
        self._service.workflow.apply(proposal, "rollback", actor, reason=reason)
        execution = await self._execution(proposal)
        final = await self.rollback(proposal, execution, reason, actor)
        assert final is not None
        return final.to_dict()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OpsTwinError):
        return exc.detail
    return str(exc) or type(exc).__name__
