"""HTTP ingest end to end (request sent → committed) vs a bare insert of the same rows.

Batches of 1,000 events × 5 metrics go through the app in-process (httpx over ASGI: routing,
auth, orjson parsing, the EventNormalizer, dedupe, storage, reported state, change log, commit).
The baseline inserts the same event and point rows on the same kind of connection with the
fastest plain statement each backend has (SQLite ``executemany``, PostgreSQL ``COPY``), without
normalising, deduplicating, state or change log. Run with anomaly detection on (the default:
the detector consumes the log in the same process) and off.

Rates are totals: points over wall time. The measured rounds run in blocks of BLOCK requests;
with detection on, a block's time runs until the detector has caught up with its last
request, so the detector's work counts in full (it handles a page per batch window, so only
some requests share the event loop with it, and a median of per-request rates would hide
exactly those). After each block the bare insert runs the same number of rounds, so both
see the same noise of this shared machine.

Ingest runs once with one client (each request sent when the previous one answered) and once
with :data:`CLIENTS` concurrent clients (as many producers posting at once): on PostgreSQL the
database server works on one request while the app's Python parses and normalises the next, so
the two cores both work. The bare insert is always one connection, sequential.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import orjson

from bench.common import database_url, pg_available
from opstwin.app import create_app
from opstwin.config import DatabaseSettings, DetectionSettings, Settings
from opstwin.policy.rbac import Role
from opstwin.services import Services
from opstwin.telemetry.repository import POINT_COLUMNS

EVENTS = 1000
METRICS = ("temp_c", "pressure_mtorr", "rf_w", "flow_sccm", "bias_w")
ASSETS = 10
ROUNDS = 40
BLOCK = 10
WARMUP = 2
CLIENTS = 4
"""Concurrent clients of the second run."""


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


async def _run(
    backend: str, detection: bool, clients: int = 1
) -> tuple[float, float, float | None]:
    """(points/s through HTTP with ``clients`` concurrent clients, rows/s of the bare insert,
    the longest the detector took to catch up after a block's last response — None with
    detection off)."""
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
                    bodies = [orjson.dumps(_batch(r, start)) for r in range(ROUNDS + WARMUP)]
                    post_headers = {**headers, "content-type": "application/json"}

                    async def post(body: bytes) -> None:
                        response = await client.post(
                            "/telemetry/ingest", content=body, headers=post_headers
                        )
                        result = response.json()
                        if result["accepted"] != EVENTS:
                            raise RuntimeError(f"ingest stored {result}")

                    async def post_all(block: list[bytes]) -> None:
                        """The requests of a block, at most ``clients`` in flight."""
                        pending = iter(block)

                        async def client_() -> None:
                            for body in pending:  # a shared iterator: each body once
                                await post(body)

                        await asyncio.gather(*(client_() for _ in range(clients)))

                    await post_all(bodies[:WARMUP])
                    await _detector_lag(services)
                    spent = bare_spent = 0.0
                    lags: list[float] = []
                    for first in range(0, ROUNDS, BLOCK):
                        began = time.perf_counter()
                        await post_all(bodies[WARMUP + first : WARMUP + first + BLOCK])
                        lag = await _detector_lag(services)
                        spent += time.perf_counter() - began
                        if lag is not None:
                            lags.append(lag)
                        bare_spent += await _bare(services, start, range(first, first + BLOCK))
    points = ROUNDS * EVENTS * len(METRICS)
    return points / spent, points / bare_spent, max(lags) if lags else None


async def _detector_lag(services: Services) -> float | None:
    """Seconds until the detector has handled everything appended so far."""
    if services.detection is None:
        return None
    began = time.perf_counter()
    async with services.db.read() as conn:
        head = (await services.changelog.marks(conn)).head
    async with asyncio.timeout(60):
        await services.detection.wait_for(head)
    return time.perf_counter() - began


async def _bare(services: Services, start: datetime, rounds: range) -> float:
    """Seconds to insert the same rows (events and points) plainly, on the same connection
    type, for ``rounds``."""
    db = services.db
    spent = 0.0
    # Below every number ingest allocates (it continues after the current maximum).
    base_event = -(10**12)
    start_us = int(start.timestamp() * 1e6)
    for r in rounds:
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
        spent += time.perf_counter() - began
    return spent


def run() -> None:
    backends = ["sqlite"] + (["postgresql"] if pg_available() else [])
    for backend in backends:
        for detection in (True, False):
            for clients in (1, CLIENTS):
                ours, bare, lag = asyncio.run(_run(backend, detection, clients))
                label = "detection on " if detection else "detection off"
                caught_up = (
                    "" if lag is None else f"   detector caught up ≤ {lag * 1000:,.0f} ms later"
                )
                print(
                    f"   {backend:<10} {label} {clients} client{'s' if clients > 1 else ' '}  "
                    f"HTTP ingest {ours:>9,.0f} points/s   bare insert {bare:>9,.0f} rows/s   "
                    f"ratio {ours / bare:.2f}{caught_up}"
                )
    if "postgresql" not in backends:
        print("   postgresql: not reachable on 127.0.0.1:5432, skipped")
