"""Properties of the AnomalyDetector over generated series: how a stream is cut into batches,
or interrupted by restarts, never changes what it decides; and every output keeps the
anomaly.v1 contract (one open anomaly at a time, each resolution naming its anomaly)."""

from __future__ import annotations

import dataclasses
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
        st.sampled_from(["spike", "shift", "stuck", "ramp", "breach", "cycle"]),
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
    """Gaussian (or, for every third seed, Laplace) noise with injected spikes, level shifts,
    stuck stretches, ramps, breaches, cycles."""
    rng = np.random.default_rng(seed)
    # Every third seed a noisy sensor: heavier tails (Laplace, the same standard deviation).
    x = rng.normal(mean, std, N) if seed % 3 else mean + rng.laplace(0.0, std / np.sqrt(2.0), N)
    for kind, at, size in events:
        if kind == "spike":
            x[at : at + 2] += size * std
        elif kind == "shift":
            x[at:] += size * std / 4
        elif kind == "stuck":
            x[at : at + 60] = x[at - 1]
        elif kind == "ramp":
            x[at:] += np.arange(N - at) * size * std / 1000
        elif kind == "cycle":  # the whole series follows a cycle of 12 to 111 samples
            x += size * std * np.sin(2 * np.pi * np.arange(N) / (12 + at % 100))
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


SETTINGS_CHOICES = [
    SeriesConfig(),
    SeriesConfig(hard_low=40.0, hard_high=80.0),
    SeriesConfig(drift_method="ewma", ewma_smoothing=0.1),
    SeriesConfig(z_threshold=3.5, z_clear=2.0, baseline_halflife_samples=100.0),
    SeriesConfig(flatline_window=10, min_std=0.2),
]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    series=st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(SETTINGS_CHOICES) - 1), EVENTS),
        min_size=2,
        max_size=12,
    ),
    steps=st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=6),
)
def test_many_series_at_once_equal_each_series_alone_bit_for_bit(
    seed: int, series: list[tuple[int, list[tuple[str, int, float]]]], steps: list[int]
) -> None:
    """A batch of many series computes their quiet stretches together, as rows of one
    matrix (padded to the longest row): each series' records and state are exactly what
    feeding it alone gives — same floats, same ids, same order."""
    keys = [SeriesKey("line", f"tool_{i // 5}", f"m{i % 5}") for i in range(len(series))]
    cfg = DetectorConfig(
        per_metric={k: SETTINGS_CHOICES[c] for k, (c, _) in zip(keys, series, strict=True)}
    )
    data = {
        k: generated(seed + i, 60.0, 0.5, events)
        for i, (k, (_, events)) in enumerate(zip(keys, series, strict=True))
    }
    together = AnomalyDetector(CountingIds(), cfg)
    alone = AnomalyDetector(CountingIds(), cfg)
    rng = np.random.default_rng(seed)
    where = dict.fromkeys(keys, 0)
    got: list[dict[str, Any]] = []
    want: list[dict[str, Any]] = []
    for step in itertools.cycle(steps):
        if all(w >= N for w in where.values()):
            break
        batch = []
        for k in keys:
            stop = min(N, where[k] + step + int(rng.integers(0, 80)))  # rows of unequal length
            if stop > where[k]:
                batch.append((k, times(where[k], stop), data[k][where[k] : stop]))
                where[k] = stop
        got += together.process_batch(batch)
        for item in batch:
            want += alone.process_series(*item)
    by_time = lambda rs: sorted(rs, key=lambda r: (r["ts"], r["metric"], r["asset_id"]))  # noqa: E731
    assert by_time(strip_ids(got)) == by_time(strip_ids(want))
    assert without_ids(together.to_dict()) == without_ids(alone.to_dict())


def strip_ids(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without their ids (the two detectors draw ids in a different order)."""
    return [without_ids(r) for r in records]


def without_ids(value: Any) -> Any:
    """``value`` with every ``anomaly_id`` / ``resolves`` left out, at any depth."""
    if isinstance(value, dict):
        return {k: without_ids(v) for k, v in value.items() if k not in ("anomaly_id", "resolves")}
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    events=EVENTS,
    cuts=st.lists(st.integers(min_value=1, max_value=N - 1), min_size=1, max_size=5),
)
def test_a_fork_changes_nothing_until_adopted_and_then_equals_feeding_directly(
    seed: int, events: list[tuple[str, int, float]], cuts: list[int]
) -> None:
    """How the detection consumer keeps exactly-once: a page is scored on a fork; a fork that
    is dropped (its transaction failed) leaves no trace, an adopted one is as if the live
    detector had been fed."""
    x = generated(seed, 60.0, 0.5, events)
    direct = AnomalyDetector(CountingIds(), config(60.0, 0.5))
    live = AnomalyDetector(CountingIds(), config(60.0, 0.5))
    for start, stop in itertools.pairwise([0, *sorted(set(cuts)), N]):
        piece = (KEY, times(start, stop), x[start:stop])
        before = live.to_dict()
        dropped = live.fork()
        dropped.process_series(*piece)
        assert live.to_dict() == before  # a failed page: nothing happened
        fork = live.fork()
        assert strip_ids(fork.process_series(*piece)) == strip_ids(direct.process_series(*piece))
        assert live.to_dict() == before
        live.adopt(fork)
        assert without_ids(live.to_dict()) == without_ids(direct.to_dict())
        assert fork.touched() == []  # consumed


def test_state_to_dict_is_asdict_and_copy_is_independent() -> None:
    """The fast serialisation of a series' state is ``dataclasses.asdict`` field for field
    (with and without an open excursion), and a copy shares nothing mutable."""
    x = generated(3, 60.0, 0.5, [("spike", 1000, 12.0)])
    det = AnomalyDetector(CountingIds(), config(60.0, 0.5))
    det.process_series(KEY, times(0, 1001), x[:1001])  # ends inside the spike's excursion
    state = det._trackers[KEY].state
    assert state.excursion is not None
    assert state.to_dict() == dataclasses.asdict(state)
    state.excursion = None
    assert state.to_dict() == dataclasses.asdict(state)
    det.process_series(KEY, times(1001, 1500), x[1001:1500])
    copy = state.copy()
    assert copy == state
    copy.recent_z.append(1.0)
    if copy.excursion is not None:
        copy.excursion.samples += 1
    assert copy != state
