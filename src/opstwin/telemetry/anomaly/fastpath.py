"""The vectorised fast path: quiet stretches of many series, computed together.

:meth:`SeriesTracker.step <opstwin.telemetry.anomaly.tracker.SeriesTracker.step>` defines
the detector one sample at a time. While a series is quiet (no open excursion, warm,
correlation learnt) :func:`fast_forward` computes a whole chunk of it at once — mean and
variance with ``scipy.signal.lfilter`` (first-order linear filters, bit-identical to the
scalar updates), the correlation statistics the same way, the CUSUM with the Lindley identity
``S_t = C_t − min(0, min_{j≤t} C_j)`` over the cumulative sum ``C``, flat runs from the index
of the last move — and commits each series up to the first sample where anything could fire.
The scalar loop takes over from there until the series has been quiet again for a few
samples (:func:`finish`).

Many series at once: an ingest batch brings ~100 points for each of dozens of series, and at
that size numpy's per-call cost, not the arithmetic, is what a chunk costs. So series whose
filters share coefficients go through one set of calls as the rows of a matrix — padded to
the longest row, the padding marked as "could fire" so that no row commits into it. Every
operation works along its row (filters, cumulative sums and products, running maxima) or
element by element, so a row's result is bit-identical to computing that series alone.

The CUSUM is the one statistic whose vectorised form rounds differently from the loop (by
~1e-13), so a batch and the same points fed one at a time agree to rounding, not bit for bit;
the hand-over happens slightly before the decision interval so no alarm is decided on
rounded values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from opstwin.telemetry.anomaly.config import SeriesConfig
from opstwin.telemetry.anomaly.tracker import (
    CORRELATION_MAX,
    DECAY_FLUSH,
    DIFF_LAG,
    DRIFT_HORIZON_LAMBDA,
    FAST_MIN_POINTS,
    NORMAL_HIGH,
    NORMAL_LOW,
    REL_STD_FLOOR,
    SLOW_GAIN,
    TAIL_HIGH,
    TAIL_HIGH_SQ,
    TAIL_LOW_SQ,
    TAIL_MARGIN,
    TAIL_MAX_FACTOR,
    TAIL_PRIOR_WEIGHT,
    Emitted,
    FloatArray,
    IntArray,
    SeriesTracker,
)

# The vectorised CUSUM differs from the per-sample one by rounding; hand over to the exact
# loop slightly before the decision interval so no alarm is decided on rounded values.
CUSUM_HANDOFF_MARGIN = 1e-6
# The spike level on heavy tails takes logarithms, whose numpy and libm results may differ in
# the last bit: samples this close below it are handed to the loop, which decides exactly.
SPIKE_HANDOFF_MARGIN = 1e-6
# Samples per series in one vectorised chunk: bounded so an early event wastes little work.
FAST_CHUNK = 4096
# Matrix cells (rows × padded columns) per set of calls: the ~25 temporaries of this many
# doubles stay within the CPU caches. Larger sets ran long series at half the speed of one
# series at a time; at an ingest batch's ~100 points per series, this is ~160 series a set.
MAX_CELLS = 1 << 14
# Rows are padded to the longest of their set; a set starts afresh past this many times the
# shortest row's length, so padding never more than doubles the work.
MAX_PAD_RATIO = 2

#: One series to run: its tracker, timestamps (µs) and values (finite, time-ordered, none
#: older than the series' last sample).
Feed = tuple[SeriesTracker, IntArray, FloatArray]


def head_start(feeds: Sequence[Feed]) -> list[int | None]:
    """For feeds of distinct series: computes, in one vectorised pass across them, the first
    quiet stretch of every series that starts quiet; returns where each of those continues
    (None for the others) for :func:`finish`. The series are independent, so running some
    ahead of the others changes nothing."""
    quiet = []
    for k, (tracker, ts, xs) in enumerate(feeds):
        if len(xs) >= FAST_MIN_POINTS:
            tracker.before(int(ts[0]))
            if tracker.steady():
                quiet.append(k)
    starts: list[int | None] = [None] * len(feeds)
    for k, start in zip(quiet, fast_forward([(*feeds[k], 0) for k in quiet]), strict=True):
        starts[k] = start
    return starts


def finish(feed: Feed, start: int | None, out: list[Emitted]) -> None:
    """Process a feed to its end, from the start, or from where :func:`head_start` left it:
    per sample, and vectorised whenever the series has been quiet for a while."""
    tracker, ts, xs = feed
    total = len(xs)
    i = 0
    if start is not None:
        i = start
        if i < total:  # the fast path stopped where something could fire
            i = tracker.resume(ts, xs, i, out)
    while i < total:
        if total - i >= FAST_MIN_POINTS:
            tracker.before(int(ts[i]))
        if total - i >= FAST_MIN_POINTS and tracker.steady():
            item = (tracker, ts, xs, i)
            limit = _count(item)
            i = fast_forward([item])[0]
            if i >= total:
                break
            if i == item[3] + limit:
                continue  # stopped at its limit (a search, a new cycle), not where one fires
        i = tracker.resume(ts, xs, i, out)


def fast_forward(items: Sequence[tuple[SeriesTracker, IntArray, FloatArray, int]]) -> list[int]:
    """Vectorised :meth:`SeriesTracker.step` over the quiet stretch of each series starting
    at its index (every tracker steady, at least one sample left, no tracker twice): commits
    each up to the first sample that could open an anomaly (or the end of its chunk) and
    returns that index per item."""
    if len(items) == 1:
        return [items[0][3] + _fast_rows(items)[0]]
    result = [0] * len(items)
    groups: dict[tuple[float | str, ...], list[int]] = {}
    for k, (tracker, _, _, _) in enumerate(items):
        groups.setdefault(_filter_key(tracker.cfg), []).append(k)
    for members in groups.values():
        members.sort(key=lambda k: _count(items[k]))
        start = 0
        while start < len(members):
            shortest = _count(items[members[start]])
            stop = start + 1
            while stop < len(members):
                longest = _count(items[members[stop]])
                if longest > MAX_PAD_RATIO * shortest or (stop - start + 1) * longest > MAX_CELLS:
                    break
                stop += 1
            rows = members[start:stop]
            for k, first in zip(rows, _fast_rows([items[k] for k in rows]), strict=True):
                result[k] = items[k][3] + first
            start = stop
    return result


def _count(item: tuple[SeriesTracker, IntArray, FloatArray, int]) -> int:
    """Samples of an item one chunk covers (at most: it may commit fewer): never past the
    next search for a cycle, nor into the next cycle of a profile (it changes there)."""
    tracker, ts, xs, start = item
    limit = min(len(xs) - start, FAST_CHUNK, tracker.fast_limit())
    end = tracker.cycle_end()
    if ts[start + limit - 1] >= end:
        limit = int(np.searchsorted(ts[start : start + limit], end, side="left"))
    return limit


def _filter_key(cfg: SeriesConfig) -> tuple[float | str, ...]:
    """What rows computed together must share: their linear filters' coefficients."""
    return (
        cfg.alpha,
        cfg.keep,
        cfg.keep_alpha,
        cfg.ac_alpha,
        cfg.ac_keep,
        cfg.drift_method,
        cfg.ewma_smoothing,
        cfg.ewma_keep,
        str(cfg.adapt_to_tails),
    )


# Per-row settings and state the fast path reads, gathered into one matrix per set of rows
# (one numpy call rather than one per field: with long rows a set is a single series, and
# then per-call costs are what remains).
_SETTINGS = (
    "std_floor",
    "z_threshold",
    "hard_low",
    "hard_high",
    "flatline_tolerance",
    "flatline_window",
    "flat_min_std",
    "ac_n_eff",
    "ac_margin",
    "ewma_limit_z",
    "cusum_k",
    "cusum_h",
    "tail_target",
    "tail_u_normal",
)
_STATE = (
    "mean",
    "var",
    "flat_run",
    "diff1_sq",
    "diff_lag_sq",
    "ac_decay",
    "ac_n",
    "tail_low",
    "tail_high",
    "ewma_z",
    "cusum_pos",
    "cusum_neg",
)


def _fast_rows(items: Sequence[tuple[SeriesTracker, IntArray, FloatArray, int]]) -> list[int]:
    """The fast path over rows that share filter coefficients; per row, how many samples it
    committed."""
    count = len(items)
    states = [tracker.state for tracker, _, _, _ in items]
    cfgs = [tracker.cfg for tracker, _, _, _ in items]
    cfg = cfgs[0]  # the filter coefficients (shared by construction)
    counts = [_count(item) for item in items]
    width = max(counts)
    x = np.empty((count, width))
    for r, (_, _, xs, i) in enumerate(items):
        n = counts[r]
        x[r, :n] = xs[i : i + n]
        x[r, n:] = xs[i + n - 1]  # padding: any finite value (those columns are never used)
    # Per-row settings and state: columns (count × 1) that broadcast along each row — or,
    # for one row, the plain numbers (the same arithmetic, without a broadcast per operation).
    setting: dict[str, Any]
    state: dict[str, Any]
    if count == 1:
        setting = {f: getattr(cfg, f) for f in _SETTINGS}
        state = {f: getattr(states[0], f) for f in _STATE}
    else:
        setting = dict(
            zip(
                _SETTINGS,
                np.array([[getattr(c, f) for f in _SETTINGS] for c in cfgs]).T[:, :, None],
                strict=True,
            )
        )
        state = dict(
            zip(
                _STATE,
                np.array([[getattr(st, f) for f in _STATE] for st in states]).T[:, :, None],
                strict=True,
            )
        )
        for counter in ("flatline_window",):  # counts are exact as doubles; back to integers
            setting[counter] = setting[counter].astype(np.int64)
        for counter in ("flat_run", "ac_n"):
            state[counter] = state[counter].astype(np.int64)

    idx = np.arange(width)
    den = (1.0, -cfg.keep)
    mean0, var0 = state["mean"], state["var"]
    # A cycle's profile (fixed within the chunk: it never crosses into the next cycle) is
    # taken off the values the baseline learns and scores; flatlines and limits see the raw.
    phases = _phases(items, counts, width) if any(st.period_us for st in states) else None
    learnt = x if phases is None else x - phases[2]
    mean = lfilter((cfg.alpha,), den, learnt, axis=1, zi=_zi(cfg.keep * mean0))[0]
    mean_prev = _previous(mean0, mean)
    d = x - mean_prev
    if phases is not None:
        d = d - phases[2]
    var = lfilter((cfg.keep_alpha,), den, d * d, axis=1, zi=_zi(cfg.keep * var0))[0]
    s = np.sqrt(_previous(var0, var))
    floor = np.maximum(REL_STD_FLOOR * np.abs(mean_prev), setting["std_floor"])
    z = d / np.maximum(s, floor)

    size = np.abs(z)
    spiky = size >= setting["z_threshold"]  # a spike if also at the heavy-tail level (below)
    hot = np.zeros(spiky.shape, dtype=np.bool_)
    if any(c.hard_low > -math.inf or c.hard_high < math.inf for c in cfgs):
        hot |= (x < setting["hard_low"]) | (x > setting["hard_high"])
    prev = np.empty((count, width))
    prev[:, 0] = [st.mean if st.last_value is None else st.last_value for st in states]
    prev[:, 1:] = x[:, :-1]
    moved = np.abs(x - prev) > setting["flatline_tolerance"]
    last_move = np.maximum.accumulate(np.where(moved, idx, -1), axis=1)
    flat_before = state["flat_run"]
    flat_run = np.where(last_move >= 0, idx - last_move, flat_before + idx + 1)
    windows = setting["flatline_window"]
    hot |= (flat_run >= windows - 1) & (s > setting["flat_min_std"])

    z_ext = np.concatenate((np.array([st.recent_z for st in states], dtype=np.float64), z), axis=1)
    ac_den = (1.0, -cfg.ac_keep)
    step1 = z - z_ext[:, DIFF_LAG - 1 : DIFF_LAG - 1 + width]
    step_lag = z - z_ext[:, :width]
    diff1_0, diff_lag_0 = state["diff1_sq"], state["diff_lag_sq"]
    diff1 = lfilter((cfg.ac_alpha,), ac_den, step1 * step1, axis=1, zi=_zi(cfg.ac_keep * diff1_0))[
        0
    ]
    diff_lag = lfilter(
        (cfg.ac_alpha,), ac_den, step_lag * step_lag, axis=1, zi=_zi(cfg.ac_keep * diff_lag_0)
    )[0]
    # (1 − α)^n before each sample, by the same left-to-right products as the loop.
    decay = np.full((count, width + 1), cfg.ac_keep)
    decay[:, :1] = state["ac_decay"]
    np.cumprod(decay, axis=1, out=decay)
    decay[decay < DECAY_FLUSH] = 0.0
    tail_low: FloatArray | None = None
    tail_high: FloatArray | None = None
    if cfg.adapt_to_tails:
        # The loop's expression: step1² · (1 − decay) against 4 and 9 × the RMS EWMA before.
        jump = step1 * step1 * (1.0 - decay[:, :width])
        diff1_before = _previous(diff1_0, diff1)
        tail_low, tail_high = (
            lfilter(
                (cfg.ac_alpha,),
                ac_den,
                (jump > level_sq * diff1_before).astype(np.float64),
                axis=1,
                zi=_zi(cfg.ac_keep * state[name]),
            )[0]
            for level_sq, name in ((TAIL_LOW_SQ, "tail_low"), (TAIL_HIGH_SQ, "tail_high"))
        )
        if spiky.any():
            level = _spike_levels(
                _previous(state["tail_low"], tail_low),
                _previous(state["tail_high"], tail_high),
                decay[:, :width],
                setting,
            )
            spiky &= size >= level - SPIKE_HANDOFF_MARGIN
    hot |= spiky
    margin = setting["ac_margin"]
    if any(st.ac_n < c.ac_n_eff for st, c in zip(states, cfgs, strict=True)):
        ac_n, n_eff = state["ac_n"], setting["ac_n_eff"]
        margin = np.where(ac_n >= n_eff, margin, 2.0 * np.sqrt(2.0 / np.minimum(ac_n + idx, n_eff)))
    zs = z * _drift_scales(
        _previous(diff1_0, diff1), _previous(diff_lag_0, diff_lag), 1.0 - decay[:, :width], margin
    )
    ewma: FloatArray | None = None
    up: FloatArray | None = None
    down: FloatArray | None = None
    if cfg.drift_method == "ewma":
        ewma = lfilter(
            (cfg.ewma_smoothing,),
            (1.0, -cfg.ewma_keep),
            zs,
            axis=1,
            zi=_zi(cfg.ewma_keep * state["ewma_z"]),
        )[0]
        hot |= np.abs(ewma) >= setting["ewma_limit_z"]
    else:
        k = setting["cusum_k"]
        up = _cusum(state["cusum_pos"], zs - k)
        down = _cusum(state["cusum_neg"], -zs - k)
        limit = setting["cusum_h"] - CUSUM_HANDOFF_MARGIN
        hot |= (up >= limit) | (down >= limit)
    if min(counts) < width:
        hot |= idx >= np.array(counts)[:, None]  # the padding

    if count == 1:
        row = hot[0]
        firsts_0 = int(row.argmax()) if row.any() else width
        first = np.array([firsts_0])
    else:
        first = np.where(hot.any(axis=1), hot.argmax(axis=1), width)
        firsts_0 = int(first[0])
    rows = np.arange(count)
    j = np.maximum(first - 1, 0)  # the last committed sample (where anything was)

    if count == 1:  # one series (long ones go alone): plain indexing, no fancy-index call
        j0 = int(j[0])

        def at_j(values: npt.NDArray[np.generic]) -> list[float]:
            return [values.item(0, j0)]

    else:

        def at_j(values: npt.NDArray[np.generic]) -> list[float]:
            picked: list[float] = values[rows, j].tolist()
            return picked

    means, variances, zs_last, xs_last = at_j(mean), at_j(var), at_j(z), at_j(x)
    flats, diffs1, diffs_lag = at_j(flat_run), at_j(diff1), at_j(diff_lag)
    if tail_low is not None and tail_high is not None:
        lows, highs = at_j(tail_low), at_j(tail_high)
    decays: list[float] = [decay.item(0, firsts_0)] if count == 1 else decay[rows, first].tolist()
    firsts: list[int] = first.tolist()
    if ewma is not None:
        ewmas = at_j(ewma)
    if up is not None and down is not None:
        ups, downs = at_j(up), at_j(down)
        up_runs = _positive_runs(up, j, [st.cusum_pos_len for st in states])
        down_runs = _positive_runs(down, j, [st.cusum_neg_len for st in states])
    for r, (tracker, ts, xs, i) in enumerate(items):
        n = firsts[r]
        if not n:
            continue
        tracker.committed(ts[i : i + n], xs[i : i + n])
        if phases is not None and states[r].period_us:
            _learn_profile(tracker, phases[0][r, :n], phases[1][r, :n], d[r, :n])
        st, jr = states[r], n - 1
        st.mean, st.var, st.n = means[r], variances[r], st.n + n
        st.z, st.last_value, st.last_ts = zs_last[r], xs_last[r], int(ts[i + jr])
        st.flat_run = int(flats[r])
        st.diff1_sq, st.diff_lag_sq = diffs1[r], diffs_lag[r]
        if tail_low is not None:
            st.tail_low, st.tail_high = lows[r], highs[r]
        st.ac_n += n
        st.ac_decay = decays[r]
        st.recent_z = z_ext[r, n : n + DIFF_LAG].tolist()
        if ewma is not None:
            st.ewma_z = ewmas[r]
        else:
            st.cusum_pos, st.cusum_pos_len = ups[r], up_runs[r]
            st.cusum_neg, st.cusum_neg_len = downs[r], down_runs[r]
    return firsts


def _drift_scales(
    diff1_sq: FloatArray, diff_lag_sq: FloatArray, debias: FloatArray, margin: FloatArray | float
) -> FloatArray:
    """:func:`~opstwin.telemetry.anomaly.tracker.drift_scale` elementwise, same operations;
    1 where nothing was learnt yet."""
    learnt = debias > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):  # only where nothing was learnt
        # min(max(·)) rather than np.clip: the same values, without clip's per-call cost.
        rho = np.minimum(np.maximum(1.0 - diff1_sq / debias / 2.0 - margin, 0.0), CORRELATION_MAX)
        share = np.minimum(
            np.maximum(1.0 - diff_lag_sq / debias / 2.0 - margin, 0.0), CORRELATION_MAX
        )
    phi = (1.0 - DRIFT_HORIZON_LAMBDA) * rho
    scale = 1.0 / np.sqrt(np.maximum((1.0 + phi) / (1.0 - phi), 1.0 + share * SLOW_GAIN))
    result: FloatArray = np.where(learnt, scale, 1.0)
    return result


def _phases(
    items: Sequence[tuple[SeriesTracker, IntArray, FloatArray, int]], counts: list[int], width: int
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Per row and sample: the profile point at or before its phase, the fraction of the way
    to the next, and the profile there (0 for rows without a cycle, and for the padding) —
    :meth:`SeriesTracker._phase` elementwise, the same operations."""
    buckets = np.zeros((len(items), width), dtype=np.int64)
    fracs = np.zeros((len(items), width))
    values = np.zeros((len(items), width))
    for r, (tracker, ts, _, i) in enumerate(items):
        st = tracker.state
        if not st.period_us:
            continue
        n = counts[r]
        profile = np.asarray(st.profile)
        size = len(profile)
        # (t − origin) mod period × size / period, as the loop: the product is an exact
        # integer below 2^53, so the division rounds as Python's does.
        position = ((ts[i : i + n] - st.season_origin) % st.period_us * size) / st.period_us
        bucket = np.floor(position).astype(np.int64)
        frac = position - bucket
        last = bucket >= size  # rounding at the very end of the cycle
        bucket[last], frac[last] = size - 1, 1.0
        here = profile[bucket]
        following = profile[np.where(bucket + 1 < size, bucket + 1, 0)]
        buckets[r, :n], fracs[r, :n] = bucket, frac
        values[r, :n] = here + frac * (following - here)
    return buckets, fracs, values


def _learn_profile(
    tracker: SeriesTracker, bucket: IntArray, frac: FloatArray, residual: FloatArray
) -> None:
    """:meth:`SeriesTracker._learn_season` for each committed sample, in order (``np.add.at``
    adds repeated indices one after the other, as the loop does)."""
    st = tracker.state
    pending = np.asarray(st.profile_pending)
    size = len(pending)
    step = tracker.cfg.season_alpha * size / st.period_samples * residual
    index = np.empty(2 * len(bucket), dtype=np.int64)
    index[0::2] = bucket
    index[1::2] = np.where(bucket + 1 < size, bucket + 1, 0)
    change = np.empty(2 * len(bucket))
    change[0::2] = (1.0 - frac) * step
    change[1::2] = frac * step
    np.add.at(pending, index, change)
    st.profile_pending = pending.tolist()


def _spike_levels(
    low_raw: FloatArray, high_raw: FloatArray, decay: FloatArray, setting: dict[str, Any]
) -> FloatArray:
    """:func:`~opstwin.telemetry.anomaly.tracker.spike_level` elementwise (up to the last bit
    of a logarithm: see SPIKE_HANDOFF_MARGIN)."""
    prior = TAIL_PRIOR_WEIGHT * decay
    debias = 1.0 - decay
    low = (low_raw + prior * NORMAL_LOW) / (debias + prior)
    high = (high_raw + prior * NORMAL_HIGH) / (debias + prior)
    threshold = setting["z_threshold"]
    excess = (
        TAIL_HIGH
        + np.log(setting["tail_target"] / high) / np.log(high / low)
        - setting["tail_u_normal"]
        - TAIL_MARGIN
    )
    level: FloatArray = np.where(
        excess > 0.0, np.minimum(threshold + excess, TAIL_MAX_FACTOR * threshold), threshold
    )
    return level


def _zi(start: FloatArray | float) -> FloatArray:
    """A filter's initial condition per row, as ``lfilter`` takes it along axis 1."""
    if isinstance(start, float):
        return np.array([[start]])
    return start


def _previous(first: FloatArray | float, values: FloatArray) -> FloatArray:
    """Each row shifted one sample later, ``first`` (a column) in front: the state before
    each sample."""
    out = np.empty(values.shape)
    out[:, :1] = first
    out[:, 1:] = values[:, :-1]
    return out


def _cusum(start: FloatArray | float, steps: FloatArray) -> FloatArray:
    total: FloatArray = start + np.cumsum(steps, axis=1)
    result: FloatArray = total - np.minimum(np.minimum.accumulate(total, axis=1), 0.0)
    return result


def _positive_runs(stat: FloatArray, j: IntArray, before: list[int]) -> list[int]:
    """Per row, samples since ``stat`` was last 0 at column ``j`` (``before``: the run into
    the chunk)."""
    if len(j) == 1:
        zeros = np.flatnonzero(stat[0, : int(j[0]) + 1] <= 0.0)
        return [int(j[0] - zeros[-1]) if zeros.size else before[0] + int(j[0]) + 1]
    span = int(j.max()) + 1
    zero = (stat[:, :span] <= 0.0) & (np.arange(span) <= j[:, None])
    last_zero = span - 1 - zero[:, ::-1].argmax(axis=1)
    runs: list[int] = np.where(zero.any(axis=1), j - last_zero, np.array(before) + j + 1).tolist()
    return runs
