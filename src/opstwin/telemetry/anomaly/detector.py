"""The detector: many series, batches in several shapes, and state that survives restart."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from opstwin.kit.clock import to_micros
from opstwin.kit.ids import IdSource
from opstwin.telemetry.anomaly.config import DetectorConfig, SeriesKey
from opstwin.telemetry.anomaly.state import STATE_VERSION, BaselineSnapshot, SeriesState
from opstwin.telemetry.anomaly.tracker import (
    FAST_MIN_POINTS,
    Emitted,
    FloatArray,
    IntArray,
    SeriesTracker,
)


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
        self.skipped_points = 0

    @property
    def config(self) -> DetectorConfig:
        return self._config

    def reconfigure(self, config: DetectorConfig) -> None:
        """Apply new settings (a twin model was updated); learnt baselines are kept."""
        self._config = config
        for key, tracker in self._trackers.items():
            tracker.cfg = config.for_series(key)

    def process_series(
        self, key: SeriesKey, ts_micros: npt.ArrayLike, values: npt.ArrayLike
    ) -> list[dict[str, Any]]:
        """Feed one series' points (timestamps in µs since the epoch); returns the records
        opened and resolved, in time order."""
        out: list[Emitted] = []
        self._feed(
            key, np.asarray(ts_micros, dtype=np.int64), np.asarray(values, dtype=np.float64), out
        )
        return _in_time_order(out)

    def process_batch(
        self, batch: Iterable[tuple[SeriesKey, npt.ArrayLike, npt.ArrayLike]]
    ) -> list[dict[str, Any]]:
        """Feed several series at once: ``(key, ts_micros, values)`` per series."""
        out: list[Emitted] = []
        for key, ts_micros, values in batch:
            self._feed(
                key,
                np.asarray(ts_micros, dtype=np.int64),
                np.asarray(values, dtype=np.float64),
                out,
            )
        return _in_time_order(out)

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
        out: list[Emitted] = []
        for key, (tl, vl) in groups.items():
            if len(tl) < FAST_MIN_POINTS:
                self._feed_few(SeriesKey(*key), tl, vl, out)
            else:
                ts_array = np.array(tl, dtype=np.int64)
                self._feed(SeriesKey(*key), ts_array, np.array(vl, dtype=np.float64), out)
        return _in_time_order(out)

    def process_events(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Feed ``telemetry.v1``-shaped events (``ts`` as RFC 3339 text, aware datetime or µs).
        Metric values that are not numbers are ignored, as the normalizer has flagged them."""
        points: list[tuple[str, str, str, int, float]] = []
        for event in events:
            twin_id, asset_id = event["twin_id"], event["asset_id"]
            ts = _micros(event["ts"])
            points.extend(
                (twin_id, asset_id, metric, ts, float(value))
                for metric, value in event["metrics"].items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            )
        return self.process_points(points)

    def baseline(self, key: SeriesKey) -> BaselineSnapshot | None:
        tracker = self._trackers.get(key)
        return None if tracker is None else tracker.snapshot()

    def series(self) -> list[SeriesKey]:
        return list(self._trackers)

    def to_dict(self) -> dict[str, Any]:
        """All learnt state as plain JSON types (settings are not state: they come from config)."""
        return {
            "version": STATE_VERSION,
            "series": [
                {
                    "twin_id": key.twin_id,
                    "asset_id": key.asset_id,
                    "metric": key.metric,
                    **asdict(t.state),
                }
                for key, t in self._trackers.items()
            ],
        }

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
            tracker = SeriesTracker(key, self._config.for_series(key), self._ids, SeriesState())
            self._trackers[key] = tracker
        return tracker

    def _feed(self, key: SeriesKey, ts: IntArray, xs: FloatArray, out: list[Emitted]) -> None:
        if ts.ndim != 1 or ts.shape != xs.shape:
            raise ValueError("timestamps and values must be 1-d arrays of the same length")
        if len(ts) < FAST_MIN_POINTS:
            self._feed_few(key, ts.tolist(), xs.tolist(), out)
            return
        if bool(np.any(ts[1:] < ts[:-1])):
            order = np.argsort(ts, kind="stable")
            ts, xs = ts[order], xs[order]
        tracker = self._tracker(key)
        usable = np.isfinite(xs)
        if tracker.state.last_ts is not None:
            usable &= ts >= tracker.state.last_ts
        if not usable.all():
            self.skipped_points += int(len(xs) - np.count_nonzero(usable))
            ts, xs = ts[usable], xs[usable]
        tracker.run(ts, xs, out)

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
