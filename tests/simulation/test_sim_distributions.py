"""Input distributions: moments and percentiles against closed forms, parameter validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats

from opstwin.kit.errors import ValidationFailed
from opstwin.simulation.distributions import DISTRIBUTIONS, LogNormal, parse_distribution
from opstwin.simulation.model import ProcessModel
from opstwin.simulation.monte_carlo import Method, MonteCarloEngine, RunSettings

N = 2**16
SIGMAS = 5.0
"""Tolerances are this many standard errors of the estimator at sample size N."""

_LOGNORMAL_SIGMA = math.sqrt(math.log1p((10.0 / 50.0) ** 2))
_LOGNORMAL_MU = math.log(50.0) - _LOGNORMAL_SIGMA**2 / 2.0

CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "normal": ({"dist": "normal", "mean": 100, "std": 10}, stats.norm(100, 10)),
    "uniform": ({"dist": "uniform", "low": 1, "high": 4}, stats.uniform(1, 3)),
    "triangular": (
        {"dist": "triangular", "low": 1, "mode": 2, "high": 4},
        stats.triang(c=1 / 3, loc=1, scale=3),
    ),
    "lognormal_mu_sigma": (
        {"dist": "lognormal", "mu": 1.0, "sigma": 0.5},
        stats.lognorm(s=0.5, scale=math.e),
    ),
    "lognormal_mean_std": (
        {"dist": "lognormal", "mean": 50, "std": 10},
        stats.lognorm(s=_LOGNORMAL_SIGMA, scale=math.exp(_LOGNORMAL_MU)),
    ),
}


@pytest.mark.parametrize("method", ["mc", "sobol", "antithetic"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_moments_and_percentiles_match_closed_forms(
    case: str,
    method: Method,
    engine: MonteCarloEngine,
    single_input: Callable[[dict[str, Any]], ProcessModel],
) -> None:
    spec, reference = CASES[case]
    run = engine.run(single_input(spec), RunSettings(seed=11, samples=N, method=method))
    out = run.outputs["out"]
    assert run.samples_used == N

    mean, var = float(reference.mean()), float(reference.var())
    sd = math.sqrt(var)
    excess_kurtosis = float(reference.stats(moments="k"))
    assert abs(out.mean - mean) <= SIGMAS * sd / math.sqrt(N)
    # SE of the sample std ≈ σ·√((κ_excess + 2)/N)/2
    assert abs(out.std - sd) <= SIGMAS * sd * math.sqrt((excess_kurtosis + 2.0) / N) / 2.0
    for name, q in (("p5", 0.05), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p95", 0.95)):
        x_q = float(reference.ppf(q))
        se = math.sqrt(q * (1.0 - q) / N) / float(reference.pdf(x_q))
        assert abs(out.percentiles[name] - x_q) <= SIGMAS * se, name
    assert out.min >= float(reference.support()[0])
    assert out.max <= float(reference.support()[1])


def test_lognormal_by_value_moments_convert_exactly() -> None:
    dist = parse_distribution({"dist": "lognormal", "mean": 50, "std": 10}, "/x")
    assert isinstance(dist, LogNormal)
    # E = exp(mu + sigma²/2), SD = E·sqrt(exp(sigma²) − 1)
    mean = math.exp(dist.mu + dist.sigma**2 / 2)
    assert mean == pytest.approx(50.0, rel=1e-12)
    assert mean * math.sqrt(math.expm1(dist.sigma**2)) == pytest.approx(10.0, rel=1e-12)


def test_constant_input_has_no_spread(
    engine: MonteCarloEngine, single_input: Callable[[dict[str, Any]], ProcessModel]
) -> None:
    run = engine.run(single_input({"dist": "constant", "value": 3.5}), RunSettings(seed=1))
    out = run.outputs["out"]
    assert (out.mean, out.std, out.min, out.max, out.percentiles["p99"]) == (
        3.5,
        0.0,
        3.5,
        3.5,
        3.5,
    )
    assert out.rse == 0.0
    assert run.converged is True


@pytest.mark.parametrize("method", ["mc", "sobol", "antithetic"])
def test_empirical_resamples_the_observations(
    method: Method,
    engine: MonteCarloEngine,
    single_input: Callable[[dict[str, Any]], ProcessModel],
) -> None:
    observed = [61.2, 61.9, 62.4, 62.0, 63.1, 60.8, 62.2, 61.7]
    run = engine.sample(
        single_input({"dist": "empirical", "observations": observed}),
        RunSettings(seed=5, samples=N, method=method),
    )
    values = run.samples.outputs["out"]
    assert set(np.unique(values)) <= set(observed)
    # every observation drawn with frequency 1/8 (binomial standard error at N)
    counts = np.array([np.sum(values == v) for v in observed]) / values.size
    assert np.all(np.abs(counts - 1 / 8) <= SIGMAS * math.sqrt(1 / 8 * 7 / 8 / N))
    assert run.summaries["out"].mean == pytest.approx(
        np.mean(observed), abs=SIGMAS * np.std(observed) / math.sqrt(N)
    )


EXAMPLES: dict[str, dict[str, Any]] = {
    "normal": {"dist": "normal", "mean": 0, "std": 1},
    "uniform": {"dist": "uniform", "low": -1, "high": 1},
    "triangular": {"dist": "triangular", "low": 0, "mode": 0, "high": 1},
    "lognormal": {"dist": "lognormal", "mu": 0, "sigma": 1},
    "constant": {"dist": "constant", "value": 2},
    "empirical": {"dist": "empirical", "observations": [3, 1, 2]},
}


def test_every_registered_distribution_has_an_example() -> None:
    assert set(EXAMPLES) == set(DISTRIBUTIONS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_registry_entries_honour_the_protocol(kind: str) -> None:
    dist = parse_distribution(EXAMPLES[kind], "/model/inputs/x")
    assert dist.kind == kind
    drawn = dist.draw(np.random.default_rng(0), 1000)
    assert drawn.dtype == np.float64
    assert drawn.shape == (1000,)
    u = np.linspace(0.0, 1.0, 1001)  # includes both ends: ppf must stay finite
    values = dist.ppf(u)
    assert np.isfinite(values).all()
    assert np.all(np.diff(values) >= 0.0)
    assert parse_distribution(dist.to_dict(), "/again").to_dict() == dist.to_dict()


@pytest.mark.parametrize(
    ("spec", "pointer"),
    [
        ({"dist": "normal", "mean": 100, "std": -1}, "/model/inputs/x/std"),
        ({"dist": "normal", "mean": 100, "std": 0}, "/model/inputs/x/std"),
        ({"dist": "normal", "mean": 100}, "/model/inputs/x/std"),
        ({"dist": "normal", "mean": "100", "std": 1}, "/model/inputs/x/mean"),
        ({"dist": "normal", "mean": True, "std": 1}, "/model/inputs/x/mean"),
        ({"dist": "normal", "mean": 10**400, "std": 1}, "/model/inputs/x/mean"),
        ({"dist": "normal", "mean": 1, "sd": 1}, "/model/inputs/x/sd"),
        ({"dist": "gauss", "mean": 1, "std": 1}, "/model/inputs/x/dist"),
        ({"mean": 1, "std": 1}, "/model/inputs/x/dist"),
        ({"dist": "uniform", "low": 4, "high": 1}, "/model/inputs/x/high"),
        ({"dist": "triangular", "low": 1, "mode": 5, "high": 4}, "/model/inputs/x/mode"),
        ({"dist": "lognormal", "mean": -5, "std": 1}, "/model/inputs/x/mean"),
        ({"dist": "lognormal", "mu": 1, "sigma": 0}, "/model/inputs/x/sigma"),
        ({"dist": "lognormal", "mu": 1, "std": 1}, "/model/inputs/x"),
        ({"dist": "empirical", "observations": []}, "/model/inputs/x/observations"),
        ({"dist": "empirical", "observations": [1, 2, "3"]}, "/model/inputs/x/observations/2"),
        ({"dist": "constant"}, "/model/inputs/x/value"),
        ([1, 2], "/model/inputs/x"),
    ],
)
def test_bad_parameters_are_located_by_pointer(spec: Any, pointer: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_distribution(spec, "/model/inputs/x")
    assert caught.value.status == 422
    assert pointer in [e.pointer for e in caught.value.errors]


def test_all_parameter_problems_are_reported_together() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_distribution({"dist": "normal", "mean": "a", "std": -1, "sd": 2}, "/m/x")
    assert sorted(e.pointer or "" for e in caught.value.errors) == [
        "/m/x/mean",
        "/m/x/sd",
        "/m/x/std",
    ]
