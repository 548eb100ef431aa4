"""Simulation runs (``sim_runs``): every ``POST /sim/run``, its request, state and result.

Revision ID: 0002_sim
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_sim"
down_revision = "0001"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sim_runs",
        sa.Column("row_id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("sim_id", sa.String(40), nullable=False, unique=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("principal_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=True),
        sa.Column("process_model", sa.String(64), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("started_at_us", sa.BigInteger, nullable=True),
        sa.Column("finished_at_us", sa.BigInteger, nullable=True),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("lease_until_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_sim_runs_tenant_row", "sim_runs", ["tenant_id", "row_id"])
    op.create_index("ix_sim_runs_status_lease", "sim_runs", ["status", "lease_until_us"])


def downgrade() -> None:
    op.drop_index("ix_sim_runs_status_lease", table_name="sim_runs")
    op.drop_index("ix_sim_runs_tenant_row", table_name="sim_runs")
    op.drop_table("sim_runs")
