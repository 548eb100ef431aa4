"""Setpoint recommendations on models whose answer is known in closed form."""

from __future__ import annotations

import math
from typing import Any

import pytest
from scipy import stats

from opstwin.kit.errors import ValidationFailed
from opstwin.simulation.model import ProcessModel, parse_model
from opstwin.simulation.monte_carlo import Method, RunSettings
from opstwin.simulation.recommend import Objective, RiskConstraint, SetpointRecommender

# Chamber temperature setpoint with actuation/measurement noise; the yield peaks at 62 °C.
ETCH: dict[str, Any] = {
    "inputs": {
        "temp_sp": {"dist": "constant", "value": 58},
        "temp_noise": {"dist": "normal", "mean": 0, "std": 0.5},
        "rf_w": {"dist": "normal", "mean": 1500, "std": 30},
    },
    "outputs": {
        "yield_": "0.92 - 0.004*abs(temp_sp + temp_noise - 62) - 0.00002*(rf_w - 1500)**2",
    },
}

# z = s + (s/10)²·n with n ~ N(0, 1): p50 = s and p5 = s − 1.645·(s/10)², so a larger setpoint
# raises the median but, past s = 30, lowers the 5th percentile.
RISKY: dict[str, Any] = {
    "inputs": {
        "s": {"dist": "constant", "value": 20},
        "n": {"dist": "normal", "mean": 0, "std": 1},
    },
    "outputs": {"z": "s + (s/10)**2 * n"},
}


def model(spec: dict[str, Any]) -> ProcessModel:
    return parse_model(spec)


@pytest.mark.parametrize("method", ["mc", "sobol", "antithetic"])
@pytest.mark.parametrize("statistic", ["p50", "mean"])
def test_the_yield_optimum_is_recommended(method: Method, statistic: str) -> None:
    result = SetpointRecommender().recommend(
        model(ETCH),
        setpoint="temp_sp",
        current=58.0,
        candidates=[55.0, 60.0, 62.0, 65.0, 70.0],
        objective=Objective("yield_", statistic),
        settings=RunSettings(seed=21, samples=4096, method=method),
    )
    assert result.recommended == 62.0
    assert [c.value for c in result.ranking] == [62.0, 60.0, 65.0, 58.0, 55.0, 70.0]
    improvement = result.improvement
    assert improvement is not None
    assert improvement.ci.low > 0.0
    # Paired over the same noise n and rf draws, d = y(62) − y(58) = 0.004·(4 − n − |n|):
    # E[d] = 0.016 − 0.008·E[n⁺] = 0.016 − 0.008·0.5/√(2π), and d > 0 ⇔ n < 2 (4σ away).
    expected = 0.016 - 0.008 * 0.5 / math.sqrt(2 * math.pi)
    assert improvement.mean_difference == pytest.approx(
        expected, abs=4 * improvement.mean_difference_se
    )
    assert improvement.mean_difference_se < 0.0002
    assert improvement.p_improvement >= 0.999
    if statistic == "mean":
        assert improvement.value == pytest.approx(improvement.mean_difference, rel=1e-9)
        assert improvement.ci.contains(expected)
    body = result.to_dict()
    assert body["recommended"] == 62.0
    assert body["improvement"] == body["ranking"][0]["improvement"]


def test_the_risk_constraint_changes_the_answer() -> None:
    recommender = SetpointRecommender()
    settings = RunSettings(seed=3, samples=20_000)
    unconstrained = recommender.recommend(
        model(RISKY),
        setpoint="s",
        current=20.0,
        candidates=[10.0, 30.0, 40.0, 50.0],
        objective=Objective("z", "p50"),
        settings=settings,
    )
    assert unconstrained.recommended == 50.0

    constrained = recommender.recommend(
        model(RISKY),
        setpoint="s",
        current=20.0,
        candidates=[10.0, 30.0, 40.0, 50.0],
        objective=Objective("z", "p50"),
        constraint=RiskConstraint("z", threshold=14.0, statistic="p5"),
        settings=settings,
    )
    # p5: s=10 → 8.4, 20 → 13.4, 30 → 15.2, 40 → 13.7, 50 → 8.9: only 30 meets p5 ≥ 14
    assert constrained.recommended == 30.0
    assert [c.feasible for c in constrained.ranking] == [True, False, False, False, False]
    assert "current value violates the constraint" in constrained.reason
    improvement = constrained.improvement
    assert improvement is not None
    assert improvement.value == pytest.approx(10.0, abs=0.3)
    # paired: d = 10 + (9 − 4)·n > 0 ⇔ n > −2, so P(improvement > 0) = Φ(2)
    assert improvement.p_improvement == pytest.approx(float(stats.norm.cdf(2.0)), abs=0.005)


def test_do_nothing_when_the_current_value_is_best() -> None:
    result = SetpointRecommender().recommend(
        model(ETCH),
        setpoint="temp_sp",
        current=62.0,
        candidates=[58.0, 66.0],
        objective=Objective("yield_", "mean"),
        settings=RunSettings(seed=2, samples=2048),
    )
    assert result.recommended == 62.0
    assert result.reason.startswith("do nothing")
    assert result.improvement is None
    assert result.ranking[0].is_current


def test_no_recommendation_when_nothing_is_feasible() -> None:
    result = SetpointRecommender().recommend(
        model(RISKY),
        setpoint="s",
        current=20.0,
        candidates=[10.0, 50.0],
        objective=Objective("z"),
        constraint=RiskConstraint("z", threshold=100.0),
        settings=RunSettings(seed=1, samples=2048),
    )
    assert result.recommended is None
    assert result.improvement is None
    assert "no candidate" in result.reason
    # least-bad first: the one closest to meeting p5 ≥ 100
    assert result.ranking[0].value == 20.0


def test_minimising_flips_the_ranking() -> None:
    result = SetpointRecommender().recommend(
        model(RISKY),
        setpoint="s",
        current=20.0,
        candidates=[10.0, 30.0],
        objective=Objective("z", "p95", direction="minimize"),
        settings=RunSettings(seed=1, samples=4096),
    )
    assert result.recommended == 10.0
    assert result.improvement is not None
    assert result.improvement.value > 0  # oriented: positive is better


@pytest.mark.parametrize(
    ("kwargs", "pointer"),
    [
        ({"setpoint": "nope"}, "/setpoint"),
        ({"candidates": []}, "/candidates"),
        ({"candidates": [1.0, float("nan")]}, "/candidates/1"),
        ({"objective": Objective("nope")}, "/objective/output"),
        ({"constraint": RiskConstraint("nope", 1.0)}, "/constraint/output"),
        (
            {"settings": RunSettings(seed=1, adaptive=True)},
            "/adaptive",
        ),
    ],
)
def test_requests_are_validated(kwargs: dict[str, Any], pointer: str) -> None:
    args: dict[str, Any] = {
        "setpoint": "s",
        "current": 20.0,
        "candidates": [10.0],
        "objective": Objective("z"),
        "settings": RunSettings(seed=1, samples=512),
    } | kwargs
    with pytest.raises(ValidationFailed) as caught:
        SetpointRecommender().recommend(model(RISKY), **args)
    assert [e.pointer for e in caught.value.errors] == [pointer]


def test_objective_and_constraint_names_are_validated() -> None:
    with pytest.raises(ValidationFailed):
        Objective("z", statistic="p42")
    with pytest.raises(ValidationFailed):
        RiskConstraint("z", threshold=1.0, op="<")  # type: ignore[arg-type]
