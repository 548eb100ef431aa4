"""Seasonality: the cycle search, and the detector on series that follow a cycle.

The motivating case (found with ``opstwin anomalies detect`` in an earlier session): a daily
cycle five times the noise hid a ramp of 12 σ over 200 samples from the plain baseline, whose
correlation allowance keeps cycles from raising storms and so also blunts it to drifts.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from opstwin.kit.clock import to_micros
from opstwin.kit.ids import SequentialIds
from opstwin.telemetry.anomaly import AnomalyDetector, DetectorConfig, SeriesConfig, SeriesKey
from opstwin.telemetry.anomaly.seasonal import (
    find_period,
    find_period_in_time,
    snap_period,
)
from opstwin.twins.model import AnomalyThresholds, SeasonalitySpec
from tests.telemetry.test_anomaly_properties import assert_close

T0 = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
FIVE_MIN = 300_000_000
DAY = 86_400_000_000
KEY = SeriesKey("plant", "chiller", "load")
OFF = SeriesConfig(season_detect=False)


def daily(n: int, seed: int, amplitude: float = 5.0) -> np.ndarray[Any, Any]:
    """A day of 288 five-minute samples: a two-harmonic load curve plus unit noise."""
    k = np.arange(n)
    curve = amplitude * np.sin(2 * np.pi * k / 288) + 1.5 * np.sin(4 * np.pi * k / 288 + 1.0)
    return 50.0 + curve + np.random.default_rng(seed).normal(size=n)


def stamps(n: int, start: int = 0) -> np.ndarray[Any, np.dtype[np.int64]]:
    return T0 + np.arange(start, start + n, dtype=np.int64) * FIVE_MIN


def opened(records: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(sample index, kind) of each anomaly opened."""
    return [
        ((to_micros(datetime.fromisoformat(r["ts"])) - T0) // FIVE_MIN, r["kind"])
        for r in records
        if r["status"] == "open"
    ]


def run(x: np.ndarray[Any, Any], config: SeriesConfig | None = None) -> AnomalyDetector:
    detector = AnomalyDetector(SequentialIds(), DetectorConfig(default=config or SeriesConfig()))
    detector.process_series(KEY, stamps(len(x)), x)
    return detector


# --- the search ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "shape"),
    [(24, "sine"), (50, "sine"), (48, "square"), (12, "sine")],
)
def test_a_cycle_is_found_to_a_fraction_of_a_sample(period: int, shape: str) -> None:
    k = np.arange(1000)
    rng = np.random.default_rng(period)
    if shape == "sine":
        x = 2.0 * np.sin(2 * np.pi * k / period)
    else:  # on for a sixth of the cycle, like a shift pattern
        x = 3.0 * ((k % period) < period // 6)
    found = find_period(x + rng.normal(size=len(k)))
    assert found is not None
    assert abs(found - period) < 0.25


def ar1(n: int, seed: int, phi: float = 0.9) -> np.ndarray[Any, Any]:
    shocks = np.random.default_rng(seed).normal(size=n)
    x = np.empty(n)
    x[0] = shocks[0]
    for i in range(1, n):
        x[i] = phi * x[i - 1] + shocks[i]
    return x


@pytest.mark.parametrize("n", [400, 1000])
def test_series_without_a_cycle_have_none(n: int) -> None:
    """Measured: no cycle in 200 seeds each of white noise, random walks and AR(1) with
    φ = 0.9 (whose chance correlation peaks reach 0.3–0.6 over a few hundred samples)."""
    for seed in range(50):
        rng = np.random.default_rng(seed)
        shifted = rng.normal(size=n)
        shifted[n // 2 :] += 5.0
        for x in (
            rng.normal(size=n),
            np.cumsum(rng.normal(size=n)),
            ar1(n, seed),
            shifted,
        ):
            assert find_period(x) is None


def test_the_search_works_in_time_across_gaps() -> None:
    """Samples every five minutes with six hours missing: the cycle is a day, not 288
    samples (which would be a day and six hours across the gap)."""
    ts = stamps(1200)
    x = daily(1200, seed=3)
    keep = np.ones(1200, dtype=bool)
    keep[500:572] = False
    found = find_period_in_time(ts[keep], x[keep], FIVE_MIN)
    assert found is not None
    assert snap_period(found) == DAY


def test_measured_cycles_snap_to_the_clock() -> None:
    assert snap_period(0.97 * DAY) == DAY
    assert snap_period(7.8 * 3_600_000_000) == 8 * 3_600_000_000
    assert snap_period(13.5 * 3_600_000_000) == 13.5 * 3_600_000_000  # no clock cycle near
    assert snap_period(24.4e6) == 24_000_000  # whole seconds
    assert snap_period(2.6e6) == 2_600_000  # short cycles as measured


# --- the detector on cyclic series ---------------------------------------------------------------


def test_a_ramp_under_a_daily_cycle_is_found() -> None:
    x = daily(6000, seed=1)
    x[3000:3200] += np.linspace(0.0, 12.0, 200)
    x[3200:] += 12.0
    records = AnomalyDetector(SequentialIds()).process_series(KEY, stamps(6000), x)
    kinds = opened(records)
    assert kinds
    assert 3000 <= kinds[0][0] < 3200
    assert kinds[0][1] == "drift"
    assert all(3000 <= at < 3600 for at, _ in kinds)  # nothing false before or after
    # The plain baseline misses it entirely: the cycle is what it learnt to discount.
    plain = AnomalyDetector(SequentialIds(), DetectorConfig(default=OFF))
    assert opened(plain.process_series(KEY, stamps(6000), x)) == []


def test_a_spike_inside_the_cycles_range_is_found() -> None:
    """A 6 σ spike at the bottom of the day is well inside the range the value covers over a
    day: only a baseline that follows the cycle sees it."""
    x = daily(4000, seed=2)
    at = 3000 + (216 - 3000 % 288) % 288  # three quarters into the day: the trough
    x[at] += 6.0
    records = AnomalyDetector(SequentialIds()).process_series(KEY, stamps(4000), x)
    assert opened(records) == [(at, "spike")]
    plain = AnomalyDetector(SequentialIds(), DetectorConfig(default=OFF))
    assert opened(plain.process_series(KEY, stamps(4000), x)) == []


def test_a_clean_cyclic_series_raises_few_false_alarms() -> None:
    """Measured: 5 anomalies — four single-sample spikes, one short drift — in 40 seeds ×
    10,000 samples of the daily curve (1.25e-5 per sample; the plain baseline on white noise:
    6e-6); 1 in these 20."""
    found = []
    for seed in range(20):
        x = daily(10_000, seed=seed)
        found += opened(AnomalyDetector(SequentialIds()).process_series(KEY, stamps(10_000), x))
    assert len(found) <= 3
    assert {kind for _, kind in found} <= {"spike"}


def test_the_cycle_is_learnt_and_reported() -> None:
    x = daily(2000, seed=4)
    detector = run(x)
    snapshot = detector.baseline(KEY)
    assert snapshot is not None
    assert snapshot.period_s == 86_400.0
    # The baseline mean is what the cycle expects now, not the day's average.
    expected = (
        50.0 + 5.0 * np.sin(2 * np.pi * 1999 / 288) + 1.5 * np.sin(4 * np.pi * 1999 / 288 + 1)
    )
    assert snapshot.mean == pytest.approx(expected, abs=0.5)
    assert snapshot.std == pytest.approx(1.0, rel=0.25)


def test_a_gap_in_the_data_does_not_shift_the_cycle() -> None:
    """Six and a half hours without samples, then the day goes on where the clock says."""
    n = 4000
    x = daily(n, seed=5)
    ts = stamps(n)
    keep = np.ones(n, dtype=bool)
    keep[2000:2078] = False
    records = AnomalyDetector(SequentialIds()).process_series(KEY, ts[keep], x[keep])
    assert [r for r in records if r["status"] == "open"] == []


def test_anomaly_records_say_the_cycle() -> None:
    x = daily(3000, seed=6)
    x[2500] += 9.0
    records = AnomalyDetector(SequentialIds()).process_series(KEY, stamps(3000), x)
    (spike,) = [r for r in records if r["status"] == "open"]
    features = spike["features"]
    assert features["load_period_s"] == 86_400.0
    assert features["load_baseline_mean"] == pytest.approx(features["load_value"] - 9.0, abs=3.0)
    assert "load_seasonal" in features


# --- settings ----------------------------------------------------------------------------


def test_seasonality_can_be_switched_off_or_given() -> None:
    x = daily(2000, seed=7)
    assert run(x, OFF).baseline(KEY).period_s is None  # type: ignore[union-attr]
    # A cycle given in seconds is learnt once two of them were seen: here, from 600 samples.
    given = SeriesConfig.from_thresholds(
        AnomalyThresholds(seasonality=SeasonalitySpec(detect=False, period_s=86_400))
    )
    detector = run(x[:601], given)  # (the search runs before the sample after the 600th)
    assert detector.baseline(KEY).period_s == 86_400.0  # type: ignore[union-attr]


def test_reconfiguring_drops_a_cycle_no_longer_wanted() -> None:
    x = daily(2000, seed=8)
    detector = run(x)
    assert detector.baseline(KEY).period_s == 86_400.0  # type: ignore[union-attr]
    detector.reconfigure(DetectorConfig(default=OFF))
    assert detector.baseline(KEY).period_s is None  # type: ignore[union-attr]
    state = detector.to_dict()["series"][0]
    assert state["profile"] == []
    assert state["season_xs"] == []
    assert not state["season_done"]


# --- batching, restarts, many series ---------------------------------------------------------------


def test_cuts_and_restarts_change_nothing_on_a_cyclic_series() -> None:
    """Cut anywhere (before, at and after the searches at every 200 samples) and restarted
    from saved state each time: the same records and state as feeding it whole."""
    n = 4000
    x = daily(n, seed=9)
    x[1500:1503] += 8.0
    x[2600:2800] += np.linspace(0.0, 6.0, 200)
    whole = AnomalyDetector(SequentialIds())
    expected = whole.process_series(KEY, stamps(n), x)
    assert whole.baseline(KEY).period_s == 86_400.0  # type: ignore[union-attr]
    cuts = [0, 150, 199, 200, 201, 400, 777, 999, 1000, 1001, 1200, 2222, 2650, 3333, n]
    detector = AnomalyDetector(SequentialIds())
    got: list[dict[str, Any]] = []
    for start, stop in itertools.pairwise(cuts):
        saved = json.loads(json.dumps(detector.to_dict(), allow_nan=False))
        detector = AnomalyDetector.from_dict(saved, SequentialIds())
        got += detector.process_series(KEY, stamps(stop - start, start), x[start:stop])
    assert summary(got) == summary(expected)
    assert_close(detector.to_dict(), whole.to_dict())


def summary(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(r["ts"], r["status"], r["kind"]) for r in records]


def test_many_series_at_once_equal_each_alone_with_cycles() -> None:
    """Series with and without cycles in one batch, in slices: the vectorised path stops at
    each search and leaves cyclic series to the per-sample loop; each series' outcome is what
    feeding it alone gives."""
    n = 3000
    keys = [SeriesKey("plant", f"unit_{i}", "load") for i in range(6)]
    data = {
        key: daily(n, seed=i) if i % 2 else np.random.default_rng(i).normal(50.0, 1.0, n)
        for i, key in enumerate(keys)
    }
    together = AnomalyDetector(SequentialIds())
    alone = {key: AnomalyDetector(SequentialIds()) for key in keys}
    got: list[tuple[str, str, str, str]] = []
    want: list[tuple[str, str, str, str]] = []
    for start in range(0, n, 350):
        stop = min(n, start + 350)
        batch = [(key, stamps(stop - start, start), data[key][start:stop]) for key in keys]
        got += [(r["asset_id"], *s) for r, s in _with_summary(together.process_batch(batch))]
        for item in batch:
            records = alone[item[0]].process_series(*item)
            want += [(r["asset_id"], *s) for r, s in _with_summary(records)]
    assert sorted(got) == sorted(want)
    for key in keys:
        mine = together.baseline(key)
        theirs = alone[key].baseline(key)
        assert mine is not None
        assert theirs is not None
        assert mine.period_s == theirs.period_s
        assert mine.mean == pytest.approx(theirs.mean, rel=1e-12)
    assert {together.baseline(k).period_s for k in keys[1::2]} == {86_400.0}  # type: ignore[union-attr]


def _with_summary(
    records: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], tuple[str, str, str]]]:
    return [(r, (r["ts"], r["status"], r["kind"])) for r in records]


def test_a_given_cycle_too_long_for_the_samples_kept_is_not_learnt() -> None:
    """A day at one sample a second would need 172,800 samples kept: after 5,000 the search
    gives up (and lets them go) rather than carry them in the state of every page."""
    given = SeriesConfig.from_thresholds(
        AnomalyThresholds(seasonality=SeasonalitySpec(period_s=86_400))
    )
    detector = AnomalyDetector(SequentialIds(), DetectorConfig(default=given))
    x = np.random.default_rng(10).normal(50.0, 1.0, 5_001)
    detector.process_series(KEY, T0 + np.arange(5_001, dtype=np.int64) * 1_000_000, x)
    state = detector.to_dict()["series"][0]
    assert state["season_done"]
    assert state["season_xs"] == []
    assert detector.baseline(KEY).period_s is None  # type: ignore[union-attr]


def test_long_number_lists_are_stored_packed_and_exactly() -> None:
    """A cyclic series' state (profile, pending updates) and a searching series' samples are
    stored as base64 of 8-byte numbers: shorter than JSON numbers, and read back bit for bit;
    states written before (plain lists) are still read."""
    detector = run(daily(1500, seed=11))
    searching = AnomalyDetector(SequentialIds())
    searching.process_series(KEY, stamps(350), daily(350, seed=12))
    for det in (detector, searching):
        saved = det.to_dict()
        text = json.dumps(saved)
        lists = ("season_ts", "season_xs", "profile", "profile_pending")
        packed = [saved["series"][0][k] for k in lists if isinstance(saved["series"][0][k], str)]
        assert packed
        assert all(v.startswith("b64:") for v in packed)
        back = AnomalyDetector.from_dict(json.loads(text), SequentialIds())
        assert back._trackers[KEY].state == det._trackers[KEY].state
        plain = dict(saved["series"][0], **det._trackers[KEY].state.to_dict())
        old = AnomalyDetector.from_dict({**saved, "series": [plain]}, SequentialIds())
        assert old._trackers[KEY].state == det._trackers[KEY].state
        assert len(text) < 0.8 * len(json.dumps({**saved, "series": [plain]}))
