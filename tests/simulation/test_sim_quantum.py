"""The quantum path against the classical answer, and `auto` choosing classical on this machine.

Needs the `quantum` extra (qiskit ≥ 2, qiskit-algorithms); skipped with the reason otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("qiskit", reason="quantum extra not installed: pip install 'opstwin[quantum]'")
pytest.importorskip(
    "qiskit_algorithms", reason="quantum extra not installed: pip install 'opstwin[quantum]'"
)

from opstwin.simulation.coupler import (
    BoundedExpectation,
    HybridCoupler,
    TailProbability,
)
from opstwin.simulation.model import parse_model
from opstwin.simulation.monte_carlo import RunSettings
from opstwin.simulation.quantum import StatevectorAmplitudeEstimator, discretise

# The etch-yield model over a process window with uniform inputs. The grid's midpoint rule is
# exact for the |temp − 62| term (62 is a cell edge) and off by h²/12 for the quadratic one,
# 0.00002 · 12.5²/12 ≈ 3e-4 — well inside the ±0.01·(high − low) asked of the estimate.
FAB: dict[str, Any] = {
    "inputs": {
        "temp_c": {"dist": "uniform", "low": 58, "high": 66},
        "rf_w": {"dist": "uniform", "low": 1400, "high": 1600},
    },
    "outputs": {"yield_": "0.92 - 0.004*abs(temp_c - 62) - 0.00002*(rf_w - 1500)**2"},
}
# P(x > 0.75) for x uniform on [0, 1] is exactly 0.25, also on the 64-point grid.
TAIL: dict[str, Any] = {
    "inputs": {"x": {"dist": "uniform", "low": 0, "high": 1}},
    "outputs": {"z": "x"},
}


def test_bounded_expectation_agrees_with_classical_within_its_interval() -> None:
    model = parse_model(FAB)
    query = BoundedExpectation("yield_", low=0.7, high=1.0, epsilon=0.01)
    quantum = HybridCoupler().run(model, RunSettings(seed=3), engine="quantum", query=query)
    assert quantum.engine_used == "quantum"
    assert "engine=quantum requested" in quantum.engine_reason
    assert quantum.outputs == {}
    estimate = quantum.estimate
    assert estimate is not None
    assert quantum.converged is True
    assert estimate.evaluations == quantum.samples_used > 0

    reference = (
        HybridCoupler()
        .run(
            model,
            RunSettings(seed=77, max_samples=2_000_000),
            engine="classical",
            query=BoundedExpectation("yield_", low=0.7, high=1.0, epsilon=0.0005),
        )
        .estimate
    )
    assert reference is not None
    # E[yield] = 0.92 − 0.004·E|T−62| − 0.00002·E(R−1500)² = 0.92 − 0.008 − 0.0666… = 0.84533…
    assert reference.ci.contains(0.92 - 0.008 - 0.00002 * 100**2 / 3)
    assert estimate.ci.contains(reference.value)
    assert estimate.ci.half_width <= 0.01 * 0.3 * 1.0001


def test_tail_probability_agrees_with_classical_within_its_interval() -> None:
    model = parse_model(TAIL)
    query = TailProbability("z", 0.75, epsilon=0.01)
    problem = discretise(model, "z", query.transform)
    assert float(np.mean(problem.values)) == 0.25  # the grid is exact here

    quantum = HybridCoupler().run(model, RunSettings(seed=5), engine="quantum", query=query)
    estimate = quantum.estimate
    assert estimate is not None
    assert estimate.kind == "tail_probability"
    reference = (
        HybridCoupler()
        .run(
            model, RunSettings(seed=6), engine="classical", query=TailProbability("z", 0.75, 0.002)
        )
        .estimate
    )
    assert reference is not None
    assert reference.ci.contains(0.25)
    assert estimate.ci.contains(reference.value)
    assert estimate.ci.contains(0.25)
    assert quantum.to_dict()["estimate"]["discretisation"] == {
        "grid_inputs": ["x"],
        "grid_points_per_input": 64,
        "qubits": 7,
    }


def test_auto_picks_classical_on_this_machine_and_says_why() -> None:
    model = parse_model(FAB)
    query = TailProbability("yield_", 0.85, epsilon=0.01)
    coupler = HybridCoupler()
    result = coupler.run(model, RunSettings(seed=1), engine="auto", query=query)
    assert result.engine_used == "classical"
    assert result.engine_reason.startswith("auto: classical is cheaper (classical ≈ ")
    assert "oracle calls" in result.engine_reason
    assert "local statevector simulator" in result.engine_reason
    cost = coupler.estimate_costs(model, RunSettings(seed=1), query)
    assert cost.quantum_s is not None
    assert cost.quantum_s > cost.classical_s
    # the stated cost model favours classical by orders of magnitude here, not by a hair
    assert cost.quantum_s / cost.classical_s > 100
    assert result.estimate is not None
    assert result.to_dict()["estimate"]["cost"]["quantum"]["oracle_calls"] == cost.quantum_calls


def test_the_quantum_run_is_reproducible_for_a_seed() -> None:
    model = parse_model(TAIL)
    query = TailProbability("z", 0.75, epsilon=0.02)
    estimator = StatevectorAmplitudeEstimator()
    problem = discretise(model, "z", query.transform)
    first = estimator.estimate(problem, epsilon=0.02, alpha=0.05, seed=9)
    second = estimator.estimate(problem, epsilon=0.02, alpha=0.05, seed=9)
    assert first == second
