"""DecisionMaker bands: every edge, both sides of it, NaN and a missing component."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from opstwin.kit.errors import ValidationFailed
from opstwin.policy.confidence import (
    Confidence,
    ConfidenceScorer,
    Evidence,
    HistoryEvidence,
    SimulationEvidence,
    TelemetryWindow,
    VerifiedOutcomes,
    Vote,
)
from opstwin.policy.decision import DecisionMaker
from opstwin.policy.policy import Outcome, Policy
from tests.policy.decision_helpers import esc_temp_change, esc_temp_spec

SPEC = esc_temp_spec()
CHANGE = esc_temp_change(SPEC)


def _decide(total: float, policy: Policy | None = None) -> Outcome:
    decision = DecisionMaker().decide(
        CHANGE, Confidence(total=total, components={}), policy or Policy()
    )
    return decision.outcome


@pytest.mark.parametrize(
    ("score", "outcome"),
    [
        (0.0, "reject"),
        (0.4999999999, "reject"),
        (math.nextafter(0.5, 0.0), "reject"),
        (0.50, "analyze"),
        (0.6999999999, "analyze"),
        (math.nextafter(0.7, 0.0), "analyze"),
        (0.70, "require_approval"),
        (0.8999999999, "require_approval"),
        (math.nextafter(0.9, 0.0), "require_approval"),
        (0.90, "auto_execute"),
        (1.0, "auto_execute"),
    ],
)
def test_band_edges_are_inclusive_from_below(score: float, outcome: Outcome) -> None:
    assert _decide(score) == outcome


def test_decision_records_the_band_edges_used() -> None:
    decision = DecisionMaker().decide(CHANGE, Confidence(total=0.7, components={}), Policy())
    assert decision.bands == {
        "auto_execute": 0.9,
        "require_approval": 0.7,
        "analyze": 0.5,
        "edges": "lower edge inclusive: score >= edge belongs to the band above",
    }
    assert decision.band_outcome == "require_approval"
    assert decision.policy == {"policy_id": "default", "version": 1}


def test_configured_edges_are_used() -> None:
    policy = Policy.model_validate(
        {"bands": {"auto_execute": 0.95, "require_approval": 0.6, "analyze": 0.3}}
    )
    assert _decide(0.94, policy) == "require_approval"
    assert _decide(0.95, policy) == "auto_execute"
    assert _decide(0.3, policy) == "analyze"
    assert _decide(math.nextafter(0.3, 0.0), policy) == "reject"


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf, -0.1, 1.1])
def test_a_score_that_is_not_a_probability_is_an_error(score: float) -> None:
    with pytest.raises(ValidationFailed) as caught:
        _decide(score)
    assert caught.value.errors[0].pointer == "/confidence/total"


PERFECT = Evidence(
    history=HistoryEvidence("setpoint_change", VerifiedOutcomes(successes=10_000)),
    telemetry=TelemetryWindow(quality_scores=[1.0] * 100, expected_samples=100),
    simulation=SimulationEvidence(p_improvement=1.0, converged=True),
    votes=tuple(Vote(f"key_{i}", approve=True, confidence=1.0) for i in range(10_000)),
)


@pytest.mark.parametrize(
    "missing",
    [
        {"history": None},
        {"telemetry": None},
        {"simulation": None},
        {"votes": ()},
    ],
    ids=["history", "telemetry", "simulation", "votes"],
)
def test_a_missing_component_never_auto_executes(missing: dict[str, Any]) -> None:
    confidence = ConfidenceScorer().score(replace(PERFECT, **missing), Policy())
    # A neutral 0.5 in place of a perfect 1 costs half the component's weight (0.10 to 0.15);
    # no votes costs exactly 0.10, and the Beta posterior is always below 1, so still < 0.90.
    assert 0.8 < confidence.total < 0.9
    assert DecisionMaker().decide(CHANGE, confidence, Policy()).outcome == "require_approval"


def test_with_everything_perfect_the_score_auto_executes() -> None:
    confidence = ConfidenceScorer().score(PERFECT, Policy())
    assert confidence.total > 0.99
    assert DecisionMaker().decide(CHANGE, confidence, Policy()).outcome == "auto_execute"
