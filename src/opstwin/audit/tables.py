"""Tables of the audit chain (one chain per tenant) and of the versioned action policies."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, PrimaryKeyConstraint, String, Table, Text

from opstwin.kit.db import metadata

#: The records of each tenant's chain, ``seq`` 1, 2, 3, … (see :mod:`opstwin.audit.chain`).
#: ``body`` is the canonical JSON exactly as hashed (UTF-8 text).
audit_records = Table(
    "audit_records",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("record_id", String(40), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "seq"),
)

#: The anchor: each tenant's last ``seq`` and ``hash``, kept apart from the records and updated
#: in the appending transaction (its row lock serialises appenders, as ``log_meta`` does).
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

#: Every version of every tenant's action policy (``policy.v1`` in ``document``).
policies = Table(
    "policies",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("policy_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("document", Text, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "policy_id", "version"),
)
