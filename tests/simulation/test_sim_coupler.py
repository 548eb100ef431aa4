"""HybridCoupler without qiskit: engine choice, reasons, cost model, classical query answers.

The quantum engine itself is exercised in test_sim_quantum.py (skipped without the extra);
here qiskit is made unimportable on purpose to check the refusal and the fallback reasons.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import pytest
from scipy import stats

from opstwin.kit.errors import ValidationFailed
from opstwin.simulation.coupler import (
    BoundedExpectation,
    HybridCoupler,
    TailProbability,
    classical_samples_needed,
    parse_query,
    quantum_oracle_calls,
)
from opstwin.simulation.model import ProcessModel, parse_model
from opstwin.simulation.monte_carlo import RunSettings
from opstwin.simulation.quantum import (
    INSTALL_HINT,
    MAX_INDEX_QUBITS,
    StatevectorAmplitudeEstimator,
    discretise,
)


@pytest.fixture
def model() -> ProcessModel:
    return parse_model(
        {
            "inputs": {
                "x": {"dist": "normal", "mean": 100, "std": 10},
                "y": {"dist": "triangular", "low": 1, "mode": 2, "high": 4},
            },
            "outputs": {"z": "x + y"},
        }
    )


@pytest.fixture
def without_qiskit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import qiskit_algorithms` fail as it does when the extra is not installed."""
    monkeypatch.setitem(sys.modules, "qiskit_algorithms", None)


def test_auto_without_a_query_is_classical_and_says_why(model: ProcessModel) -> None:
    result = HybridCoupler().run(model, RunSettings(seed=1), engine="auto")
    assert result.engine_used == "classical"
    assert "no scalar query" in result.engine_reason
    assert result.estimate is None
    assert set(result.outputs) == {"z"}


def test_classical_is_used_when_asked(model: ProcessModel) -> None:
    result = HybridCoupler().run(model, RunSettings(seed=1), engine="classical")
    assert (result.engine_used, result.engine_reason) == ("classical", "engine=classical requested")


def test_quantum_without_a_query_is_refused(model: ProcessModel) -> None:
    with pytest.raises(ValidationFailed) as caught:
        HybridCoupler().run(model, RunSettings(seed=1), engine="quantum")
    [error] = caught.value.errors
    assert error.pointer == "/engine"
    assert "scalar query" in error.detail


def test_unknown_engine_and_unknown_output_are_refused(model: ProcessModel) -> None:
    with pytest.raises(ValidationFailed) as caught:
        HybridCoupler().run(model, RunSettings(seed=1), engine="gpu")
    assert caught.value.errors[0].pointer == "/engine"
    with pytest.raises(ValidationFailed) as caught:
        HybridCoupler().run(model, RunSettings(seed=1), query=TailProbability("nope", 1.0))
    assert caught.value.errors[0].pointer == "/query/output"


@pytest.mark.usefixtures("without_qiskit")
def test_quantum_without_qiskit_says_how_to_install_and_never_falls_back(
    model: ProcessModel,
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        HybridCoupler().run(
            model, RunSettings(seed=1), engine="quantum", query=TailProbability("z", 110.0)
        )
    assert caught.value.status == 422
    [error] = caught.value.errors
    assert error.pointer == "/engine"
    assert INSTALL_HINT in error.detail
    assert "pip install 'opstwin[quantum]'" in error.detail


@pytest.mark.usefixtures("without_qiskit")
def test_auto_without_qiskit_answers_classically_and_says_why(model: ProcessModel) -> None:
    result = HybridCoupler().run(
        model, RunSettings(seed=1), engine="auto", query=TailProbability("z", 110.0)
    )
    assert result.engine_used == "classical"
    assert "quantum not usable" in result.engine_reason
    assert INSTALL_HINT in result.engine_reason


def test_cost_model_formulas() -> None:
    # (z·σ/ε)² with z = 1.96: a tail of p = 0.5 to ±0.01 needs 9,604 samples
    assert classical_samples_needed(0.5, 0.01, 0.05) == math.ceil((1.959963984540054 * 50) ** 2)
    # π/(2ε)·ln((2/α)·log₂(π/(4ε)))
    expected = math.ceil(math.pi / 0.02 * math.log(40 * math.log2(math.pi / 0.04)))
    assert quantum_oracle_calls(0.01, 0.05) == expected
    # the quadratic gap: halving ε quadruples classical work but only doubles quantum work
    assert classical_samples_needed(0.5, 0.005, 0.05) / classical_samples_needed(
        0.5, 0.01, 0.05
    ) == pytest.approx(4, rel=1e-3)
    assert quantum_oracle_calls(0.005, 0.05) / quantum_oracle_calls(0.01, 0.05) == pytest.approx(
        2.1, abs=0.1
    )


@pytest.mark.parametrize("method", ["mc", "sobol", "antithetic"])
def test_classical_tail_probability_matches_the_analytic_value(method: Any) -> None:
    model = parse_model(
        {"inputs": {"x": {"dist": "normal", "mean": 0, "std": 1}}, "outputs": {"z": "x"}}
    )
    query = TailProbability("z", 1.0, epsilon=0.005)
    result = HybridCoupler().run(
        model, RunSettings(seed=3, method=method), engine="classical", query=query
    )
    estimate = result.estimate
    assert estimate is not None
    exact = float(stats.norm.sf(1.0))
    assert estimate.ci.contains(exact)
    assert estimate.ci.half_width <= 0.005
    assert result.converged is True
    assert estimate.kind == "tail_probability"
    assert estimate.evaluations == result.samples_used
    # the cost model's sample count was enough (or one re-sizing round fixed it)
    assert (
        result.samples_used
        >= classical_samples_needed(math.sqrt(exact * (1 - exact)), 0.005, 0.05) * 0.8
    )


def test_classical_bounded_expectation(model: ProcessModel) -> None:
    query = BoundedExpectation("z", low=50.0, high=160.0, epsilon=0.002)
    result = HybridCoupler().run(model, RunSettings(seed=5), engine="classical", query=query)
    estimate = result.estimate
    assert estimate is not None
    assert estimate.kind == "bounded_expectation"
    assert estimate.ci.contains(100 + 7 / 3)
    assert estimate.ci.half_width <= 0.002 * 110 * 1.0001
    body = result.to_dict()
    assert body["estimate"]["low"] == 50.0
    assert body["estimate"]["ci"]["level"] == 0.95


def test_query_parsing() -> None:
    assert parse_query({"kind": "tail_probability", "output": "z", "threshold": 3}) == (
        TailProbability("z", 3.0)
    )
    assert parse_query(
        {"kind": "bounded_expectation", "output": "z", "low": 0, "high": 1, "epsilon": 0.02}
    ) == BoundedExpectation("z", 0.0, 1.0, epsilon=0.02)


@pytest.mark.parametrize(
    ("payload", "pointer"),
    [
        ([], "/query"),
        ({"kind": "median", "output": "z"}, "/query/kind"),
        ({"kind": "tail_probability", "output": 3, "threshold": 1}, "/query/output"),
        ({"kind": "tail_probability", "output": "z"}, "/query/threshold"),
        ({"kind": "tail_probability", "output": "z", "threshold": 1, "eps": 1}, "/query/eps"),
        (
            {"kind": "tail_probability", "output": "z", "threshold": 1, "epsilon": 0},
            "/query/epsilon",
        ),
        ({"kind": "tail_probability", "output": "z", "threshold": 1, "alpha": 0.7}, "/query/alpha"),
        ({"kind": "bounded_expectation", "output": "z", "low": 2, "high": 1}, "/query/high"),
    ],
)
def test_bad_queries(payload: Any, pointer: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_query(payload)
    assert [e.pointer for e in caught.value.errors] == [pointer]


def test_discretisation_is_an_equal_probability_grid(model: ProcessModel) -> None:
    query = TailProbability("z", 110.0)
    problem = discretise(model, "z", query.transform)
    assert problem.grid_inputs == ("x", "y")
    assert problem.points_per_input == 16  # 8 grid qubits shared by two inputs
    assert problem.qubits == MAX_INDEX_QUBITS + 1
    assert problem.values.size == 256
    assert set(np.unique(problem.values)) <= {0.0, 1.0}
    # the grid's tail probability is near the continuous one; the gap is discretisation error,
    # about one grid cell of probability (1/16) at most
    continuous = (
        HybridCoupler()
        .run(
            model, RunSettings(seed=2), engine="classical", query=TailProbability("z", 110.0, 0.002)
        )
        .estimate
    )
    assert continuous is not None
    assert float(np.mean(problem.values)) == pytest.approx(continuous.value, abs=1 / 16)


def test_discretisation_refuses_what_the_circuit_cannot_hold() -> None:
    many = parse_model(
        {
            "inputs": {f"x{i}": {"dist": "uniform", "low": 0, "high": 1} for i in range(9)},
            "outputs": {"s": " + ".join(f"x{i}" for i in range(9))},
        }
    )
    with pytest.raises(ValidationFailed) as caught:
        discretise(many, "s", TailProbability("s", 4.0).transform)
    assert "at most 8" in caught.value.errors[0].detail

    correlated = parse_model(
        {
            "inputs": {
                "a": {"dist": "normal", "mean": 0, "std": 1},
                "b": {"dist": "normal", "mean": 0, "std": 1},
            },
            "outputs": {"s": "a + b"},
            "correlations": {"inputs": ["a", "b"], "matrix": [[1, 0.5], [0.5, 1]]},
        }
    )
    with pytest.raises(ValidationFailed) as caught:
        discretise(correlated, "s", TailProbability("s", 0.0).transform)
    assert "independent inputs" in caught.value.errors[0].detail

    independent = parse_model(
        {"inputs": {"a": {"dist": "normal", "mean": 0, "std": 1}}, "outputs": {"s": "a"}}
    )
    bounded = BoundedExpectation("s", low=0.0, high=1.0)
    with pytest.raises(ValidationFailed) as caught:
        discretise(independent, "s", bounded.transform)
    assert "widen the bounds" in caught.value.errors[0].detail


@pytest.mark.usefixtures("without_qiskit")
def test_estimator_reports_why_it_is_unavailable() -> None:
    reason = StatevectorAmplitudeEstimator().unavailable_reason()
    assert reason is not None
    assert INSTALL_HINT in reason
