"""Twin registry (versioned models, reported asset state) and telemetry storage.

Revision ID: 0003_twins
Revises: 0002_sim
Create Date: 2026-12-02

PostgreSQL: when the TimescaleDB extension is installed, ``telemetry_points`` becomes a
hypertable on its integer ``ts_us`` (one-day chunks); otherwise it stays a plain table with a
BRIN index on ``ts_us`` (cheap, and time-ordered inserts keep it tight).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_twins"
down_revision = "0002_sim"
branch_labels = None
depends_on = None

KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
DAY_US = 86_400_000_000


def upgrade() -> None:
    op.create_table(
        "twins",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "twin_id", "version"),
    )
    op.create_table(
        "asset_state",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(128), nullable=False),
        sa.Column("value", sa.Double, nullable=True),
        sa.Column("ts_us", sa.BigInteger, nullable=False),
        sa.Column("quality", sa.Double, nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("baseline_mean", sa.Double, nullable=True),
        sa.Column("baseline_std", sa.Double, nullable=True),
        sa.Column("z_score", sa.Double, nullable=True),
        sa.Column("baseline_at_us", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "twin_id", "asset_id", "metric"),
    )
    op.create_table(
        "telemetry_series",
        sa.Column("series_id", KEY, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(128), nullable=False),
    )
    op.create_index(
        "uq_telemetry_series",
        "telemetry_series",
        ["tenant_id", "twin_id", "asset_id", "metric"],
        unique=True,
    )
    op.create_table(
        "telemetry_events",
        sa.Column("event_no", KEY, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("ts_us", sa.BigInteger, nullable=False),
        sa.Column("quality", sa.Double, nullable=False),
        sa.Column("received_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "uq_telemetry_events_event", "telemetry_events", ["tenant_id", "event_id"], unique=True
    )
    op.create_table(
        "telemetry_points",
        sa.Column("series_id", sa.BigInteger, nullable=False),
        sa.Column("ts_us", sa.BigInteger, nullable=False),
        sa.Column("event_no", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("series_id", "ts_us", "event_no"),
        sqlite_with_rowid=False,
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        has_timescale = bind.execute(
            sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        ).scalar()
        if has_timescale:
            bind.execute(
                sa.text(
                    "SELECT create_hypertable('telemetry_points', 'ts_us', "
                    f"chunk_time_interval => {DAY_US}::bigint, if_not_exists => TRUE)"
                )
            )
        else:
            op.create_index(
                "brin_telemetry_points_ts", "telemetry_points", ["ts_us"], postgresql_using="brin"
            )
        op.create_index(
            "brin_telemetry_events_received",
            "telemetry_events",
            ["received_at_us"],
            postgresql_using="brin",
        )


def downgrade() -> None:
    op.drop_table("telemetry_points")
    op.drop_table("telemetry_events")
    op.drop_table("telemetry_series")
    op.drop_table("asset_state")
    op.drop_table("twins")
