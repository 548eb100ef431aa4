"""Properties of the AnomalyDetector over generated series: how a stream is cut into batches,
or interrupted by restarts, never changes what it decides; and every output keeps the
anomaly.v1 contract (one open anomaly at a time, each resolution naming its anomaly)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from opstwin.kit.clock import to_micros
from opstwin.telemetry.anomaly import AnomalyDetector, DetectorConfig, SeriesConfig, SeriesKey

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = Draft202012Validator(
    json.loads((ROOT / "src/opstwin/aiw/schemas/anomaly.v1.json").read_text(encoding="utf-8")),
    format_checker=FormatChecker(),
)
T0 = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
KEY = SeriesKey("line", "tool", "signal")
N = 3000

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["spike", "shift", "stuck", "ramp", "breach"]),
        st.integers(min_value=100, max_value=N - 100),
        st.floats(min_value=0.5, max_value=20.0),
    ),
    max_size=4,
)


class CountingIds:
    def __init__(self, start: int = 0) -> None:
        self.count = start

    def new(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count:06d}"


def generated(
    seed: int, mean: float, std: float, events: list[tuple[str, int, float]]
) -> np.ndarray[Any, Any]:
    """Gaussian noise with injected spikes, level shifts, stuck stretches, ramps, breaches."""
    x = np.random.default_rng(seed).normal(mean, std, N)
    for kind, at, size in events:
        if kind == "spike":
            x[at : at + 2] += size * std
        elif kind == "shift":
            x[at:] += size * std / 4
        elif kind == "stuck":
            x[at : at + 60] = x[at - 1]
        elif kind == "ramp":
            x[at:] += np.arange(N - at) * size * std / 1000
        else:
            x[at] = mean + 100 * std
    return x


def config(mean: float, std: float) -> DetectorConfig:
    return DetectorConfig(default=SeriesConfig(hard_low=mean - 60 * std, hard_high=mean + 60 * std))


def times(start: int, stop: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    return T0 + np.arange(start, stop, dtype=np.int64) * 1_000_000


def assert_close(ours: Any, theirs: Any) -> None:
    """Equal, except floats that may differ by rounding (the vectorised CUSUM sums in another
    order than the per-sample loop, so where a batch is cut moves the last bits)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert_close(ours[key], theirs[key])
    elif isinstance(ours, list) and isinstance(theirs, list):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert_close(a, b)
    elif isinstance(ours, float) and isinstance(theirs, float):
        assert abs(ours - theirs) <= 1e-9 * max(1.0, abs(ours), abs(theirs))
    else:
        assert ours == theirs


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    events=EVENTS,
    cuts=st.lists(st.integers(min_value=1, max_value=N - 1), max_size=6),
    restart_at_cuts=st.booleans(),
)
def test_batching_and_restarts_do_not_change_decisions(
    seed: int, events: list[tuple[str, int, float]], cuts: list[int], restart_at_cuts: bool
) -> None:
    x = generated(seed, 60.0, 0.5, events)
    whole_detector = AnomalyDetector(CountingIds(), config(60.0, 0.5))
    whole = whole_detector.process_series(KEY, times(0, N), x)

    ids = CountingIds()
    det = AnomalyDetector(ids, config(60.0, 0.5))
    pieces: list[dict[str, Any]] = []
    bounds = [0, *sorted(set(cuts)), N]
    for start, stop in itertools.pairwise(bounds):
        pieces += det.process_series(KEY, times(start, stop), x[start:stop])
        if restart_at_cuts:
            saved = json.loads(json.dumps(det.to_dict(), allow_nan=False))
            ids = CountingIds(ids.count)  # a persisted id sequence resumes where it was
            det = AnomalyDetector.from_dict(saved, ids, config(60.0, 0.5))

    assert_close(pieces, whole)
    assert_close(det.to_dict(), whole_detector.to_dict())


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    mean=st.floats(min_value=-1e6, max_value=1e6),
    std=st.floats(min_value=1e-6, max_value=1e3),
    events=EVENTS,
)
def test_every_output_keeps_the_contract(
    seed: int, mean: float, std: float, events: list[tuple[str, int, float]]
) -> None:
    x = generated(seed, mean, std, events)
    records = AnomalyDetector(CountingIds(), config(mean, std)).process_series(KEY, times(0, N), x)
    warmup = SeriesConfig().warmup_samples
    open_id: str | None = None
    for record in records:
        assert list(VALIDATOR.iter_errors(record)) == [], record
        assert 0.0 <= record["score"] <= 1.0
        if record["status"] == "open":
            assert open_id is None, "a second anomaly opened while one was open"
            open_id = record["anomaly_id"]
            at = (to_micros(datetime.fromisoformat(record["ts"])) - T0) // 1_000_000
            assert at >= warmup or record["kind"] == "out_of_range"
        else:
            assert record["resolves"] == open_id
            open_id = None
