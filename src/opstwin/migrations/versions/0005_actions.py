"""Proposals, votes, actions, desired setpoints, asset controls, the audit chain, policies.

Revision ID: 0005_actions
Revises: 0004_detect
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_actions"
down_revision = "0004_detect"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "proposals",
        sa.Column("row_id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("proposal_id", sa.String(40), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("setpoint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("proposer_id", sa.String(64), nullable=False),
        sa.Column("anomaly_id", sa.String(128), nullable=True),
        sa.Column("content_hash", sa.String(80), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    op.create_index(
        "ux_proposals_tenant_id", "proposals", ["tenant_id", "proposal_id"], unique=True
    )
    op.create_index(
        "ix_proposals_tenant_asset_state",
        "proposals",
        ["tenant_id", "twin_id", "asset_id", "state"],
    )
    op.create_index("ix_proposals_tenant_state", "proposals", ["tenant_id", "state"])
    op.create_table(
        "proposal_votes",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("proposal_id", sa.String(40), nullable=False),
        sa.Column("principal_id", sa.String(64), nullable=False),
        sa.Column("approve", sa.Boolean, nullable=False),
        sa.Column("confidence", sa.Double, nullable=False),
        sa.Column("rationale", sa.Text, nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "proposal_id", "principal_id"),
    )
    op.create_table(
        "actions",
        sa.Column("row_id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("action_id", sa.String(40), nullable=False),
        sa.Column("proposal_id", sa.String(40), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("asset_class", sa.String(128), nullable=True),
        sa.Column("action_type", sa.String(64), nullable=False),
        sa.Column("setpoint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("started_at_us", sa.BigInteger, nullable=False),
        sa.Column("finished_at_us", sa.BigInteger, nullable=True),
        sa.Column("document", sa.Text, nullable=False),
    )
    op.create_index("ux_actions_tenant_id", "actions", ["tenant_id", "action_id"], unique=True)
    op.create_index("ux_actions_proposal", "actions", ["tenant_id", "proposal_id"], unique=True)
    op.create_index(
        "ix_actions_history", "actions", ["tenant_id", "action_type", "asset_id", "state"]
    )
    op.create_table(
        "setpoint_state",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("setpoint", sa.String(64), nullable=False),
        sa.Column("value", sa.Double, nullable=False),
        sa.Column("action_id", sa.String(40), nullable=True),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "twin_id", "asset_id", "setpoint"),
    )
    op.create_table(
        "asset_controls",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("twin_id", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("locked", sa.Boolean, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "twin_id", "asset_id"),
    )
    op.create_table(
        "audit_records",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("record_id", sa.String(40), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq"),
    )
    op.create_table(
        "audit_heads",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "policies",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("policy_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "policy_id", "version"),
    )


def downgrade() -> None:
    for table in (
        "policies",
        "audit_heads",
        "audit_records",
        "asset_controls",
        "setpoint_state",
        "actions",
        "proposal_votes",
        "proposals",
    ):
        op.drop_table(table)
