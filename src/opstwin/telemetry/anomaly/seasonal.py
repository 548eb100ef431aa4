"""Seasonality: finding a series' cycle, and the cycle's profile.

Many real series repeat: a daily load curve, a shift pattern, a batch cycle. Against a plain
moving baseline such a series is a string of swings; the detector then has to distrust its
own residuals (the correlation inflation in :mod:`.tracker`), and that also blunts it to real
drifts. With the cycle known, the expected value is ``level + profile(phase)`` (additive
Holt–Winters without a trend term) and what is scored is the rest.

The cycle is found from the first samples of a series (every :data:`CHECK_EVERY` of them,
up to ``search_samples``): the autocorrelation of the (robustly clipped, detrended) values
must have a clear peak — a local maximum of at least :data:`ACF_MIN`, rising at least
:data:`ACF_PROMINENCE` above the lowest correlation at a shorter lag, and confirmed one
cycle later — at a lag seen at least :data:`MIN_CYCLES` times. Of the peaks that qualify the
shortest within 80 % of the best is taken (a cycle's multiples are peaks too). White noise,
random walks, AR noise and level shifts have no such peak.

The phase is a position in *time* (``period_us`` = lag × the median sampling interval), so a
gap in the data does not shift the profile. The profile has at most :data:`MAX_BUCKETS`
points around the cycle, linearly interpolated between them.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: The search runs each time this many more samples have been collected.
CHECK_EVERY = 200
#: Shortest cycle considered, in samples (shorter "cycles" are noise or aliasing).
MIN_PERIOD = 4
#: A cycle must be seen this many times in the samples searched.
MIN_CYCLES = 3
#: Autocorrelation at the cycle: at least this, and this much above the trough before it.
ACF_MIN = 0.3
ACF_PROMINENCE = 0.2
#: … and this many standard errors above chance (see :func:`_standard_error`).
NOISE_SE = 3.0
#: One cycle later the correlation must still be at least this share of the peak's.
AGAIN_SHARE = 0.6
#: Of the qualifying peaks, the shortest within this share of the best is the cycle.
SHORTEST_WITHIN = 0.8
#: The search's regular grid may be at most this many times the samples (big gaps: no search).
MAX_GRID_GROWTH = 2
#: A peak's position is fitted over the correlations within this share of a cycle of it.
PEAK_FIT_SHARE = 0.125
#: Cycles of the clock that real series follow (1, 2, 3, 4, 6, 8, 12 h; 1, 7 days): a cycle
#: measured within this share of one is taken to be it (a few cycles' worth of data measure
#: it only to a few per cent, and an error of e per cycle shifts the phase by e every cycle).
CALENDAR_PERIODS_US = tuple(hours * 3_600_000_000 for hours in (1, 2, 3, 4, 6, 8, 12, 24, 168))
CALENDAR_TOLERANCE = 0.06
#: Points of the profile around one cycle.
MAX_BUCKETS = 288
#: Values further than this many scaled MADs from the median are clipped before the search,
#: so that an anomaly among the first samples does not decide the cycle.
CLIP_MADS = 6.0
MAD_TO_STD = 1.4826


def find_period(xs: FloatArray) -> float | None:
    """The cycle of ``xs`` in samples, or None if it has none (see the module docstring).
    Not a whole number: the peak is refined between lags by a parabola through its
    neighbours."""
    n = len(xs)
    max_lag = n // MIN_CYCLES
    if max_lag <= MIN_PERIOD:
        return None
    y = _clipped(xs)
    k = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(k, y, 1)
    y = y - (slope * k + intercept)
    acf = _autocorrelation(y, min(n - 1, 2 * max_lag + 1))
    if acf is None:
        return None
    lags = np.arange(MIN_PERIOD, max_lag + 1)
    value = acf[lags]
    peak = (value >= acf[lags - 1]) & (value >= acf[lags + 1])
    trough = np.minimum.accumulate(acf)[lags]
    noise_floor = NOISE_SE * _standard_error(acf, n, lags)
    again = acf[np.minimum(2 * lags, len(acf) - 1)]
    qualifies = (
        peak
        & (value >= np.maximum(ACF_MIN, noise_floor))
        & (value - trough >= ACF_PROMINENCE)
        & (again >= AGAIN_SHARE * value)
    )
    candidates = lags[qualifies]
    if not candidates.size:
        return None
    best = float(acf[candidates].max())
    lag = next(k for k in candidates.tolist() if acf[k] >= SHORTEST_WITHIN * best)
    # An error of e samples in the cycle shifts the phase by e every cycle: measure it over
    # as many cycles as the correlations reach, doubling: the m-th peak is looked for near
    # m × the estimate so far (within what its error allows) and refines it to peak / m.
    width = max(1, round(lag * PEAK_FIT_SHARE))
    period, error, cycles = _vertex(acf, lag, width), 1.0, 2
    while True:
        reach = math.ceil(cycles * error) + 1
        centre = round(cycles * period)
        low, high = max(1, centre - reach), min(len(acf) - 2, centre + reach)
        if high - low < 2:
            break
        far = low + int(np.argmax(acf[low : high + 1]))
        if not (low < far < high and acf[far] >= AGAIN_SHARE * acf[lag]):
            break
        period, error, cycles = _vertex(acf, far, width) / cycles, 1.0 / cycles, 2 * cycles
    return period


def _vertex(acf: FloatArray, lag: int, width: int) -> float:
    """The peak at ``lag`` refined between lags: the vertex of the parabola fitted to the
    correlations within ``width`` lags of it (a cycle's peak is broad, and three points
    would follow the noise)."""
    low, high = max(1, lag - width), min(len(acf) - 1, lag + width)
    near = np.arange(low, high + 1)
    curvature, slope, _ = np.polyfit(near - lag, acf[low : high + 1], 2)
    offset = -slope / (2.0 * curvature) if curvature < 0.0 else 0.0
    return lag + max(-0.5 * width, min(0.5 * width, float(offset)))


def find_period_in_time(ts: IntArray, xs: FloatArray, interval: int) -> float | None:
    """The cycle (µs) of samples taken every ``interval`` µs or so: searched on the values
    interpolated onto a regular grid of that step, so that gaps and uneven sampling do not
    turn a lag in samples into the wrong length of time. None if it has none (or the gaps
    are so large that the grid would be more than :data:`MAX_GRID_GROWTH` times longer)."""
    steps = (int(ts[-1]) - int(ts[0])) // interval + 1
    if steps > MAX_GRID_GROWTH * len(xs):
        return None
    grid = ts[0] + np.arange(steps, dtype=np.int64) * interval
    found = find_period(xs if steps == len(xs) else np.interp(grid, ts, xs))
    return None if found is None else found * interval


def _standard_error(acf: FloatArray, n: int, lags: IntArray) -> FloatArray:
    """Bartlett's standard error of a correlation at ``lags`` if the series had only its
    short memory (the correlations before the first sign change): AR noise and slow wander
    make far larger chance peaks than white noise, a cycle's peak stands above them."""
    negative = np.flatnonzero(acf[1:] <= 0.0)
    memory = int(negative[0]) + 1 if negative.size else len(acf)
    spread = 1.0 + 2.0 * float(np.sum(acf[1:memory] ** 2))
    error: FloatArray = np.sqrt(spread / (n - lags))
    return error


def sampling_interval(ts: IntArray) -> int:
    """The median interval between consecutive timestamps (µs), 0 if they do not advance."""
    steps = np.diff(ts)
    steps = steps[steps > 0]
    return int(np.median(steps)) if steps.size else 0


def snap_period(period_us: float) -> int:
    """A cycle measured from the data, snapped to a calendar period (an hour, a shift, a day,
    a week…) within :data:`CALENDAR_TOLERANCE`, else to whole seconds when it is that long."""
    for calendar in CALENDAR_PERIODS_US:
        if abs(period_us / calendar - 1.0) <= CALENDAR_TOLERANCE:
            return calendar
    return round(period_us / 1_000_000) * 1_000_000 if period_us >= 10_000_000 else round(period_us)


def bucket_count(period_samples: float) -> int:
    return max(MIN_PERIOD, min(MAX_BUCKETS, round(period_samples)))


def fit_profile(
    ts: IntArray, xs: FloatArray, origin: int, period_us: int, period_samples: float
) -> tuple[FloatArray, FloatArray, bool]:
    """The cycle's profile from samples covering at least two cycles: per phase point, the
    median deviation from a centred moving average one cycle wide (robust to an anomaly
    among the samples and to a trend); phase points without samples are interpolated from
    their neighbours. Centred on 0: the level carries the mean.

    Also returns each sample's deviation from that moving average and from a profile fitted
    on the *other* cycles (odd against even): residuals from the fitted profile itself would
    understate the noise, since each point of the profile was fitted to them; and whether the
    profile is smoothed (then so should what it learns later be)."""
    buckets = bucket_count(period_samples)
    width = max(1, min(len(xs), round(period_samples)))
    sums = np.concatenate(([0.0], np.cumsum(_clipped(xs))))
    moving = (sums[width:] - sums[:-width]) / width  # mean of xs[i : i + width]
    trend = np.empty(len(xs))
    half = width // 2
    trend[half : half + len(moving)] = moving
    trend[:half] = moving[0]
    trend[half + len(moving) :] = moving[-1]
    deviation = xs - trend
    positions = phase_positions(ts, origin, period_us, buckets)
    nearest = np.rint(positions).astype(np.int64) % buckets
    odd = ((ts - origin) // period_us) % 2 == 1
    profile = _medians(deviation, nearest, buckets)
    if odd.all() or not odd.any():
        return profile, deviation - profile[nearest], False
    # Smoothed over neighbouring points (1-2-1) a point rests on more samples, but a sharp
    # turn (a shift starting) is blurred: whichever predicts the held-out cycles better.
    from_even = _medians(deviation[~odd], nearest[~odd], buckets)
    from_odd = _medians(deviation[odd], nearest[odd], buckets)
    held_out = np.where(odd, deviation - from_even[nearest], deviation - from_odd[nearest])
    smoothed = np.where(
        odd, deviation - smooth(from_even)[nearest], deviation - smooth(from_odd)[nearest]
    )
    if float(np.mean(smoothed * smoothed)) < float(np.mean(held_out * held_out)):
        return smooth(profile), smoothed, True
    return profile, held_out, False


def smooth(profile: FloatArray) -> FloatArray:
    """Each point averaged with its neighbours around the cycle, weights 1-2-1."""
    before = np.concatenate((profile[-1:], profile[:-1]))
    after = np.concatenate((profile[1:], profile[:1]))
    smoothed: FloatArray = 0.25 * before + 0.5 * profile + 0.25 * after
    return smoothed


def _medians(deviation: FloatArray, nearest: IntArray, buckets: int) -> FloatArray:
    """Per profile point, the median deviation of its samples (interpolated where it has
    none), centred on 0."""
    # Medians of all points at once: sorted by point, then by deviation, each point's
    # samples are a run whose middle is its median.
    ordered = deviation[np.lexsort((deviation, nearest))]
    counts = np.bincount(nearest, minlength=buckets)
    starts = np.cumsum(counts) - counts
    known = np.flatnonzero(counts)
    profile = np.full(buckets, np.nan)
    low = starts[known] + (counts[known] - 1) // 2
    high = starts[known] + counts[known] // 2
    profile[known] = 0.5 * (ordered[low] + ordered[high])
    if known.size < buckets:
        profile = np.interp(np.arange(buckets), known, profile[known], period=buckets)
    centred: FloatArray = profile - profile.mean()
    return centred


def phase_positions(ts: IntArray, origin: int, period_us: int, buckets: int) -> FloatArray:
    """Position of each timestamp around the cycle, in profile points: [0, buckets)."""
    positions = ((ts - origin) % period_us) * (buckets / period_us)
    return positions.astype(np.float64)


def profile_at(profile: list[float], t: int, origin: int, period_us: int) -> tuple[int, float]:
    """The profile point at or before ``t``'s phase and the fraction of the way to the next."""
    position = ((t - origin) % period_us) * len(profile) / period_us
    bucket = math.floor(position)
    if bucket >= len(profile):  # rounding at the very end of the cycle
        return len(profile) - 1, 1.0
    return bucket, position - bucket


def _clipped(xs: FloatArray) -> FloatArray:
    median = float(np.median(xs))
    spread = CLIP_MADS * MAD_TO_STD * float(np.median(np.abs(xs - median)))
    if not spread > 0.0:
        return xs
    clipped: FloatArray = np.clip(xs, median - spread, median + spread)
    return clipped


def _autocorrelation(y: FloatArray, max_lag: int) -> FloatArray | None:
    """Correlation of ``y`` with itself ``k`` samples later, k = 0…max_lag, each over the
    pairs that overlap (no shrinking towards 0 at long lags); None for a constant series."""
    n = len(y)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(y, size)
    products = np.fft.irfft(spectrum * np.conj(spectrum), size)[: max_lag + 1]
    squares = np.concatenate(([0.0], np.cumsum(y * y)))
    lags = np.arange(max_lag + 1)
    head = squares[n - lags]  # sum of y[t]² over the first n − k samples
    tail = squares[n] - squares[lags]  # … over the last n − k
    scale = np.sqrt(head * tail)
    if not scale[-1] > 0.0:
        return None
    acf: FloatArray = products / scale
    return acf
