"""ProposalService: proposals from request to decision, votes, approvals, manual rollback.

Every change follows one pattern: read and lock the proposal in a write transaction, let the
:class:`~opstwin.actions.workflow.ApprovalWorkflow` (pure) compute the transitions, then store —
in that same transaction — the new proposal, one ``audit.v1`` record per transition and one
change-log event per transition (``opstwin.proposal.<new state>``, data ``proposal.v1``). So the
feed, the audit chain and the stored state never disagree, and a crash leaves either all of a
transition or none of it.

Creating a proposal gathers its evidence first, outside any write transaction (the simulation
may take a while; :mod:`.evidence`), then decides under a per-asset lock: the guards see the
actions in flight, the asset's controls and open anomalies as committed at that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.actions import repository as repo
from opstwin.actions.evidence import EvidenceGatherer, Gathered, Target, invalid
from opstwin.actions.tables import proposals as proposals_table
from opstwin.actions.workflow import (
    PROPOSAL_SCHEMA_ID,
    ActionRecord,
    Actor,
    ApprovalWorkflow,
    Proposal,
    ProposalDraft,
    Transition,
)
from opstwin.aiw.changelog import ChangeLog, NewEvent
from opstwin.audit.chain import AuditEntry
from opstwin.config import ActionSettings
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Database, Transaction
from opstwin.kit.errors import BadRequest, Conflict, FieldError, NotFound, ValidationFailed
from opstwin.kit.idempotency import IdempotencyStore
from opstwin.kit.ids import IdSource
from opstwin.policy.confidence import ConfidenceScorer, Vote
from opstwin.policy.decision import DecisionMaker, ProposedChange
from opstwin.policy.policy import Policy
from opstwin.twins.desired import desired_values, with_desired
from opstwin.twins.registry import TwinRegistry

if TYPE_CHECKING:
    from opstwin.simulation.service import SimulationService

log = structlog.get_logger("opstwin.actions")

EVENT_PREFIX = "opstwin.proposal."
SOURCE = "/proposals"


class AuditSink(Protocol):
    async def append(self, tx: Transaction, entries: Sequence[AuditEntry]) -> Sequence[Any]: ...


class PolicySource(Protocol):
    async def active(self, conn: AsyncConnection, tenant_id: str) -> Policy: ...


@dataclass(frozen=True, slots=True)
class ProposalRequest:
    twin_id: str
    asset_id: str
    setpoint: str
    value: float
    rationale: str
    action_type: str = "setpoint_change"
    anomaly_id: str | None = None
    sim_id: str | None = None


@dataclass(frozen=True, slots=True)
class Created:
    status_code: int
    body: dict[str, Any]


def event_for(proposal: Proposal) -> NewEvent:
    """The change-log event of ``proposal``'s latest transition."""
    record = proposal.transitions[-1]
    draft = proposal.draft
    return NewEvent(
        tenant_id=proposal.tenant_id,
        type=EVENT_PREFIX + record.to_state,
        source=SOURCE,
        subject=f"twin/{draft.twin_id}/proposal/{proposal.proposal_id}",
        data=proposal.to_dict(),
        time=record.at,
        dataschema=PROPOSAL_SCHEMA_ID,
    )


class ProposalService:
    """Creates proposals and moves them through the workflow (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: ActionSettings,
        db: Database,
        changelog: ChangeLog,
        audit: AuditSink,
        policies: PolicySource,
        twins: TwinRegistry,
        simulation: SimulationService | None,
        idempotency: IdempotencyStore,
        clock: Clock,
        ids: IdSource,
    ) -> None:
        self.settings = settings
        self._db = db
        self._changelog = changelog
        self._audit = audit
        self._policies = policies
        self._twins = twins
        self._idempotency = idempotency
        self._clock = clock
        self._ids = ids
        self.workflow = ApprovalWorkflow(clock, ids)
        self.scorer = ConfidenceScorer()
        self.decider = DecisionMaker()
        self.evidence = EvidenceGatherer(settings, simulation, clock)
        self._listeners: list[Callable[[], None]] = []

    # -- notifications ---------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called after a commit that may give the executor work (approvals, executions)."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    # -- storing transitions ---------------------------------------------------------------

    async def record(
        self,
        tx: Transaction,
        transitions: Sequence[Transition],
        *,
        new: bool = False,
        execution: Mapping[str, Any] | None = None,
        asset_class: str | None = None,
    ) -> Proposal:
        """Store the outcome of ``transitions`` (in order) with their audit records and
        change-log events; ``execution`` replaces the action's execution details."""
        final = transitions[-1].proposal
        await repo.save_proposal(tx, final, new=new)
        await self._audit.append(
            tx, [t.record.audit_entry(self._ids.new("aud")) for t in transitions]
        )
        await self._changelog.append(tx, [event_for(t.proposal) for t in transitions])
        if final.action is not None:
            await self.save_action(tx, final.action, final, execution, asset_class)
        tx.after_commit(self._notify)
        return final

    async def save_action(
        self,
        tx: Transaction,
        action: ActionRecord,
        proposal: Proposal,
        execution: Mapping[str, Any] | None,
        asset_class: str | None = None,
    ) -> None:
        stored = await repo.load_action(tx.conn, action.tenant_id, action.action_id)
        if execution is None:
            execution = (stored or {}).get("execution") or {}
        if asset_class is None and stored is not None:
            asset_class = stored.get("asset_class")
        await repo.save_action(
            tx,
            tenant_id=action.tenant_id,
            action_id=action.action_id,
            proposal_id=action.proposal_id,
            twin_id=action.twin_id,
            asset_id=action.asset_id,
            asset_class=asset_class,
            action_type=proposal.draft.action_type,
            setpoint=action.setpoint,
            state=action.state,
            started_at_us=to_micros(action.started_at),
            finished_at_us=None if action.finished_at is None else to_micros(action.finished_at),
            document={
                **action.to_dict(),
                "action_type": proposal.draft.action_type,
                "asset_class": asset_class,
                "proposal_state": proposal.state,
                "execution": dict(execution),
            },
        )

    async def load_for_update(self, tx: Transaction, tenant_id: str, proposal_id: str) -> Proposal:
        if tx.conn.dialect.name == "postgresql":
            await tx.conn.execute(
                select(proposals_table.c.row_id)
                .where(
                    proposals_table.c.tenant_id == tenant_id,
                    proposals_table.c.proposal_id == proposal_id,
                )
                .with_for_update()
            )
        proposal = await repo.load_proposal(tx.conn, tenant_id, proposal_id)
        if proposal is None:
            raise NotFound(f"no proposal {proposal_id!r} in this tenant")
        return proposal

    # -- creating ----------------------------------------------------------------------------

    async def target(self, conn: AsyncConnection, tenant_id: str, req: ProposalRequest) -> Target:
        """The setpoint ``req`` changes (422 with a pointer when the twin model lacks it)."""
        twin = await self._twins.find(conn, tenant_id, req.twin_id)
        if twin is None:
            raise invalid("/twin_id", f"no twin {req.twin_id!r} in this tenant")
        spec = with_desired(twin.spec, await desired_values(conn, tenant_id, req.twin_id))
        asset = spec.asset(req.asset_id)
        if asset is None:
            raise invalid("/asset_id", f"twin {req.twin_id!r} has no asset {req.asset_id!r}")
        setpoint = asset.setpoints.get(req.setpoint)
        if setpoint is None:
            known = ", ".join(asset.setpoints) or "none"
            raise invalid(
                "/setpoint",
                f"asset {req.asset_id!r} has no setpoint {req.setpoint!r} (it has: {known})",
            )
        return Target(spec, asset, req.setpoint, setpoint)

    async def create(
        self,
        actor: Actor,
        req: ProposalRequest,
        *,
        idempotency_key: str | None = None,
        req_hash: str = "",
    ) -> Created:
        """Propose, gather evidence, score and decide: 201 with the proposal (``proposal.v1``);
        a replayed ``Idempotency-Key`` answers what the first request got."""
        tenant = actor.tenant_id
        proposal_id = self._ids.new("prp")
        if idempotency_key is not None:
            self._idempotency.check_key(idempotency_key)
            async with self._db.write() as tx:
                stored = await self._idempotency.reserve(
                    tx,
                    tenant_id=tenant,
                    principal_id=actor.principal_id,
                    key=idempotency_key,
                    req_hash=req_hash,
                )
                if stored is None:
                    await self._idempotency.record(
                        tx,
                        tenant_id=tenant,
                        principal_id=actor.principal_id,
                        key=idempotency_key,
                        status_code=0,
                        body=jsonutil.dumps_str({"proposal_id": proposal_id}),
                    )
            if stored is not None:
                if stored.status_code != 0:
                    return Created(stored.status_code, jsonutil.loads(stored.body))
                proposal_id = jsonutil.loads(stored.body)["proposal_id"]
                async with self._db.read() as conn:
                    existing = await repo.load_proposal(conn, tenant, proposal_id)
                if existing is not None:
                    return Created(201, existing.to_dict())
        async with self._db.read() as conn:
            target = await self.target(conn, tenant, req)
            gathered = await self.evidence.gather(
                conn,
                tenant,
                actor.principal_id,
                target,
                value=req.value,
                action_type=req.action_type,
                anomaly_id=req.anomaly_id,
                sim_id=req.sim_id,
            )
        draft = ProposalDraft(
            twin_id=req.twin_id,
            asset_id=req.asset_id,
            setpoint=req.setpoint,
            value=req.value,
            rationale=req.rationale,
            action_type=req.action_type,
            anomaly_id=req.anomaly_id,
            sim_id=gathered.sim_id,
        )
        async with self._db.write() as tx:
            await repo.lock_asset(tx, tenant, req.twin_id, req.asset_id)
            if await repo.load_proposal(tx.conn, tenant, proposal_id) is not None:
                existing = await repo.load_proposal(tx.conn, tenant, proposal_id)
                assert existing is not None
                return Created(201, existing.to_dict())
            proposed = self.workflow.propose(proposal_id, actor, draft)
            transitions = [proposed]
            transitions += await self._score_and_decide(tx, proposed.proposal, target, gathered)
            final = await self.record(tx, transitions, new=True)
            body = final.to_dict()
            if idempotency_key is not None:
                await self._idempotency.record(
                    tx,
                    tenant_id=tenant,
                    principal_id=actor.principal_id,
                    key=idempotency_key,
                    status_code=201,
                    body=jsonutil.dumps_str(body),
                )
        log.info(
            "proposal decided",
            proposal_id=proposal_id,
            twin_id=req.twin_id,
            asset_id=req.asset_id,
            setpoint=req.setpoint,
            value=req.value,
            state=final.state,
            confidence=(final.content or {}).get("confidence", {}).get("total"),
        )
        return Created(201, body)

    async def _score_and_decide(
        self, tx: Transaction, proposal: Proposal, target: Target, gathered: Gathered
    ) -> list[Transition]:
        tenant = proposal.tenant_id
        draft = proposal.draft
        policy = await self._policies.active(tx.conn, tenant)
        change = ProposedChange(
            proposal_id=proposal.proposal_id,
            action_type=draft.action_type,
            twin_id=draft.twin_id,
            asset_id=draft.asset_id,
            asset_class=target.asset.type,
            setpoint=draft.setpoint,
            spec=target.spec,
            value=draft.value,
            current=target.current,
            asset_status=await repo.asset_status(tx.conn, tenant, draft.twin_id, draft.asset_id),
            open_anomalies=await repo.open_anomalies(
                tx.conn, tenant, draft.twin_id, draft.asset_id
            ),
            in_flight=[
                f
                for f in await repo.in_flight(tx.conn, tenant, draft.twin_id)
                if f.proposal_id != proposal.proposal_id
            ],
        )
        confidence = self.scorer.score(gathered.evidence, policy)
        decision = self.decider.decide(change, confidence, policy)
        scored = self.workflow.score(proposal, confidence, decision, policy, gathered.summary)
        decided = self.workflow.decide(scored.proposal)
        return [scored, decided]

    # -- votes and re-scoring ----------------------------------------------------------------

    async def vote(
        self, actor: Actor, proposal_id: str, approve: bool, confidence: float, rationale: str
    ) -> dict[str, Any]:
        """One vote per principal; a vote on a ``needs_analysis`` proposal re-scores it."""
        tenant = actor.tenant_id
        async with self._db.read() as conn:
            proposal = await repo.load_proposal(conn, tenant, proposal_id)
        if proposal is None:
            raise NotFound(f"no proposal {proposal_id!r} in this tenant")
        if proposal.proposer.party == actor.party:
            raise Conflict(
                "the proposer cannot vote on its own proposal", extensions={"state": proposal.state}
            )
        if proposal.state not in repo.OPEN_STATES:
            raise Conflict(
                f"proposal {proposal_id} is {proposal.state}: votes are closed",
                extensions={"state": proposal.state},
            )
        vote = Vote(actor.principal_id, approve, confidence, rationale)
        async with self._db.write() as tx:
            if not await repo.add_vote(tx, tenant, proposal_id, vote, to_micros(self._clock.now())):
                raise Conflict(f"principal {actor.principal_id} has voted on {proposal_id} already")
            await self._audit.append(
                tx,
                [
                    AuditEntry(
                        record_id=self._ids.new("aud"),
                        tenant_id=tenant,
                        at=self._clock.now(),
                        actor_id=actor.principal_id,
                        role=actor.role,
                        on_behalf_of=actor.on_behalf_of,
                        action="proposal.vote",
                        resource=f"proposal/{proposal_id}",
                        inputs={}
                        if proposal.content_hash is None
                        else {"content_hash": proposal.content_hash},
                        outcome="vote:approve" if approve else "vote:reject",
                        reason=rationale,
                    )
                ],
            )
            await self._changelog.append(
                tx,
                [
                    NewEvent(
                        tenant_id=tenant,
                        type="opstwin.proposal.vote",
                        source=SOURCE,
                        subject=f"twin/{proposal.draft.twin_id}/proposal/{proposal_id}",
                        data={
                            "proposal_id": proposal_id,
                            "principal_id": actor.principal_id,
                            "approve": approve,
                            "confidence": confidence,
                            "rationale": rationale,
                        },
                    )
                ],
            )
        if proposal.state == "needs_analysis":
            return await self.rescore(Actor.system(tenant), proposal_id)
        async with self._db.read() as conn:
            return await self.view(conn, tenant, proposal_id)

    async def rescore(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        """Gather fresh evidence (votes so far, a new simulation) for a ``needs_analysis``
        proposal and decide again."""
        tenant = actor.tenant_id
        async with self._db.read() as conn:
            proposal = await repo.load_proposal(conn, tenant, proposal_id)
            if proposal is None:
                raise NotFound(f"no proposal {proposal_id!r} in this tenant")
            if proposal.state != "needs_analysis":
                raise Conflict(
                    f"proposal {proposal_id} is {proposal.state}: only a needs_analysis "
                    "proposal is re-scored",
                    extensions={"state": proposal.state},
                )
            draft = proposal.draft
            req = ProposalRequest(
                draft.twin_id, draft.asset_id, draft.setpoint, draft.value, draft.rationale
            )
            target = await self.target(conn, tenant, req)
            gathered = await self.evidence.gather(
                conn,
                tenant,
                proposal.proposer.principal_id,
                target,
                value=draft.value,
                action_type=draft.action_type,
                anomaly_id=draft.anomaly_id,
                sim_id=None,
                votes=await repo.votes_of(conn, tenant, proposal_id),
            )
        async with self._db.write() as tx:
            await repo.lock_asset(tx, tenant, draft.twin_id, draft.asset_id)
            current = await self.load_for_update(tx, tenant, proposal_id)
            if current.state != "needs_analysis":
                raise Conflict(
                    f"proposal {proposal_id} is {current.state} now",
                    extensions={"state": current.state},
                )
            transitions = await self._score_and_decide(tx, current, target, gathered)
            final = await self.record(tx, transitions)
        return final.to_dict()

    # -- human transitions -------------------------------------------------------------------

    async def _transition(
        self, tenant_id: str, proposal_id: str, step: Callable[[Proposal], Transition]
    ) -> Proposal:
        async with self._db.write() as tx:
            proposal = await self.load_for_update(tx, tenant_id, proposal_id)
            return await self.record(tx, [step(proposal)])

    async def approve(
        self, actor: Actor, proposal_id: str, content_hash: str, *, execute: bool = True
    ) -> dict[str, Any]:
        final = await self._transition(
            actor.tenant_id,
            proposal_id,
            lambda p: self.workflow.approve(p, actor, content_hash, delegate=execute),
        )
        return final.to_dict()

    async def reject(self, actor: Actor, proposal_id: str, reason: str) -> dict[str, Any]:
        final = await self._transition(
            actor.tenant_id, proposal_id, lambda p: self.workflow.reject(p, actor, reason)
        )
        return final.to_dict()

    async def start_execution(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        """An executor starts an approved proposal (the executor then carries it out)."""
        final = await self._transition(
            actor.tenant_id,
            proposal_id,
            lambda p: self.workflow.apply(p, "start_execution", actor),
        )
        return final.to_dict()

    async def set_control(
        self,
        actor: Actor,
        twin_id: str,
        asset_id: str,
        *,
        locked: bool,
        mode: str,
        reason: str | None,
    ) -> dict[str, Any]:
        """Lock an asset or put it in manual mode (proposals on it then need approval)."""
        async with self._db.write() as tx:
            twin = await self._twins.find(tx.conn, actor.tenant_id, twin_id)
            if twin is None or twin.spec.asset(asset_id) is None:
                raise NotFound(f"twin {twin_id!r} has no asset {asset_id!r}")
            now = self._clock.now()
            await repo.set_asset_control(
                tx,
                actor.tenant_id,
                twin_id,
                asset_id,
                locked=locked,
                mode=mode,
                reason=reason,
                by=actor.principal_id,
                at_us=to_micros(now),
            )
            body = {
                "twin_id": twin_id,
                "asset_id": asset_id,
                "locked": locked,
                "mode": mode,
                "reason": reason,
                "updated_by": actor.principal_id,
            }
            await self._audit.append(
                tx,
                [
                    AuditEntry(
                        record_id=self._ids.new("aud"),
                        tenant_id=actor.tenant_id,
                        at=now,
                        actor_id=actor.principal_id,
                        role=actor.role,
                        action="asset.control",
                        resource=f"twin/{twin_id}/asset/{asset_id}",
                        outcome=f"locked={locked} mode={mode}",
                        reason=reason,
                    )
                ],
            )
            await self._changelog.append(
                tx,
                [
                    NewEvent(
                        tenant_id=actor.tenant_id,
                        type="opstwin.asset.control",
                        source=SOURCE,
                        subject=f"twin/{twin_id}/asset/{asset_id}",
                        data=body,
                    )
                ],
            )
        return body

    # -- reading -----------------------------------------------------------------------------

    async def view(self, conn: AsyncConnection, tenant_id: str, proposal_id: str) -> dict[str, Any]:
        """A proposal with its votes and its execution (``proposal.v1`` plus ``votes``,
        ``action``)."""
        proposal = await repo.load_proposal(conn, tenant_id, proposal_id)
        if proposal is None:
            raise NotFound(f"no proposal {proposal_id!r} in this tenant")
        body = proposal.to_dict()
        body["votes"] = [
            {
                "principal_id": v.principal_id,
                "approve": v.approve,
                "confidence": v.confidence,
                "rationale": v.rationale,
            }
            for v in await repo.votes_of(conn, tenant_id, proposal_id)
        ]
        body["action"] = (
            None
            if proposal.action is None
            else await repo.load_action(conn, tenant_id, proposal.action.action_id)
        )
        return body

    def _page_size(self, limit: int | None) -> int:
        size = limit or self.settings.page_size_default
        if size > self.settings.page_size_max:
            raise ValidationFailed(
                f"limit must be at most {self.settings.page_size_max}",
                errors=[
                    FieldError(detail=f"at most {self.settings.page_size_max}", parameter="limit")
                ],
            )
        return size

    async def page(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        flt: repo.ProposalFilter,
        *,
        before: str | None,
        limit: int | None,
    ) -> dict[str, Any]:
        size = self._page_size(limit)
        before_row = await _before_row(conn, tenant_id, before, repo.row_id_of, "proposal")
        rows, more = await repo.page_proposals(
            conn, tenant_id, flt, before_row=before_row, limit=size
        )
        items = [p.to_dict() for _, p in rows]
        return {
            "proposals": items,
            "next_before": items[-1]["proposal_id"] if more and items else None,
            "has_more": more,
        }

    async def actions_page(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        *,
        twin_id: str | None,
        asset_id: str | None,
        state: str | None,
        before: str | None,
        limit: int | None,
    ) -> dict[str, Any]:
        size = self._page_size(limit)
        before_row = await _before_row(conn, tenant_id, before, repo.action_row_id, "action")
        rows, more = await repo.page_actions(
            conn,
            tenant_id,
            twin_id=twin_id,
            asset_id=asset_id,
            state=state,
            before_row=before_row,
            limit=size,
        )
        items = [doc for _, doc in rows]
        return {
            "actions": items,
            "next_before": items[-1]["action_id"] if more and items else None,
            "has_more": more,
        }

    async def wait_for_state(
        self, tenant_id: str, proposal_id: str, states: Sequence[str], timeout_s: float
    ) -> Proposal:
        """Until the proposal reaches one of ``states`` (tests and the CLI; polls the store)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            async with self._db.read() as conn:
                proposal = await repo.load_proposal(conn, tenant_id, proposal_id)
            if proposal is not None and proposal.state in states:
                return proposal
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"proposal {proposal_id} is {None if proposal is None else proposal.state}, "
                    f"not {'/'.join(states)}, after {timeout_s:g} s"
                )
            await asyncio.sleep(0.02)


async def _before_row(
    conn: AsyncConnection,
    tenant_id: str,
    before: str | None,
    lookup: Callable[[AsyncConnection, str, str], Awaitable[int | None]],
    what: str,
) -> int | None:
    """The keyset position of a ``before`` id (400 when the tenant has no such item)."""
    if before is None:
        return None
    row = await lookup(conn, tenant_id, before)
    if row is None:
        raise BadRequest(
            f"before: no {what} {before!r} in this tenant (pass a `next_before`)",
            errors=[FieldError(detail=f"unknown {what}", parameter="before")],
        )
    return row
