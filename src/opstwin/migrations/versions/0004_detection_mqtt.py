"""Change-log consumers, anomaly detection state and records, MQTT dead letters.

Revision ID: 0004_detect
Revises: 0003_twins
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_detect"
down_revision = "0003_twins"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "consumer_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "detector_series",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("twin_id", sa.String(128), nullable=False),
        sa.Column("asset_id", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(128), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "twin_id", "asset_id", "metric"),
    )
    op.create_table(
        "anomalies",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("anomaly_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("twin_id", sa.String(128), nullable=False),
        sa.Column("asset_id", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opened_at_us", sa.BigInteger, nullable=False),
        sa.Column("resolved_at_us", sa.BigInteger, nullable=True),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("resolution_record", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "anomaly_id"),
    )
    op.create_index("ix_anomalies_tenant_seq", "anomalies", ["tenant_id", "seq"])
    op.create_index(
        "ix_anomalies_tenant_asset", "anomalies", ["tenant_id", "twin_id", "asset_id", "seq"]
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(1024), nullable=False),
        sa.Column("payload_excerpt", sa.Text, nullable=False),
        sa.Column("payload_bytes", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("received_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_dead_letters_tenant_id", "dead_letters", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("anomalies")
    op.drop_table("detector_series")
    op.drop_table("consumer_cursors")
