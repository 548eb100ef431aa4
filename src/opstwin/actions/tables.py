"""Tables of the actions domain: proposals, votes, executions, desired setpoints, asset controls."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from opstwin.kit.db import metadata

RowIdType = BigInteger().with_variant(Integer(), "sqlite")

#: One row per proposal; ``document`` is the whole workflow state (the ``Proposal`` value with
#: its transitions) as JSON, rewritten by every transition in the transition's transaction.
proposals = Table(
    "proposals",
    metadata,
    Column("row_id", RowIdType, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("proposal_id", String(40), nullable=False),
    Column("twin_id", String(64), nullable=False),
    Column("asset_id", String(64), nullable=False),
    Column("setpoint", String(64), nullable=False),
    Column("state", String(32), nullable=False),
    Column("proposer_id", String(64), nullable=False),
    Column("anomaly_id", String(128), nullable=True),
    Column("content_hash", String(80), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Column("document", Text, nullable=False),
    Index("ux_proposals_tenant_id", "tenant_id", "proposal_id", unique=True),
    Index("ix_proposals_tenant_asset_state", "tenant_id", "twin_id", "asset_id", "state"),
    Index("ix_proposals_tenant_state", "tenant_id", "state"),
)

#: One vote per (proposal, principal).
proposal_votes = Table(
    "proposal_votes",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("proposal_id", String(40), nullable=False),
    Column("principal_id", String(64), nullable=False),
    Column("approve", Boolean, nullable=False),
    Column("confidence", Double, nullable=False),
    Column("rationale", Text, nullable=False),
    Column("at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "proposal_id", "principal_id"),
)

#: One row per execution of an approved proposal (``action.v1`` in ``document``).
actions = Table(
    "actions",
    metadata,
    Column("row_id", RowIdType, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("action_id", String(40), nullable=False),
    Column("proposal_id", String(40), nullable=False),
    Column("twin_id", String(64), nullable=False),
    Column("asset_id", String(64), nullable=False),
    Column("asset_class", String(128), nullable=True),
    Column("action_type", String(64), nullable=False),
    Column("setpoint", String(64), nullable=False),
    # executing | verifying | succeeded | rolled_back | failed
    Column("state", String(32), nullable=False),
    Column("started_at_us", BigInteger, nullable=False),
    Column("finished_at_us", BigInteger, nullable=True),
    Column("document", Text, nullable=False),
    Index("ux_actions_tenant_id", "tenant_id", "action_id", unique=True),
    Index("ux_actions_proposal", "tenant_id", "proposal_id", unique=True),
    Index("ix_actions_history", "tenant_id", "action_type", "asset_id", "state"),
)

#: Whether an asset accepts automatic changes (locked / manual mode), set by supervisors.
asset_controls = Table(
    "asset_controls",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("twin_id", String(64), nullable=False),
    Column("asset_id", String(64), nullable=False),
    Column("locked", Boolean, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("updated_by", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "twin_id", "asset_id"),
)


#: The automation loop's durable queue: one row per anomaly it took up (``pending`` until it
#: proposed a fix or said why not). Written by its change-log consumer with its cursor.
automation_tasks = Table(
    "automation_tasks",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("anomaly_id", String(128), nullable=False),
    Column("twin_id", String(64), nullable=False),
    Column("asset_id", String(64), nullable=False),
    Column("metric", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    # pending | proposed | no_action | skipped | failed
    Column("state", String(16), nullable=False),
    Column("proposal_id", String(40), nullable=True),
    Column("detail", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "anomaly_id"),
    Index("ix_automation_tasks_state", "state", "created_at_us"),
)
