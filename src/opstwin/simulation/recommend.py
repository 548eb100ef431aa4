"""Rank candidate setpoint values by simulation, under a risk constraint.

Each candidate value replaces the setpoint input with a constant and runs the same model with the
same seed. Because every input draws from its own stream keyed by its name
(:mod:`.monte_carlo`), all candidates — and "do nothing", the current value — see *identical*
draws of every other input: common random numbers. Differences between candidates are then
measured sample by sample (paired), which removes the shared noise from the comparison.

Objective and constraint name a statistic (``mean``, ``p5`` … ``p99``) of an output, e.g.
maximise ``p50`` of yield subject to ``p5`` of yield ≥ 0.85. Ranking puts feasible candidates
first (best objective first, ties to the smaller move), then infeasible ones by how far they
miss the constraint.

For the recommended candidate against the current value the result reports

* ``improvement``: the change in the objective statistic, with a standard error and interval
  from batch means over independent blocks of the paired samples (replicates for Sobol);
* ``mean_difference``: the paired mean difference of the KPI with its standard error;
* ``p_improvement``: the fraction of paired scenarios in which the candidate's KPI is strictly
  better than do-nothing's — P(improvement > 0) under common random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from opstwin.kit.clock import monotonic
from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.simulation.distributions import Constant, FloatArray
from opstwin.simulation.model import ProcessModel
from opstwin.simulation.monte_carlo import MonteCarloEngine, RunSettings, SampleRun
from opstwin.simulation.results import CI_LEVEL, PERCENTILES, STATISTICS, Interval
from opstwin.simulation.summary import SampleSet, standard_error, student_t_quantile

MAX_CANDIDATES = 50
"""Candidates per request; each is a full simulation run."""

IMPROVEMENT_BATCHES = 20
"""Blocks for batch-means error bars of a change in a percentile (19 degrees of freedom)."""

_PERCENTILE_Q = dict(PERCENTILES)


def _invalid(pointer: str, detail: str) -> ValidationFailed:
    return ValidationFailed(
        "invalid recommendation request", errors=[FieldError(pointer=pointer, detail=detail)]
    )


@dataclass(frozen=True, slots=True)
class Objective:
    """Which statistic of which output to maximise or minimise."""

    output: str
    statistic: str = "p50"
    direction: Literal["maximize", "minimize"] = "maximize"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise _invalid("/objective/statistic", f"statistic must be one of {list(STATISTICS)}")
        if self.direction not in ("maximize", "minimize"):
            raise _invalid("/objective/direction", "direction must be 'maximize' or 'minimize'")

    @property
    def sign(self) -> float:
        """+1 when larger is better."""
        return 1.0 if self.direction == "maximize" else -1.0


@dataclass(frozen=True, slots=True)
class RiskConstraint:
    """``statistic(output) >= threshold`` (or ``<=``), e.g. p5 of yield at least 0.85."""

    output: str
    threshold: float
    statistic: str = "p5"
    op: Literal[">=", "<="] = ">="

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise _invalid("/constraint/statistic", f"statistic must be one of {list(STATISTICS)}")
        if self.op not in (">=", "<="):
            raise _invalid("/constraint/op", "op must be '>=' or '<='")
        if not math.isfinite(self.threshold):
            raise _invalid("/constraint/threshold", "threshold must be finite")

    def violation(self, value: float) -> float:
        """How far ``value`` misses the constraint (0 when satisfied)."""
        miss = self.threshold - value if self.op == ">=" else value - self.threshold
        return max(0.0, miss)


@dataclass(frozen=True, slots=True)
class Improvement:
    """A candidate against do-nothing, paired over common random numbers."""

    statistic: str
    value: float
    standard_error: float
    ci: Interval
    mean_difference: float
    mean_difference_se: float
    p_improvement: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "value": self.value,
            "standard_error": self.standard_error,
            "ci": {"level": CI_LEVEL, "interval": self.ci.to_list()},
            "mean_difference": self.mean_difference,
            "mean_difference_se": self.mean_difference_se,
            "p_improvement": self.p_improvement,
        }


@dataclass(frozen=True, slots=True)
class CandidateOutcome:
    """One candidate's simulated objective, constraint and comparison with do-nothing."""

    value: float
    is_current: bool
    objective: float
    constraint: float | None
    feasible: bool
    violation: float
    improvement: Improvement | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "is_current": self.is_current,
            "objective": self.objective,
            "constraint": self.constraint,
            "feasible": self.feasible,
            "violation": self.violation,
            "improvement": None if self.improvement is None else self.improvement.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Ranking of candidates; ``recommended`` is None when nothing satisfies the constraint."""

    setpoint: str
    current: float
    ranking: tuple[CandidateOutcome, ...]
    recommended: float | None
    reason: str
    improvement: Improvement | None
    samples_per_candidate: int
    duration_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "setpoint": self.setpoint,
            "current": self.current,
            "recommended": self.recommended,
            "reason": self.reason,
            "improvement": None if self.improvement is None else self.improvement.to_dict(),
            "ranking": [c.to_dict() for c in self.ranking],
            "samples_per_candidate": self.samples_per_candidate,
            "duration_ms": self.duration_ms,
        }


class SetpointRecommender:
    """Simulates candidate values of one setpoint input and recommends one (or do-nothing)."""

    def __init__(
        self, *, engine: MonteCarloEngine | None = None, timer: Callable[[], float] = monotonic
    ) -> None:
        self._timer = timer
        self._engine = engine or MonteCarloEngine(timer=timer)

    def recommend(
        self,
        model: ProcessModel,
        *,
        setpoint: str,
        current: float,
        candidates: Sequence[float],
        objective: Objective,
        settings: RunSettings,
        constraint: RiskConstraint | None = None,
    ) -> Recommendation:
        """Rank ``candidates`` (do-nothing at ``current`` is always included) for ``objective``.

        ``settings`` must be a fixed-size run (``adaptive`` False): common random numbers need
        every candidate to use the same samples.
        """
        started = self._timer()
        self._validate(model, setpoint, current, candidates, objective, constraint, settings)
        values = [float(current)] + [float(c) for c in candidates if float(c) != float(current)]
        values = list(dict.fromkeys(values))
        runs = [
            self._engine.sample(model.with_input(setpoint, Constant(v)), settings) for v in values
        ]
        baseline = runs[0]
        outcomes = []
        for value, run in zip(values, runs, strict=True):
            obj = run.summaries[objective.output].statistic(objective.statistic)
            cons = (
                None
                if constraint is None
                else run.summaries[constraint.output].statistic(constraint.statistic)
            )
            violation = 0.0 if constraint is None or cons is None else constraint.violation(cons)
            outcomes.append(
                CandidateOutcome(
                    value=value,
                    is_current=value == values[0],
                    objective=obj,
                    constraint=cons,
                    feasible=violation == 0.0,
                    violation=violation,
                    improvement=None if run is baseline else _improvement(run, baseline, objective),
                )
            )
        ranking = sorted(
            outcomes,
            key=lambda o: (
                not o.feasible,
                o.violation,
                -objective.sign * o.objective,
                abs(o.value - current),
            ),
        )
        best = ranking[0]
        current_outcome = outcomes[0]
        if not best.feasible:
            recommended, reason = None, "no candidate (nor the current value) meets the constraint"
        elif best.is_current or (
            current_outcome.feasible
            and objective.sign * (best.objective - current_outcome.objective) <= 0.0
        ):
            recommended, reason = current, "do nothing: no candidate improves on the current value"
        else:
            recommended = best.value
            reason = (
                f"best feasible {objective.statistic} of {objective.output!r}"
                if current_outcome.feasible
                else "the current value violates the constraint; best feasible candidate"
            )
        chosen = next((o for o in outcomes if o.value == recommended), None)
        return Recommendation(
            setpoint=setpoint,
            current=float(current),
            ranking=tuple(ranking),
            recommended=recommended,
            reason=reason,
            improvement=chosen.improvement if chosen is not None else None,
            samples_per_candidate=baseline.samples.size,
            duration_ms=(self._timer() - started) * 1000.0,
        )

    @staticmethod
    def _validate(
        model: ProcessModel,
        setpoint: str,
        current: float,
        candidates: Sequence[float],
        objective: Objective,
        constraint: RiskConstraint | None,
        settings: RunSettings,
    ) -> None:
        if setpoint not in model.inputs:
            raise _invalid("/setpoint", f"{setpoint!r} is not an input of the model")
        if not math.isfinite(current):
            raise _invalid("/current", "current must be finite")
        if not candidates or len(candidates) > MAX_CANDIDATES:
            raise _invalid("/candidates", f"give 1 to {MAX_CANDIDATES} candidate values")
        for i, c in enumerate(candidates):
            if not math.isfinite(c):
                raise _invalid(f"/candidates/{i}", "candidate values must be finite")
        if objective.output not in model.outputs:
            raise _invalid("/objective/output", f"{objective.output!r} is not an output")
        if constraint is not None and constraint.output not in model.outputs:
            raise _invalid("/constraint/output", f"{constraint.output!r} is not an output")
        if settings.adaptive:
            raise _invalid(
                "/adaptive", "recommendations need a fixed sample count (common random numbers)"
            )


def _statistic(values: FloatArray, name: str) -> FloatArray:
    """A statistic along the last axis (so it works on blocks of samples)."""
    if name == "mean":
        return np.asarray(values.mean(axis=-1), dtype=np.float64)
    return np.asarray(np.quantile(values, _PERCENTILE_Q[name], axis=-1), dtype=np.float64)


def _improvement(run: SampleRun, baseline: SampleRun, objective: Objective) -> Improvement:
    """Candidate minus do-nothing, oriented so that positive is better."""
    sign = objective.sign
    y = run.samples.outputs[objective.output]
    y0 = baseline.samples.outputs[objective.output]
    layout: SampleSet = run.samples
    delta = sign * (
        run.summaries[objective.output].statistic(objective.statistic)
        - baseline.summaries[objective.output].statistic(objective.statistic)
    )
    diff = sign * (y - y0)
    mean_se, mean_dof = standard_error(diff, layout)
    if objective.statistic == "mean":
        se, dof = mean_se, mean_dof
    else:
        blocks = layout.blocks(y, IMPROVEMENT_BATCHES)
        blocks0 = layout.blocks(y0, IMPROVEMENT_BATCHES)
        per_block = sign * (
            _statistic(blocks, objective.statistic) - _statistic(blocks0, objective.statistic)
        )
        se = float(per_block.std(ddof=1) / math.sqrt(per_block.size))
        dof = per_block.size - 1
    half = student_t_quantile(0.5 + CI_LEVEL / 2.0, dof) * se
    return Improvement(
        statistic=objective.statistic,
        value=float(delta),
        standard_error=se,
        ci=Interval(float(delta - half), float(delta + half)),
        mean_difference=float(diff.mean()),
        mean_difference_se=mean_se,
        p_improvement=float(np.mean(diff > 0.0)),
    )
