"""Change-log append throughput (vs a bare executemany of the same rows) and /diff latency."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
from sqlalchemy import insert

from bench.common import database_url, median, pct, pg_available
from opstwin.aiw.changelog import ChangeLog, NewEvent
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.aiw.tables import change_log
from opstwin.app import create_app
from opstwin.config import DatabaseSettings, Settings
from opstwin.kit import jsonutil
from opstwin.kit.clock import SystemClock
from opstwin.kit.db import Database
from opstwin.kit.ids import UlidSource
from opstwin.policy.rbac import Role

BATCH = 1000
ROUNDS = 10


def _events(round_: int) -> list[NewEvent]:
    return [
        NewEvent(
            tenant_id="default",
            type="opstwin.telemetry.appended",
            source="/bench",
            subject=f"twin/line{i % 4}/asset/tool{i % 25}",
            data={
                "points": [
                    {"ts": "2026-01-01T00:00:00Z", "temp_c": 62.1 + i, "pressure_pa": 101325}
                ],
                "round": round_,
            },
        )
        for i in range(BATCH)
    ]


async def append_throughput(backend: str) -> None:
    async with database_url(backend) as (url, schema):
        db = Database(url, schema_name=schema)
        await db.migrate()
        clock = SystemClock()
        changelog = ChangeLog(db, SchemaRegistry.from_package(), clock, UlidSource(clock))
        await changelog.load()
        ours: list[float] = []
        bare: list[float] = []
        for r in range(ROUNDS):
            events = _events(r)
            started = time.perf_counter()
            async with db.write() as tx:
                await changelog.append(tx, events)
            ours.append(BATCH / (time.perf_counter() - started))

            # Baseline: the same rows (envelopes already built) inserted with one executemany on
            # the same connection type, into the same table, in one transaction.
            rows = [
                {
                    "seq": 10**12 + r * BATCH + i,
                    "tenant_id": "default",
                    "event_id": f"bare-{r}-{i}",
                    "source": "/bench",
                    "type": e.type,
                    "twin_id": e.twin_id,
                    "recorded_at_us": 0,
                    "envelope": jsonutil.dumps_str(changelog.envelope(e)),
                }
                for i, e in enumerate(events)
            ]
            started = time.perf_counter()
            async with db.write() as tx:
                await tx.conn.execute(insert(change_log), rows)
            bare.append(BATCH / (time.perf_counter() - started))
        await db.dispose()
    print(
        f"   append {backend:<10} batches of {BATCH}: {median(ours):>9,.0f} entries/s   "
        f"bare executemany {median(bare):>9,.0f} rows/s   ratio {median(ours) / median(bare):.2f} (goal >= 0.5)"
    )


async def diff_latency(backend: str) -> None:
    async with database_url(backend) as (url, schema):
        settings = Settings(env="test", database=DatabaseSettings(url=url, schema_name=schema))
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            services = app.state.services
            for r in range(20):
                async with services.db.write() as tx:
                    appended = await services.changelog.append(tx, _events(r))
            async with services.db.write() as tx:
                token = (await services.keys.create(tx.conn, name="bench", role=Role.viewer)).token
            head = appended[-1].seq
            headers = {"Authorization": f"Bearer {token}"}
            latencies: list[float] = []
            rng = random.Random(7)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench"
            ) as client:
                for _ in range(200):
                    since = services.changelog.codec.encode(rng.randrange(0, head - BATCH))
                    started = time.perf_counter()
                    response = await client.get(
                        "/diff", params={"since": since, "limit": BATCH}, headers=headers
                    )
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert len(response.json()["events"]) == BATCH
    print(
        f"   /diff  {backend:<10} page of {BATCH} (20k-entry log, in-process ASGI): "
        f"p50 {pct(latencies, 50):.1f} ms  p99 {pct(latencies, 99):.1f} ms (goal p99 < 50 ms on SQLite)"
    )


def run() -> None:
    backends = ["sqlite", *(["postgresql"] if pg_available() else [])]
    if len(backends) == 1:
        print("   PostgreSQL not reachable on 127.0.0.1:5432: its figures are skipped")
    for backend in backends:
        asyncio.run(append_throughput(backend))
    for backend in backends:
        asyncio.run(diff_latency(backend))
