"""The automation loop's task queue.

Revision ID: 0006_automation
Revises: 0005_actions
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_automation"
down_revision = "0005_actions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "automation_tasks",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("anomaly_id", sa.String(128), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("proposal_id", sa.String(40), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "anomaly_id"),
    )
    op.create_index("ix_automation_tasks_state", "automation_tasks", ["state", "created_at_us"])


def downgrade() -> None:
    op.drop_table("automation_tasks")
