"""HTTP ingest end to end (request sent → committed) vs a bare insert of the same rows.

Batches of 1,000 events × 5 metrics go through the app in-process (httpx over ASGI: routing,
auth, orjson parsing, the EventNormalizer, dedupe, storage, reported state, change log, commit).
The baseline inserts the same event and point rows on the same kind of connection with the
fastest plain statement each backend has (SQLite ``executemany``, PostgreSQL ``COPY``), without
normalising, deduplicating, state or change log. Run with anomaly detection on (the default:
the detector consumes the log in the same process) and off.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import orjson

from bench.common import database_url, median, pg_available
from opstwin.app import create_app
from opstwin.config import DatabaseSettings, DetectionSettings, Settings
from opstwin.policy.rbac import Role
from opstwin.services import Services
from opstwin.telemetry.repository import POINT_COLUMNS

EVENTS = 1000
METRICS = ("temp_c", "pressure_mtorr", "rf_w", "flow_sccm", "bias_w")
ASSETS = 10
ROUNDS = 20
WARMUP = 2


def _twin() -> dict[str, object]:
    metric = {"unit": "1", "hard_limits": {"low": -1e9, "high": 1e9}}
    return {
        "id": "bench_line",
        "assets": [
            {"id": f"tool_{a}", "metrics": {m: dict(metric) for m in METRICS}}
            for a in range(ASSETS)
        ],
    }


def _batch(round_: int, start: datetime) -> list[dict[str, object]]:
    return [
        {
            "event_id": f"b{round_}-{i}",
            "twin_id": "bench_line",
            "asset_id": f"tool_{i % ASSETS}",
            "ts": (start + timedelta(milliseconds=round_ * EVENTS + i))
            .isoformat()
            .replace("+00:00", "Z"),
            "metrics": {m: 50.0 + ((i * 7 + k) % 13) for k, m in enumerate(METRICS)},
        }
        for i in range(EVENTS)
    ]


async def _run(backend: str, detection: bool) -> tuple[float, float]:
    """(points/s through HTTP, points/s of the bare insert), medians over the rounds."""
    async with database_url(backend) as (url, schema):
        with TemporaryDirectory(prefix="opstwin-bench-") as tmp:
            settings = Settings(
                env="test",
                data_dir=Path(tmp),
                database=DatabaseSettings(url=url, schema_name=schema),
                detection=DetectionSettings(enabled=detection),
            )
            app = create_app(settings)
            services = app.state.services
            async with app.router.lifespan_context(app):
                async with services.db.write() as tx:
                    admin = await services.keys.create(tx.conn, name="bench", role=Role.admin)
                headers = {"Authorization": f"Bearer {admin.token}"}
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                    put = await client.put("/twins/bench_line", json=_twin(), headers=headers)
                    put.raise_for_status()
                    start = datetime.now(UTC) - timedelta(minutes=5)
                    ours: list[float] = []
                    bodies = [orjson.dumps(_batch(r, start)) for r in range(ROUNDS + WARMUP)]
                    post_headers = {**headers, "content-type": "application/json"}
                    for r, body in enumerate(bodies):
                        began = time.perf_counter()
                        response = await client.post(
                            "/telemetry/ingest", content=body, headers=post_headers
                        )
                        elapsed = time.perf_counter() - began
                        result = response.json()
                        if result["accepted"] != EVENTS:
                            raise RuntimeError(f"ingest stored {result}")
                        if r >= WARMUP:
                            ours.append(EVENTS * len(METRICS) / elapsed)
                    bare = await _bare(services, start)
    return median(ours), median(bare)


async def _bare(services: Services, start: datetime) -> list[float]:
    """The same rows (events and points), inserted plainly on the same connection type."""
    db = services.db
    rates: list[float] = []
    base_event = 10**12
    start_us = int(start.timestamp() * 1e6)
    for r in range(ROUNDS):
        events = [
            (
                base_event + r * EVENTS + i,
                "bare",
                f"x{r}-{i}",
                "bench_line",
                f"tool_{i % ASSETS}",
                1,
                1.0,
                0,
            )
            for i in range(EVENTS)
        ]
        # The rows HTTP ingest stores: one series per (asset, metric), the same timestamps
        # (1 ms apart) and values, in the same order.
        points = [
            (
                10**9 + (i % ASSETS) * len(METRICS) + k,
                start_us + (r * EVENTS + i) * 1000,
                base_event + r * EVENTS + i,
                50.0 + ((i * 7 + k) % 13),
            )
            for i in range(EVENTS)
            for k in range(len(METRICS))
        ]
        began = time.perf_counter()
        async with db.write() as tx:
            if tx.backend == "postgresql":
                raw = await tx.conn.get_raw_connection()
                driver = raw.driver_connection
                await tx.conn.exec_driver_sql("SELECT 1")  # start the transaction
                await driver.copy_records_to_table(  # type: ignore[union-attr]
                    "telemetry_events",
                    records=events,
                    columns=(
                        "event_no",
                        "tenant_id",
                        "event_id",
                        "twin_id",
                        "asset_id",
                        "ts_us",
                        "quality",
                        "received_at_us",
                    ),
                )
                await driver.copy_records_to_table(  # type: ignore[union-attr]
                    "telemetry_points", records=points, columns=POINT_COLUMNS
                )
            else:
                await tx.conn.exec_driver_sql(
                    "INSERT INTO telemetry_events (event_no, tenant_id, event_id, twin_id, "
                    "asset_id, ts_us, quality, received_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    events,
                )
                await tx.conn.exec_driver_sql(
                    "INSERT INTO telemetry_points (series_id, ts_us, event_no, value) "
                    "VALUES (?, ?, ?, ?)",
                    points,
                )
        rates.append(EVENTS * len(METRICS) / (time.perf_counter() - began))
    return rates


def run() -> None:
    backends = ["sqlite"] + (["postgresql"] if pg_available() else [])
    for backend in backends:
        for detection in (True, False):
            ours, bare = asyncio.run(_run(backend, detection))
            label = "detection on " if detection else "detection off"
            print(
                f"   {backend:<10} {label}  HTTP ingest {ours:>9,.0f} points/s   "
                f"bare insert {bare:>9,.0f} rows/s   ratio {ours / bare:.2f}"
            )
    if "postgresql" not in backends:
        print("   postgresql: not reachable on 127.0.0.1:5432, skipped")
