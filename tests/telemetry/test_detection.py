"""Anomaly detection as a change-log consumer: anomalies appear in the log, exactly once,
across restarts of the app mid-stream; its cursor and the detector's state persist."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from jsonschema import Draft202012Validator, FormatChecker
from sqlalchemy import func, select

from opstwin.aiw.changelog import NewEvent
from opstwin.aiw.consumers import consumer_cursors, read_position
from opstwin.app import create_app
from opstwin.config import Settings
from opstwin.kit.clock import SystemClock, from_micros, rfc3339, to_micros
from opstwin.kit.ids import UlidSource
from opstwin.services import Services
from opstwin.telemetry.anomaly import AnomalyDetector, SeriesKey
from opstwin.telemetry.detection import CONSUMER_NAME, anomalies, detector_series
from opstwin.twins import load_twin_file
from opstwin.twins.state import LatestSample, record_latest
from opstwin.twins.tables import asset_state

ROOT = Path(__file__).resolve().parents[2]
ANOMALY_SCHEMA = json.loads(
    (ROOT / "src" / "opstwin" / "aiw" / "schemas" / "anomaly.v1.json").read_text(encoding="utf-8")
)
T0 = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
TWIN, ASSET = "fab_line_3", "etch_tool_7"
POINTS_PER_ENTRY = 25


def series(n: int = 2000, seed: int = 7) -> list[dict[str, Any]]:
    """telemetry.v1 points of two metrics, with spikes and a level shift injected."""
    rng = np.random.default_rng(seed)
    temp = rng.normal(60.0, 0.5, n)
    temp[[i for i in (400, 900, 1500) if i < n]] += 8.0  # three isolated spikes
    pressure = rng.normal(12.0, 0.2, n)
    pressure[1100:1300] += 1.0  # a sustained shift of 5 σ, then back
    return [
        {
            "event_id": f"evt_{i:06d}",
            "twin_id": TWIN,
            "asset_id": ASSET,
            "ts": rfc3339(from_micros(T0 + i * 1_000_000)),
            "metrics": {"temp_c": float(temp[i]), "pressure_mtorr": float(pressure[i])},
            "tags": {},
            "quality": {"data_quality_score": 1.0},
        }
        for i in range(n)
    ]


def entries(points: list[dict[str, Any]], tenant_id: str = "default") -> list[NewEvent]:
    """What the ingest appends: one entry per batch per asset, carrying the points."""
    return [
        NewEvent(
            tenant_id=tenant_id,
            type="opstwin.telemetry.appended",
            source="/opstwin/telemetry",
            subject=f"twin/{TWIN}/asset/{ASSET}",
            data={"twin_id": TWIN, "asset_id": ASSET, "points": points[i : i + POINTS_PER_ENTRY]},
        )
        for i in range(0, len(points), POINTS_PER_ENTRY)
    ]


def reference(points: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """What one uninterrupted detector makes of the same points."""
    detector = AnomalyDetector(UlidSource(SystemClock()))
    out: list[dict[str, Any]] = []
    for i in range(0, len(points), POINTS_PER_ENTRY):
        out.extend(detector.process_events(points[i : i + POINTS_PER_ENTRY]))
    return [(r["metric"], r["status"], r["kind"], r["ts"]) for r in out]


async def append(services: Services, events: list[NewEvent]) -> None:
    for event in events:
        async with services.db.write() as tx:
            await services.changelog.append(tx, [event])


async def wait_caught_up(services: Services, deadline_s: float = 30.0) -> None:
    assert services.detection is not None
    async with services.db.read() as conn:
        head = (await services.changelog.marks(conn)).head
    async with asyncio.timeout(deadline_s):
        await services.detection.wait_for(head)


async def anomaly_events(services: Services, tenant_id: str = "default") -> list[dict[str, Any]]:
    async with services.db.read() as conn:
        marks = await services.changelog.marks(conn)
        page = await services.changelog.read(
            conn, after=0, upto=marks.head, limit=100_000, tenant_id=tenant_id
        )
    return [
        json.loads(row.envelope) for row in page.rows if row.type.startswith("opstwin.anomaly.")
    ]


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def test_telemetry_in_the_log_becomes_anomaly_events(
    services: Services, backend: str
) -> None:
    points = series()
    await append(services, entries(points))
    await wait_caught_up(services)

    envelopes = await anomaly_events(services)
    validator = Draft202012Validator(ANOMALY_SCHEMA, format_checker=FormatChecker())
    for env in envelopes:
        validator.validate(env["data"])
        assert env["subject"] == f"twin/{TWIN}/asset/{ASSET}"
        assert env["id"] == env["data"]["anomaly_id"]
        assert env["dataschema"] == "urn:opstwin:schema:anomaly.v1"
        expected_type = {"open": "opstwin.anomaly.detected", "resolved": "opstwin.anomaly.resolved"}
        assert env["type"] == expected_type[env["data"]["status"]]
    got = [
        (e["data"]["metric"], e["data"]["status"], e["data"]["kind"], e["data"]["ts"])
        for e in envelopes
    ]
    assert got == reference(points)
    spikes = {
        e["data"]["ts"]
        for e in envelopes
        if e["data"]["kind"] == "spike" and e["data"]["status"] == "open"
    }
    assert {rfc3339(from_micros(T0 + i * 1_000_000)) for i in (400, 900, 1500)} <= spikes
    assert any(e["data"]["metric"] == "pressure_mtorr" for e in envelopes)

    async with services.db.read() as conn:
        head = (await services.changelog.marks(conn)).head
        position = await read_position(conn, CONSUMER_NAME)
        stored = (await conn.execute(select(func.count()).select_from(detector_series))).scalar()
        rows = (await conn.execute(select(anomalies))).mappings().all()
    # The cursor names the last telemetry entry handled (the anomalies after it need nothing).
    assert position is not None
    assert position <= head
    assert stored == 2
    opened = [e["data"] for e in envelopes if e["data"]["status"] == "open"]
    assert {r["anomaly_id"] for r in rows} == {r["anomaly_id"] for r in opened}
    resolved_ids = {e["data"]["resolves"] for e in envelopes if e["data"]["status"] == "resolved"}
    assert {r["anomaly_id"] for r in rows if r["status"] == "resolved"} == resolved_ids


async def test_restarts_mid_stream_neither_lose_nor_duplicate_an_anomaly(
    settings: Settings, backend: str
) -> None:
    """The app is stopped while the detector is part-way through the log — three times —
    and more telemetry arrives while it is down; the anomalies equal one uninterrupted run."""
    settings = settings.model_copy(
        update={"detection": settings.detection.model_copy(update={"page_size": 3})}
    )
    points = series(seed=11)
    pending = entries(points)
    chunks = [pending[:30], pending[30:50], pending[50:70], pending[70:]]
    for number, chunk in enumerate(chunks):
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            services: Services = app.state.services
            assert services.detection is not None
            await append(services, chunk)
            if number < len(chunks) - 1:
                # Stop while it is still working: past the start, short of the head.
                async with services.db.read() as conn:
                    head = (await services.changelog.marks(conn)).head
                async with asyncio.timeout(30):
                    await services.detection.wait_for(head - 25)
                assert services.detection.position < head
                continue
            await wait_caught_up(services)
            envelopes = await anomaly_events(services)
            async with services.db.read() as conn:
                rows = (await conn.execute(select(anomalies))).mappings().all()

    got = [
        (e["data"]["metric"], e["data"]["status"], e["data"]["kind"], e["data"]["ts"])
        for e in envelopes
    ]
    assert got == reference(points)
    ids = [e["id"] for e in envelopes]
    assert len(ids) == len(set(ids))
    opened = {e["id"] for e in envelopes if e["data"]["status"] == "open"}
    for env in envelopes:
        if env["data"]["status"] == "resolved":
            assert env["data"]["resolves"] in opened
    assert {r["anomaly_id"] for r in rows} == opened


async def test_detector_state_and_cursor_survive_restart(settings: Settings, backend: str) -> None:
    points = series(n=300, seed=3)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        await append(services, entries(points))
        await wait_caught_up(services)
        assert services.anomaly_detection is not None
        before = services.anomaly_detection.detector("default")
        assert before is not None
        state = before.to_dict()
        async with services.db.read() as conn:
            position = await read_position(conn, CONSUMER_NAME)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        await wait_caught_up(services)
        assert services.anomaly_detection is not None
        after = services.anomaly_detection.detector("default")
        assert after is not None
        by_key = lambda d: sorted(d["series"], key=lambda s: (s["asset_id"], s["metric"]))  # noqa: E731
        assert by_key(after.to_dict()) == by_key(state)
        async with services.db.read() as conn:
            assert await read_position(conn, CONSUMER_NAME) == position
            names = (await conn.execute(select(consumer_cursors.c.name))).scalars().all()
        assert names == [CONSUMER_NAME]


async def test_tenants_are_detected_apart(services: Services, backend: str) -> None:
    points = series(n=600, seed=5)
    await append(services, entries(points, "default") + entries(points, "other"))
    await wait_caught_up(services)
    mine, theirs = (
        await anomaly_events(services, "default"),
        await anomaly_events(services, "other"),
    )
    assert mine
    assert theirs
    assert [e["data"]["ts"] for e in mine] == [e["data"]["ts"] for e in theirs]


async def test_settings_come_from_the_twin_model_and_follow_its_updates(
    services: Services, backend: str
) -> None:
    """Hard limits of the tenant's model decide out_of_range; a model update moves them from
    that point of the stream on; the asset's reported state carries the learnt baseline."""
    document = load_twin_file(ROOT / "examples" / "fab-line.yaml")
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", document)
    rng = np.random.default_rng(1)
    values = rng.normal(60.0, 0.5, 400)
    values[50] = 95.0  # above the model's hard limit of 90 °C (during warm-up: still fires)
    values[300] = 80.0  # inside 90 °C; above the updated limit of 75 °C
    points = [
        {
            "event_id": f"evt_{i:06d}",
            "twin_id": TWIN,
            "asset_id": ASSET,
            "ts": rfc3339(from_micros(T0 + i * 1_000_000)),
            "metrics": {"temp_c": float(values[i])},
            "tags": {},
            "quality": {"data_quality_score": 1.0},
        }
        for i in range(400)
    ]
    batches = entries(points)
    half = 200 // POINTS_PER_ENTRY
    await append_with_reported_state(services, batches[:half])
    updated = document.model_dump(mode="json", by_alias=True, exclude_unset=True)
    etch = next(a for a in updated["twins"][0]["assets"] if a["id"] == ASSET)
    etch["metrics"]["temp_c"]["hard_limits"]["high"] = 75.0
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", updated)
    await append_with_reported_state(services, batches[half:])
    await wait_caught_up(services)

    opened = [e["data"] for e in await anomaly_events(services) if e["data"]["status"] == "open"]
    out_of_range = {r["ts"]: r for r in opened if r["kind"] == "out_of_range"}
    for i in (50, 300):
        record = out_of_range[rfc3339(from_micros(T0 + i * 1_000_000))]
        assert record["severity"] == "critical"
    assert out_of_range[rfc3339(from_micros(T0 + 300 * 1_000_000))]["features"][
        "temp_c_hard_limit"
    ] == pytest.approx(75.0)

    async with services.db.read() as conn:
        row = (
            (await conn.execute(select(asset_state).where(asset_state.c.metric == "temp_c")))
            .mappings()
            .one()
        )
    assert services.anomaly_detection is not None
    detector = services.anomaly_detection.detector("default")
    assert detector is not None
    baseline = detector.baseline(SeriesKey(TWIN, ASSET, "temp_c"))
    assert baseline is not None
    assert row["baseline_mean"] == pytest.approx(baseline.mean)
    assert row["baseline_std"] == pytest.approx(baseline.std)
    assert row["z_score"] == pytest.approx(baseline.z)
    assert 59.0 < row["baseline_mean"] < 61.0


async def append_with_reported_state(services: Services, events: list[NewEvent]) -> None:
    """As ingest does: the latest sample of each series with the entry, in one transaction."""
    for event in events:
        last = event.data["points"][-1]
        sample = LatestSample(
            twin_id=TWIN,
            asset_id=ASSET,
            metric="temp_c",
            value=last["metrics"]["temp_c"],
            ts_us=to_micros(datetime.fromisoformat(last["ts"])),
            quality=1.0,
            event_id=last["event_id"],
        )
        async with services.db.write() as tx:
            await record_latest(tx, "default", [sample])
            await services.changelog.append(tx, [event])
