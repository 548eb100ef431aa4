"""The detection consumer's exactly-once machinery: a page is scored before its transaction,
on forks of the live detectors, and adopted only after the commit — so a failed commit or a
race lost to another process leaves the live state as it was committed. And how telemetry is
cut into change-log entries does not change what is detected.

The consumers under test here are stepped by hand (``LogConsumer.step``), with the app's own
detector turned off, so each test decides exactly when a page is read and committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import EventFilter, LogRow, NewEvent
from opstwin.aiw.consumers import ConsumerSettings, LogConsumer
from opstwin.app import create_app
from opstwin.config import Settings
from opstwin.kit.clock import SystemClock, from_micros, rfc3339, to_micros
from opstwin.kit.db import Transaction
from opstwin.kit.ids import UlidSource
from opstwin.services import Services
from opstwin.telemetry.anomaly import AnomalyDetector
from opstwin.telemetry.detection import (
    TELEMETRY_APPENDED,
    TWIN_EVENTS_PREFIX,
    AnomalyDetection,
    RegistryModels,
)

T0 = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
TWIN, ASSET = "fab_line_3", "etch_tool_7"
DETECTION_FILTER = EventFilter(
    types=frozenset({TELEMETRY_APPENDED}), type_prefixes=(TWIN_EVENTS_PREFIX,)
)


def points(n: int = 1500, seed: int = 7) -> list[dict[str, Any]]:
    """telemetry.v1 points of two metrics with spikes, a level shift and a stuck stretch."""
    rng = np.random.default_rng(seed)
    temp = rng.normal(60.0, 0.5, n)
    temp[[i for i in (400, 650, 850, 1300) if i < n]] += 8.0
    pressure = rng.normal(12.0, 0.2, n)
    pressure[500:700] += 1.0
    if n > 820:
        pressure[760:820] = pressure[759]
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


def entries(data: list[dict[str, Any]], sizes: list[int], tenant_id: str) -> list[NewEvent]:
    """``data`` cut into appended entries of the given sizes (cycled)."""
    out: list[NewEvent] = []
    start, k = 0, 0
    while start < len(data):
        stop = start + sizes[k % len(sizes)]
        out.append(
            NewEvent(
                tenant_id=tenant_id,
                type=TELEMETRY_APPENDED,
                source="/opstwin/telemetry",
                subject=f"twin/{TWIN}/asset/{ASSET}",
                data={"twin_id": TWIN, "asset_id": ASSET, "points": data[start:stop]},
            )
        )
        start, k = stop, k + 1
    return out


def decisions(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["metric"], r["status"], r["kind"], r["ts"], r["severity"]) for r in records]


def reference(data: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What one detector fed every point at once decides."""
    return decisions(AnomalyDetector(UlidSource(SystemClock())).process_events(data))


async def append(services: Services, events: list[NewEvent]) -> None:
    for event in events:
        async with services.db.write() as tx:
            await services.changelog.append(tx, [event])


async def logged(services: Services, tenant_id: str = "default") -> list[dict[str, Any]]:
    """The anomaly records in the change log, in log order."""
    async with services.db.read() as conn:
        marks = await services.changelog.marks(conn)
        page = await services.changelog.read(
            conn, after=0, upto=marks.head, limit=100_000, tenant_id=tenant_id
        )
    from opstwin.kit import jsonutil

    return [
        jsonutil.loads(row.envelope)["data"]
        for row in page.rows
        if row.type.startswith("opstwin.anomaly.")
    ]


@pytest.fixture
async def quiet_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its own detector off: the tests run theirs."""
    off = settings.model_copy(
        update={"detection": settings.detection.model_copy(update={"enabled": False})}
    )
    app = create_app(off)
    async with app.router.lifespan_context(app):
        yield app


def detection(services: Services, handler: AnomalyDetection | None = None) -> LogConsumer:
    return LogConsumer(
        "detection-under-test",
        db=services.db,
        changelog=services.changelog,
        clock=services.clock,
        handler=handler or new_handler(services),
        flt=DETECTION_FILTER,
        settings=ConsumerSettings(page_size=7),
    )


def new_handler(services: Services) -> AnomalyDetection:
    return AnomalyDetection(
        changelog=services.changelog,
        schemas=services.schemas,
        clock=services.clock,
        ids=services.ids,
        models=RegistryModels(services.twins),
    )


async def drain(consumer: LogConsumer) -> None:
    async with asyncio.timeout(60):
        while await consumer.step():
            pass


async def test_one_entry_or_many_give_the_same_anomalies(services: Services, backend: str) -> None:
    """The same points, as one change-log entry (tenant ``default``) or cut into entries of
    3, 50 and 7 points (tenant ``other``), become the same anomalies, with the same
    features — and those of one detector fed every point at once."""
    data = points()
    await append(services, entries(data, [len(data)], "default"))
    await append(services, entries(data, [3, 50, 7], "other"))
    assert services.detection is not None
    async with services.db.read() as conn:
        head = (await services.changelog.marks(conn)).head
    async with asyncio.timeout(60):
        await services.detection.wait_for(head)

    whole, cut = await logged(services, "default"), await logged(services, "other")
    assert decisions(whole) == decisions(cut) == reference(data)
    assert len(whole) >= 8
    for ours, theirs in zip(whole, cut, strict=True):
        assert ours["score"] == pytest.approx(theirs["score"], rel=1e-9)
        assert ours["features"].keys() == theirs["features"].keys()
        for name, value in ours["features"].items():
            assert value == pytest.approx(theirs["features"][name], rel=1e-9, abs=1e-9)


class FailingCommit(AnomalyDetection):
    """Its transaction fails after it wrote everything (a commit that never happens)."""

    fail = True

    async def handle(self, tx: Transaction, rows: list[LogRow]) -> None:
        await super().handle(tx, rows)
        if self.fail:
            raise OSError("the disk is full")


async def test_a_failed_page_leaves_the_live_detector_as_committed(
    quiet_app: FastAPI, backend: str
) -> None:
    services: Services = quiet_app.state.services
    data = points(n=900)
    handler = FailingCommit(
        changelog=services.changelog,
        schemas=services.schemas,
        clock=services.clock,
        ids=services.ids,
        models=RegistryModels(services.twins),
    )
    consumer = detection(services, handler)
    handler.fail = False
    await append(services, entries(data[:600], [25], "default"))
    await drain(consumer)
    live = handler.detector("default")
    assert live is not None
    committed = live.to_dict()

    await append(services, entries(data[600:], [25], "default"))
    handler.fail = True
    with pytest.raises(OSError, match="disk is full"):
        await consumer.step()
    # Scored and written, but not committed: the live detector has not moved.
    assert handler.detector("default") is live
    assert live.to_dict() == committed

    handler.fail = False
    await drain(consumer)
    assert decisions(await logged(services)) == reference(data)


class RacedDetection(AnomalyDetection):
    """Another process commits the same page while this one is between prepare and handle."""

    rival: LogConsumer | None = None

    async def prepare(self, conn: AsyncConnection, rows: list[LogRow]) -> None:
        await super().prepare(conn, rows)
        rival, self.rival = self.rival, None
        if rival is not None:
            assert await rival.step() is not None


async def test_a_lost_race_is_not_applied_twice(quiet_app: FastAPI, backend: str) -> None:
    services: Services = quiet_app.state.services
    data = points(n=900)
    handler = RacedDetection(
        changelog=services.changelog,
        schemas=services.schemas,
        clock=services.clock,
        ids=services.ids,
        models=RegistryModels(services.twins),
    )
    ours, theirs = detection(services, handler), detection(services)
    await append(services, entries(data[:600], [25], "default"))
    await drain(ours)
    live = handler.detector("default")
    assert live is not None
    before = live.to_dict()

    await append(services, entries(data[600:], [25], "default"))
    handler.rival = theirs
    assert await ours.step()  # lost the race: rolled back, to be reloaded
    assert handler.detector("default") is live
    assert live.to_dict() == before

    await drain(ours)  # reloads what the rival committed and carries on from its cursor
    await drain(theirs)
    got = await logged(services)
    assert decisions(got) == reference(data)
    assert len({r["anomaly_id"] for r in got}) == len(got)


class Rows:
    """A handler without ``prepare`` (the original LogHandler protocol)."""

    def __init__(self) -> None:
        self.pages: list[list[int]] = []

    async def load(self, conn: AsyncConnection) -> None:
        return None

    async def handle(self, tx: Transaction, rows: list[LogRow]) -> None:
        self.pages.append([row.seq for row in rows])


async def test_batch_window_gathers_appends_and_a_waiter_cuts_it_short(
    quiet_app: FastAPI, backend: str
) -> None:
    """With a batch window, appends made right after a page wait and come as one page; a
    caller of ``wait_for`` does not wait for the window (here an hour)."""
    services: Services = quiet_app.state.services
    handler = Rows()
    consumer = LogConsumer(
        "window-under-test",
        db=services.db,
        changelog=services.changelog,
        clock=services.clock,
        handler=handler,
        flt=DETECTION_FILTER,
        settings=ConsumerSettings(poll_interval_s=0.05, batch_window_s=3600.0),
    )
    await consumer.start()
    try:
        data = points(n=60)
        await append(services, entries(data[:10], [10], "default"))
        async with services.db.read() as conn:
            first = (await services.changelog.marks(conn)).head
        async with asyncio.timeout(30):
            await consumer.wait_for(first)
        await append(services, entries(data[10:], [10], "default"))  # five entries
        async with services.db.read() as conn:
            head = (await services.changelog.marks(conn)).head
        async with asyncio.timeout(30):
            await consumer.wait_for(head)
    finally:
        await consumer.stop()
    assert [len(page) for page in handler.pages] == [1, 5]
    assert [seq for page in handler.pages for seq in page] == list(range(first, head + 1))
