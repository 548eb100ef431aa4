"""The detector: many series, batches in several shapes, and state that survives restart."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from opstwin.kit.clock import to_micros
from opstwin.kit.ids import IdSource
from opstwin.telemetry.anomaly.config import DetectorConfig, SeriesKey
from opstwin.telemetry.anomaly.fastpath import Feed, finish, head_start
from opstwin.telemetry.anomaly.state import STATE_VERSION, BaselineSnapshot, SeriesState
from opstwin.telemetry.anomaly.tracker import (
    FAST_MIN_POINTS,
    Emitted,
    FloatArray,
    IntArray,
    SeriesTracker,
)

#: A series' timestamps (µs) and values: lists (grouped from loose points) or 1-d arrays.
Stamps = list[int] | IntArray
Values = list[float] | FloatArray


class AnomalyDetector:
    """Streaming anomaly detection over many series; see the module docstring for the model.

    Not thread-safe: one consumer feeds it, in timestamp order per series. Points older than
    the last one processed for their series, and non-finite values, are skipped (counted in
    :attr:`skipped_points`) — the store keeps them, the detector cannot rewind.
    """

    def __init__(self, ids: IdSource, config: DetectorConfig | None = None) -> None:
        self._ids = ids
        self._config = config or DetectorConfig()
        self._trackers: dict[SeriesKey, SeriesTracker] = {}
        #: Set on a fork: the detector whose series it copies on first use.
        self._parent: AnomalyDetector | None = None
        self.skipped_points = 0

    def fork(self) -> AnomalyDetector:
        """A detector that carries on from this one's state without changing it.

        A series is copied from this detector the first time the fork needs it, so a fork
        costs what the series it touches cost. Feed the fork, then either drop it (nothing
        happened) or :meth:`adopt` it (as if this detector had been fed). This is how a
        consumer computes a page's anomalies before its transaction and keeps its in-memory
        state equal to what was committed (it adopts only after the commit).
        """
        child = AnomalyDetector(self._ids, self._config)
        child._parent = self
        return child

    def adopt(self, fork: AnomalyDetector) -> None:
        """Take over what ``fork`` (from :meth:`fork`) learnt: its settings and the state of
        every series it touched; the fork is left empty. Fork again after adopting: a fork
        made before another was adopted would carry on from stale state."""
        if fork._parent is not self:
            raise ValueError("not a fork of this detector")
        if fork._config is not self._config:
            self.reconfigure(fork._config)
        self._trackers.update(fork._trackers)
        self.skipped_points += fork.skipped_points
        # Consumed: its series are this detector's now, and must not be fed through it.
        fork._parent, fork._trackers, fork.skipped_points = None, {}, 0

    def touched(self) -> list[SeriesKey]:
        """A fork's series that it has fed (copied or created); every series otherwise."""
        return list(self._trackers)

    @property
    def config(self) -> DetectorConfig:
        return self._config

    def reconfigure(self, config: DetectorConfig) -> None:
        """Apply new settings (a twin model was updated); learnt baselines are kept."""
        self._config = config
        for key, tracker in self._trackers.items():
            tracker.configure(config.for_series(key))

    def process_series(
        self, key: SeriesKey, ts_micros: npt.ArrayLike, values: npt.ArrayLike
    ) -> list[dict[str, Any]]:
        """Feed one series' points (timestamps in µs since the epoch); returns the records
        opened and resolved, in time order."""
        return self._run(
            [(key, np.asarray(ts_micros, dtype=np.int64), np.asarray(values, dtype=np.float64))]
        )

    def process_batch(
        self, batch: Iterable[tuple[SeriesKey, npt.ArrayLike, npt.ArrayLike]]
    ) -> list[dict[str, Any]]:
        """Feed several series at once: ``(key, ts_micros, values)`` per series."""
        return self._run(
            [
                (key, np.asarray(ts_micros, dtype=np.int64), np.asarray(values, dtype=np.float64))
                for key, ts_micros, values in batch
            ]
        )

    def process_points(
        self, points: Iterable[tuple[str, str, str, int, float]]
    ) -> list[dict[str, Any]]:
        """Feed loose points ``(twin_id, asset_id, metric, ts_micros, value)`` in any order."""
        groups: dict[tuple[str, str, str], tuple[list[int], list[float]]] = {}
        for twin_id, asset_id, metric, ts, value in points:
            group = groups.get((twin_id, asset_id, metric))
            if group is None:
                group = groups[(twin_id, asset_id, metric)] = ([], [])
            group[0].append(ts)
            group[1].append(value)
        return self._process_groups(groups)

    def process_events(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Feed ``telemetry.v1``-shaped events (``ts`` as RFC 3339 text, aware datetime or µs).
        Metric values that are not numbers are ignored, as the normalizer has flagged them."""
        # Grouped per series straight from the events (the same groups, in the same order,
        # as process_points would build from their points, without a tuple per point); runs
        # of events of one asset (a change-log entry carries one asset) share a lookup table.
        groups: dict[tuple[str, str, str], tuple[list[int], list[float]]] = {}
        asset: tuple[str, str] | None = None
        series: dict[str, tuple[list[int], list[float]]] = {}
        for event in events:
            twin_id, asset_id = event["twin_id"], event["asset_id"]
            if asset is None or asset_id != asset[1] or twin_id != asset[0]:
                asset, series = (twin_id, asset_id), {}
            ts = event["ts"]
            ts = to_micros(datetime.fromisoformat(ts)) if ts.__class__ is str else _micros(ts)
            for metric, value in event["metrics"].items():
                if value.__class__ is not float:
                    if not isinstance(value, int | float) or isinstance(value, bool):
                        continue
                    value = float(value)
                group = series.get(metric)
                if group is None:
                    group = groups.get((twin_id, asset_id, metric))
                    if group is None:
                        group = groups[(twin_id, asset_id, metric)] = ([], [])
                    series[metric] = group
                group[0].append(ts)
                group[1].append(value)
        return self._process_groups(groups)

    def _process_groups(
        self, groups: Mapping[tuple[str, str, str], tuple[list[int], list[float]]]
    ) -> list[dict[str, Any]]:
        return self._run([(SeriesKey(*key), tl, vl) for key, (tl, vl) in groups.items()])

    def _run(self, items: Sequence[tuple[SeriesKey, Stamps, Values]]) -> list[dict[str, Any]]:
        """Feed each ``(key, ts, values)`` in order; the records in time order.

        Distinct series start with one vectorised pass over all that are quiet (see
        :mod:`.fastpath`): each series' outcome is what feeding it alone gives, and records
        and ids come in the same order. A series given twice continues from its first part,
        so such a batch is fed one item after the other (as is one with fewer than two
        series long enough to vectorise: nothing to gain).
        """
        out: list[Emitted] = []
        long = sum(1 for _, ts, _ in items if len(ts) >= FAST_MIN_POINTS)
        if long < 2 or len({key for key, _, _ in items}) < len(items):
            for key, ts, xs in items:
                feed = self._prepare(key, ts, xs, out)
                if feed is not None:
                    finish(feed, None, out)
            return _in_time_order(out)
        prepared = [self._prepare(key, ts, xs, out, defer_short=True) for key, ts, xs in items]
        feeds = [feed for feed in prepared if feed is not None]
        starts = iter(head_start(feeds))
        for (key, ts, xs), feed in zip(items, prepared, strict=True):
            if feed is None:
                self._feed_few(key, _as_list(ts), _as_list(xs), out)
            else:
                finish(feed, next(starts), out)
        return _in_time_order(out)

    def baseline(self, key: SeriesKey) -> BaselineSnapshot | None:
        tracker = self._trackers.get(key)
        if tracker is None and self._parent is not None:
            return self._parent.baseline(key)
        return None if tracker is None else tracker.snapshot()

    def series(self) -> list[SeriesKey]:
        if self._parent is None:
            return list(self._trackers)
        return list(dict.fromkeys([*self._parent.series(), *self._trackers]))

    def to_dict(self, keys: Iterable[SeriesKey] | None = None) -> dict[str, Any]:
        """Learnt state as plain JSON types (settings are not state: they come from config):
        of every series, or of ``keys`` (those this detector has; a fork's own first)."""
        if keys is None:
            chosen = [(key, self._find(key)) for key in self.series()]
        else:
            chosen = [(key, self._find(key)) for key in keys]
        return {
            "version": STATE_VERSION,
            "series": [
                {
                    "twin_id": key.twin_id,
                    "asset_id": key.asset_id,
                    "metric": key.metric,
                    **tracker.state.to_json_dict(),
                }
                for key, tracker in chosen
                if tracker is not None
            ],
        }

    def _find(self, key: SeriesKey) -> SeriesTracker | None:
        tracker = self._trackers.get(key)
        if tracker is None and self._parent is not None:
            return self._parent._find(key)
        return tracker

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], ids: IdSource, config: DetectorConfig | None = None
    ) -> AnomalyDetector:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported anomaly detector state version {data.get('version')!r}")
        detector = cls(ids, config)
        for item in data["series"]:
            values = dict(item)
            key = SeriesKey(values.pop("twin_id"), values.pop("asset_id"), values.pop("metric"))
            state = SeriesState.from_dict(values)
            detector._trackers[key] = SeriesTracker(
                key, detector._config.for_series(key), ids, state
            )
        return detector

    def _tracker(self, key: SeriesKey) -> SeriesTracker:
        tracker = self._trackers.get(key)
        if tracker is None:
            cfg = self._config.for_series(key)
            found = None if self._parent is None else self._parent._find(key)
            if found is not None:
                tracker = found.copy(cfg)
            else:
                tracker = SeriesTracker(key, cfg, self._ids, SeriesState())
            self._trackers[key] = tracker
        return tracker

    def _prepare(
        self,
        key: SeriesKey,
        ts: Stamps,
        xs: Values,
        out: list[Emitted],
        *,
        defer_short: bool = False,
    ) -> Feed | None:
        """A series' points as the fast path takes them: time-ordered, finite, none older than
        its last sample (the others are counted as skipped). A short series is fed at once by
        the per-sample loop (``defer_short``: left to the caller), and gives None."""
        if isinstance(ts, np.ndarray) and (ts.ndim != 1 or ts.shape != np.shape(xs)):
            raise ValueError("timestamps and values must be 1-d arrays of the same length")
        if len(ts) < FAST_MIN_POINTS:
            if defer_short:
                self._tracker(key)  # series are created in batch order, fed or not
            else:
                self._feed_few(key, _as_list(ts), _as_list(xs), out)
            return None
        ts_array = np.asarray(ts, dtype=np.int64)
        xs_array = np.asarray(xs, dtype=np.float64)
        if bool(np.any(ts_array[1:] < ts_array[:-1])):
            order = np.argsort(ts_array, kind="stable")
            ts_array, xs_array = ts_array[order], xs_array[order]
        tracker = self._tracker(key)
        usable = np.isfinite(xs_array)
        if tracker.state.last_ts is not None:
            usable &= ts_array >= tracker.state.last_ts
        if not usable.all():
            self.skipped_points += int(len(xs_array) - np.count_nonzero(usable))
            ts_array, xs_array = ts_array[usable], xs_array[usable]
        return tracker, ts_array, xs_array

    def _feed_few(self, key: SeriesKey, ts: list[int], xs: list[float], out: list[Emitted]) -> None:
        """A short series in plain Python: numpy's per-call cost would exceed the work (an
        ingest batch spread over many assets has a handful of points per series)."""
        tracker = self._tracker(key)
        pairs: Iterable[tuple[int, float]] = zip(ts, xs, strict=True)
        if any(later < earlier for earlier, later in itertools.pairwise(ts)):
            pairs = iter(sorted(pairs, key=lambda pair: pair[0]))  # stable, like the arrays
        last_ts = tracker.state.last_ts
        step = tracker.step
        for t, x in pairs:
            if (last_ts is not None and t < last_ts) or not math.isfinite(x):
                self.skipped_points += 1
                continue
            step(t, x, out)


def _as_list(values: Stamps | Values) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else values


def _in_time_order(out: Sequence[Emitted]) -> list[dict[str, Any]]:
    return [record for _, record in sorted(out, key=lambda item: item[0])]


def _micros(ts: object) -> int:
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    if isinstance(ts, datetime):
        return to_micros(ts)
    raise ValueError(f"unsupported timestamp {ts!r}")
