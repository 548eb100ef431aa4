"""One series: the per-sample reference loop.

:meth:`SeriesTracker.step` is the definition of the detector's behaviour, one sample at a
time. Quiet stretches (no open excursion, warm, correlation learnt) are computed in bulk by
:mod:`~opstwin.telemetry.anomaly.fastpath`, which commits a series up to the first sample
where anything could fire; :meth:`SeriesTracker.resume` takes over from there until the
series has been quiet again for a few samples. Warm-up, excursions and short batches go
through :meth:`~SeriesTracker.step` too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from opstwin.kit.clock import from_micros, rfc3339
from opstwin.kit.ids import IdSource
from opstwin.telemetry.anomaly import seasonal
from opstwin.telemetry.anomaly.config import SeriesConfig, SeriesKey
from opstwin.telemetry.anomaly.kinds import (
    ANOMALY_KINDS,
    DRIFT,
    FLATLINE,
    OUT_OF_RANGE,
    SPIKE,
)
from opstwin.telemetry.anomaly.state import BaselineSnapshot, Excursion, SeriesState

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# A record with the sample time it belongs to (µs), for ordering a batch's output.
Emitted = tuple[int, dict[str, Any]]

# Relative floor on σ: below ~1e-9·|mean| a "variance" is floating-point noise, and a
# perfectly constant baseline would otherwise turn any change into an infinite z.
REL_STD_FLOOR = 1e-9
# Drift scores 0.5 for an estimated 1 σ shift, and a drift excursion is calm again when the
# EWMA of z since the alarm is back within half a σ (the CUSUM's usual allowance).
DRIFT_REFERENCE_SHIFT = 1.0
DRIFT_CLEAR_SHIFT = 0.5
# Real residuals are autocorrelated (seasonality, slow wander), and a CUSUM fed with them
# alarms on every swing. The drift statistic therefore runs on z / sqrt(I), I ≥ 1 being how
# much that correlation inflates the variance of z averaged over the drift detector's
# horizon (an EWMA with λ = 0.1, ~20 samples). Two shapes are covered, I the larger:
#   short memory, AR(1)-like with lag-1 correlation ρ:  I = (1 + (1−λ)ρ) / (1 − (1−λ)ρ);
#   slow components (seasons, wander), a share f of the variance still there LAG samples
#   later:  I = 1 + f·2(1−λ)/λ.
# ρ and f come from squared *differences*, ρ = 1 − E[(z_t − z_{t−1})²]/2 and
# f = 1 − E[(z_t − z_{t−LAG})²]/2 (z has unit variance by construction), because a real
# shift of the mean adds only a few large differences, whereas any second moment around 0
# would grow with the very drift being detected. Both are learnt 8× more slowly than the
# baseline (config.AUTOCORR_HALFLIFE_FACTOR), less two standard errors of their estimate
# (so white noise gives I = 1), and capped so that some sensitivity remains.
DIFF_LAG = 10
DRIFT_HORIZON_LAMBDA = 0.1
SLOW_GAIN = 2.0 * (1.0 - DRIFT_HORIZON_LAMBDA) / DRIFT_HORIZON_LAMBDA
CORRELATION_MAX = 0.95
# Drift detection starts once the correlation has been learnt from this many samples after
# warm-up; before that a seasonal series would look like a string of drifts.
CORRELATION_LEARNING_SAMPLES = 200
# When an excursion outlasts relearn_after_samples, its own linear trend decides: changed by
# less than 1 σ over the window → settled at a new level (re-learn, resolve); more → still
# drifting (follow the trend, keep the anomaly open).
DRIFT_SETTLED_CHANGE = 1.0
# Heavy tails. A noisy sensor's residuals are rarely normal: with Laplace or Student-t noise a
# fixed |z| ≥ 4.5 fires a hundred times more often than on normal noise. How heavy the tails
# are is learnt from the steps between consecutive residuals, Δz, not from z itself — a level
# shift or drift not yet detected would pass for heavy tails in z, while it adds one large
# step at most. The rates at which |Δz| exceeds 2 and 3 times its RMS (slow EWMAs, learnt with
# the correlation and shrunk towards the normal rates by a fading prior, TAIL_PRIOR_WEIGHT)
# give the tail's slope; extrapolated as an exponential tail to where it is as rare
# as z_threshold is on normal noise, that is the level a spike must reach. Normal noise
# extrapolates to tail_u_normal(z_threshold); only the excess over it, less TAIL_MARGIN (the
# estimate's own noise), raises the threshold, by at most TAIL_MAX_FACTOR times.
TAIL_LOW, TAIL_HIGH = 2.0, 3.0
TAIL_LOW_SQ, TAIL_HIGH_SQ = TAIL_LOW * TAIL_LOW, TAIL_HIGH * TAIL_HIGH
NORMAL_LOW = math.erfc(TAIL_LOW / math.sqrt(2.0))
NORMAL_HIGH = math.erfc(TAIL_HIGH / math.sqrt(2.0))
# The prior's weight against the converged EWMA's 1: at first it outweighs a few hundred
# samples of evidence; it fades with the EWMA's own half-life (8 × the baseline's).
TAIL_PRIOR_WEIGHT = 1.0
TAIL_MARGIN = 0.25
TAIL_MAX_FACTOR = 3.0
# Once (1 − α)^n is below this, 1 − (1 − α)^n is exactly 1.0: the decay is flushed to 0
# rather than carried on into subnormal numbers (slow, and pointless).
DECAY_FLUSH = 1e-30
# z is reported (and stored) capped: a zero-variance baseline can make it overflow.
Z_CAP = 1e9
# Work sizes: the shortest stretch worth vectorising (numpy call overhead ~ dozens of
# per-sample steps), quiet samples the loop wants before handing back, and how many samples
# it converts to floats at a time.
FAST_MIN_POINTS = 64
SCALAR_RESUME_AFTER = 8
SCALAR_SLICE = 256
# The residuals' correlation must have been learnt from this many samples for a search to
# conclude from it that there is no cycle (by the first search: 200 − warm-up).
SEARCH_CORRELATION_SAMPLES = 100
# … or the samples' variance must exceed the baseline's by this factor: 1 / (1 − ACF_MIN).
SEARCH_VARIANCE_RATIO = 1.0 / (1.0 - seasonal.ACF_MIN)
# A given cycle is learnt once the samples span two of them; past this many samples without,
# it is not learnt (the samples are kept in the series' state until then, and that state is
# written with every page of telemetry that touches the series: ~36 bytes a sample).
FIXED_SEASON_MAX_SAMPLES = 5_000


class SeriesTracker:
    """Detection for one series: the per-sample reference loop and its vectorised fast path."""

    __slots__ = ("cfg", "ids", "key", "state")

    def __init__(
        self, key: SeriesKey, cfg: SeriesConfig, ids: IdSource, state: SeriesState
    ) -> None:
        self.key = key
        self.ids = ids
        self.state = state
        self.cfg = cfg
        self.configure(cfg)

    def configure(self, cfg: SeriesConfig) -> None:
        """Apply settings. Seasonality that they no longer ask for (or a different given
        cycle) is dropped, and searched for or learnt again if asked."""
        self.cfg = cfg
        st = self.state
        stale = st.period_us and (
            not cfg.season_wanted or (cfg.season_period_us and cfg.season_period_us != st.period_us)
        )
        if stale or (not cfg.season_wanted and (st.season_done or st.season_xs)):
            st.period_us, st.season_origin, st.period_samples, st.profile = 0, 0, 0.0, []
            st.profile_pending, st.season_cycle, st.profile_smooth = [], 0, False
            st.season_ts, st.season_xs, st.season_done = [], [], False
            st.season_searched = 0

    def copy(self, cfg: SeriesConfig) -> SeriesTracker:
        """The same series and state (copied), with settings ``cfg``."""
        return SeriesTracker(self.key, cfg, self.ids, self.state.copy())

    def steady(self) -> bool:
        """Quiet and fully learnt: the fast path may compute the next samples in bulk."""
        st = self.state
        return (
            st.excursion is None
            and st.n >= self.cfg.steady_from
            and st.ac_n >= CORRELATION_LEARNING_SAMPLES
            and len(st.recent_z) == DIFF_LAG
            and (st.season_done or not self.cfg.season_wanted or not self._search_due())
        )

    def searching(self) -> bool:
        """Collecting samples to search for a cycle."""
        return self.cfg.season_wanted and not self.state.season_done

    def fast_limit(self) -> int:
        """Samples the fast path may commit at once: while searching, up to the next search
        (the loop searches before the sample that follows it, so must the fast path)."""
        if self.searching():
            return seasonal.CHECK_EVERY - len(self.state.season_xs) % seasonal.CHECK_EVERY
        return 1 << 62

    def committed(self, ts: IntArray, xs: FloatArray) -> None:
        """The fast path committed these samples (what :meth:`step` would keep for the search)."""
        if self.searching():
            self.state.season_ts.extend(ts.tolist())
            self.state.season_xs.extend(xs.tolist())

    def before(self, t: int) -> None:
        """What the next sample (at ``t``) would do first — run a due search for a cycle, start
        a new cycle of the profile — done now, so that a fast path may follow."""
        if self.searching() and self._search_due():
            self._search()
        st = self.state
        if st.period_us and (t - st.season_origin) // st.period_us != st.season_cycle:
            self._next_cycle((t - st.season_origin) // st.period_us)

    def _next_cycle(self, cycle: int) -> None:
        """A new cycle began: add what the last one taught the profile."""
        st = self.state
        changes = np.asarray(st.profile_pending)
        if st.profile_smooth:
            changes = seasonal.smooth(changes)
        st.profile = (np.asarray(st.profile) + changes).tolist()
        st.profile_pending = [0.0] * len(changes)
        st.season_cycle = cycle

    def cycle_end(self) -> int:
        """The first time (µs) after the current cycle of the profile (a fast chunk must stop
        before it); far in the future for a series without a cycle."""
        st = self.state
        if not st.period_us:
            return 1 << 62
        return st.season_origin + (st.season_cycle + 1) * st.period_us

    def _search_due(self) -> bool:
        st = self.state
        collected = len(st.season_xs)
        return collected % seasonal.CHECK_EVERY == 0 and collected > st.season_searched

    def resume(self, ts: IntArray, xs: FloatArray, i: int, out: list[Emitted]) -> int:
        """Per-sample processing from ``i`` until the series has been quiet for a while (and
        enough samples remain to be worth vectorising); returns where it stopped."""
        total = len(xs)
        quiet = 0
        while i < total:
            stop = min(total, i + SCALAR_SLICE)
            for t, x in zip(ts[i:stop].tolist(), xs[i:stop].tolist(), strict=True):
                self.step(t, x, out)
                i += 1
                if not self.steady():
                    quiet = 0
                    continue
                quiet += 1
                if quiet >= SCALAR_RESUME_AFTER and total - i >= FAST_MIN_POINTS:
                    return i
        return i

    def step(self, t: int, x: float, out: list[Emitted]) -> None:
        """Process one sample: the reference semantics the vectorised path reproduces."""
        cfg, st = self.cfg, self.state
        if cfg.season_wanted and not st.season_done:
            if self._search_due():
                self._search()
            if not st.season_done:
                st.season_ts.append(t)
                st.season_xs.append(x)
        n, m0 = st.n, st.mean
        if st.period_us:
            cycle = (t - st.season_origin) // st.period_us
            if cycle != st.season_cycle:
                self._next_cycle(cycle)
            bucket, frac, season = self._phase(t)
        else:
            bucket, frac, season = 0, 0.0, 0.0
        if n:
            s = math.sqrt(st.var)
            floor = REL_STD_FLOOR * abs(m0)
            if floor < cfg.std_floor:
                floor = cfg.std_floor
            s_eff = s if s > floor else floor
            d = x - m0 - season
            z = d / s_eff
        else:
            s = s_eff = d = z = 0.0
        oor = x < cfg.hard_low or x > cfg.hard_high
        moving = st.last_value is None or abs(x - st.last_value) > cfg.flatline_tolerance
        st.flat_run = 0 if moving else st.flat_run + 1  # counted through excursions too
        st.last_value, st.last_ts = x, t
        st.z = z if -Z_CAP <= z <= Z_CAP else (Z_CAP if z > 0.0 else -Z_CAP)

        if st.excursion is not None:
            self._continue(t, x, season, z, s, s_eff, oor, moving, out)
            return

        kind: str | None = None
        shift = 0.0
        if oor:
            kind = OUT_OF_RANGE
        elif n >= cfg.warmup_samples and abs(z) >= cfg.z_threshold and abs(z) >= self.spike_level():
            kind = SPIKE
        elif n >= cfg.warmup_samples:
            # Early z are unreliable (a baseline of a few samples), so the correlation is
            # learnt from the end of warm-up on, like the drift statistic itself.
            scale = self._learn_correlation(z)
            if st.ac_n > CORRELATION_LEARNING_SAMPLES:
                shift = self._update_drift(z * scale, scale)
            if st.flat_run >= cfg.flatline_window - 1 and s > cfg.flat_min_std:
                kind = FLATLINE
            elif shift:
                kind = DRIFT
        if kind is not None:
            self._open(kind, t, x, season, z, s_eff, shift, out)
            return
        if n:
            recent = st.recent_z
            recent.append(z)
            if len(recent) > DIFF_LAG:
                del recent[0]

        n1 = n + 1
        if n1 >= cfg.const_weight_from:
            a, c, ca = cfg.alpha, cfg.keep, cfg.keep_alpha
        else:
            a = 1.0 / n1
            c = 1.0 - a
            ca = c * a
        st.mean = c * m0 + a * (x - season)
        st.var = c * st.var + ca * (d * d)
        st.n = n1
        if st.period_us:
            self._learn_season(bucket, frac, d)

    def season_at(self, t: int) -> float:
        """The cycle's profile at ``t`` (interpolated between its points)."""
        return self._phase(t)[2]

    def _phase(self, t: int) -> tuple[int, float, float]:
        """The profile point at or before ``t``'s phase, the fraction of the way to the next,
        and the profile there."""
        st = self.state
        profile = st.profile
        bucket, frac = seasonal.profile_at(profile, t, st.season_origin, st.period_us)
        here = profile[bucket]
        following = profile[bucket + 1] if bucket + 1 < len(profile) else profile[0]
        return bucket, frac, here + frac * (following - here)

    def _learn_season(self, bucket: int, frac: float, residual: float) -> None:
        """Move the two profile points around a sample's phase towards what was left over
        (from the next cycle on)."""
        st = self.state
        pending = st.profile_pending
        # Weighted so that a point's updates over one cycle sum to season_alpha.
        step = self.cfg.season_alpha * len(pending) / st.period_samples * residual
        pending[bucket] += (1.0 - frac) * step
        pending[bucket + 1 if bucket + 1 < len(pending) else 0] += frac * step

    def _search(self) -> None:
        """Search the collected samples for a cycle (a given one: wait until they span two);
        on success learn its profile and carry on seasonal, else keep collecting or give up."""
        cfg, st = self.cfg, self.state
        collected = st.season_searched = len(st.season_xs)
        learnt = st.ac_n >= SEARCH_CORRELATION_SAMPLES
        if (
            not cfg.season_period_us
            and learnt
            and not self._correlated()
            and float(np.var(st.season_xs)) <= SEARCH_VARIANCE_RATIO * st.var
        ):
            # A cycle strong enough to matter (a third of the variance, see ACF_MIN) makes
            # the residuals correlated, or — a sharp one, whose turns are excursions that
            # teach the baseline nothing — the samples far more spread than the baseline's
            # noise: neither by the first search, none to wait for, and the samples kept for
            # the search (stored with the state) are let go.
            self._end_search()
            return
        ts = np.asarray(st.season_ts, dtype=np.int64)
        xs = np.asarray(st.season_xs, dtype=np.float64)
        interval = seasonal.sampling_interval(ts)
        if not interval:  # the timestamps do not advance: no phase to speak of
            self._end_search()
            return
        period_us = 0
        if cfg.season_period_us:
            limit = FIXED_SEASON_MAX_SAMPLES
            if ts[-1] - ts[0] >= 2 * cfg.season_period_us:
                period_us = cfg.season_period_us
        else:
            limit = cfg.season_search_samples
            if (found := seasonal.find_period_in_time(ts, xs, interval)) is not None:
                period_us = seasonal.snap_period(found)
        samples = period_us / interval
        if samples >= seasonal.MIN_PERIOD:
            self._start_season(ts, xs, period_us, samples)
        elif collected >= limit:
            self._end_search()

    def _end_search(self) -> None:
        st = self.state
        st.season_done, st.season_ts, st.season_xs, st.season_searched = True, [], [], 0

    def _correlated(self) -> bool:
        """The residuals are correlated beyond chance (learnt since warm-up; see
        :func:`drift_scale`): a cycle of any strength would make them so."""
        st = self.state
        n = st.ac_n
        if not n:
            return False
        margin = self.cfg.ac_margin if n >= self.cfg.ac_n_eff else 2.0 * math.sqrt(2.0 / n)
        return drift_scale(st.diff1_sq, st.diff_lag_sq, 1.0 - st.ac_decay, margin) < 1.0

    def _start_season(self, ts: IntArray, xs: FloatArray, period_us: int, samples: float) -> None:
        """Learn the cycle's profile from the collected samples, then the baseline and the
        residuals' correlation again as if the cycle had been known from the start."""
        cfg, st = self.cfg, self.state
        origin = int(ts[0])
        profile, held_out, st.profile_smooth = seasonal.fit_profile(
            ts, xs, origin, period_us, samples
        )
        buckets = len(profile)
        positions = seasonal.phase_positions(ts, origin, period_us, buckets)
        wrapped = np.append(profile, profile[0])
        residuals = xs - np.interp(positions, np.arange(buckets + 1), wrapped)
        st.period_us, st.season_origin, st.profile = period_us, origin, profile.tolist()
        st.profile_pending = [0.0] * buckets
        st.season_cycle = (int(ts[-1]) - origin) // period_us
        st.period_samples = samples
        self._end_search()
        # The level again, from the first cycle on, and the residuals' correlation: what the
        # live loop would have learnt, skipping (as it would) samples that would have opened
        # a spike. The variance is the samples' spread around level and a profile fitted
        # without them (the profile was fitted to these very samples: replayed, they would
        # understate the noise), the mean square of those the live loop would have learnt
        # from (a robust spread would understate heavy tails, which the live baseline keeps).
        mean = float(np.median(residuals[: max(1, round(samples))]))
        centred = held_out - np.median(held_out)
        spread = seasonal.MAD_TO_STD * float(np.median(np.abs(centred)))
        usual = centred[np.abs(centred) < cfg.z_threshold * spread]
        var = float(np.mean(usual * usual)) if usual.size else spread * spread
        var = max(var, cfg.std_floor * cfg.std_floor)
        st.diff1_sq = st.diff_lag_sq = st.tail_low = st.tail_high = 0.0
        st.ac_n, st.ac_decay, st.recent_z = 0, 1.0, []
        for value in residuals.tolist():
            s = math.sqrt(var)
            floor = max(REL_STD_FLOOR * abs(mean), cfg.std_floor)
            d = value - mean
            z = d / (s if s > floor else floor)
            if abs(z) >= cfg.z_threshold:
                continue
            self._learn_correlation(z)
            st.recent_z.append(z)
            if len(st.recent_z) > DIFF_LAG:
                del st.recent_z[0]
            mean = cfg.keep * mean + cfg.alpha * value
        st.mean, st.var = mean, var
        st.cusum_pos = st.cusum_neg = st.ewma_z = 0.0
        st.cusum_pos_len = st.cusum_neg_len = 0
        if st.excursion is not None:
            st.excursion.restart_window()  # its fit was of raw values, not of the level

    def _learn_correlation(self, z: float) -> float:
        """Learn the residuals' correlation from this sample; returns the drift scale
        1/sqrt(I) as it stood before it."""
        cfg, st = self.cfg, self.state
        scale = 1.0
        n = st.ac_n
        if n:
            margin = cfg.ac_margin if n >= cfg.ac_n_eff else 2.0 * math.sqrt(2.0 / n)
            scale = drift_scale(st.diff1_sq, st.diff_lag_sq, 1.0 - st.ac_decay, margin)
        recent = st.recent_z
        if len(recent) < DIFF_LAG:  # just after an excursion: nothing to difference yet
            return scale
        step1 = z - recent[-1]
        step_lag = z - recent[0]
        keep, alpha = cfg.ac_keep, cfg.ac_alpha
        if cfg.adapt_to_tails:
            # |Δz| beyond 2 and 3 of its own RMS so far (squares, no division: the fast
            # path evaluates the same expression).
            jump = step1 * step1 * (1.0 - st.ac_decay)
            low = 1.0 if jump > TAIL_LOW_SQ * st.diff1_sq else 0.0
            high = 1.0 if jump > TAIL_HIGH_SQ * st.diff1_sq else 0.0
            st.tail_low = keep * st.tail_low + alpha * low
            st.tail_high = keep * st.tail_high + alpha * high
        st.diff1_sq = keep * st.diff1_sq + alpha * (step1 * step1)
        st.diff_lag_sq = keep * st.diff_lag_sq + alpha * (step_lag * step_lag)
        decay = st.ac_decay * keep
        st.ac_decay = decay if decay >= DECAY_FLUSH else 0.0
        st.ac_n = n + 1
        return scale

    def spike_level(self) -> float:
        """The |z| a spike must reach now: ``z_threshold``, raised on heavy-tailed noise."""
        cfg, st = self.cfg, self.state
        if not cfg.adapt_to_tails:
            return cfg.z_threshold
        return spike_level(st.tail_low, st.tail_high, st.ac_decay, cfg)

    def _update_drift(self, z: float, scale: float) -> float:
        """Advance the drift statistic with the scaled residual; the signed shift estimate
        (in σ of the raw residual) if it alarms, else 0."""
        cfg, st = self.cfg, self.state
        if cfg.drift_method == "ewma":
            st.ewma_z = cfg.ewma_keep * st.ewma_z + cfg.ewma_smoothing * z
            return st.ewma_z / scale if abs(st.ewma_z) >= cfg.ewma_limit_z else 0.0
        up = st.cusum_pos + (z - cfg.cusum_k)
        if up > 0.0:
            st.cusum_pos, st.cusum_pos_len = up, st.cusum_pos_len + 1
        else:
            st.cusum_pos, st.cusum_pos_len = 0.0, 0
        down = st.cusum_neg + (-z - cfg.cusum_k)
        if down > 0.0:
            st.cusum_neg, st.cusum_neg_len = down, st.cusum_neg_len + 1
        else:
            st.cusum_neg, st.cusum_neg_len = 0.0, 0
        # The CUSUM's own estimate of the shift (mean of the scaled z since it left 0), in σ.
        if st.cusum_pos >= cfg.cusum_h and st.cusum_pos >= st.cusum_neg:
            return (st.cusum_pos / st.cusum_pos_len + cfg.cusum_k) / scale
        if st.cusum_neg >= cfg.cusum_h:
            return -(st.cusum_neg / st.cusum_neg_len + cfg.cusum_k) / scale
        return 0.0

    def _open(
        self,
        kind: str,
        t: int,
        x: float,
        season: float,
        z: float,
        s_eff: float,
        shift: float,
        out: list[Emitted],
    ) -> None:
        cfg, st = self.cfg, self.state
        metric = self.key.metric
        features = {
            f"{metric}_z": st.z,
            f"{metric}_value": x,
            f"{metric}_baseline_mean": st.mean + season,
            f"{metric}_baseline_std": math.sqrt(st.var),
        }
        if st.period_us:
            features[f"{metric}_seasonal"] = season
            features[f"{metric}_period_s"] = st.period_us / 1_000_000
        if kind == SPIKE:
            level = self.spike_level()
            ratio = abs(z) / level
            if level > cfg.z_threshold:
                features[f"{metric}_spike_level_z"] = level
        elif kind == DRIFT:
            ratio = abs(shift) / DRIFT_REFERENCE_SHIFT
            features[f"{metric}_shift_sigma"] = shift
        elif kind == FLATLINE:
            ratio = 1.0
            features[f"{metric}_flat_samples"] = float(st.flat_run + 1)
        else:
            limit = cfg.hard_low if x < cfg.hard_low else cfg.hard_high
            features[f"{metric}_hard_limit"] = limit
            ratio = abs(x - limit) / s_eff if s_eff > 0.0 else 0.0
        outside_normal = not cfg.normal_low <= x <= cfg.normal_high
        assessment = ANOMALY_KINDS[kind].assess(ratio, outside_normal)
        anomaly_id = self.ids.new("ano")
        record = self._record(anomaly_id, t, kind, assessment.score, assessment.severity, features)
        record["status"] = "open"
        record["recommended_next"] = assessment.recommended_next
        out.append((t, record))
        st.excursion = Excursion(
            anomaly_id=anomaly_id,
            kind=kind,
            score=assessment.score,
            severity=assessment.severity,
            start_ts=t,
            clear_stat=shift,
            peak_abs_z=abs(st.z),
        )
        st.excursion.add(x - season)
        st.cusum_pos = st.cusum_neg = st.ewma_z = 0.0
        st.cusum_pos_len = st.cusum_neg_len = 0
        st.recent_z = []  # lagged differences must not span the excursion

    def _continue(
        self,
        t: int,
        x: float,
        season: float,
        z: float,
        s: float,
        s_eff: float,
        oor: bool,
        moving: bool,
        out: list[Emitted],
    ) -> None:
        cfg, st = self.cfg, self.state
        ex = st.excursion
        if ex is None:  # pragma: no cover - only called with an open excursion
            return
        ex.samples += 1
        ex.add(x - season)
        ex.peak_abs_z = max(ex.peak_abs_z, abs(st.z))
        # A better explanation replaces the open anomaly: a hard-limit breach anything softer,
        # a stuck sensor a spike or drift (a sensor stuck off the mean looks like a shift
        # before the flatline window is full).
        if oor and ex.kind != OUT_OF_RANGE:
            self._resolve(t, x, "superseded", out)
            self._open(OUT_OF_RANGE, t, x, season, z, s_eff, 0.0, out)
            return
        if (
            ex.kind in (SPIKE, DRIFT)
            and st.flat_run >= cfg.flatline_window - 1
            and s > cfg.flat_min_std
        ):
            self._resolve(t, x, "superseded", out)
            self._open(FLATLINE, t, x, season, z, s_eff, 0.0, out)
            return
        if ex.kind == SPIKE:
            calm = abs(z) < cfg.z_clear
        elif ex.kind == OUT_OF_RANGE:
            calm = not oor and (st.n < cfg.warmup_samples or abs(z) < cfg.z_clear)
        elif ex.kind == DRIFT:
            ex.clear_stat = cfg.clear_keep * ex.clear_stat + cfg.clear_lambda * z
            calm = abs(ex.clear_stat) < DRIFT_CLEAR_SHIFT
        else:
            calm = moving
        ex.calm = ex.calm + 1 if calm else 0
        if ex.calm >= cfg.clear_samples and not ex.tracking:
            self._resolve(t, x, "returned_to_baseline", out)
        elif ex.win_n >= cfg.relearn_after_samples and ex.kind != FLATLINE and not oor:
            self._relearn(t, x, out)

    def _relearn(self, t: int, x: float, out: list[Emitted]) -> None:
        """An excursion outlasted the re-learn window. If its level settled, that level is
        the new normal (learn it, resolve); if it is still drifting, follow the trend and
        keep the one anomaly open (never while a hard limit is breached, nor for a stuck
        sensor: the caller checks)."""
        st = self.state
        ex = st.excursion
        if ex is None:  # pragma: no cover - only called with an open excursion
            return
        slope = ex.win_c_kx / ex.win_m2_k if ex.win_m2_k > 0.0 else 0.0
        sigma = max(math.sqrt(st.var), self.cfg.std_floor)
        last_k = ex.win_n - 1.0
        if abs(slope) * last_k < DRIFT_SETTLED_CHANGE * sigma:
            st.mean = ex.win_mean_x
            # σ keeps at least its old value: a short, quiet window must not shrink it to 0.
            residual = max(ex.win_m2_x - slope * ex.win_c_kx, 0.0) / ex.win_n
            st.var = max(st.var, residual)
            self._resolve(t, x, "rebaselined", out)
        else:
            st.mean = ex.win_mean_x + slope * (last_k - ex.win_mean_k)
            ex.tracking = True
            ex.calm = 0
            ex.restart_window()

    def _resolve(self, t: int, x: float, resolution: str, out: list[Emitted]) -> None:
        st = self.state
        ex = st.excursion
        if ex is None:  # pragma: no cover - only called with an open excursion
            return
        metric = self.key.metric
        features = {
            f"{metric}_z": st.z,
            f"{metric}_value": x,
            f"{metric}_peak_abs_z": ex.peak_abs_z,
            f"{metric}_duration_samples": float(ex.samples),
            f"{metric}_duration_s": (t - ex.start_ts) / 1_000_000,
        }
        record = self._record(self.ids.new("ano"), t, ex.kind, ex.score, ex.severity, features)
        record.update(
            status="resolved",
            resolves=ex.anomaly_id,
            resolution=resolution,
            recommended_next="none",
        )
        out.append((t, record))
        st.excursion = None

    def _record(
        self,
        anomaly_id: str,
        t: int,
        kind: str,
        score: float,
        severity: str,
        features: dict[str, float],
    ) -> dict[str, Any]:
        return {
            "anomaly_id": anomaly_id,
            "twin_id": self.key.twin_id,
            "asset_id": self.key.asset_id,
            "metric": self.key.metric,
            "ts": rfc3339(from_micros(t)),
            "kind": kind,
            "score": score,
            "severity": severity,
            "features": features,
        }

    def snapshot(self) -> BaselineSnapshot:
        st = self.state
        has = st.n > 0
        mean = st.mean
        if st.period_us and st.last_ts is not None:
            mean += self.season_at(st.last_ts)
        return BaselineSnapshot(
            samples=st.n,
            mean=mean if has else None,
            std=math.sqrt(st.var) if has else None,
            z=st.z if has else None,
            last_value=st.last_value,
            last_ts=None if st.last_ts is None else from_micros(st.last_ts),
            warmed_up=st.n >= self.cfg.warmup_samples,
            open_anomaly_id=st.excursion.anomaly_id if st.excursion else None,
            open_kind=st.excursion.kind if st.excursion else None,
            period_s=st.period_us / 1_000_000 if st.period_us else None,
        )


def spike_level(tail_low: float, tail_high: float, decay: float, cfg: SeriesConfig) -> float:
    """The spike threshold from the tail-rate EWMAs (before bias correction, with ``decay`` =
    (1 − α)^n: their weight so far is 1 − decay); see TAIL_LOW above. The prior is normal
    noise seen before the first sample, fading like any old sample."""
    prior = TAIL_PRIOR_WEIGHT * decay
    debias = 1.0 - decay
    low = (tail_low + prior * NORMAL_LOW) / (debias + prior)
    high = (tail_high + prior * NORMAL_HIGH) / (debias + prior)
    excess = TAIL_HIGH + math.log(cfg.tail_target / high) / math.log(high / low) - cfg.tail_u_normal
    excess -= TAIL_MARGIN
    if excess <= 0.0:
        return cfg.z_threshold
    return min(cfg.z_threshold + excess, TAIL_MAX_FACTOR * cfg.z_threshold)


def drift_scale(diff1_sq: float, diff_lag_sq: float, debias: float, margin: float) -> float:
    """1/sqrt(I) from the difference EWMAs (before bias correction) after at least one update;
    ``margin`` is two standard errors of 1 − E[d²]/2 on white noise, 2·sqrt(2/n_eff)."""
    rho = 1.0 - diff1_sq / debias / 2.0 - margin
    rho = 0.0 if rho < 0.0 else CORRELATION_MAX if rho > CORRELATION_MAX else rho
    share = 1.0 - diff_lag_sq / debias / 2.0 - margin
    share = 0.0 if share < 0.0 else CORRELATION_MAX if share > CORRELATION_MAX else share
    phi = (1.0 - DRIFT_HORIZON_LAMBDA) * rho
    short_memory = (1.0 + phi) / (1.0 - phi)
    slow = 1.0 + share * SLOW_GAIN
    return 1.0 / math.sqrt(short_memory if short_memory > slow else slow)
