"""Detector settings per series, resolved from the twin model (metric, twin defaults, built-in)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from opstwin.twins.model import (
    AnomalyThresholds,
    CusumDrift,
    EwmaDrift,
    MetricSpec,
    TwinDocument,
)

# Without a normal range or explicit min_std, σ is floored only numerically; with a
# two-sided normal range, at a thousandth of its width (below that is sensor resolution).
NORMAL_RANGE_STD_FLOOR_FRACTION = 1e-3
# A run of near-equal values is only suspicious if the live signal moves by much more than
# the tolerance that defines "equal".
FLATLINE_STD_RATIO = 10.0
# The residuals' correlation (which tempers the drift statistic) is learnt this many times
# more slowly than the baseline, so that a drift in progress barely moves it.
AUTOCORR_HALFLIFE_FACTOR = 8.0


class SeriesKey(NamedTuple):
    """One series: a metric of an asset of a twin."""

    twin_id: str
    asset_id: str
    metric: str


_DEFAULTS = AnomalyThresholds()
_CUSUM_DEFAULTS = CusumDrift(method="cusum")
_EWMA_DEFAULTS = EwmaDrift(method="ewma")


@dataclass(frozen=True, slots=True)
class SeriesConfig:
    """Detector settings for one series (see :class:`~opstwin.twins.model.AnomalyThresholds`)."""

    z_threshold: float = _DEFAULTS.z_threshold
    z_clear: float = _DEFAULTS.z_clear
    clear_samples: int = _DEFAULTS.clear_samples
    warmup_samples: int = _DEFAULTS.warmup_samples
    baseline_halflife_samples: float = _DEFAULTS.baseline_halflife_samples
    relearn_after_samples: int = _DEFAULTS.relearn_after_samples
    min_std: float = 0.0
    drift_method: Literal["cusum", "ewma"] = "cusum"
    cusum_k: float = _CUSUM_DEFAULTS.k
    cusum_h: float = _CUSUM_DEFAULTS.h
    ewma_smoothing: float = _EWMA_DEFAULTS.smoothing
    ewma_limit: float = _EWMA_DEFAULTS.limit
    flatline_window: int = _DEFAULTS.flatline.window_samples
    flatline_tolerance: float = _DEFAULTS.flatline.tolerance
    hard_low: float = -math.inf
    hard_high: float = math.inf
    normal_low: float = -math.inf
    normal_high: float = math.inf
    adapt_to_tails: bool = _DEFAULTS.adapt_to_tails
    season_detect: bool = _DEFAULTS.seasonality.detect
    season_period_s: float = 0.0  # 0: none given
    season_search_samples: int = _DEFAULTS.seasonality.search_samples
    season_halflife_cycles: float = _DEFAULTS.seasonality.halflife_cycles
    # Derived once, used on every sample.
    alpha: float = field(init=False)
    keep: float = field(init=False)
    keep_alpha: float = field(init=False)
    const_weight_from: int = field(init=False)
    steady_from: int = field(init=False)
    std_floor: float = field(init=False)
    flat_min_std: float = field(init=False)
    ewma_keep: float = field(init=False)
    ewma_limit_z: float = field(init=False)
    clear_lambda: float = field(init=False)
    clear_keep: float = field(init=False)
    ac_alpha: float = field(init=False)
    ac_keep: float = field(init=False)
    ac_n_eff: float = field(init=False)
    ac_margin: float = field(init=False)
    tail_target: float = field(init=False)
    tail_u_normal: float = field(init=False)
    season_wanted: bool = field(init=False)
    season_period_us: int = field(init=False)
    season_alpha: float = field(init=False)

    def __post_init__(self) -> None:
        if self.z_clear >= self.z_threshold:
            raise ValueError("z_clear must be below z_threshold")
        alpha = 1.0 - math.exp2(-1.0 / self.baseline_halflife_samples)
        # Smallest sample count n with 1/n ≤ α: from there on the weight is the constant α.
        n = max(1, math.ceil(1.0 / alpha))
        while n > 1 and 1.0 / (n - 1) <= alpha:
            n -= 1
        while 1.0 / n > alpha:
            n += 1
        lam = self.ewma_smoothing
        clear_lambda = 2.0 / (self.clear_samples + 1.0)
        ac_alpha = 1.0 - math.exp2(
            -1.0 / (AUTOCORR_HALFLIFE_FACTOR * self.baseline_halflife_samples)
        )
        derived = {
            "alpha": alpha,
            "keep": 1.0 - alpha,
            "keep_alpha": (1.0 - alpha) * alpha,
            "const_weight_from": n,
            # A sample is processed with count n+1, so the constant weight holds once n ≥ N−1.
            "steady_from": max(self.warmup_samples, n - 1),
            "std_floor": max(self.min_std, math.ulp(0.0)),
            "flat_min_std": max(FLATLINE_STD_RATIO * self.flatline_tolerance, self.min_std),
            "ewma_keep": 1.0 - lam,
            "ewma_limit_z": self.ewma_limit * math.sqrt(lam / (2.0 - lam)),
            "clear_lambda": clear_lambda,
            "clear_keep": 1.0 - clear_lambda,
            "ac_alpha": ac_alpha,
            "ac_keep": 1.0 - ac_alpha,
            # Effective sample count of a converged EWMA with weight α: (2 − α)/α.
            "ac_n_eff": (2.0 - ac_alpha) / ac_alpha,
            "ac_margin": 2.0 * math.sqrt(2.0 / ((2.0 - ac_alpha) / ac_alpha)),
            # How rare a spike is on normal noise, and where normal rates of |Δz| beyond 2 and
            # 3 extrapolate to (tracker.py, heavy tails).
            "tail_target": math.erfc(self.z_threshold / math.sqrt(2.0)),
            "tail_u_normal": _normal_extrapolation(self.z_threshold),
            "season_wanted": self.season_detect or self.season_period_s > 0.0,
            "season_period_us": round(self.season_period_s * 1_000_000),
            # Weight of one cycle's evidence for a point of the profile.
            "season_alpha": 1.0 - math.exp2(-1.0 / self.season_halflife_cycles),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_thresholds(
        cls, thresholds: AnomalyThresholds, metric: MetricSpec | None = None
    ) -> SeriesConfig:
        """Settings for a metric from the twin model (hard limits, normal range, thresholds)."""
        hard = metric.hard_limits if metric else None
        normal = metric.normal_range if metric else None
        min_std = thresholds.min_std
        if min_std is None:
            min_std = 0.0
            if normal is not None and normal.low is not None and normal.high is not None:
                min_std = NORMAL_RANGE_STD_FLOOR_FRACTION * (normal.high - normal.low)
        drift = thresholds.drift
        season = thresholds.seasonality
        return cls(
            z_threshold=thresholds.z_threshold,
            z_clear=thresholds.z_clear,
            clear_samples=thresholds.clear_samples,
            warmup_samples=thresholds.warmup_samples,
            baseline_halflife_samples=thresholds.baseline_halflife_samples,
            relearn_after_samples=thresholds.relearn_after_samples,
            min_std=min_std,
            drift_method=drift.method,
            cusum_k=drift.k if isinstance(drift, CusumDrift) else _CUSUM_DEFAULTS.k,
            cusum_h=drift.h if isinstance(drift, CusumDrift) else _CUSUM_DEFAULTS.h,
            ewma_smoothing=drift.smoothing
            if isinstance(drift, EwmaDrift)
            else _EWMA_DEFAULTS.smoothing,
            ewma_limit=drift.limit if isinstance(drift, EwmaDrift) else _EWMA_DEFAULTS.limit,
            flatline_window=thresholds.flatline.window_samples,
            flatline_tolerance=thresholds.flatline.tolerance,
            hard_low=_or(hard.low if hard else None, -math.inf),
            hard_high=_or(hard.high if hard else None, math.inf),
            normal_low=_or(normal.low if normal else None, -math.inf),
            normal_high=_or(normal.high if normal else None, math.inf),
            adapt_to_tails=thresholds.adapt_to_tails,
            season_detect=season.detect,
            season_period_s=_or(season.period_s, 0.0),
            season_search_samples=season.search_samples,
            season_halflife_cycles=season.halflife_cycles,
        )


def _normal_extrapolation(z_threshold: float) -> float:
    """Where normal noise's rates of |z| > 2 and > 3, extrapolated as an exponential tail,
    reach the rate of |z| > z_threshold (above z_threshold: the normal tail falls faster)."""
    low = math.erfc(2.0 / math.sqrt(2.0))
    high = math.erfc(3.0 / math.sqrt(2.0))
    return 3.0 + math.log(math.erfc(z_threshold / math.sqrt(2.0)) / high) / math.log(high / low)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Which settings apply to which series: per metric, else per twin, else ``default``."""

    default: SeriesConfig = field(default_factory=SeriesConfig)
    per_twin: Mapping[str, SeriesConfig] = field(default_factory=dict)
    per_metric: Mapping[SeriesKey, SeriesConfig] = field(default_factory=dict)

    def for_series(self, key: SeriesKey) -> SeriesConfig:
        found = self.per_metric.get(key)
        if found is None:
            found = self.per_twin.get(key.twin_id, self.default)
        return found

    @classmethod
    def from_twins(cls, document: TwinDocument) -> DetectorConfig:
        """Settings for every declared metric (and twin defaults for undeclared ones)."""
        per_twin: dict[str, SeriesConfig] = {}
        per_metric: dict[SeriesKey, SeriesConfig] = {}
        for twin in document.twins:
            per_twin[twin.id] = SeriesConfig.from_thresholds(twin.anomaly_thresholds(None))
            for asset in twin.assets:
                for metric_id, metric in asset.metrics.items():
                    thresholds = twin.anomaly_thresholds(metric)
                    key = SeriesKey(twin.id, asset.id, metric_id)
                    per_metric[key] = SeriesConfig.from_thresholds(thresholds, metric)
        return cls(per_twin=per_twin, per_metric=per_metric)
