"""Each hard guard alone: its verdict, and what it does to an auto-execute (and analyze) score."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import pytest

from opstwin.policy.confidence import Confidence
from opstwin.policy.decision import (
    DEFAULT_GUARDS,
    AssetStatus,
    Decision,
    DecisionMaker,
    InFlightAction,
    OpenAnomaly,
    ProposedChange,
)
from opstwin.policy.policy import Outcome, Policy
from tests.policy.decision_helpers import esc_temp_change, esc_temp_spec

SPEC = esc_temp_spec(ramp_rate_per_s=0.5)
BASE = esc_temp_change(SPEC)
SPLIT = Policy.model_validate({"allow_ramp_split": True, "max_ramp_steps": 5})


def _decide(change: ProposedChange, total: float = 0.95, policy: Policy | None = None) -> Decision:
    return DecisionMaker().decide(
        change, Confidence(total=total, components={}), policy or Policy()
    )


def _verdict(decision: Decision, guard: str) -> str:
    return next(g.verdict for g in decision.guards if g.guard == guard)


def _in_flight(
    state: str, asset_id: str = "etch_tool_7", proposal_id: str = "prp_2"
) -> InFlightAction:
    return InFlightAction(proposal_id, "fab", asset_id, "esc_temp_sp", state)


CASES: list[tuple[str, dict[str, Any], str, str, Outcome]] = [
    # (case, change fields, guard, its verdict, outcome at 0.95)
    ("inside bounds", {}, "RejectSetpointOutsideBounds", "pass", "auto_execute"),
    (
        "on the upper bound",
        {"value": 80.0, "current": 79.0},
        "RejectSetpointOutsideBounds",
        "pass",
        "auto_execute",
    ),
    (
        "on the lower bound",
        {"value": 40.0, "current": 41.0},
        "RejectSetpointOutsideBounds",
        "pass",
        "auto_execute",
    ),
    (
        "above the bounds",
        {"value": math.nextafter(80.0, 100.0), "current": 79.0},
        "RejectSetpointOutsideBounds",
        "reject",
        "reject",
    ),
    (
        "below the bounds",
        {"value": 39.99, "current": 41.0},
        "RejectSetpointOutsideBounds",
        "reject",
        "reject",
    ),
    ("NaN target", {"value": math.nan}, "RejectSetpointOutsideBounds", "reject", "reject"),
    ("infinite target", {"value": math.inf}, "RejectSetpointOutsideBounds", "reject", "reject"),
    ("step equal to max_step", {"value": 62.0}, "RejectStepAboveMaxStep", "pass", "auto_execute"),
    (
        "step down equal to max_step",
        {"value": 58.0},
        "RejectStepAboveMaxStep",
        "pass",
        "auto_execute",
    ),
    ("step above max_step", {"value": 62.001}, "RejectStepAboveMaxStep", "reject", "reject"),
    (
        "unknown current value",
        {"current": None},
        "RejectStepAboveMaxStep",
        "require_approval",
        "require_approval",
    ),
    (
        "asset locked",
        {"asset_status": AssetStatus(locked=True)},
        "RequireApprovalWhenAssetLockedOrManual",
        "require_approval",
        "require_approval",
    ),
    (
        "asset in manual mode",
        {"asset_status": AssetStatus(mode="manual")},
        "RequireApprovalWhenAssetLockedOrManual",
        "require_approval",
        "require_approval",
    ),
    (
        "asset status unknown",
        {"asset_status": None},
        "RequireApprovalWhenAssetLockedOrManual",
        "require_approval",
        "require_approval",
    ),
    (
        "asset automatic",
        {"asset_status": AssetStatus()},
        "RequireApprovalWhenAssetLockedOrManual",
        "pass",
        "auto_execute",
    ),
    (
        "critical anomaly open",
        {"open_anomalies": (OpenAnomaly("ano_1", "critical"),)},
        "RequireApprovalOnUnresolvedCriticalAnomaly",
        "require_approval",
        "require_approval",
    ),
    (
        "high anomaly open",
        {"open_anomalies": (OpenAnomaly("ano_1", "high"),)},
        "RequireApprovalOnUnresolvedCriticalAnomaly",
        "pass",
        "auto_execute",
    ),
    (
        "executing on the asset",
        {"in_flight": (_in_flight("executing"),)},
        "RejectConflictingActionInFlight",
        "reject",
        "reject",
    ),
    (
        "approved on the asset",
        {"in_flight": (_in_flight("approved"),)},
        "RejectConflictingActionInFlight",
        "reject",
        "reject",
    ),
    (
        "verifying on the asset",
        {"in_flight": (_in_flight("verifying"),)},
        "RejectConflictingActionInFlight",
        "reject",
        "reject",
    ),
    (
        "awaiting approval on the asset",
        {"in_flight": (_in_flight("awaiting_approval"),)},
        "RejectConflictingActionInFlight",
        "pass",
        "auto_execute",
    ),
    (
        "executing on another asset",
        {"in_flight": (_in_flight("executing", asset_id="cmp_2"),)},
        "RejectConflictingActionInFlight",
        "pass",
        "auto_execute",
    ),
    (
        "itself in flight",
        {"in_flight": (_in_flight("approved", proposal_id="prp_1"),)},
        "RejectConflictingActionInFlight",
        "pass",
        "auto_execute",
    ),
]


@pytest.mark.parametrize(
    ("fields", "guard", "verdict", "outcome"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_guard_alone(
    fields: dict[str, Any], guard: str, verdict: str, outcome: Outcome
) -> None:
    decision = _decide(replace(BASE, **fields))
    assert _verdict(decision, guard) == verdict
    assert decision.outcome == outcome
    others = [
        g for g in decision.guards if g.guard != guard and g.verdict not in ("pass", "skipped")
    ]
    assert (
        others == [] or guard == "RejectSetpointOutsideBounds"
    )  # NaN/inf also fail the step check


def test_every_guard_is_recorded_in_order() -> None:
    decision = _decide(BASE)
    assert [g.guard for g in decision.guards] == [type(g).__name__ for g in DEFAULT_GUARDS]
    assert [g.verdict for g in decision.guards] == [
        "pass",
        "pass",
        "skipped",
        "pass",
        "pass",
        "pass",
    ]
    assert decision.to_dict()["guards"][0] == {
        "guard": "RejectSetpointOutsideBounds",
        "verdict": "pass",
        "detail": "within bounds",
        "evidence": {"value": 61.0, "low": 40.0, "high": 80.0},
    }


def test_approval_guards_do_not_lift_a_lower_band() -> None:
    locked = replace(BASE, asset_status=AssetStatus(locked=True))
    assert _decide(locked, total=0.6).outcome == "analyze"
    assert _decide(locked, total=0.3).outcome == "reject"
    assert _decide(locked, total=0.8).outcome == "require_approval"


def test_split_step_into_ramp_when_the_policy_allows() -> None:
    decision = _decide(replace(BASE, value=65.0), policy=SPLIT)
    assert _verdict(decision, "RejectStepAboveMaxStep") == "skipped"
    assert _verdict(decision, "SplitStepIntoRamp") == "split"
    assert decision.outcome == "auto_execute"
    assert decision.ramp is not None
    assert decision.ramp.steps == pytest.approx((61.666666, 63.333333, 65.0))
    assert decision.ramp.steps[-1] == 65.0
    assert decision.ramp.min_duration_s == pytest.approx(10.0)
    steps = (60.0, *decision.ramp.steps)
    assert all(abs(b - a) <= SPEC.max_step for a, b in itertools.pairwise(steps))


def test_split_within_max_step_is_a_pass() -> None:
    decision = _decide(replace(BASE, value=62.0), policy=SPLIT)
    assert _verdict(decision, "SplitStepIntoRamp") == "pass"
    assert decision.ramp is None


def test_split_needing_too_many_steps_is_rejected() -> None:
    decision = _decide(replace(BASE, value=70.5), policy=SPLIT)  # 10.5 / 2 → 6 steps > 5
    assert _verdict(decision, "SplitStepIntoRamp") == "reject"
    assert decision.outcome == "reject"
    assert decision.ramp is None


def test_override_caps_lithography_at_approval() -> None:
    policy = Policy.model_validate(
        {
            "overrides": [
                {
                    "match": {"asset_class": "lithography"},
                    "cap": "require_approval",
                    "reason": "never auto-execute on lithography",
                }
            ]
        }
    )
    litho = _decide(replace(BASE, asset_class="lithography"), total=1.0, policy=policy)
    assert litho.outcome == "require_approval"
    assert litho.band_outcome == "auto_execute"
    assert litho.cap == "require_approval"
    assert litho.overrides == ({"index": 0, "reason": "never auto-execute on lithography"},)
    assert _decide(BASE, total=1.0, policy=policy).outcome == "auto_execute"
