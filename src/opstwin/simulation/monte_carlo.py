"""MonteCarloEngine: vectorised sampling of a process model, with convergence checks.

Methods
    ``mc``          independent draws from numpy's ``Generator``;
    ``antithetic``  every uniform ``u`` is paired with ``1 − u`` (normal scores ``z`` with
                    ``−z``), which cancels the linear part of the model's variation;
    ``sobol``       R independently scrambled Sobol sequences (``scipy.stats.qmc``); each holds
                    a power-of-two number of points, so the total is R·2ᵐ, and error bars come
                    from the spread between scrambles.

Randomness
    Every input draws from its own stream, seeded by ``(seed, hash of the input's name)``; Sobol
    scrambles by ``(seed, replicate)``. A run is therefore bit-for-bit reproducible for a seed,
    settings and library versions, and two models that differ in one input (candidate setpoints)
    see the *same* draws for all other inputs — common random numbers, which is what makes
    paired comparisons in :mod:`opstwin.simulation.recommend` sharp.

Convergence
    A fixed run draws ``samples`` (rounded up to the method's granularity) and reports
    ``converged`` = every output's relative error of the chosen statistic is below
    ``target_rse``. An adaptive run starts with ``samples`` and keeps drawing — projecting the
    total needed from the error so far, since error shrinks as 1/√n — until that holds, the
    ``max_samples`` cap is reached, or the time budget is spent. It never claims convergence it
    has not measured; heavy tails that fool the variance estimate are the one known blind spot
    of any sample-based rule, which is why percentile intervals are reported too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import special
from scipy.stats import qmc

from opstwin.kit.clock import monotonic
from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.simulation.distributions import FloatArray, clip_uniform
from opstwin.simulation.model import ProcessModel
from opstwin.simulation.results import STATISTICS, OutputSummary, SimulationResult
from opstwin.simulation.summary import Layout, SampleSet, Summariser

Method = Literal["mc", "sobol", "antithetic"]
METHODS: tuple[Method, ...] = ("mc", "sobol", "antithetic")

DEFAULT_SAMPLES = 10_000
DEFAULT_TARGET_RSE = 0.01
DEFAULT_MAX_SAMPLES = 1_000_000
MIN_SAMPLES = 100
"""Fewer samples make every error bar meaningless."""

MAX_SAMPLES = 10_000_000
"""Hard cap on samples per run, whatever the settings say."""

MAX_VALUES_IN_MEMORY = 40_000_000
"""samples × (inputs + outputs) held at once (320 MB of float64): a run beyond it is refused."""

SOBOL_SCRAMBLES = 16
"""Independent scrambles behind Sobol error bars: 15 degrees of freedom for the t interval."""

GROWTH_SAFETY = 1.15
"""An adaptive step aims 15 % past the projected need, so noise in the error estimate rarely
costs an extra round."""

MAX_GROWTH = 8.0
"""An adaptive step at most multiplies the sample count by this, so a noisy early error
estimate cannot jump straight to the cap."""

MIN_GROWTH = 1.25

_STREAM_INPUT = 1
_STREAM_SOBOL = 2

StopReason = Literal["converged", "fixed_samples", "sample_cap", "time_budget"]


def _setting_error(pointer: str, detail: str) -> ValidationFailed:
    return ValidationFailed(
        "invalid simulation settings", errors=[FieldError(pointer=pointer, detail=detail)]
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How to sample. Invalid values raise :class:`ValidationFailed` pointing at the request field.

    ``converge_on`` names the statistic whose relative error must fall below ``target_rse``
    (``mean``, or a percentile ``p5`` … ``p99``); every output must meet it.
    ``time_budget_s`` stops an adaptive run early (reported as not converged).
    """

    seed: int
    samples: int = DEFAULT_SAMPLES
    method: Method = "mc"
    adaptive: bool = False
    target_rse: float = DEFAULT_TARGET_RSE
    max_samples: int = DEFAULT_MAX_SAMPLES
    converge_on: str = "mean"
    time_budget_s: float | None = None
    sobol_scrambles: int = SOBOL_SCRAMBLES

    def __post_init__(self) -> None:
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise _setting_error("/seed", "seed must be an integer in [0, 2⁶³)")
        if not _is_int(self.samples) or not MIN_SAMPLES <= self.samples <= MAX_SAMPLES:
            raise _setting_error(
                "/samples", f"samples must be an integer in [{MIN_SAMPLES}, {MAX_SAMPLES}]"
            )
        if self.method not in METHODS:
            raise _setting_error("/method", f"method must be one of {list(METHODS)}")
        if not isinstance(self.target_rse, int | float) or not 0.0 < self.target_rse <= 1.0:
            raise _setting_error("/target_rse", "target_rse must be in (0, 1]")
        if not _is_int(self.max_samples) or not MIN_SAMPLES <= self.max_samples <= MAX_SAMPLES:
            raise _setting_error(
                "/max_samples", f"max_samples must be an integer in [{MIN_SAMPLES}, {MAX_SAMPLES}]"
            )
        if self.adaptive and self.max_samples < self.samples:
            raise _setting_error("/max_samples", "max_samples must be at least samples")
        if self.converge_on not in STATISTICS:
            raise _setting_error("/converge_on", f"converge_on must be one of {list(STATISTICS)}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise _setting_error("/time_budget_s", "time_budget_s must be positive")
        if not _is_int(self.sobol_scrambles) or not 4 <= self.sobol_scrambles <= 64:
            raise _setting_error("/sobol_scrambles", "sobol_scrambles must be in [4, 64]")


@dataclass(frozen=True, slots=True, eq=False)
class SampleRun:
    """Samples and statistics of one engine run, before they become a :class:`SimulationResult`."""

    samples: SampleSet
    summaries: dict[str, OutputSummary]
    converged: bool
    stopped_by: StopReason
    duration_s: float
    steps: int = 1
    history: list[tuple[int, float | None]] = field(default_factory=list)
    """(samples so far, worst relative error) after each step."""


def name_key(name: str) -> int:
    """A stable 64-bit key for an input name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_STREAM_INPUT, name_key(name)))
    )


class _Source:
    """Draws input arrays for a model; one subclass per method."""

    def __init__(self, model: ProcessModel) -> None:
        self.model = model
        self.names = list(model.inputs)
        corr = model.correlation
        self.correlated = list(corr.names) if corr is not None else []
        self.factor_t = corr.factor.T if corr is not None else np.zeros((0, 0))

    def _correlate(self, z: FloatArray) -> FloatArray:
        """Independent normal scores (n × k) → correlated uniforms (n × k): the Gaussian copula."""
        return np.asarray(special.ndtr(z @ self.factor_t), dtype=np.float64)


class _MonteCarloSource(_Source):
    def __init__(self, model: ProcessModel, seed: int) -> None:
        super().__init__(model)
        self.streams = {name: _stream(seed, name) for name in self.names}

    def draw(self, n: int) -> dict[str, FloatArray]:
        env: dict[str, FloatArray] = {}
        inputs = self.model.inputs
        for name in self.names:
            if name not in self.correlated:
                env[name] = inputs[name].draw(self.streams[name], n)
        if self.correlated:
            z = np.column_stack([self.streams[c].standard_normal(n) for c in self.correlated])
            u = self._correlate(z)
            for i, name in enumerate(self.correlated):
                env[name] = inputs[name].ppf(u[:, i])
        return env


class _AntitheticSource(_Source):
    def __init__(self, model: ProcessModel, seed: int) -> None:
        super().__init__(model)
        self.streams = {name: _stream(seed, name) for name in self.names}

    def draw(self, pairs: int) -> tuple[dict[str, FloatArray], dict[str, FloatArray]]:
        plus: dict[str, FloatArray] = {}
        minus: dict[str, FloatArray] = {}
        inputs = self.model.inputs
        for name in self.names:
            if name not in self.correlated:
                u = self.streams[name].random(pairs)
                plus[name] = inputs[name].ppf(u)
                minus[name] = inputs[name].ppf(1.0 - u)
        if self.correlated:
            z = np.column_stack([self.streams[c].standard_normal(pairs) for c in self.correlated])
            u_plus, u_minus = self._correlate(z), self._correlate(-z)
            for i, name in enumerate(self.correlated):
                plus[name] = inputs[name].ppf(u_plus[:, i])
                minus[name] = inputs[name].ppf(u_minus[:, i])
        return plus, minus


class _SobolSource(_Source):
    def __init__(self, model: ProcessModel, seed: int, replicates: int) -> None:
        super().__init__(model)
        self.engines = [
            qmc.Sobol(
                len(self.names),
                scramble=True,
                rng=np.random.default_rng(
                    np.random.SeedSequence(seed, spawn_key=(_STREAM_SOBOL, r))
                ),
            )
            for r in range(replicates)
        ]
        self.columns = {name: i for i, name in enumerate(self.names)}

    def draw(self, points: int) -> Iterator[dict[str, FloatArray]]:
        """``points`` more points from each scramble; keeps each one's total a power of two."""
        inputs = self.model.inputs
        for engine in self.engines:
            u_all = np.asarray(engine.random(points), dtype=np.float64)
            env: dict[str, FloatArray] = {}
            for name in self.names:
                if name not in self.correlated:
                    env[name] = inputs[name].ppf(u_all[:, self.columns[name]])
            if self.correlated:
                cols = [self.columns[c] for c in self.correlated]
                z = np.asarray(special.ndtri(clip_uniform(u_all[:, cols])), dtype=np.float64)
                u = self._correlate(z)
                for i, name in enumerate(self.correlated):
                    env[name] = inputs[name].ppf(u[:, i])
            yield env


class _Accumulator:
    """Output samples per slot (one slot for mc, two for antithetic halves, R for Sobol)."""

    def __init__(self, model: ProcessModel, slots: int) -> None:
        self.model = model
        self.chunks: list[dict[str, list[FloatArray]]] = [
            {name: [] for name in model.outputs} for _ in range(slots)
        ]

    def add(self, slot: int, env: dict[str, FloatArray], n: int) -> None:
        for name, expression in self.model.outputs.items():
            values = expression.evaluate(env, n)
            if not np.isfinite(values).all():
                raise _non_finite(self.model, name, values, env)
            self.chunks[slot][name].append(values)

    def sample_set(self, layout: Layout) -> SampleSet:
        outputs = {
            name: np.concatenate([chunk for slot in self.chunks for chunk in slot[name]])
            for name in self.model.outputs
        }
        return SampleSet(outputs=outputs, layout=layout, replicates=len(self.chunks))


def _non_finite(
    model: ProcessModel, name: str, values: FloatArray, env: dict[str, FloatArray]
) -> ValidationFailed:
    bad = np.flatnonzero(~np.isfinite(values))
    first = int(bad[0])
    at = ", ".join(f"{k}={float(v[first]):.6g}" for k, v in env.items())
    return ValidationFailed(
        "the model produced non-finite values",
        errors=[
            FieldError(
                pointer=model.output_pointer(name),
                detail=f"{bad.size} of {values.size} samples are nan or ±inf (log or sqrt of a "
                f"negative number, division by zero, or overflow); first at {at}",
            )
        ],
    )


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


class MonteCarloEngine:
    """Samples process models; see the module docstring for methods, seeding and convergence.

    ``timer`` returns monotonic seconds (injected so tests can pin durations).
    """

    def __init__(self, *, timer: Callable[[], float] = monotonic) -> None:
        self._timer = timer

    def run(
        self,
        model: ProcessModel,
        settings: RunSettings,
        *,
        engine_reason: str = "classical engine requested",
    ) -> SimulationResult:
        """Sample ``model`` and summarise every output (the JSON contract of a run)."""
        sampled = self.sample(model, settings)
        return SimulationResult(
            engine_used="classical",
            engine_reason=engine_reason,
            samples_used=sampled.samples.size,
            converged=sampled.converged,
            outputs=sampled.summaries,
            duration_ms=sampled.duration_s * 1000.0,
        )

    def sample(self, model: ProcessModel, settings: RunSettings) -> SampleRun:
        """Draw samples (adaptively if asked) and return them with their summaries."""
        started = self._timer()
        drawer = _Drawer(model, settings)
        target = drawer.round(settings.samples)
        if settings.adaptive:
            target = min(target, drawer.round_down(settings.max_samples))
        most = drawer.round_down(settings.max_samples) if settings.adaptive else target
        columns = len(model.inputs) + len(model.outputs)
        if most * columns > MAX_VALUES_IN_MEMORY:
            pointer = "/max_samples" if settings.adaptive else "/samples"
            raise _setting_error(
                pointer,
                f"{most} samples × {columns} inputs+outputs exceeds the in-memory limit of "
                f"{MAX_VALUES_IN_MEMORY} values; at most {MAX_VALUES_IN_MEMORY // columns} "
                "samples fit",
            )
        history: list[tuple[int, float | None]] = []
        steps = 0
        while True:
            drawer.extend_to(target)
            steps += 1
            sample_set = drawer.sample_set()
            summariser = Summariser(sample_set)
            summaries = {
                name: summariser.summarise(values) for name, values in sample_set.outputs.items()
            }
            worst = _worst_error(summaries, settings.converge_on)
            n = sample_set.size
            history.append((n, worst))
            converged = worst is not None and worst < settings.target_rse
            stop: StopReason | None = None
            if not settings.adaptive:
                stop = "fixed_samples"
            elif converged:
                stop = "converged"
            elif n >= drawer.round_down(settings.max_samples):
                stop = "sample_cap"
            elif (
                settings.time_budget_s is not None
                and self._timer() - started >= settings.time_budget_s
            ):
                stop = "time_budget"
            if stop is not None:
                return SampleRun(
                    samples=sample_set,
                    summaries=summaries,
                    converged=converged,
                    stopped_by=stop,
                    duration_s=self._timer() - started,
                    steps=steps,
                    history=history,
                )
            target = drawer.next_target(n, worst, settings)


def _worst_error(summaries: dict[str, OutputSummary], statistic: str) -> float | None:
    """Largest relative error over outputs; None when one is undefined (zero-valued statistic)."""
    worst = 0.0
    for summary in summaries.values():
        error = summary.relative_errors[statistic]
        if error is None:
            return None
        worst = max(worst, error)
    return worst


class _Drawer:
    """Owns the source and accumulator of one run and the method's sample-count granularity."""

    def __init__(self, model: ProcessModel, settings: RunSettings) -> None:
        self.method = settings.method
        self.n = 0
        self.layout: Layout
        if settings.method == "sobol":
            self.replicates = settings.sobol_scrambles
            self.sobol = _SobolSource(model, settings.seed, self.replicates)
            self.acc = _Accumulator(model, self.replicates)
            self.layout = "replicates"
        elif settings.method == "antithetic":
            self.antithetic = _AntitheticSource(model, settings.seed)
            self.acc = _Accumulator(model, 2)
            self.layout = "pairs"
        else:
            self.mc = _MonteCarloSource(model, settings.seed)
            self.acc = _Accumulator(model, 1)
            self.layout = "iid"

    def round(self, n: int) -> int:
        """Smallest valid total ≥ n: even for antithetic, R·2ᵐ for Sobol."""
        if self.method == "sobol":
            return self.replicates * _next_power_of_two(math.ceil(n / self.replicates))
        if self.method == "antithetic":
            return n + (n % 2)
        return n

    def round_down(self, n: int) -> int:
        """Largest valid total ≤ n (where the cap really is for this method)."""
        if self.method == "sobol":
            per = max(1, n // self.replicates)
            return self.replicates * (1 << (per.bit_length() - 1))
        if self.method == "antithetic":
            return n - (n % 2)
        return n

    def next_target(self, n: int, worst: float | None, settings: RunSettings) -> int:
        if worst is None or not math.isfinite(worst):
            growth = MAX_GROWTH
        else:
            growth = (worst / settings.target_rse) ** 2 * GROWTH_SAFETY
            growth = min(MAX_GROWTH, max(MIN_GROWTH, growth))
        cap = self.round_down(settings.max_samples)
        return min(cap, self.round(math.ceil(n * growth)))

    def extend_to(self, total: int) -> None:
        more = total - self.n
        if more <= 0:
            return
        if self.method == "sobol":
            per = more // self.replicates
            for r, env in enumerate(self.sobol.draw(per)):
                self.acc.add(r, env, per)
        elif self.method == "antithetic":
            pairs = more // 2
            plus, minus = self.antithetic.draw(pairs)
            self.acc.add(0, plus, pairs)
            self.acc.add(1, minus, pairs)
        else:
            self.acc.add(0, self.mc.draw(more), more)
        self.n = total

    def sample_set(self) -> SampleSet:
        return self.acc.sample_set(self.layout)
