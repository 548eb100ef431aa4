"""Result types of a simulation run and their JSON form.

``SimulationResult.to_dict()`` is the response contract of ``POST /sim/run`` minus ``sim_id``
(added by the caller)::

    {"engine_used", "engine_reason", "samples_used", "converged",
     "outputs": {"z": {"mean", "std", "min", "max", "p5", "p25", "p50", "p75", "p95", "p99",
                       "rse", "ci": {"level": 0.95, "mean": [lo, hi], "p5": [lo, hi], ...}}},
     "duration_ms"}

plus ``"estimate"`` when a scalar query (tail probability, bounded expectation) was asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

CI_LEVEL = 0.95
"""Confidence level of every interval reported."""

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p5", 0.05),
    ("p25", 0.25),
    ("p50", 0.50),
    ("p75", 0.75),
    ("p95", 0.95),
    ("p99", 0.99),
)
"""Reported percentiles: name and probability."""

STATISTICS: tuple[str, ...] = ("mean", *(name for name, _ in PERCENTILES))
"""Statistics a caller may converge on or optimise."""

EngineUsed = Literal["classical", "quantum"]


@dataclass(frozen=True, slots=True)
class Interval:
    """A closed confidence interval."""

    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def to_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True, slots=True)
class OutputSummary:
    """Statistics of one output over all samples of a run.

    ``rse`` is the relative standard error of the mean (``standard_error / |mean|``); it is
    ``None`` when the mean is exactly zero but the error is not (undefined, never converged).
    ``relative_errors`` holds, per statistic, the figure convergence is judged on: ``rse`` for
    the mean, and for a percentile its CI half-width divided by z₀.₉₇₅·|value| — the same scale.
    """

    mean: float
    std: float
    min: float
    max: float
    percentiles: Mapping[str, float]
    standard_error: float
    rse: float | None
    ci: Mapping[str, Interval]
    relative_errors: Mapping[str, float | None] = field(default_factory=dict)

    def statistic(self, name: str) -> float:
        """``mean`` or a percentile by name (``p5`` … ``p99``)."""
        return self.mean if name == "mean" else self.percentiles[name]

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
        }
        body.update(self.percentiles)
        body["rse"] = self.rse
        ci: dict[str, Any] = {"level": CI_LEVEL}
        ci.update({name: interval.to_list() for name, interval in self.ci.items()})
        body["ci"] = ci
        return body


@dataclass(frozen=True, slots=True)
class QueryEstimate:
    """The answer to a scalar query, from either engine.

    ``evaluations`` counts model samples (classical) or amplitude-estimation oracle queries
    (quantum). ``details`` carries what the number means (threshold or bounds, discretisation).
    """

    kind: Literal["tail_probability", "bounded_expectation"]
    output: str
    value: float
    ci: Interval
    evaluations: int
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "output": self.output,
            "value": self.value,
            "ci": {"level": CI_LEVEL, "interval": self.ci.to_list()},
            "evaluations": self.evaluations,
            **self.details,
        }


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What a run returns; ``to_dict()`` is the JSON contract (without ``sim_id``).

    For the quantum engine ``outputs`` is empty (amplitude estimation answers one scalar,
    found in ``estimate``) and ``samples_used`` counts oracle queries.
    """

    engine_used: EngineUsed
    engine_reason: str
    samples_used: int
    converged: bool
    outputs: Mapping[str, OutputSummary]
    duration_ms: float
    estimate: QueryEstimate | None = None
    recommendation: Mapping[str, Any] | None = None
    """For ``POST /sim/recommend``: the ranking of candidate setpoints (``outputs`` are then the
    recommended value's)."""

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "engine_used": self.engine_used,
            "engine_reason": self.engine_reason,
            "samples_used": self.samples_used,
            "converged": self.converged,
            "outputs": {name: summary.to_dict() for name, summary in self.outputs.items()},
            "duration_ms": self.duration_ms,
        }
        if self.estimate is not None:
            body["estimate"] = self.estimate.to_dict()
        if self.recommendation is not None:
            body["recommendation"] = dict(self.recommendation)
        return body
