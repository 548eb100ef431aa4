"""Foundation: change log (with its epoch and secret), API keys, idempotency records.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    meta = op.create_table(
        "log_meta",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.String(16), nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("head", sa.BigInteger, nullable=False),
        sa.Column("compacted_through", sa.BigInteger, nullable=False),
    )
    # A fresh database gets a fresh epoch and cursor secret: cursors of another database never
    # validate here, and a restored backup is told apart by rotating the epoch.
    op.bulk_insert(
        meta,
        [
            {
                "id": 1,
                "epoch": secrets.token_hex(8),
                "secret": secrets.token_hex(32),
                "head": 0,
                "compacted_through": 0,
            }
        ],
    )
    op.create_table(
        "change_log",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=True),
        sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
    )
    op.create_index("ix_change_log_tenant_seq", "change_log", ["tenant_id", "seq"])
    op.create_index("ix_change_log_recorded", "change_log", ["recorded_at_us"])
    op.create_index(
        "uq_change_log_event", "change_log", ["tenant_id", "source", "event_id"], unique=True
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=True),
        sa.Column("revoked_at_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("principal_id", sa.String(32), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response_body", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "principal_id", "key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("api_keys")
    op.drop_table("change_log")
    op.drop_table("log_meta")
