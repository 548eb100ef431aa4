"""Streaming anomaly detection per (twin, asset, metric), emitting ``anomaly.v1`` records.

The model, per series
---------------------
* **Baseline**: mean and variance of the values, updated with weight ``a = max(1/n, α)``:
  an exact running (Welford) mean and population variance for the first ``1/α`` samples,
  then an exponentially weighted one with half-life ``baseline_halflife_samples``. Each
  sample is scored against the baseline *before* it is learnt:
  ``z = (x − mean) / max(std, min_std, 1e-9·|mean|)``.
* **Cycles** (:mod:`.seasonal`): the first samples (every 200, up to ``search_samples``) are
  searched for a cycle — a clear, repeated autocorrelation peak, measured in time and snapped to
  the clock (an hour, a shift, a day, a week) when within 6 % of one; or the cycle is given
  (``period_s``). Once found, the expected value is ``mean + profile(phase)`` — additive
  Holt–Winters without trend: the profile (up to 288 points around the cycle, interpolated;
  smoothed 1-2-1 when that predicts held-out cycles better) is fitted robustly to the samples
  seen, then learnt with half-life ``halflife_cycles`` — and everything below runs on what
  departs from it. The search ends early for series whose residuals are uncorrelated and whose
  samples spread no more than the baseline's noise (no cycle could hide there). The profile changes only between cycles (what a
  cycle teaches it is added when the next begins), so quiet stretches of a cyclic series are
  vectorised too, a cycle at a time.
* **Warm-up**: nothing but hard-limit breaches can fire before ``warmup_samples`` samples;
  drift detection waits a further 200 samples while it learns how correlated the residuals are.
* **Kinds** (priority in this order when several fire on one sample):

  ``out_of_range``  the value is outside the metric's hard limits (fires during warm-up too:
                    a limit needs no baseline);
  ``spike``         ``|z| ≥ z_threshold`` — raised on heavy-tailed noise (``adapt_to_tails``):
                    the rates at which steps between residuals exceed 2 and 3 times their RMS,
                    extrapolated as an exponential tail, say where |z| is as rare as
                    ``z_threshold`` is on normal noise (at most 3 × ``z_threshold``);
  ``flatline``      ``window_samples`` values each within ``tolerance`` of the previous while
                    the baseline std is above ``max(10·tolerance, min_std)`` (a stuck sensor);
  ``drift``         a sustained shift of the mean: two-sided CUSUM (allowance ``k``, decision
                    interval ``h``) or an EWMA chart, on ``z / sqrt(I)``. ``I ≥ 1`` is how much
                    the residuals' own correlation (seasonality, slow wander, AR noise)
                    inflates their average over the detector's horizon, learnt from lagged
                    differences so that the drift being detected does not teach it; on white
                    noise ``I = 1`` and this is the textbook CUSUM.
* **Hysteresis**: an excursion opens *one* anomaly. While it is open the baseline is frozen
  (the anomaly must not teach the baseline that it is normal) and nothing else opens, except
  a better explanation, which supersedes it (the first is resolved as ``superseded``): a
  hard-limit breach replaces any softer kind, and a stuck sensor a spike or drift (a sensor
  stuck away from the mean drives the CUSUM before the flatline window is full). It
  resolves, with a second record
  (``status: resolved``, ``resolves: <id>``), after ``clear_samples`` consecutive calm
  samples: ``|z| < z_clear`` (spike; out_of_range also needs to be back inside the limits),
  the EWMA of ``z`` since the alarm back within 0.5 σ (drift), the value moving (flatline).
* **Level shifts and ramps**: every ``relearn_after_samples`` of an excursion, its linear
  trend over that window decides. Changed by less than 1 σ: it settled at a new level, which
  becomes the baseline, and the anomaly resolves as ``rebaselined``. More: it is still
  moving; the baseline follows the fitted trend and the same anomaly stays open. Never for a
  flatline (a stuck sensor stays open until it moves) nor while a hard limit is breached.

Score and severity
------------------
Each kind turns its evidence into a ratio ``r`` that is 1 at its alarm threshold, and the
score is ``1 − 2^(−r²)``: 0.5 at the threshold, 0.94 at twice it, approaching 1.

* spike: ``r = |z| / z_threshold``;
* drift: ``r`` = the estimated shift in σ (CUSUM: mean scaled residual since the statistic
  left 0, ``S/run + k``, over the scale; EWMA: the smoothed residual over the scale);
* flatline: a fixed 0.75 — a stuck sensor is a data fault, not a measure of the process;
* out_of_range: ``0.9 + 0.1·(1 − 2^(−e))``, ``e`` the excess beyond the limit in σ.

Severity from the score: < 0.7 low, < 0.9 medium, otherwise high; raised one level (up to
high) when the value is also outside the metric's normal range. ``critical`` is kept for
hard-limit breaches; a flatline is ``medium``. ``recommended_next``: ``sim_run`` for drift,
out_of_range and spikes above low (simulate corrective setpoints), ``observe`` for low
spikes, ``inspect_sensor`` for flatlines, ``none`` on resolution records.

Layout: :mod:`.kinds` (kind registry, scoring), :mod:`.config` (settings per series, from the
twin model), :mod:`.seasonal` (the cycle search and profile), :mod:`.state` (what persists), :mod:`.tracker` (one series: the per-sample
reference loop), :mod:`.fastpath` (quiet stretches vectorised, many series at once),
:mod:`.detector` (many series, batches, state, forks that are adopted or dropped).
"""

from opstwin.telemetry.anomaly.config import DetectorConfig, SeriesConfig, SeriesKey
from opstwin.telemetry.anomaly.detector import AnomalyDetector
from opstwin.telemetry.anomaly.kinds import (
    ANOMALY_KINDS,
    AnomalyKind,
    Assessment,
    ratio_score,
    severity_for,
)
from opstwin.telemetry.anomaly.state import STATE_VERSION, BaselineSnapshot

__all__ = [
    "ANOMALY_KINDS",
    "STATE_VERSION",
    "AnomalyDetector",
    "AnomalyKind",
    "Assessment",
    "BaselineSnapshot",
    "DetectorConfig",
    "SeriesConfig",
    "SeriesKey",
    "ratio_score",
    "severity_for",
]
