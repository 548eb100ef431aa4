"""Domain-free tables (idempotency records)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, PrimaryKeyConstraint, String, Table, Text

from opstwin.kit.db import metadata

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("principal_id", String(32), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "principal_id", "key"),
)
