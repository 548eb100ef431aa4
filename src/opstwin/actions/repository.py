"""Storage of proposals, votes, executions and asset controls (SQLAlchemy Core, both backends)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.actions.codec import proposal_of, proposal_state
from opstwin.actions.tables import actions, asset_controls, proposal_votes, proposals
from opstwin.actions.workflow import Proposal
from opstwin.kit import jsonutil
from opstwin.kit.clock import to_micros
from opstwin.kit.db import Transaction
from opstwin.policy.confidence import VerifiedOutcomes, Vote
from opstwin.policy.decision import IN_FLIGHT_STATES, AssetStatus, InFlightAction, OpenAnomaly
from opstwin.telemetry.detection import anomalies
from opstwin.telemetry.tables import telemetry_events, telemetry_points, telemetry_series
from opstwin.twins.tables import setpoint_state

OPEN_STATES = frozenset({"proposed", "scored", "awaiting_approval", "needs_analysis"})
"""Proposal states that still wait for a decision or an approval."""

ACTIVE_STATES = OPEN_STATES | IN_FLIGHT_STATES
"""States in which a proposal still holds its asset (no second proposal may start there)."""

SUCCEEDED = "succeeded"
FAILED_STATES = ("rolled_back", "failed")


def _insert(conn: AsyncConnection, table: Any) -> Any:
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


async def lock_asset(tx: Transaction, tenant_id: str, twin_id: str, asset_id: str) -> None:
    """Serialise proposal decisions on one asset until commit (PostgreSQL: an advisory
    transaction lock; SQLite: writers are serialised already)."""
    if tx.conn.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"{tenant_id}\0{twin_id}\0{asset_id}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    await tx.conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


# --- proposals ----------------------------------------------------------------------------------


async def save_proposal(tx: Transaction, proposal: Proposal, *, new: bool) -> None:
    """Insert (``new``) or rewrite the stored proposal."""
    draft = proposal.draft
    now_us = to_micros(proposal.transitions[-1].at) if proposal.transitions else 0
    values = {
        "state": proposal.state,
        "content_hash": proposal.content_hash,
        "updated_at_us": now_us,
        "document": jsonutil.dumps_str(proposal_state(proposal)),
    }
    if new:
        await tx.conn.execute(
            proposals.insert().values(
                tenant_id=proposal.tenant_id,
                proposal_id=proposal.proposal_id,
                twin_id=draft.twin_id,
                asset_id=draft.asset_id,
                setpoint=draft.setpoint,
                proposer_id=proposal.proposer.principal_id,
                anomaly_id=draft.anomaly_id,
                created_at_us=to_micros(proposal.created_at),
                **values,
            )
        )
        return
    await tx.conn.execute(
        update(proposals)
        .where(
            proposals.c.tenant_id == proposal.tenant_id,
            proposals.c.proposal_id == proposal.proposal_id,
        )
        .values(**values)
    )


async def load_proposal(conn: AsyncConnection, tenant_id: str, proposal_id: str) -> Proposal | None:
    row = (
        await conn.execute(
            select(proposals.c.document).where(
                proposals.c.tenant_id == tenant_id, proposals.c.proposal_id == proposal_id
            )
        )
    ).first()
    return None if row is None else proposal_of(jsonutil.loads(row.document))


@dataclass(frozen=True, slots=True)
class ProposalFilter:
    twin_id: str | None = None
    asset_id: str | None = None
    states: Sequence[str] | None = None


async def page_proposals(
    conn: AsyncConnection,
    tenant_id: str,
    flt: ProposalFilter,
    *,
    before_row: int | None,
    limit: int,
) -> tuple[list[tuple[int, Proposal]], bool]:
    """Newest first: (row id, proposal) pairs and whether older ones remain."""
    query = select(proposals.c.row_id, proposals.c.document).where(
        proposals.c.tenant_id == tenant_id
    )
    if flt.twin_id is not None:
        query = query.where(proposals.c.twin_id == flt.twin_id)
    if flt.asset_id is not None:
        query = query.where(proposals.c.asset_id == flt.asset_id)
    if flt.states:
        query = query.where(proposals.c.state.in_(list(flt.states)))
    if before_row is not None:
        query = query.where(proposals.c.row_id < before_row)
    rows = (await conn.execute(query.order_by(proposals.c.row_id.desc()).limit(limit + 1))).all()
    found = [(int(r.row_id), proposal_of(jsonutil.loads(r.document))) for r in rows[:limit]]
    return found, len(rows) > limit


async def row_id_of(conn: AsyncConnection, tenant_id: str, proposal_id: str) -> int | None:
    value = await conn.scalar(
        select(proposals.c.row_id).where(
            proposals.c.tenant_id == tenant_id, proposals.c.proposal_id == proposal_id
        )
    )
    return None if value is None else int(value)


async def proposals_in(
    conn: AsyncConnection, states: Sequence[str], tenant_id: str | None = None
) -> list[Proposal]:
    """Every proposal in one of ``states`` (of one tenant, or of all: the executor's view)."""
    query = select(proposals.c.document).where(proposals.c.state.in_(list(states)))
    if tenant_id is not None:
        query = query.where(proposals.c.tenant_id == tenant_id)
    rows = (await conn.execute(query.order_by(proposals.c.row_id))).all()
    return [proposal_of(jsonutil.loads(r.document)) for r in rows]


async def in_flight(conn: AsyncConnection, tenant_id: str, twin_id: str) -> list[InFlightAction]:
    """Proposals of the twin with an action under way (or about to be)."""
    rows = await conn.execute(
        select(
            proposals.c.proposal_id,
            proposals.c.twin_id,
            proposals.c.asset_id,
            proposals.c.setpoint,
            proposals.c.state,
        ).where(
            proposals.c.tenant_id == tenant_id,
            proposals.c.twin_id == twin_id,
            proposals.c.state.in_(sorted(IN_FLIGHT_STATES)),
        )
    )
    return [InFlightAction(r.proposal_id, r.twin_id, r.asset_id, r.setpoint, r.state) for r in rows]


async def active_on_asset(
    conn: AsyncConnection, tenant_id: str, twin_id: str, asset_id: str
) -> list[tuple[str, str]]:
    """(proposal id, state) of the proposals still holding an asset."""
    rows = await conn.execute(
        select(proposals.c.proposal_id, proposals.c.state).where(
            proposals.c.tenant_id == tenant_id,
            proposals.c.twin_id == twin_id,
            proposals.c.asset_id == asset_id,
            proposals.c.state.in_(sorted(ACTIVE_STATES)),
        )
    )
    return [(r.proposal_id, r.state) for r in rows]


async def proposals_for_anomaly(
    conn: AsyncConnection, tenant_id: str, anomaly_id: str
) -> list[tuple[str, str]]:
    """(proposal id, state) of the proposals answering an anomaly, oldest first."""
    rows = await conn.execute(
        select(proposals.c.proposal_id, proposals.c.state)
        .where(proposals.c.tenant_id == tenant_id, proposals.c.anomaly_id == anomaly_id)
        .order_by(proposals.c.row_id)
    )
    return [(r.proposal_id, r.state) for r in rows]


# --- votes --------------------------------------------------------------------------------------


async def add_vote(
    tx: Transaction, tenant_id: str, proposal_id: str, vote: Vote, at_us: int
) -> bool:
    """Store a vote; False when the principal has voted on this proposal already."""
    statement = (
        _insert(tx.conn, proposal_votes)
        .values(
            tenant_id=tenant_id,
            proposal_id=proposal_id,
            principal_id=vote.principal_id,
            approve=vote.approve,
            confidence=vote.confidence,
            rationale=vote.rationale,
            at_us=at_us,
        )
        .on_conflict_do_nothing()
    )
    result = await tx.conn.execute(statement)
    return bool(result.rowcount)


async def votes_of(conn: AsyncConnection, tenant_id: str, proposal_id: str) -> list[Vote]:
    rows = await conn.execute(
        select(proposal_votes)
        .where(
            proposal_votes.c.tenant_id == tenant_id,
            proposal_votes.c.proposal_id == proposal_id,
        )
        .order_by(proposal_votes.c.at_us, proposal_votes.c.principal_id)
    )
    return [Vote(r.principal_id, bool(r.approve), float(r.confidence), r.rationale) for r in rows]


# --- actions ------------------------------------------------------------------------------------


async def save_action(
    tx: Transaction,
    *,
    tenant_id: str,
    action_id: str,
    proposal_id: str,
    twin_id: str,
    asset_id: str,
    asset_class: str | None,
    action_type: str,
    setpoint: str,
    state: str,
    started_at_us: int,
    finished_at_us: int | None,
    document: dict[str, Any],
) -> None:
    """Insert or rewrite an execution record."""
    values = {
        "state": state,
        "finished_at_us": finished_at_us,
        "document": jsonutil.dumps_str(document),
    }
    statement = _insert(tx.conn, actions).values(
        tenant_id=tenant_id,
        action_id=action_id,
        proposal_id=proposal_id,
        twin_id=twin_id,
        asset_id=asset_id,
        asset_class=asset_class,
        action_type=action_type,
        setpoint=setpoint,
        started_at_us=started_at_us,
        **values,
    )
    await tx.conn.execute(
        statement.on_conflict_do_update(index_elements=["tenant_id", "action_id"], set_=values)
    )


async def load_action(
    conn: AsyncConnection, tenant_id: str, action_id: str
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(actions.c.document).where(
                actions.c.tenant_id == tenant_id, actions.c.action_id == action_id
            )
        )
    ).first()
    return None if row is None else dict(jsonutil.loads(row.document))


async def page_actions(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    twin_id: str | None,
    asset_id: str | None,
    state: str | None,
    before_row: int | None,
    limit: int,
) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    query = select(actions.c.row_id, actions.c.document).where(actions.c.tenant_id == tenant_id)
    if twin_id is not None:
        query = query.where(actions.c.twin_id == twin_id)
    if asset_id is not None:
        query = query.where(actions.c.asset_id == asset_id)
    if state is not None:
        query = query.where(actions.c.state == state)
    if before_row is not None:
        query = query.where(actions.c.row_id < before_row)
    rows = (await conn.execute(query.order_by(actions.c.row_id.desc()).limit(limit + 1))).all()
    return [(int(r.row_id), dict(jsonutil.loads(r.document))) for r in rows[:limit]], len(
        rows
    ) > limit


async def action_row_id(conn: AsyncConnection, tenant_id: str, action_id: str) -> int | None:
    value = await conn.scalar(
        select(actions.c.row_id).where(
            actions.c.tenant_id == tenant_id, actions.c.action_id == action_id
        )
    )
    return None if value is None else int(value)


async def verified_outcomes(
    conn: AsyncConnection,
    tenant_id: str,
    action_type: str,
    *,
    asset_id: str | None = None,
    asset_class: str | None = None,
) -> VerifiedOutcomes:
    """Finished actions of a type on one asset (or one asset class): succeeded vs. not."""
    query = (
        select(actions.c.state, func.count())
        .where(
            actions.c.tenant_id == tenant_id,
            actions.c.action_type == action_type,
            actions.c.state.in_([SUCCEEDED, *FAILED_STATES]),
        )
        .group_by(actions.c.state)
    )
    if asset_id is not None:
        query = query.where(actions.c.asset_id == asset_id)
    if asset_class is not None:
        query = query.where(actions.c.asset_class == asset_class)
    counts = {r[0]: int(r[1]) for r in (await conn.execute(query)).all()}
    return VerifiedOutcomes(
        successes=counts.get(SUCCEEDED, 0),
        failures=sum(counts.get(s, 0) for s in FAILED_STATES),
    )


async def write_setpoint(
    tx: Transaction,
    tenant_id: str,
    twin_id: str,
    asset_id: str,
    setpoint: str,
    value: float,
    action_id: str,
    at_us: int,
) -> None:
    """Record the value an action wrote (desired state)."""
    values = {"value": value, "action_id": action_id, "updated_at_us": at_us}
    statement = _insert(tx.conn, setpoint_state).values(
        tenant_id=tenant_id, twin_id=twin_id, asset_id=asset_id, setpoint=setpoint, **values
    )
    await tx.conn.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant_id", "twin_id", "asset_id", "setpoint"], set_=values
        )
    )


# --- asset facts --------------------------------------------------------------------------------


async def asset_status(
    conn: AsyncConnection, tenant_id: str, twin_id: str, asset_id: str
) -> AssetStatus:
    """Locked / manual as a supervisor set it (automatic and unlocked until anyone does)."""
    row = (
        await conn.execute(
            select(asset_controls.c.locked, asset_controls.c.mode).where(
                asset_controls.c.tenant_id == tenant_id,
                asset_controls.c.twin_id == twin_id,
                asset_controls.c.asset_id == asset_id,
            )
        )
    ).first()
    if row is None:
        return AssetStatus()
    return AssetStatus(
        locked=bool(row.locked), mode="manual" if row.mode == "manual" else "automatic"
    )


async def set_asset_control(
    tx: Transaction,
    tenant_id: str,
    twin_id: str,
    asset_id: str,
    *,
    locked: bool,
    mode: str,
    reason: str | None,
    by: str,
    at_us: int,
) -> None:
    values = {
        "locked": locked,
        "mode": mode,
        "reason": reason,
        "updated_by": by,
        "updated_at_us": at_us,
    }
    statement = _insert(tx.conn, asset_controls).values(
        tenant_id=tenant_id, twin_id=twin_id, asset_id=asset_id, **values
    )
    await tx.conn.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant_id", "twin_id", "asset_id"], set_=values
        )
    )


async def open_anomalies(
    conn: AsyncConnection, tenant_id: str, twin_id: str, asset_id: str
) -> list[OpenAnomaly]:
    rows = await conn.execute(
        select(anomalies.c.anomaly_id, anomalies.c.severity, anomalies.c.kind).where(
            anomalies.c.tenant_id == tenant_id,
            anomalies.c.twin_id == twin_id,
            anomalies.c.asset_id == asset_id,
            anomalies.c.status == "open",
        )
    )
    severities: dict[str, Literal["low", "medium", "high", "critical"]] = {
        "low": "low",
        "medium": "medium",
        "high": "high",
        "critical": "critical",
    }
    return [OpenAnomaly(r.anomaly_id, severities.get(r.severity, "high"), r.kind) for r in rows]


async def anomaly_record(
    conn: AsyncConnection, tenant_id: str, anomaly_id: str
) -> tuple[str, dict[str, Any]] | None:
    """(status, anomaly.v1 record) of one anomaly."""
    row = (
        await conn.execute(
            select(anomalies.c.status, anomalies.c.record).where(
                anomalies.c.tenant_id == tenant_id, anomalies.c.anomaly_id == anomaly_id
            )
        )
    ).first()
    return None if row is None else (row.status, dict(jsonutil.loads(row.record)))


async def quality_window(
    conn: AsyncConnection,
    tenant_id: str,
    twin_id: str,
    asset_id: str,
    metric: str | None,
    since_us: int,
    limit: int = 10_000,
) -> list[float]:
    """Quality scores of the asset's telemetry since ``since_us`` (one per event carrying
    ``metric``, or per event of the asset when ``metric`` is None)."""
    if metric is None:
        query = select(telemetry_events.c.quality).where(
            telemetry_events.c.tenant_id == tenant_id,
            telemetry_events.c.twin_id == twin_id,
            telemetry_events.c.asset_id == asset_id,
            telemetry_events.c.ts_us >= since_us,
        )
    else:
        query = (
            select(telemetry_events.c.quality)
            .select_from(
                telemetry_points.join(
                    telemetry_series, telemetry_points.c.series_id == telemetry_series.c.series_id
                ).join(telemetry_events, telemetry_points.c.event_no == telemetry_events.c.event_no)
            )
            .where(
                and_(
                    telemetry_series.c.tenant_id == tenant_id,
                    telemetry_series.c.twin_id == twin_id,
                    telemetry_series.c.asset_id == asset_id,
                    telemetry_series.c.metric == metric,
                    telemetry_points.c.ts_us >= since_us,
                )
            )
        )
    rows = await conn.execute(query.limit(limit))
    return [float(r[0]) for r in rows]


async def metric_values(
    conn: AsyncConnection,
    tenant_id: str,
    twin_id: str,
    asset_id: str,
    metric: str,
    since_us: int,
    until_us: int,
    limit: int = 100_000,
) -> list[float]:
    """Values of one metric with ``since_us <= ts < until_us``, oldest first."""
    query = (
        select(telemetry_points.c.value)
        .select_from(
            telemetry_points.join(
                telemetry_series, telemetry_points.c.series_id == telemetry_series.c.series_id
            )
        )
        .where(
            telemetry_series.c.tenant_id == tenant_id,
            telemetry_series.c.twin_id == twin_id,
            telemetry_series.c.asset_id == asset_id,
            telemetry_series.c.metric == metric,
            telemetry_points.c.ts_us >= since_us,
            telemetry_points.c.ts_us < until_us,
        )
        .order_by(telemetry_points.c.ts_us)
        .limit(limit)
    )
    return [float(r[0]) for r in await conn.execute(query)]
