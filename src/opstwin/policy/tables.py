"""Tables of principals."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table

from opstwin.kit.db import metadata

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("secret_hash", String(64), nullable=False),  # SHA-256 hex of the secret part
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=True),
    Column("revoked_at_us", BigInteger, nullable=True),
    Index("ix_api_keys_tenant", "tenant_id"),
)
