"""Tables of the simulation domain: one row per run of ``POST /sim/run``."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table, Text

from opstwin.kit.db import metadata

#: Insertion order (SQLite rowid there, BIGINT identity on PostgreSQL): keyset paging key.
RowIdType = BigInteger().with_variant(Integer(), "sqlite")

sim_runs = Table(
    "sim_runs",
    metadata,
    Column("row_id", RowIdType, primary_key=True, autoincrement=True),
    Column("sim_id", String(40), nullable=False, unique=True),
    Column("tenant_id", String(64), nullable=False),
    Column("principal_id", String(32), nullable=False),
    # queued | running | succeeded | failed
    Column("status", String(16), nullable=False),
    # sync: answered in the request; background: 202 and a worker
    Column("mode", String(16), nullable=False),
    Column("progress", Float, nullable=False),
    Column("twin_id", String(64), nullable=True),
    Column("process_model", String(64), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("started_at_us", BigInteger, nullable=True),
    Column("finished_at_us", BigInteger, nullable=True),
    # The normalised request (JSON): enough to run it again, bit for bit.
    Column("request", Text, nullable=False),
    # The engine's result (JSON) once succeeded; the failure (JSON) once failed.
    Column("result", Text, nullable=True),
    Column("error", Text, nullable=True),
    # The process computing (or holding in its queue) an in-flight run, and until when that
    # claim holds unless renewed; an expired claim is recovered by any process.
    Column("owner", String(64), nullable=True),
    Column("lease_until_us", BigInteger, nullable=True),
    Index("ix_sim_runs_tenant_row", "tenant_id", "row_id"),
    Index("ix_sim_runs_status_lease", "status", "lease_until_us"),
)
