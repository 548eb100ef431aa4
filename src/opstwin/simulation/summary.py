"""From output samples to statistics with honest error bars.

Where the error bars come from depends on how the samples were drawn (:class:`SampleSet`):

* ``iid`` (plain Monte Carlo): standard error ``std/√n``; percentile intervals from order
  statistics — the number of samples below the true q-quantile is Binomial(n, q), so
  ``[y₍ₗ₎, y₍ᵤ₎]`` with l, u from the binomial quantiles covers it with ≥ 95 % probability;
* ``pairs`` (antithetic variates): the first and second halves are mirrored pairs, so the
  standard error comes from the n/2 pair means; percentile intervals use the order-statistic
  rule as for iid samples, which is conservative when pairs are negatively correlated
  (monotone models);
* ``replicates`` (scrambled Sobol): R independent scrambles laid out as R equal blocks; the
  mean's error bar is Student-t over the R replicate means (QMC points are not independent, so
  only between-scramble spread is a valid error estimate). Percentile intervals are Student-t
  over the replicate percentiles, widened by their small-sample bias, once each scramble has
  enough points in the tail (:data:`MIN_TAIL_POINTS`); before that, the order-statistic rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

from opstwin.simulation.distributions import FloatArray
from opstwin.simulation.results import CI_LEVEL, PERCENTILES, Interval, OutputSummary

Layout = Literal["iid", "pairs", "replicates"]

_Q = np.array([q for _, q in PERCENTILES])
_ALPHA = 1.0 - CI_LEVEL
MIN_TAIL_POINTS = 8.0
"""Sobol percentile intervals come from the scrambles only when each scramble has at least this
many points beyond the percentile; with fewer, a per-scramble percentile is too coarse and the
order-statistic interval (conservative for QMC points, which are more even than iid ones) is
used. Chosen by measuring coverage (tests: ≥ 0.9 at 512 samples and up)."""

Z_CI = float(special.ndtri(1.0 - _ALPHA / 2.0))
"""Normal quantile of the CI level (1.96), used to express interval widths as standard errors."""


@dataclass(frozen=True, slots=True, eq=False)
class SampleSet:
    """Output samples of one run and the layout their error bars depend on."""

    outputs: dict[str, FloatArray]
    layout: Layout
    replicates: int = 1

    @property
    def size(self) -> int:
        first = next(iter(self.outputs.values()))
        return int(first.size)

    def blocks(self, values: FloatArray, count: int) -> FloatArray:
        """``values`` split into ``count`` equal, independent blocks (rows), respecting layout.

        Used for batch-means error bars of statistics that have no closed-form standard error
        (e.g. a difference of medians). Trailing samples that do not fill a block are dropped.
        """
        if self.layout == "replicates":
            return values.reshape(self.replicates, -1)
        if self.layout == "pairs":
            half = values.size // 2
            per = half // count
            first = values[: per * count].reshape(count, per)
            second = values[half : half + per * count].reshape(count, per)
            return np.concatenate([first, second], axis=1)
        per = values.size // count
        return values[: per * count].reshape(count, per)


def standard_error(values: FloatArray, sample_set: SampleSet) -> tuple[float, int]:
    """Standard error of the mean of ``values`` and its degrees of freedom."""
    n = values.size
    if sample_set.layout == "replicates":
        means = values.reshape(sample_set.replicates, -1).mean(axis=1)
        return float(means.std(ddof=1) / math.sqrt(means.size)), means.size - 1
    if sample_set.layout == "pairs":
        half = n // 2
        pair_means = 0.5 * (values[:half] + values[half:])
        return float(pair_means.std(ddof=1) / math.sqrt(half)), half - 1
    return float(values.std(ddof=1) / math.sqrt(n)), n - 1


class Summariser:
    """Computes :class:`OutputSummary` for every output of one :class:`SampleSet`.

    Order-statistic ranks and t quantiles depend only on the sample count, so they are worked
    out once per sample set and reused for each output.
    """

    def __init__(self, sample_set: SampleSet) -> None:
        self.sample_set = sample_set
        n = sample_set.size
        self.n = n
        position = (n - 1) * _Q
        self.below = np.floor(position).astype(np.int64)
        self.above = np.minimum(self.below + 1, n - 1)
        self.fraction = position - self.below
        # 1-based ranks l, u with P(l ≤ Binomial(n, q) ≤ u − 1) ≥ CI level; stored 0-based.
        low_rank = binomial_quantile(_ALPHA / 2.0, n, _Q)
        high_rank = binomial_quantile(1.0 - _ALPHA / 2.0, n, _Q) + 1
        self.ci_low = np.clip(low_rank - 1, 0, n - 1)
        self.ci_high = np.clip(high_rank - 1, 0, n - 1)
        self.kth = np.unique(
            np.concatenate([[0, n - 1], self.below, self.above, self.ci_low, self.ci_high])
        )
        points_per_replicate = n // sample_set.replicates
        self.replicate_tail_points = points_per_replicate * np.minimum(_Q, 1.0 - _Q)
        if sample_set.layout == "replicates":
            self.dof = sample_set.replicates - 1
        elif sample_set.layout == "pairs":
            self.dof = n // 2 - 1
        else:
            self.dof = n - 1
        self.t = student_t_quantile(1.0 - _ALPHA / 2.0, self.dof)

    def summarise(self, values: FloatArray) -> OutputSummary:
        """Statistics, standard error and intervals of one output's samples."""
        ordered = np.partition(values, self.kth)
        low, high = ordered[self.below], ordered[self.above]
        pct = low + self.fraction * (high - low)
        pct_low, pct_high = ordered[self.ci_low], ordered[self.ci_high]
        if self.sample_set.layout == "replicates":
            replicates = self.sample_set.replicates
            per_replicate = np.percentile(values.reshape(replicates, -1), _Q * 100.0, axis=1)
            se = per_replicate.std(axis=1, ddof=1) / math.sqrt(replicates)
            # A percentile of few points is biased; the gap between the pooled estimate and the
            # replicates' average measures that bias, and it widens the interval.
            bias = pct - per_replicate.mean(axis=1)
            spread = self.t * np.sqrt(se**2 + bias**2)
            use = self.replicate_tail_points >= MIN_TAIL_POINTS
            pct_low = np.where(use, pct - spread, pct_low)
            pct_high = np.where(use, pct + spread, pct_high)

        mean = float(values.mean())
        std = float(values.std(ddof=1))
        se = (
            std / math.sqrt(self.n)
            if self.sample_set.layout == "iid"
            else standard_error(values, self.sample_set)[0]
        )
        rse = _relative(se, mean)
        ci = {"mean": Interval(mean - self.t * se, mean + self.t * se)}
        relative: dict[str, float | None] = {"mean": rse}
        percentiles: dict[str, float] = {}
        for i, (name, _) in enumerate(PERCENTILES):
            value = float(pct[i])
            percentiles[name] = value
            interval = Interval(float(pct_low[i]), float(pct_high[i]))
            ci[name] = interval
            relative[name] = _relative(interval.half_width / Z_CI, value)
        return OutputSummary(
            mean=mean,
            std=std,
            min=float(ordered[0]),
            max=float(ordered[-1]),
            percentiles=percentiles,
            standard_error=se,
            rse=rse,
            ci=ci,
            relative_errors=relative,
        )


def binomial_quantile(p: float, n: int, q: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Smallest k with P(Binomial(n, q) ≤ k) ≥ p, per q.

    The same rule as ``scipy.stats.binom.ppf``, through the underlying special functions: the
    ``rv_discrete`` wrapper costs more than the rest of a 10⁴-sample summary.
    """
    k = np.ceil(special.bdtrik(p, n, q))
    below = np.maximum(k - 1.0, 0.0)
    k = np.where(special.bdtr(below, n, q) >= p, below, k)
    return np.asarray(np.clip(k, 0, n), dtype=np.int64)


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t with ``dof`` degrees of freedom."""
    return float(special.stdtrit(dof, p))


def _relative(error: float, value: float) -> float | None:
    if error == 0.0:
        return 0.0
    if value == 0.0:
        return None
    return abs(error / value)
