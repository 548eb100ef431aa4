"""Quantum amplitude estimation behind our own small interface.

The quantum path answers one scalar: a tail probability ``P(output > threshold)`` or a bounded
expectation ``E[output]`` with the output known to lie in ``[low, high]``. Both are an amplitude
``a = E[g(x)]`` with ``g`` in [0, 1]:

1. :func:`discretise` puts every uncertain input on an equal-probability grid of 2ᵇ points
   (the ppf at the bin mid-probabilities ``(i + ½)/2ᵇ``), evaluates the output on the full grid and
   maps it to ``g`` (indicator of the tail, or ``(y − low)/(high − low)``). Every grid point has
   the same probability, so the state preparation is a layer of Hadamards.
2. A uniformly controlled RY on one objective qubit loads ``g``: the probability of measuring it
   as 1 is exactly the mean of ``g`` over the grid.
3. Iterative amplitude estimation (``qiskit-algorithms``) estimates that probability with a
   confidence interval, using qiskit's reference ``StatevectorSampler`` — a local, exact
   simulator. The answer is for the *discretised* model; the grid size is reported with it.

Only the local simulator is supported. No hardware backend exists in this version, so nothing
is ever sent over the network; a future hardware estimator would implement
:class:`AmplitudeEstimator` and be configured explicitly (with its token in settings).

qiskit is an optional extra, imported only when the quantum path is used; without it every
entry point raises :class:`~opstwin.kit.errors.ValidationFailed` saying how to install it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from opstwin.kit.clock import monotonic
from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.simulation.distributions import Constant, FloatArray
from opstwin.simulation.model import ProcessModel
from opstwin.simulation.results import Interval

INSTALL_HINT = "pip install 'opstwin[quantum]'"

MAX_INDEX_QUBITS = 8
"""Grid qubits (plus one objective qubit). The statevector simulator's cost doubles per qubit;
nine qubits keep one Grover iteration in the millisecond range."""

MAX_BITS_PER_INPUT = 6
"""At most 64 grid points per input, even for a one-input model."""

CALIBRATION_POWER = 8
"""Grover iterations in the circuit timed to measure the cost of one oracle call."""

DEFAULT_SHOTS = 1024


def quantum_unavailable(reason: str) -> ValidationFailed:
    """The 422 for ``engine=quantum`` when qiskit cannot be imported (never a silent fallback)."""
    return ValidationFailed(
        "the quantum engine is not installed",
        errors=[
            FieldError(
                pointer="/engine",
                detail=f"engine 'quantum' needs qiskit and qiskit-algorithms ({reason}); "
                f"install them with: {INSTALL_HINT}",
            )
        ],
    )


@dataclass(frozen=True, slots=True, eq=False)
class DiscretisedProblem:
    """``a = mean(values)``: every entry is one equally likely grid point, ``g`` in [0, 1]."""

    values: FloatArray
    index_qubits: int
    points_per_input: int
    grid_inputs: tuple[str, ...]

    @property
    def qubits(self) -> int:
        return self.index_qubits + 1

    def describe(self) -> dict[str, Any]:
        return {
            "grid_inputs": list(self.grid_inputs),
            "grid_points_per_input": self.points_per_input,
            "qubits": self.qubits,
        }


def discretise(
    model: ProcessModel,
    output: str,
    transform: Callable[[FloatArray], FloatArray],
    pointer: str = "/query",
) -> DiscretisedProblem:
    """Equal-probability grid over the uncertain inputs, and ``g = transform(output)`` on it.

    Raises :class:`ValidationFailed` when the model does not fit: correlated inputs (the grid is a
    product of independent marginals), more uncertain inputs than grid qubits, non-finite
    outputs, or ``g`` outside [0, 1].
    """
    corr = model.correlation
    if corr is not None and not np.allclose(corr.matrix, np.eye(len(corr.names))):
        raise _misfit(pointer, "the quantum path needs independent inputs (drop 'correlations')")
    uncertain = [name for name, dist in model.inputs.items() if not isinstance(dist, Constant)]
    if len(uncertain) > MAX_INDEX_QUBITS:
        raise _misfit(
            pointer,
            f"{len(uncertain)} uncertain inputs; the quantum path handles at most "
            f"{MAX_INDEX_QUBITS} (one grid qubit each at least)",
        )
    bits = min(MAX_BITS_PER_INPUT, MAX_INDEX_QUBITS // max(1, len(uncertain)))
    points = 1 << bits
    mid = (np.arange(points) + 0.5) / points
    axes = [model.inputs[name].ppf(mid) for name in uncertain]
    grid = np.meshgrid(*axes, indexing="ij") if axes else []
    size = points ** len(uncertain) if uncertain else points
    env: dict[str, FloatArray] = {name: g.ravel() for name, g in zip(uncertain, grid, strict=True)}
    for name, dist in model.inputs.items():
        if isinstance(dist, Constant):
            env[name] = np.full(size, dist.value)
    y = model.outputs[output].evaluate(env, size)
    if not np.isfinite(y).all():
        raise ValidationFailed(
            "the model produced non-finite values",
            errors=[
                FieldError(
                    pointer=model.output_pointer(output),
                    detail="nan or ±inf on the quantum discretisation grid",
                )
            ],
        )
    values = transform(y)
    if values.min() < 0.0 or values.max() > 1.0:
        raise _misfit(
            pointer,
            f"output {output!r} leaves [low, high] on the grid (range {y.min():.6g} … "
            f"{y.max():.6g}); widen the bounds",
        )
    return DiscretisedProblem(
        values=values,
        index_qubits=bits * max(1, len(uncertain)),
        points_per_input=points,
        grid_inputs=tuple(uncertain),
    )


def _misfit(pointer: str, detail: str) -> ValidationFailed:
    return ValidationFailed(
        "the problem does not fit the quantum engine",
        errors=[FieldError(pointer=pointer, detail=detail)],
    )


@dataclass(frozen=True, slots=True)
class AmplitudeEstimate:
    """An estimated amplitude with its confidence interval and the work it took."""

    value: float
    ci: Interval
    oracle_queries: int
    grover_powers: tuple[int, ...]


class AmplitudeEstimator(Protocol):
    """Something that estimates ``mean(problem.values)`` by amplitude estimation."""

    @property
    def backend(self) -> str:
        """Where circuits run, for ``engine_reason`` (e.g. ``local statevector simulator``)."""
        ...

    def unavailable_reason(self) -> str | None:
        """None when usable; otherwise why not (e.g. qiskit missing)."""
        ...

    def estimate(
        self, problem: DiscretisedProblem, *, epsilon: float, alpha: float, seed: int
    ) -> AmplitudeEstimate:
        """Estimate to half-width ``epsilon`` at confidence ``1 − alpha``."""
        ...

    def seconds_per_oracle_call(self, problem: DiscretisedProblem) -> float:
        """Measured wall time of one Grover-operator application on this backend."""
        ...


@dataclass(frozen=True, slots=True)
class _Qiskit:
    QuantumCircuit: Any
    UCRYGate: Any
    grover_operator: Any
    StatevectorSampler: Any
    EstimationProblem: Any
    IterativeAmplitudeEstimation: Any


def _import_qiskit() -> _Qiskit:
    try:
        from qiskit import QuantumCircuit
        from qiskit.circuit.library import UCRYGate, grover_operator
        from qiskit.primitives import StatevectorSampler
        from qiskit_algorithms import EstimationProblem, IterativeAmplitudeEstimation
    except ImportError as exc:
        raise quantum_unavailable(f"import failed: {exc}") from None
    return _Qiskit(
        QuantumCircuit=QuantumCircuit,
        UCRYGate=UCRYGate,
        grover_operator=grover_operator,
        StatevectorSampler=StatevectorSampler,
        EstimationProblem=EstimationProblem,
        IterativeAmplitudeEstimation=IterativeAmplitudeEstimation,
    )


class StatevectorAmplitudeEstimator:
    """Iterative amplitude estimation on qiskit's reference ``StatevectorSampler`` (local only).

    ``timer`` measures the per-oracle-call cost used by the coupler's cost model. Build one per
    application (e.g. in the lifespan) so that qiskit is imported and each circuit width timed
    once, not per request.
    """

    def __init__(
        self, *, shots: int = DEFAULT_SHOTS, timer: Callable[[], float] = monotonic
    ) -> None:
        self._shots = shots
        self._timer = timer
        self._qiskit: _Qiskit | None = None
        self._call_cost: dict[int, float] = {}

    @property
    def backend(self) -> str:
        return "local statevector simulator (qiskit StatevectorSampler)"

    def _load(self) -> _Qiskit:
        if self._qiskit is None:
            self._qiskit = _import_qiskit()
        return self._qiskit

    def unavailable_reason(self) -> str | None:
        try:
            self._load()
        except ValidationFailed as exc:
            return exc.errors[0].detail
        return None

    def _circuits(self, problem: DiscretisedProblem) -> tuple[Any, Any]:
        """State preparation A and Grover operator Q = A S₀ A† S_χ for the problem."""
        q = self._load()
        n = problem.index_qubits
        prep = q.QuantumCircuit(n + 1, name="A")
        prep.h(range(n))
        angles = 2.0 * np.arcsin(np.sqrt(np.clip(problem.values, 0.0, 1.0)))
        prep.append(q.UCRYGate([float(a) for a in angles]), [n, *range(n)])
        oracle = q.QuantumCircuit(n + 1, name="S_chi")
        oracle.z(n)
        return prep, q.grover_operator(oracle, prep)

    def estimate(
        self, problem: DiscretisedProblem, *, epsilon: float, alpha: float, seed: int
    ) -> AmplitudeEstimate:
        q = self._load()
        prep, grover = self._circuits(problem)
        n = problem.index_qubits
        estimation = q.EstimationProblem(
            state_preparation=prep, objective_qubits=[n], grover_operator=grover
        )
        algorithm = q.IterativeAmplitudeEstimation(
            epsilon_target=epsilon,
            alpha=alpha,
            sampler=q.StatevectorSampler(default_shots=self._shots, seed=seed),
        )
        result = algorithm.estimate(estimation)
        low, high = (float(v) for v in result.confidence_interval)
        return AmplitudeEstimate(
            value=float(result.estimation),
            ci=Interval(max(0.0, low), min(1.0, high)),
            oracle_queries=int(result.num_oracle_queries),
            grover_powers=tuple(int(k) for k in result.powers),
        )

    def seconds_per_oracle_call(self, problem: DiscretisedProblem) -> float:
        """Timed on this problem's circuit; cached per circuit width for this instance (the gate
        count depends only on the number of qubits)."""
        cached = self._call_cost.get(problem.qubits)
        if cached is not None:
            return cached
        q = self._load()
        prep, grover = self._circuits(problem)
        n = problem.index_qubits
        circuit = q.QuantumCircuit(n + 1, 1)
        circuit.compose(prep, inplace=True)
        circuit.compose(grover.power(CALIBRATION_POWER), inplace=True)
        circuit.measure(n, 0)
        sampler = q.StatevectorSampler(default_shots=self._shots, seed=0)
        best = math.inf
        for _ in range(2):  # the first run also pays for one-off setup
            started = self._timer()
            sampler.run([circuit]).result()
            best = min(best, self._timer() - started)
        self._call_cost[problem.qubits] = best / CALIBRATION_POWER
        return self._call_cost[problem.qubits]
