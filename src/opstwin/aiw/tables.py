"""Tables of the change log (the cursor space every reader shares)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from opstwin.kit.db import metadata

#: ``seq`` is the SQLite rowid (INTEGER PRIMARY KEY) there, a BIGINT on PostgreSQL.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

#: One row (id=1): the log's epoch, its cursor-signing secret, the head and the compaction mark.
log_meta = Table(
    "log_meta",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("epoch", String(16), nullable=False),
    Column("secret", String(64), nullable=False),
    Column("head", BigInteger, nullable=False),
    Column("compacted_through", BigInteger, nullable=False),
)

change_log = Table(
    "change_log",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=False),
    Column("tenant_id", String(64), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("source", String(512), nullable=False),
    Column("type", String(255), nullable=False),
    Column("twin_id", String(64), nullable=True),
    Column("recorded_at_us", BigInteger, nullable=False),
    # The CloudEvents envelope as JSON text, without the ``cursor`` extension: the cursor is
    # derived from (epoch, seq) when read, because restoring a backup changes the epoch.
    Column("envelope", Text, nullable=False),
    Index("ix_change_log_tenant_seq", "tenant_id", "seq"),
    Index("ix_change_log_recorded", "recorded_at_us"),
    Index("uq_change_log_event", "tenant_id", "source", "event_id", unique=True),
)
