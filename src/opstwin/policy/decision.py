"""DecisionMaker: hard guards first, then the confidence bands.

Guards are small classes behind :class:`Guard`, listed in :data:`DEFAULT_GUARDS` in the order they
run; each returns a :class:`GuardOutcome` whose verdict is one of

* ``pass`` — nothing to object to;
* ``skipped`` — the guard does not apply under this policy (e.g. the ramp splitter when
  splitting is not allowed), with the reason;
* ``split`` — the step is split into ramp steps (:class:`RampPlan`), no cap;
* ``require_approval`` — the outcome may be at most ``require_approval``;
* ``reject`` — the outcome is ``reject``.

Every guard runs (the decision records all their outcomes, not just the first objection). The
outcome is the most restrictive of: the band of the confidence total, the policy overrides' cap
and every guard's verdict (``auto_execute`` < ``require_approval`` < ``analyze`` < ``reject``).
So a guard asking for approval turns an auto-execute score into ``require_approval`` but leaves
an ``analyze`` or ``reject`` score as it is.

Missing facts never pass a guard: an unknown current value (step size unknowable) or an unknown
asset status requires approval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from opstwin.policy.confidence import Confidence
from opstwin.policy.policy import EffectivePolicy, Outcome, Policy, most_restrictive
from opstwin.twins.model import SetpointSpec

Verdict = Literal["pass", "skipped", "split", "require_approval", "reject"]

STEP_TOLERANCE = 1e-9
"""Relative slack on ``max_step``: a step equal to it up to floating-point noise is allowed."""

IN_FLIGHT_STATES = frozenset({"approved", "executing", "verifying"})
"""Proposal states in which an action on the asset is under way (or about to be)."""

_VERDICT_CAP: dict[Verdict, Outcome] = {
    "pass": "auto_execute",
    "skipped": "auto_execute",
    "split": "auto_execute",
    "require_approval": "require_approval",
    "reject": "reject",
}


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssetStatus:
    """Whether the asset accepts automatic changes right now."""

    locked: bool = False
    mode: Literal["automatic", "manual"] = "automatic"


@dataclass(frozen=True, slots=True)
class OpenAnomaly:
    """An anomaly on the asset that is not resolved yet."""

    anomaly_id: str
    severity: Literal["low", "medium", "high", "critical"]
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class InFlightAction:
    """Another proposal on the platform and its state."""

    proposal_id: str
    twin_id: str
    asset_id: str
    setpoint: str
    state: str


@dataclass(frozen=True, slots=True)
class ProposedChange:
    """What a proposal would do and the facts the guards need about the asset.

    ``asset_status`` None means the status is unknown (approval required).
    """

    proposal_id: str
    action_type: str
    twin_id: str
    asset_id: str
    asset_class: str | None
    setpoint: str
    spec: SetpointSpec
    value: float
    current: float | None
    asset_status: AssetStatus | None = AssetStatus()
    open_anomalies: Sequence[OpenAnomaly] = ()
    in_flight: Sequence[InFlightAction] = ()


# --- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RampPlan:
    """Absolute targets written one after the other, each at most ``max_step`` from the last."""

    steps: tuple[float, ...]
    max_step: float
    min_duration_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "max_step": self.max_step,
            "min_duration_s": self.min_duration_s,
        }


@dataclass(frozen=True, slots=True)
class GuardOutcome:
    """What one guard said, and why."""

    guard: str
    verdict: Verdict
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    ramp: RampPlan | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "guard": self.guard,
            "verdict": self.verdict,
            "detail": self.detail,
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome and everything it was derived from."""

    outcome: Outcome
    band_outcome: Outcome
    score: float
    bands: Mapping[str, Any]
    cap: Outcome
    overrides: tuple[Mapping[str, Any], ...]
    guards: tuple[GuardOutcome, ...]
    ramp: RampPlan | None
    policy: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "band_outcome": self.band_outcome,
            "score": self.score,
            "bands": dict(self.bands),
            "cap": self.cap,
            "overrides": [dict(o) for o in self.overrides],
            "guards": [g.to_dict() for g in self.guards],
            "ramp": None if self.ramp is None else self.ramp.to_dict(),
            "policy": dict(self.policy),
        }


# --- guards -----------------------------------------------------------------------------------


class Guard(Protocol):
    """A hard rule checked before the bands; its class name says what it does."""

    def check(self, change: ProposedChange, policy: EffectivePolicy) -> GuardOutcome: ...


def _outcome(
    guard: object,
    verdict: Verdict,
    detail: str,
    evidence: Mapping[str, Any] | None = None,
    ramp: RampPlan | None = None,
) -> GuardOutcome:
    return GuardOutcome(type(guard).__name__, verdict, detail, evidence or {}, ramp)


def _step_exceeds(step: float, max_step: float) -> bool:
    return step > max_step * (1.0 + STEP_TOLERANCE)


class RejectSetpointOutsideBounds:
    """The target must be a finite number inside the setpoint's closed bounds."""

    def check(self, change: ProposedChange, policy: EffectivePolicy) -> GuardOutcome:
        bounds = change.spec.bounds
        evidence = {"value": change.value, "low": bounds.low, "high": bounds.high}
        if not math.isfinite(change.value):
            return _outcome(self, "reject", "the target is not a finite number", evidence)
        if not bounds.contains(change.value):
            return _outcome(
                self,
                "reject",
                f"{change.value:g} is outside the bounds [{bounds.low:g}, {bounds.high:g}]",
                evidence,
            )
        return _outcome(self, "pass", "within bounds", evidence)


class RejectStepAboveMaxStep:
    """A change larger than the setpoint's max step is rejected (unless ramp splitting is on)."""

    def check(self, change: ProposedChange, policy: EffectivePolicy) -> GuardOutcome:
        if policy.allow_ramp_split:
            return _outcome(self, "skipped", "the policy splits large steps into ramp steps")
        return _check_step(self, change, over="reject")


class SplitStepIntoRamp:
    """When the policy allows it, a change larger than max step becomes a ramp of smaller steps
    (at most ``max_ramp_steps``; more than that is rejected)."""

    def check(self, change: ProposedChange, policy: EffectivePolicy) -> GuardOutcome:
        if not policy.allow_ramp_split:
            return _outcome(self, "skipped", "the policy does not allow ramp splitting")
        return _check_step(self, change, over="split", max_ramp_steps=policy.max_ramp_steps)


def _check_step(
    guard: object,
    change: ProposedChange,
    *,
    over: Literal["reject", "split"],
    max_ramp_steps: int = 0,
) -> GuardOutcome:
    spec = change.spec
    if change.current is None or not math.isfinite(change.current):
        return _outcome(
            guard,
            "require_approval",
            "the current value is unknown, so the step size cannot be checked",
            {"current": None, "max_step": spec.max_step},
        )
    if not math.isfinite(change.value):
        return _outcome(guard, "reject", "the target is not a finite number")
    delta = change.value - change.current
    evidence: dict[str, Any] = {
        "current": change.current,
        "value": change.value,
        "step": abs(delta),
        "max_step": spec.max_step,
    }
    if not _step_exceeds(abs(delta), spec.max_step):
        return _outcome(guard, "pass", "step within max_step", evidence)
    if over == "reject":
        return _outcome(
            guard,
            "reject",
            f"step {abs(delta):g} exceeds max_step {spec.max_step:g}",
            evidence,
        )
    count = math.ceil(abs(delta) / spec.max_step * (1.0 - STEP_TOLERANCE))
    evidence["ramp_steps"] = count
    if count > max_ramp_steps:
        return _outcome(
            guard,
            "reject",
            f"step {abs(delta):g} needs {count} ramp steps; the policy allows {max_ramp_steps}",
            evidence,
        )
    steps = (*(change.current + delta * i / count for i in range(1, count)), change.value)
    ramp = RampPlan(
        steps=steps,
        max_step=spec.max_step,
        min_duration_s=None if spec.ramp_rate_per_s is None else abs(delta) / spec.ramp_rate_per_s,
    )
    return _outcome(guard, "split", f"split into {count} ramp steps", evidence, ramp)


class RequireApprovalWhenAssetLockedOrManual:
    """A locked asset, one in manual mode, or one whose status is unknown needs a human."""

    def check(self, change: ProposedChange, policy: EffectivePolicy) -> GuardOutcome:
        status = change.asset_status
        if status is None:
            return _outcome(self, "require_approval", "the asset's status is unknown")
        evidence = {"locked": status.locked, "mode": status.mode}
        if status.locked:
            return _outcome(self, "require_approval", "the asset is locked", evidence)
        if status.mode == "manual":
            return _outcome(self, "require_approval", "the asset is in manual mode", evidence)
        return _outcome(self, "pass", "the asset is unlocked and automatic", evidence)


class RequireApprovalOnUnresolvedCriticalAnomaly:
    """An unresolved critical anomaly on the asset needs a human to look first."""

    def check(self, change: ProposedChange, policy: EffectivePolicy) -> GuardOutcome:
        critical = sorted(a.anomaly_id for a in change.open_anomalies if a.severity == "critical")
        if critical:
            return _outcome(
                self,
                "require_approval",
                f"{len(critical)} unresolved critical anomal{'y' if len(critical) == 1 else 'ies'} on the asset",
                {"anomaly_ids": critical},
            )
        return _outcome(self, "pass", "no unresolved critical anomaly", {"anomaly_ids": []})


class RejectConflictingActionInFlight:
    """Another action under way (approved, executing or verifying) on the same asset conflicts."""

    def check(self, change: ProposedChange, policy: EffectivePolicy) -> GuardOutcome:
        conflicting = sorted(
            action.proposal_id
            for action in change.in_flight
            if action.proposal_id != change.proposal_id
            and action.twin_id == change.twin_id
            and action.asset_id == change.asset_id
            and action.state in IN_FLIGHT_STATES
        )
        if conflicting:
            return _outcome(
                self,
                "reject",
                "another action is in flight on the same asset",
                {"proposal_ids": conflicting},
            )
        return _outcome(
            self, "pass", "no other action in flight on the asset", {"proposal_ids": []}
        )


DEFAULT_GUARDS: tuple[Guard, ...] = (
    RejectSetpointOutsideBounds(),
    RejectStepAboveMaxStep(),
    SplitStepIntoRamp(),
    RequireApprovalWhenAssetLockedOrManual(),
    RequireApprovalOnUnresolvedCriticalAnomaly(),
    RejectConflictingActionInFlight(),
)
"""The guards, in the order they run and are recorded (explicit registry)."""


class DecisionMaker:
    """Runs every guard, then maps the confidence total to a band, and combines them."""

    def __init__(self, guards: Sequence[Guard] = DEFAULT_GUARDS) -> None:
        self._guards = tuple(guards)

    def decide(self, change: ProposedChange, confidence: Confidence, policy: Policy) -> Decision:
        """The decision for ``change``; raises ValidationFailed for a NaN score."""
        effective = policy.effective_for(change.action_type, change.asset_id, change.asset_class)
        band_outcome = effective.bands.outcome_for(confidence.total)
        outcomes = tuple(guard.check(change, effective) for guard in self._guards)
        outcome = most_restrictive(
            band_outcome, effective.cap, *(_VERDICT_CAP[g.verdict] for g in outcomes)
        )
        ramp = next((g.ramp for g in outcomes if g.ramp is not None), None)
        return Decision(
            outcome=outcome,
            band_outcome=band_outcome,
            score=confidence.total,
            bands=effective.bands.describe(),
            cap=effective.cap,
            overrides=effective.overrides,
            guards=outcomes,
            ramp=None if outcome == "reject" else ramp,
            policy=policy.ref(),
        )
