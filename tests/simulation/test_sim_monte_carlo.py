"""MonteCarloEngine: analytic checks, error bars, convergence, variance reduction, reproducibility."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import pytest
from scipy import stats

from opstwin.kit.errors import ValidationFailed
from opstwin.simulation.distributions import Constant
from opstwin.simulation.model import parse_model
from opstwin.simulation.monte_carlo import (
    MAX_VALUES_IN_MEMORY,
    Method,
    MonteCarloEngine,
    RunSettings,
)
from opstwin.simulation.results import PERCENTILES

METHODS: list[Method] = ["mc", "sobol", "antithetic"]

SUM_OF_NORMALS: dict[str, Any] = {
    "inputs": {
        "a": {"dist": "normal", "mean": 10, "std": 3},
        "b": {"dist": "normal", "mean": -4, "std": 4},
        "c": {"dist": "normal", "mean": 100, "std": 12},
    },
    "outputs": {"s": "a + b + c"},
}
# a + b + c ~ Normal(106, 13) because 3² + 4² + 12² = 13²
SUM = stats.norm(106, 13)

SMOOTH: dict[str, Any] = {
    "inputs": {
        "x": {"dist": "normal", "mean": 0, "std": 1},
        "y": {"dist": "uniform", "low": 0, "high": 2},
    },
    "outputs": {"z": "10 + exp(0.5*x) + 2*y"},
}


@pytest.mark.parametrize("method", METHODS)
def test_sum_of_independent_normals_matches_analytic_percentiles(
    method: Method, engine: MonteCarloEngine
) -> None:
    n = 2**17
    run = engine.run(parse_model(SUM_OF_NORMALS), RunSettings(seed=1, samples=n, method=method))
    s = run.outputs["s"]
    assert abs(s.mean - 106) <= 5 * 13 / math.sqrt(n)
    assert abs(s.std - 13) <= 5 * 13 / math.sqrt(2 * n)
    for name, q in PERCENTILES:
        exact = float(SUM.ppf(q))
        se = math.sqrt(q * (1 - q) / n) / float(SUM.pdf(exact))
        assert abs(s.percentiles[name] - exact) <= 5 * se, name
        # the reported interval is of the width the sample size implies (within a factor 2)
        width = s.ci[name].high - s.ci[name].low
        assert width <= 2 * 2 * 1.96 * se, name
        assert s.ci[name].low <= s.percentiles[name] <= s.ci[name].high


@pytest.mark.parametrize("method", METHODS)
def test_intervals_cover_the_truth_about_95_percent_of_the_time(
    method: Method, engine: MonteCarloEngine
) -> None:
    model = parse_model(SUM_OF_NORMALS)
    truth = {"mean": 106.0} | {name: float(SUM.ppf(q)) for name, q in PERCENTILES}
    runs = 300
    hits = dict.fromkeys(truth, 0)
    for seed in range(runs):
        summary = engine.run(model, RunSettings(seed=seed, samples=512, method=method)).outputs["s"]
        for name, value in truth.items():
            hits[name] += summary.ci[name].contains(value)
    # Binomial(300, 0.95) lies in [0.91, 0.99] with probability > 0.999. Antithetic and Sobol
    # percentile intervals are deliberately conservative (see summary.py) and may reach 1.0.
    for name, count in hits.items():
        assert 0.9 <= count / runs <= 1.0, (name, count / runs)
    if method == "mc":
        assert all(count / runs <= 0.99 for count in hits.values()), hits


@pytest.mark.parametrize("method", METHODS)
def test_gaussian_copula_recovers_the_correlation(method: Method, engine: MonteCarloEngine) -> None:
    model = parse_model(
        {
            "inputs": {
                "x": {"dist": "normal", "mean": 5, "std": 2},
                "y": {"dist": "lognormal", "mu": 1, "sigma": 0.4},
                "w": {"dist": "uniform", "low": 0, "high": 1},
            },
            "outputs": {"xo": "x", "yo": "y", "wo": "w"},
            "correlations": {
                "inputs": ["x", "y", "w"],
                "matrix": [[1, 0.7, -0.3], [0.7, 1, 0.0], [-0.3, 0.0, 1]],
            },
        }
    )
    n = 2**16
    out = engine.sample(model, RunSettings(seed=9, samples=n, method=method)).samples.outputs
    x, y, w = out["xo"], out["yo"], out["wo"]
    # normal scores of the marginals carry exactly the copula's correlation
    tol = 5 * (1 - 0.7**2) / math.sqrt(n)
    assert np.corrcoef(x, np.log(y))[0, 1] == pytest.approx(0.7, abs=tol)
    assert np.corrcoef(x, stats.norm.ppf(w))[0, 1] == pytest.approx(-0.3, abs=5 / math.sqrt(n))
    assert abs(np.corrcoef(np.log(y), stats.norm.ppf(w))[0, 1]) <= 5 / math.sqrt(n)
    # rank correlation of a Gaussian copula: ρ_s = (6/π)·arcsin(ρ/2)
    rho_s = stats.spearmanr(x, y).statistic
    assert rho_s == pytest.approx(6 / math.pi * math.asin(0.35), abs=5 / math.sqrt(n))
    # marginals are untouched
    assert x.mean() == pytest.approx(5, abs=5 * 2 / math.sqrt(n))
    assert np.median(y) == pytest.approx(math.e, rel=0.01)
    assert w.min() >= 0
    assert w.max() <= 1


def test_adaptive_run_stops_once_rse_is_below_target(engine: MonteCarloEngine) -> None:
    model = parse_model(SMOOTH)
    target = 0.001
    run = engine.sample(
        model,
        RunSettings(seed=4, samples=1000, adaptive=True, target_rse=target, max_samples=10**6),
    )
    result = engine.run(
        model,
        RunSettings(seed=4, samples=1000, adaptive=True, target_rse=target, max_samples=10**6),
    )
    assert run.converged is True
    assert run.stopped_by == "converged"
    assert result.converged is True
    assert result.samples_used == run.samples.size
    final_n, final_rse = run.history[-1]
    assert final_n == run.samples.size
    assert final_rse is not None
    assert final_rse < target
    assert result.outputs["z"].rse == final_rse
    # it drew in more than one batch, and the batch before the last had not converged yet
    assert len(run.history) >= 2
    previous_rse = run.history[-2][1]
    assert previous_rse is not None
    assert previous_rse >= target
    # and it did not overshoot wildly: n is within 2× of (σ / (μ·target))²
    summary = run.summaries["z"]
    needed = (summary.std / (summary.mean * target)) ** 2
    assert needed <= run.samples.size <= 2 * needed


def test_converging_on_a_tail_percentile_takes_more_samples(engine: MonteCarloEngine) -> None:
    model = parse_model(SMOOTH)
    base = {"seed": 4, "samples": 1000, "adaptive": True, "target_rse": 0.002, "max_samples": 10**6}
    on_mean = engine.sample(model, RunSettings(**base))
    on_p99 = engine.sample(model, RunSettings(**base, converge_on="p99"))
    assert on_mean.converged
    assert on_p99.converged
    p99_error = on_p99.summaries["z"].relative_errors["p99"]
    assert p99_error is not None
    assert p99_error < 0.002
    assert on_p99.samples.size > on_mean.samples.size


@pytest.mark.parametrize(
    "spec",
    [
        # lognormal with sigma 3: the mean's RSE at n is about e^{4.5}/√n — 10⁸ samples for 1 %
        {
            "inputs": {"x": {"dist": "lognormal", "mu": 0, "sigma": 3}},
            "outputs": {"z": "x"},
        },
        # ratio of normals: Cauchy-like, no finite mean at all
        {
            "inputs": {
                "x": {"dist": "normal", "mean": 1, "std": 1},
                "y": {"dist": "normal", "mean": 0, "std": 1},
            },
            "outputs": {"z": "x / y"},
        },
    ],
    ids=["lognormal-sigma-3", "cauchy-ratio"],
)
def test_heavy_tails_under_a_small_cap_report_not_converged(
    spec: dict[str, Any], engine: MonteCarloEngine
) -> None:
    cap = 50_000
    result = engine.run(
        parse_model(spec),
        RunSettings(seed=2, samples=5_000, adaptive=True, target_rse=0.01, max_samples=cap),
    )
    assert result.converged is False
    assert result.samples_used == cap
    rse = result.outputs["z"].rse
    assert rse is None or rse >= 0.01


def test_time_budget_stops_an_adaptive_run_early(make_timer: type[Any]) -> None:
    engine = MonteCarloEngine(timer=make_timer(step=10.0))
    run = engine.sample(
        parse_model(SMOOTH),
        RunSettings(
            seed=1, samples=1000, adaptive=True, target_rse=1e-6, max_samples=10**6, time_budget_s=5
        ),
    )
    assert run.stopped_by == "time_budget"
    assert run.converged is False
    assert run.samples.size == 1000


def _samples_to_converge(engine: MonteCarloEngine, method: Method, target: float) -> float:
    used = [
        engine.sample(
            parse_model(SMOOTH),
            RunSettings(
                seed=seed,
                samples=128,
                method=method,
                adaptive=True,
                target_rse=target,
                max_samples=2_000_000,
            ),
        ).samples.size
        for seed in range(4)
    ]
    return statistics.median(used)


def test_sobol_and_antithetic_need_fewer_samples_than_plain_mc(engine: MonteCarloEngine) -> None:
    # Measured (seeds 0-3, target RSE 0.1 %): mc ≈ 11,200, sobol ≈ 256-1,024, antithetic ≈ 420-830
    # samples; i.e. mc/sobol ≈ 11-40, mc/antithetic ≈ 20. Asserted with a 2× margin.
    target = 0.001
    mc = _samples_to_converge(engine, "mc", target)
    sobol = _samples_to_converge(engine, "sobol", target)
    antithetic = _samples_to_converge(engine, "antithetic", target)
    assert mc / sobol >= 5.0, (mc, sobol)
    assert mc / antithetic >= 10.0, (mc, antithetic)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_a_seed_reproduces_the_run_bit_for_bit(
    method: Method, adaptive: bool, make_timer: type[Any]
) -> None:
    spec = {
        **SMOOTH,
        "inputs": {**SMOOTH["inputs"], "e": {"dist": "empirical", "observations": [1, 2, 5]}},
        "outputs": {"z": "10 + exp(0.5*x) + 2*y + e"},
        "correlations": {"inputs": ["x", "y"], "matrix": [[1, 0.5], [0.5, 1]]},
    }
    settings = RunSettings(
        seed=123, samples=2000, method=method, adaptive=adaptive, target_rse=0.0005
    )
    first = MonteCarloEngine(timer=make_timer()).run(parse_model(spec), settings)
    second = MonteCarloEngine(timer=make_timer()).run(parse_model(spec), settings)
    assert first.to_dict() == second.to_dict()  # including duration_ms, from the pinned timer
    a = MonteCarloEngine().sample(parse_model(spec), settings).samples.outputs["z"]
    b = MonteCarloEngine().sample(parse_model(spec), settings).samples.outputs["z"]
    assert a.tobytes() == b.tobytes()
    other = MonteCarloEngine().sample(
        parse_model(spec), RunSettings(seed=124, samples=2000, method=method)
    )
    assert other.samples.outputs["z"].tobytes() != a.tobytes()[: other.samples.outputs["z"].nbytes]


@pytest.mark.parametrize("method", METHODS)
def test_other_inputs_see_the_same_draws_when_one_input_changes(
    method: Method, engine: MonteCarloEngine
) -> None:
    model = parse_model(
        {
            "inputs": {
                "setpoint": {"dist": "constant", "value": 60},
                "noise": {"dist": "normal", "mean": 0, "std": 1},
            },
            "outputs": {"n": "noise", "k": "setpoint + noise"},
        }
    )
    settings = RunSettings(seed=8, samples=1024, method=method)
    base = engine.sample(model, settings).samples.outputs
    moved = engine.sample(model.with_input("setpoint", Constant(65)), settings).samples.outputs
    assert base["n"].tobytes() == moved["n"].tobytes()
    np.testing.assert_allclose(moved["k"] - base["k"], 5.0)


def test_result_matches_the_json_contract(timer: Any) -> None:
    result = MonteCarloEngine(timer=timer).run(
        parse_model(
            {
                "inputs": {
                    "x": {"dist": "normal", "mean": 100, "std": 10},
                    "y": {"dist": "triangular", "low": 1, "mode": 2, "high": 4},
                },
                "outputs": {"z": "x + y"},
            }
        ),
        RunSettings(seed=42),
    )
    body = result.to_dict()
    assert set(body) == {
        "engine_used",
        "engine_reason",
        "samples_used",
        "converged",
        "outputs",
        "duration_ms",
    }
    assert body["engine_used"] == "classical"
    assert body["samples_used"] == 10_000
    assert body["duration_ms"] == pytest.approx(1.0)  # two readings of a 1 ms stepping timer
    z = body["outputs"]["z"]
    assert list(z) == [
        "mean", "std", "min", "max", "p5", "p25", "p50", "p75", "p95", "p99", "rse", "ci",
    ]  # fmt: skip
    assert z["ci"]["level"] == 0.95
    assert set(z["ci"]) == {"level", "mean", "p5", "p25", "p50", "p75", "p95", "p99"}
    assert (
        z["min"] <= z["p5"] <= z["p25"] <= z["p50"] <= z["p75"] <= z["p95"] <= z["p99"] <= z["max"]
    )
    assert z["mean"] == pytest.approx(102.333, abs=5 * 10.05 / 100)  # 100 + (1+2+4)/3
    assert z["rse"] == pytest.approx(z["std"] / 100 / z["mean"], rel=1e-9)


def test_sobol_sample_counts_are_powers_of_two_per_scramble(engine: MonteCarloEngine) -> None:
    run = engine.run(parse_model(SMOOTH), RunSettings(seed=1, samples=10_000, method="sobol"))
    assert run.samples_used == 16 * 1024
    run = engine.run(
        parse_model(SMOOTH),
        RunSettings(seed=1, samples=1000, method="sobol", sobol_scrambles=8),
    )
    assert run.samples_used == 8 * 128


def test_non_finite_outputs_are_reported_on_the_output(engine: MonteCarloEngine) -> None:
    model = parse_model(
        {
            "inputs": {"x": {"dist": "normal", "mean": 0, "std": 1}},
            "outputs": {"ok": "x", "bad": "log(x)"},
        }
    )
    with pytest.raises(ValidationFailed) as caught:
        engine.run(model, RunSettings(seed=1, samples=1000))
    [error] = caught.value.errors
    assert error.pointer == "/model/outputs/bad"
    assert "samples are nan or ±inf" in error.detail
    assert "first at x=-" in error.detail


@pytest.mark.parametrize(
    ("kwargs", "pointer"),
    [
        ({"seed": -1}, "/seed"),
        ({"seed": True}, "/seed"),
        ({"seed": 1, "samples": 10}, "/samples"),
        ({"seed": 1, "samples": 10**9}, "/samples"),
        ({"seed": 1, "method": "quasi"}, "/method"),
        ({"seed": 1, "target_rse": 0}, "/target_rse"),
        ({"seed": 1, "adaptive": True, "samples": 5000, "max_samples": 1000}, "/max_samples"),
        ({"seed": 1, "converge_on": "p42"}, "/converge_on"),
        ({"seed": 1, "time_budget_s": 0}, "/time_budget_s"),
        ({"seed": 1, "sobol_scrambles": 2}, "/sobol_scrambles"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, Any], pointer: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        RunSettings(**kwargs)
    assert [e.pointer for e in caught.value.errors] == [pointer]


def test_runs_that_would_not_fit_in_memory_are_refused_with_the_limit(
    engine: MonteCarloEngine,
) -> None:
    wide = {**SMOOTH, "outputs": {f"z{i}": f"x + {i} * y" for i in range(6)}}  # 8 columns
    with pytest.raises(ValidationFailed) as caught:
        engine.run(parse_model(wide), RunSettings(seed=1, samples=10**7))
    [error] = caught.value.errors
    assert error.pointer == "/samples"
    assert str(MAX_VALUES_IN_MEMORY) in error.detail
