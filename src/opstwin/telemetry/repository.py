"""All SQL of telemetry storage: series ids, event rows (the dedupe key) and points.

Batches go to the database the fastest way each backend offers, inside the caller's
transaction:

* **SQLite** (one writer at a time — write transactions hold the lock from ``BEGIN
  IMMEDIATE``): events get ``event_no`` values after the current maximum and go in with one
  ``executemany … ON CONFLICT DO NOTHING`` (the unique index skips stored event ids; only
  when it skipped some are the stored numbers read back); points with one ``executemany``.
* **PostgreSQL**: events go in with one ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO
  NOTHING RETURNING`` (concurrent writers of the same ``event_id`` are resolved by the unique
  index: the second waits, then skips), points with ``COPY`` (asyncpg
  ``copy_records_to_table`` on the transaction's own connection).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.kit import jsonutil
from opstwin.kit.db import Transaction
from opstwin.telemetry.detection import anomalies
from opstwin.telemetry.tables import telemetry_points, telemetry_series

SeriesKey = tuple[str, str, str]  # (twin_id, asset_id, metric)
#: Rows per IN (...) lookup on SQLite (its bound-parameter limit is 32,766; stay well below).
_LOOKUP_CHUNK = 900
_SERIES_CACHE_SIZE = 100_000

_SQLITE_INSERT_EVENTS = (
    "INSERT INTO telemetry_events (event_no, tenant_id, event_id, twin_id, asset_id, ts_us, "
    "quality, received_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_SQLITE_MAX_EVENT_NO = "SELECT coalesce(max(event_no), 0) FROM telemetry_events"
_SQLITE_STORED_NOS = "SELECT event_no FROM telemetry_events WHERE event_no BETWEEN ? AND ?"
_SQLITE_INSERT_POINTS = (
    "INSERT INTO telemetry_points (series_id, ts_us, event_no, value) VALUES (?, ?, ?, ?)"
)
_PG_INSERT_EVENTS = (
    "INSERT INTO telemetry_events (tenant_id, event_id, twin_id, asset_id, ts_us, quality, "
    "received_at_us) "
    "SELECT $1, u.event_id, u.twin_id, u.asset_id, u.ts_us, u.quality, $2 "
    "FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::double precision[]) "
    "AS u(event_id, twin_id, asset_id, ts_us, quality) "
    "ON CONFLICT (tenant_id, event_id) DO NOTHING "
    "RETURNING event_no, event_id"
)
POINT_COLUMNS = ("series_id", "ts_us", "event_no", "value")


class StoredEvent(Protocol):
    """What :meth:`TelemetryStore.insert_events` reads of an event (a normalised event has it
    all, so the ingest path passes those as they are)."""

    event_id: str
    twin_id: str
    asset_id: str
    ts_us: int
    quality: float


@dataclass(frozen=True, slots=True)
class EventRow:
    event_id: str
    twin_id: str
    asset_id: str
    ts_us: int
    quality: float


class TelemetryStore:
    """Writes telemetry; remembers committed series ids (they never change once created)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str, str], int] = {}

    async def series_ids(
        self, tx: Transaction, tenant_id: str, keys: Iterable[SeriesKey]
    ) -> dict[SeriesKey, int]:
        """The series id of each (twin, asset, metric), creating the missing ones."""
        found: dict[SeriesKey, int] = {}
        unknown: list[SeriesKey] = []
        for key in keys:
            series_id = self._series.get((tenant_id, *key))
            if series_id is None:
                unknown.append(key)
            else:
                found[key] = series_id
        if not unknown:
            return found
        unknown.sort()
        insert_ = pg_insert if tx.backend == "postgresql" else sqlite_insert
        await tx.conn.execute(
            insert_(telemetry_series)
            .values(
                [
                    {"tenant_id": tenant_id, "twin_id": t, "asset_id": a, "metric": m}
                    for t, a, m in unknown
                ]
            )
            .on_conflict_do_nothing()
        )
        created: dict[tuple[str, str, str, str], int] = {}
        for start in range(0, len(unknown), _LOOKUP_CHUNK // 3):
            chunk = unknown[start : start + _LOOKUP_CHUNK // 3]
            rows = await tx.conn.execute(
                select(
                    telemetry_series.c.series_id,
                    telemetry_series.c.twin_id,
                    telemetry_series.c.asset_id,
                    telemetry_series.c.metric,
                ).where(
                    telemetry_series.c.tenant_id == tenant_id,
                    tuple_(
                        telemetry_series.c.twin_id,
                        telemetry_series.c.asset_id,
                        telemetry_series.c.metric,
                    ).in_(chunk),
                )
            )
            for row in rows:
                found[(row.twin_id, row.asset_id, row.metric)] = int(row.series_id)
                created[(tenant_id, row.twin_id, row.asset_id, row.metric)] = int(row.series_id)

        def remember() -> None:  # only once committed: a rolled-back id must not be reused
            if len(self._series) + len(created) > _SERIES_CACHE_SIZE:
                self._series.clear()
            self._series.update(created)

        tx.after_commit(remember)
        return found

    async def insert_events(
        self, tx: Transaction, tenant_id: str, rows: Sequence[StoredEvent], received_at_us: int
    ) -> dict[str, int]:
        """Store the events not stored yet; returns ``event_id → event_no`` of those it stored.

        ``rows`` must not repeat an ``event_id`` (the caller keeps the first of a batch).
        """
        if not rows:
            return {}
        if tx.backend == "postgresql":
            # Key order: concurrent batches that share event ids lock them in the same order.
            rows = sorted(rows, key=lambda r: r.event_id)
            # On the driver directly (a statement asyncpg prepares once per connection): the
            # arrays go out and the numbers come back without SQLAlchemy's per-row processing.
            driver = await _asyncpg(tx)
            returned = await driver.fetch(
                _PG_INSERT_EVENTS,
                tenant_id,
                received_at_us,
                [r.event_id for r in rows],
                [r.twin_id for r in rows],
                [r.asset_id for r in rows],
                [r.ts_us for r in rows],
                [r.quality for r in rows],
            )
            return {event_id: event_no for event_no, event_id in returned}

        # Safe without a sequence: SQLite write transactions are exclusive (BEGIN IMMEDIATE).
        # Every row gets the next number; a row already stored (same tenant and event_id) is
        # skipped by the unique index, which leaves a gap (numbers only need to be unique and
        # increasing). Two round trips when nothing is a duplicate, three otherwise.
        base = int((await tx.conn.exec_driver_sql(_SQLITE_MAX_EVENT_NO)).scalar_one())
        result = await tx.conn.exec_driver_sql(
            _SQLITE_INSERT_EVENTS,
            [
                (
                    base + i,
                    tenant_id,
                    r.event_id,
                    r.twin_id,
                    r.asset_id,
                    r.ts_us,
                    r.quality,
                    received_at_us,
                )
                for i, r in enumerate(rows, start=1)
            ],
        )
        if result.rowcount == len(rows):
            return {r.event_id: base + i for i, r in enumerate(rows, start=1)}
        stored = {
            int(n)
            for n in (
                await tx.conn.exec_driver_sql(_SQLITE_STORED_NOS, (base + 1, base + len(rows)))
            ).scalars()
        }
        return {r.event_id: base + i for i, r in enumerate(rows, start=1) if base + i in stored}

    async def insert_points(
        self, tx: Transaction, points: Sequence[tuple[int, int, int, float]]
    ) -> None:
        """Store ``(series_id, ts_us, event_no, value)`` rows."""
        if not points:
            return
        if tx.backend == "postgresql":
            await (await _asyncpg(tx)).copy_records_to_table(
                telemetry_points.name, records=points, columns=POINT_COLUMNS
            )
            return
        await tx.conn.exec_driver_sql(_SQLITE_INSERT_POINTS, list(points))


async def _asyncpg(tx: Transaction) -> Any:
    """The asyncpg connection under ``tx``, inside its transaction."""
    raw = await tx.conn.get_raw_connection()
    driver = raw.driver_connection
    if driver is None:  # pragma: no cover - a pooled connection always has one
        raise RuntimeError("no asyncpg connection behind the transaction")
    if not driver.is_in_transaction():  # SQLAlchemy sends BEGIN with the first statement
        await tx.conn.exec_driver_sql("SELECT 1")
    return driver


@dataclass(frozen=True, slots=True)
class AnomalyRow:
    """One anomaly as stored by the detector: the record that opened it and, once it ended, the
    record that resolved it."""

    anomaly_id: str
    status: str
    record: dict[str, Any]
    resolution: dict[str, Any] | None
    seq: int


async def list_anomalies(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    twin_id: str | None,
    asset_id: str | None,
    status: str | None,
    before_seq: int | None,
    limit: int,
) -> tuple[list[AnomalyRow], bool]:
    """A tenant's anomalies, newest first (by the sequence of their detection), and whether
    older ones remain."""
    query = select(anomalies).where(anomalies.c.tenant_id == tenant_id)
    if twin_id is not None:
        query = query.where(anomalies.c.twin_id == twin_id)
    if asset_id is not None:
        query = query.where(anomalies.c.asset_id == asset_id)
    if status is not None:
        query = query.where(anomalies.c.status == status)
    if before_seq is not None:
        query = query.where(anomalies.c.seq < before_seq)
    query = query.order_by(anomalies.c.seq.desc()).limit(limit + 1)
    rows = (await conn.execute(query)).mappings().all()
    found = [
        AnomalyRow(
            anomaly_id=r["anomaly_id"],
            status=r["status"],
            record=jsonutil.loads(r["record"]),
            resolution=None
            if r["resolution_record"] is None
            else jsonutil.loads(r["resolution_record"]),
            seq=int(r["seq"]),
        )
        for r in rows[:limit]
    ]
    return found, len(rows) > limit
