"""ConfidenceScorer: each component with its provenance, missing evidence, NaN, renormalisation."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opstwin.kit.errors import ValidationFailed
from opstwin.policy.confidence import (
    MISSING_EVIDENCE_SCORE,
    ConfidenceScorer,
    Evidence,
    HistoryEvidence,
    SimulationEvidence,
    TelemetryWindow,
    VerifiedOutcomes,
    Vote,
)
from opstwin.policy.policy import Policy

SCORER = ConfidenceScorer()
POLICY = Policy()


def _component(
    evidence: Evidence, name: str, policy: Policy = POLICY
) -> tuple[float, dict[str, Any]]:
    score = SCORER.score(evidence, policy).components[name]  # type: ignore[index]
    return score.value, dict(score.provenance)


def test_no_evidence_is_neutral_everywhere_never_perfect() -> None:
    confidence = SCORER.score(Evidence(), POLICY)
    assert confidence.total == 0.5
    assert {name: (c.value, c.missing) for name, c in confidence.components.items()} == {
        "historical_success": (0.5, True),
        "data_quality": (0.5, True),
        "simulation_consistency": (0.5, True),
        "ai_consensus": (0.5, True),
    }
    assert confidence.to_dict()["components"]["historical_success"]["provenance"]["n"] == 0


def test_historical_success_is_the_beta_posterior_mean_of_the_asset() -> None:
    history = HistoryEvidence("setpoint_change", VerifiedOutcomes(successes=8, failures=2))
    value, provenance = _component(Evidence(history=history), "historical_success")
    assert value == pytest.approx((1 + 8) / (2 + 10))
    assert provenance == {
        "method": "beta_posterior_mean",
        "scope": "asset",
        "prior": {"alpha": 1.0, "beta": 1.0},
        "successes": 8,
        "failures": 2,
        "n": 10,
        "min_asset_history": 5,
        "action_type": "setpoint_change",
        "asset_class": None,
    }


def test_historical_success_falls_back_to_the_asset_class_and_then_the_prior() -> None:
    few = HistoryEvidence(
        "setpoint_change",
        VerifiedOutcomes(successes=2),
        asset_class="lithography",
        asset_class_outcomes=VerifiedOutcomes(successes=30, failures=10),
    )
    value, provenance = _component(Evidence(history=few), "historical_success")
    assert provenance["scope"] == "asset_class"
    assert provenance["n"] == 40
    assert value == pytest.approx(31 / 42)
    only_own = HistoryEvidence("setpoint_change", VerifiedOutcomes(successes=2))
    assert _component(Evidence(history=only_own), "historical_success")[1]["scope"] == "asset"
    nothing = HistoryEvidence(
        "setpoint_change", VerifiedOutcomes(), asset_class_outcomes=VerifiedOutcomes()
    )
    value, provenance = _component(Evidence(history=nothing), "historical_success")
    assert (value, provenance["scope"], provenance["n"]) == (0.5, "prior", 0)
    skeptical = Policy.model_validate({"scoring": {"history_prior": {"alpha": 1, "beta": 3}}})
    assert _component(Evidence(history=nothing), "historical_success", skeptical)[0] == 0.25


def test_data_quality_is_mean_quality_times_coverage() -> None:
    window = TelemetryWindow(quality_scores=[1.0, 0.8, None, 0.9], expected_samples=8)
    value, provenance = _component(Evidence(telemetry=window), "data_quality")
    assert provenance["mean_quality"] == pytest.approx((1.0 + 0.8 + 0.5 + 0.9) / 4)
    assert provenance["coverage"] == 0.5
    assert value == pytest.approx(0.8 * 0.5)
    assert provenance["scored_samples"] == 3


def test_an_empty_window_that_expected_samples_scores_zero() -> None:
    value, provenance = _component(
        Evidence(telemetry=TelemetryWindow([], expected_samples=10)), "data_quality"
    )
    assert value == 0.0
    assert provenance["coverage"] == 0.0
    value, provenance = _component(Evidence(telemetry=TelemetryWindow([])), "data_quality")
    assert value == MISSING_EVIDENCE_SCORE
    assert provenance["method"] == "missing"


def test_unconverged_simulation_is_pulled_toward_neutral() -> None:
    converged = Evidence(
        simulation=SimulationEvidence(p_improvement=0.9, converged=True, sim_id="sim_1")
    )
    assert _component(converged, "simulation_consistency")[0] == 0.9
    unconverged = Evidence(simulation=SimulationEvidence(p_improvement=0.9, converged=False))
    value, provenance = _component(unconverged, "simulation_consistency")
    assert value == pytest.approx(0.5 + 0.5 * 0.4)
    assert provenance["trust"] == 0.5
    assert provenance["converged"] is False
    ignored = Policy.model_validate({"scoring": {"unconverged_simulation_weight": 0}})
    assert _component(unconverged, "simulation_consistency", ignored)[0] == 0.5


def test_votes_with_a_neutral_prior_vote() -> None:
    one = Evidence(votes=[Vote("key_a", approve=True, confidence=1.0)])
    assert _component(one, "ai_consensus")[0] == 0.75  # never 1.0 from one vote
    mixed = Evidence(
        votes=[
            Vote("key_a", approve=True, confidence=0.8),
            Vote("key_b", approve=False, confidence=0.4),
        ]
    )
    value, provenance = _component(mixed, "ai_consensus")
    assert value == pytest.approx((0.5 + 0.9 + 0.3) / 3)
    assert provenance == {
        "method": "mean_vote_with_neutral_prior",
        "votes": 2,
        "approve": 1,
        "reject": 1,
        "prior_votes": 1.0,
    }


def test_one_vote_per_principal() -> None:
    twice = Evidence(votes=[Vote("key_a", True, 0.9), Vote("key_a", False, 0.9)])
    with pytest.raises(ValidationFailed) as caught:
        SCORER.score(twice, POLICY)
    assert caught.value.errors[0].pointer == "/evidence/votes/1/principal_id"


@pytest.mark.parametrize(
    ("evidence", "pointer"),
    [
        (
            Evidence(simulation=SimulationEvidence(math.nan, True)),
            "/evidence/simulation/p_improvement",
        ),
        (
            Evidence(simulation=SimulationEvidence(math.inf, True)),
            "/evidence/simulation/p_improvement",
        ),
        (Evidence(simulation=SimulationEvidence(1.5, True)), "/evidence/simulation/p_improvement"),
        (
            Evidence(telemetry=TelemetryWindow([0.9, math.nan])),
            "/evidence/telemetry/quality_scores/1",
        ),
        (Evidence(telemetry=TelemetryWindow([-0.1])), "/evidence/telemetry/quality_scores/0"),
        (Evidence(votes=[Vote("key_a", True, math.nan)]), "/evidence/votes/0/confidence"),
        (
            Evidence(history=HistoryEvidence("setpoint_change", VerifiedOutcomes(successes=-1))),
            "/evidence/history/asset/successes",
        ),
    ],
)
def test_nan_or_out_of_range_evidence_is_an_error(evidence: Evidence, pointer: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        SCORER.score(evidence, POLICY)
    assert caught.value.errors[0].pointer == pointer


def test_nan_in_a_disabled_component_is_still_an_error() -> None:
    policy = Policy.model_validate({"weights": {"simulation_consistency": 0}})
    with pytest.raises(ValidationFailed):
        SCORER.score(Evidence(simulation=SimulationEvidence(math.nan, True)), policy)


def test_disabled_components_renormalise() -> None:
    policy = Policy.model_validate(
        {
            "weights": {
                "historical_success": 0,
                "data_quality": 0,
                "simulation_consistency": 0.3,
                "ai_consensus": 0,
            }
        }
    )
    confidence = SCORER.score(Evidence(simulation=SimulationEvidence(0.97, True)), policy)
    assert confidence.total == pytest.approx(0.97)
    assert confidence.components["simulation_consistency"].weight == 1.0
    assert confidence.components["ai_consensus"].weight == 0.0


unit = st.floats(0.0, 1.0)


@given(
    successes=st.integers(0, 10_000),
    failures=st.integers(0, 10_000),
    quality=st.lists(st.one_of(st.none(), unit), max_size=50),
    p=unit,
    converged=st.booleans(),
    votes=st.lists(st.tuples(st.booleans(), unit), max_size=20),
)
def test_total_is_a_weighted_mean_in_the_unit_interval(
    successes: int,
    failures: int,
    quality: list[float | None],
    p: float,
    converged: bool,
    votes: list[tuple[bool, float]],
) -> None:
    evidence = Evidence(
        history=HistoryEvidence("setpoint_change", VerifiedOutcomes(successes, failures)),
        telemetry=TelemetryWindow(quality),
        simulation=SimulationEvidence(p, converged),
        votes=[Vote(f"key_{i}", approve, c) for i, (approve, c) in enumerate(votes)],
    )
    confidence = SCORER.score(evidence, POLICY)
    assert 0.0 <= confidence.total <= 1.0
    values = [c.value for c in confidence.components.values()]
    assert min(values) - 1e-12 <= confidence.total <= max(values) + 1e-12
    assert math.isclose(sum(c.weight for c in confidence.components.values()), 1.0)
    if not votes:
        assert confidence.total < 0.9  # no votes: neutral, so never auto-execute by default
