"""EventNormalizer quality scoring and timestamp outcomes (pure: no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from opstwin.config import TelemetrySettings
from opstwin.kit.clock import to_micros
from opstwin.telemetry.normalizer import EventNormalizer, NormalizedEvent, TwinCatalog
from opstwin.twins.loader import parse_twin_document
from opstwin.twins.registry import Twin
from tests.telemetry.test_ingest import twin_model

NOW = datetime(2026, 1, 4, 12, 0, tzinfo=UTC)
NOW_US = to_micros(NOW)


def catalogs() -> dict[str, TwinCatalog | None]:
    spec = parse_twin_document({"twins": [twin_model()]}).twins[0]
    return {"line1": TwinCatalog.of(Twin("default", "line1", 1, spec, NOW))}


def normalize(**fields: Any) -> NormalizedEvent:
    raw = {"twin_id": "line1", "asset_id": "etch_tool_7", "ts": "2026-01-04T12:00:00Z", **fields}
    outcome = EventNormalizer(TelemetrySettings(max_clock_skew_s=60, stale_after_s=3600)).normalize(
        raw, catalogs(), NOW_US, "tel_new"
    )
    assert isinstance(outcome, NormalizedEvent), outcome
    return outcome


@pytest.mark.parametrize(
    ("fields", "score", "missing_rate", "issues"),
    [
        ({"metrics": {"temp_c": 60.0, "rf_w": 1.0}}, 1.0, 0.0, []),
        ({"metrics": {"temp_c": None, "rf_w": 1.0}}, 0.5, 0.5, ["missing:temp_c"]),
        (
            {"metrics": {"temp_c": "Infinity", "rf_w": "NaN"}},
            0.0,
            1.0,
            ["missing:temp_c", "missing:rf_w"],
        ),
        (
            {"metrics": {"temp_c": 95.0, "rf_w": 1.0, "flow_sccm": 2.0, "counter": 3.0}},
            0.75,
            0.0,
            ["out_of_limits:temp_c"],
        ),
        ({"metrics": {"temp_c": 60.0, "humidity": 3.0}}, 0.5, 0.0, ["unknown_metric:humidity"]),
        ({"metrics": {"temp_c": 60.0}, "ts": "2026-01-04T12:05:00Z"}, 0.5, 0.0, ["future_ts"]),
        ({"metrics": {"temp_c": 60.0}, "ts": "2026-01-04T12:00:59Z"}, 1.0, 0.0, []),
        ({"metrics": {"temp_c": 60.0}, "ts": "2026-01-04T10:00:00Z"}, 0.75, 0.0, ["stale_ts"]),
        ({"metrics": {"temp_c": 60.0}, "quality": {"data_quality_score": 0.9}}, 0.9, 0.0, []),
        (
            {"metrics": {"temp_c": None, "rf_w": 1.0}, "ts": "2026-01-04T09:00:00Z"},
            0.375,
            0.5,
            ["missing:temp_c", "stale_ts"],
        ),
    ],
)
def test_quality_score(
    fields: dict[str, Any], score: float, missing_rate: float, issues: list[str]
) -> None:
    quality = normalize(**fields).document["quality"]
    assert quality == {"data_quality_score": score, "missing_rate": missing_rate, "issues": issues}


def test_timestamps_are_normalised_to_utc() -> None:
    assert (
        normalize(metrics={"temp_c": 1.0}, ts="2026-01-04T13:00:00+01:00").document["ts"]
        == "2026-01-04T12:00:00Z"
    )
    assert (
        normalize(metrics={"temp_c": 1.0}, ts="2026-01-04T12:00:00.25Z").ts_us == NOW_US + 250_000
    )


@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        ({"ts": "yesterday"}, "/ts"),
        ({"ts": 1767528000}, "/ts"),
        ({"ts": "1969-12-31T23:59:59Z"}, "/ts"),
        ({"metrics": {}}, "/metrics"),
        ({"metrics": {"temp_c": True}}, "/metrics/temp_c"),
        ({"metrics": {"temp_c": [1.0]}}, "/metrics/temp_c"),
        ({"event_id": ""}, "/event_id"),
        ({"tags": {"a": {"b": 1}}}, "/tags"),
        ({"quality": {"data_quality_score": 2}}, "/quality"),
        ({"units": {"temp_c": "W"}}, "/units/temp_c"),
    ],
)
def test_rejections_point_at_the_field(fields: dict[str, Any], pointer: str) -> None:
    raw = {
        "twin_id": "line1",
        "asset_id": "etch_tool_7",
        "ts": "2026-01-04T12:00:00Z",
        "metrics": {"temp_c": 1.0},
    }
    raw.update(fields)
    outcome = EventNormalizer(TelemetrySettings()).normalize(raw, catalogs(), NOW_US, "tel_new")
    assert isinstance(outcome, list)
    assert [e.pointer for e in outcome] == [pointer]
