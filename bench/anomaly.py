"""AnomalyDetector throughput: metric points per second, detection only (no I/O).

Run with ``.venv/bin/python -m bench.anomaly``. Goal: ≥ 1,000,000 points/s.

Three shapes of input:
* cold — 200 series × 5,000 points into a fresh detector (warm-up included, which runs
  through the per-sample loop);
* steady — the next 5,000 points of the same 200 series (the vectorised path);
* wide — 5,000 series × 10 points as loose ``(twin, asset, metric, ts, value)`` tuples,
  like an ingest batch spread over many assets, into warmed-up series (short series go
  through the per-sample loop; numpy would cost more than the work);
* batch — 50 series × 100 points into warmed-up series: what one ``POST /telemetry/ingest``
  of 1,000 events × 5 metrics on 10 assets brings the detector (quiet stretches of all 50
  series are computed together, as the rows of one matrix);
* cyclic — 50 series × 5,000 points that follow a cycle of 288 samples (a day of 5-minute
  readings), into a fresh detector (warm-up, the search for the cycle, learning its profile);
* cyclic steady — the next 5,000 points of the same series (vectorised a cycle at a time: the
  profile changes only between cycles).

The data is Gaussian noise with a spike, a level shift and a stuck stretch in every tenth
series, so the slow path is exercised as it would be in production.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from opstwin.kit.ids import SequentialIds
from opstwin.telemetry.anomaly import AnomalyDetector, SeriesKey

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
REPEATS = 3


def _series(rng: np.random.Generator, index: int, length: int) -> np.ndarray[Any, Any]:
    x = rng.normal(60.0, 0.5, length)
    if index % 10 == 0:
        x[length // 5] += 5.0
        x[length // 2 :] += 1.5
        x[4 * length // 5 : 4 * length // 5 + 50] = x[4 * length // 5 - 1]
    return x


def _batch(
    series: int, length: int, start: int, seed: int
) -> list[tuple[SeriesKey, np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(start, start + length, dtype=np.int64) * 1_000_000
    return [
        (
            SeriesKey("bench", f"asset_{i // 5}", f"metric_{i % 5}"),
            ts,
            _series(rng, i, length),
        )
        for i in range(series)
    ]


def _cyclic(series: int, length: int, start: int = 0) -> list[tuple[SeriesKey, Any, Any]]:
    rng = np.random.default_rng(7 + start)
    k = np.arange(start, start + length)
    ts = T0 + k.astype(np.int64) * 300_000_000
    curve = 5.0 * np.sin(2 * np.pi * k / 288) + 1.5 * np.sin(4 * np.pi * k / 288 + 1.0)
    return [
        (SeriesKey("bench", f"chiller_{i}", "load"), ts, 50.0 + curve + rng.normal(size=length))
        for i in range(series)
    ]


def _best_rate(points: int, prepare: Callable[[], Callable[[], Any]]) -> tuple[float, int]:
    """Best of REPEATS runs (points/s) and the anomalies opened in the last one."""
    best, opened = 0.0, 0
    for _ in range(REPEATS):
        work = prepare()
        began = time.perf_counter()
        records = work()
        elapsed = time.perf_counter() - began
        best = max(best, points / elapsed)
        opened = sum(1 for r in records if r["status"] == "open")
    return best, opened


def run() -> None:
    series, length = 200, 5_000
    first = _batch(series, length, 0, seed=1)
    second = _batch(series, length, length, seed=2)

    def cold() -> Callable[[], Any]:
        detector = AnomalyDetector(SequentialIds())
        return lambda: detector.process_batch(first)

    def steady() -> Callable[[], Any]:
        detector = AnomalyDetector(SequentialIds())
        detector.process_batch(first)
        return lambda: detector.process_batch(second)

    wide_series, wide_length = 5_000, 10
    warmed = AnomalyDetector(SequentialIds())
    warmed.process_batch(_batch(wide_series, 400, 0, seed=3))
    wide_state = warmed.to_dict()
    wide_points = [
        (key.twin_id, key.asset_id, key.metric, int(t), float(v))
        for key, ts, xs in _batch(wide_series, wide_length, 400, seed=4)
        for t, v in zip(ts, xs, strict=True)
    ]

    def wide() -> Callable[[], Any]:
        detector = AnomalyDetector.from_dict(wide_state, SequentialIds())
        return lambda: detector.process_points(wide_points)

    batch_series, batch_length = 50, 100
    batched = AnomalyDetector(SequentialIds())
    batched.process_batch(_batch(batch_series, 1_000, 0, seed=5))
    batch_state = batched.to_dict()
    batch = _batch(batch_series, batch_length, 1_000, seed=6)

    def ingest_batch() -> Callable[[], Any]:
        detector = AnomalyDetector.from_dict(batch_state, SequentialIds())
        return lambda: detector.process_batch(batch)

    cyclic_series, cyclic_length = 50, 5_000
    cyclic_batch = _cyclic(cyclic_series, cyclic_length)

    def cyclic() -> Callable[[], Any]:
        detector = AnomalyDetector(SequentialIds())
        return lambda: detector.process_batch(cyclic_batch)

    cyclic_next = _cyclic(cyclic_series, cyclic_length, start=cyclic_length)

    def cyclic_steady() -> Callable[[], Any]:
        detector = AnomalyDetector(SequentialIds())
        detector.process_batch(cyclic_batch)
        return lambda: detector.process_batch(cyclic_next)

    print(f"AnomalyDetector, best of {REPEATS} (goal ≥ 1,000,000 points/s)")
    for name, points, prepare in (
        (f"cold   {series} series × {length:,} points", series * length, cold),
        (f"steady {series} series × {length:,} points", series * length, steady),
        (f"wide   {wide_series:,} series × {wide_length} points", wide_series * wide_length, wide),
        (
            f"batch  {batch_series} series × {batch_length} points",
            batch_series * batch_length,
            ingest_batch,
        ),
        (
            f"cyclic {cyclic_series} series × {cyclic_length:,} points",
            cyclic_series * cyclic_length,
            cyclic,
        ),
        (
            f"cyclic steady, next {cyclic_length:,} points",
            cyclic_series * cyclic_length,
            cyclic_steady,
        ),
    ):
        rate, opened = _best_rate(points, prepare)
        print(f"  {name}: {rate:>12,.0f} points/s  ({opened} anomalies opened)")


if __name__ == "__main__":
    run()
