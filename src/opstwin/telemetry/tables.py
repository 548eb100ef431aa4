"""Time-series tables: one row per (event, metric) keyed by a small integer series id.

* ``telemetry_series`` names each (tenant, twin, asset, metric) once, so a point row holds
  four numbers instead of four strings.
* ``telemetry_events`` holds one row per stored event: the dedupe key (tenant, ``event_id``),
  its quality, and ``event_no``, the integer the points refer to.
* ``telemetry_points`` is clustered by (series, ts, event): a time-range read of one metric is
  one index range on both backends (SQLite: a ``WITHOUT ROWID`` table, so the primary key *is*
  the table; PostgreSQL: the primary-key B-tree plus a BRIN index on ``ts_us`` for retention
  scans, or a TimescaleDB hypertable when the extension is installed).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
)

from opstwin.kit.db import metadata

#: Rowid-like keys: INTEGER on SQLite (the rowid), BIGINT on PostgreSQL.
KeyType = BigInteger().with_variant(Integer(), "sqlite")

telemetry_series = Table(
    "telemetry_series",
    metadata,
    Column("series_id", KeyType, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("twin_id", String(64), nullable=False),
    Column("asset_id", String(64), nullable=False),
    Column("metric", String(128), nullable=False),
    Index("uq_telemetry_series", "tenant_id", "twin_id", "asset_id", "metric", unique=True),
)

telemetry_events = Table(
    "telemetry_events",
    metadata,
    Column("event_no", KeyType, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("twin_id", String(64), nullable=False),
    Column("asset_id", String(64), nullable=False),
    Column("ts_us", BigInteger, nullable=False),
    Column("quality", Double, nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    Index("uq_telemetry_events_event", "tenant_id", "event_id", unique=True),
)

telemetry_points = Table(
    "telemetry_points",
    metadata,
    Column("series_id", BigInteger, nullable=False),
    Column("ts_us", BigInteger, nullable=False),
    Column("event_no", BigInteger, nullable=False),
    Column("value", Double, nullable=False),
    PrimaryKeyConstraint("series_id", "ts_us", "event_no"),
    sqlite_with_rowid=False,
)
