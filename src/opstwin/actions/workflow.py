"""The approval workflow of a proposal (``proposal.v1``), as a state machine kept as data.

::

    proposed ──score──▶ scored ──auto_approve──────▶ approved ──start_execution──▶ executing
                          │ ──request_approval──▶ awaiting_approval ─approve─▶ approved
                          │ ──request_analysis──▶ needs_analysis ──score──▶ scored
                          └ ──policy_reject─────▶ rejected
    awaiting_approval ─reject─▶ rejected          awaiting_approval ─expire─▶ expired
    approved ─reject (veto)─▶ rejected            approved ─expire─▶ expired
    executing ─begin_verification─▶ verifying     executing ─fail─▶ failed
    verifying ─verify_success─▶ succeeded  ─rollback (auto)─▶ rolled_back  ─fail─▶ failed
    succeeded ─rollback (manual, within the window)─▶ rolled_back

:data:`TRANSITIONS` is that table: (state, event) → next state, the roles allowed (``system``
is the platform itself) and the named conditions (:data:`CONDITIONS`) that must hold.
:meth:`ApprovalWorkflow.apply` is the only way to change state: it looks the rule up, checks
role, tenant and conditions, and returns the new :class:`Proposal` with exactly one new
:class:`TransitionRecord` (who, role, when, from, to, reason, content hash).

**Content hash.** Scoring freezes the proposal's content (draft, evidence, confidence, decision,
policy version and windows, deadlines) and hashes it: ``sha256:`` + SHA-256 of its canonical
JSON. An approval names the hash the approver saw and must equal the proposal's; execution
requires an approval bound to the current hash — an automatic one only exists when the decision
was ``auto_execute``. Re-scoring (from ``needs_analysis``) makes new content and a new hash.

**Separation of duties.** A principal's *party* is the principal it acts for (``on_behalf_of``)
or itself. The approver's party must differ from the proposer's: the proposer cannot approve, nor
can another key acting for it, nor can the principal the proposer acts for.

**Expiry (default deny).** A scored proposal may be approved, and its approval executed, only
strictly before ``approval_expires_at`` (scored + the policy's ``approval_expiry_s``); from that
instant on ``approve`` and ``start_execution`` are refused and ``expire`` moves it to ``expired``.

Errors: no rule for (state, event) → :class:`Conflict` naming the current state; a role not in
the rule, another tenant or separation of duties → :class:`PermissionDenied`; a failed condition
→ :class:`Conflict` (or :class:`ValidationFailed` for a missing reason).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from opstwin.audit.chain import AuditEntry
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, rfc3339
from opstwin.kit.errors import (
    Conflict,
    FieldError,
    OpsTwinError,
    PermissionDenied,
    ValidationFailed,
)
from opstwin.kit.ids import IdSource
from opstwin.policy.confidence import Confidence
from opstwin.policy.decision import Decision
from opstwin.policy.policy import Outcome, Policy
from opstwin.policy.rbac import Role

PROPOSAL_SCHEMA_ID = "urn:opstwin:schema:proposal.v1"
ACTION_SCHEMA_ID = "urn:opstwin:schema:action.v1"

State = Literal[
    "proposed",
    "scored",
    "approved",
    "awaiting_approval",
    "needs_analysis",
    "rejected",
    "expired",
    "executing",
    "verifying",
    "succeeded",
    "rolled_back",
    "failed",
]
STATES: tuple[State, ...] = (
    "proposed",
    "scored",
    "approved",
    "awaiting_approval",
    "needs_analysis",
    "rejected",
    "expired",
    "executing",
    "verifying",
    "succeeded",
    "rolled_back",
    "failed",
)
FINAL_STATES = frozenset({"rejected", "expired", "rolled_back", "failed"})
"""States nothing leaves (``succeeded`` can still be rolled back within its window)."""

Event = Literal[
    "propose",
    "score",
    "auto_approve",
    "request_approval",
    "request_analysis",
    "policy_reject",
    "approve",
    "reject",
    "expire",
    "start_execution",
    "begin_verification",
    "verify_success",
    "rollback",
    "fail",
]
ActionState = Literal["executing", "verifying", "succeeded", "rolled_back", "failed"]

SYSTEM = "system"
"""Role of the platform itself (scoring, deciding, expiring, verifying)."""

_SUPERVISORS = frozenset({Role.supervisor.value, Role.admin.value})
_EXECUTORS = frozenset({Role.executor.value, Role.admin.value})
_ROLLBACK = frozenset({Role.supervisor.value, Role.executor.value, Role.admin.value})
_SYSTEM = frozenset({SYSTEM})


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the transition table."""

    source: State
    event: Event
    target: State
    roles: frozenset[str]
    conditions: tuple[str, ...] = ()


TRANSITIONS: tuple[Rule, ...] = (
    Rule("proposed", "score", "scored", _SYSTEM, ("has_content",)),
    Rule("needs_analysis", "score", "scored", _SYSTEM, ("has_content",)),
    Rule("scored", "auto_approve", "approved", _SYSTEM, ("decision_is_auto_execute",)),
    Rule(
        "scored",
        "request_approval",
        "awaiting_approval",
        _SYSTEM,
        ("decision_is_require_approval",),
    ),
    Rule("scored", "request_analysis", "needs_analysis", _SYSTEM, ("decision_is_analyze",)),
    Rule("scored", "policy_reject", "rejected", _SYSTEM, ("decision_is_reject",)),
    Rule(
        "awaiting_approval",
        "approve",
        "approved",
        _SUPERVISORS,
        ("approver_is_not_proposer", "bound_to_content_hash", "before_approval_expiry"),
    ),
    Rule("awaiting_approval", "reject", "rejected", _SUPERVISORS, ("reason_given",)),
    Rule("awaiting_approval", "expire", "expired", _SYSTEM, ("approval_expired",)),
    Rule("approved", "reject", "rejected", _SUPERVISORS, ("reason_given",)),  # a veto
    Rule("approved", "expire", "expired", _SYSTEM, ("approval_expired",)),
    Rule(
        "approved",
        "start_execution",
        "executing",
        _EXECUTORS | _SYSTEM,
        (
            "approval_bound_to_content_hash",
            "system_executes_only_auto_approvals",
            "before_approval_expiry",
        ),
    ),
    Rule("executing", "begin_verification", "verifying", _SYSTEM),
    Rule("executing", "fail", "failed", _SYSTEM, ("reason_given",)),
    Rule("verifying", "verify_success", "succeeded", _SYSTEM),
    Rule("verifying", "rollback", "rolled_back", _SYSTEM, ("reason_given",)),
    Rule("verifying", "fail", "failed", _SYSTEM, ("reason_given",)),
    Rule(
        "succeeded",
        "rollback",
        "rolled_back",
        _ROLLBACK,
        ("reason_given", "within_rollback_window"),
    ),
)
"""The whole state machine (explicit registry; :data:`RULES` indexes it)."""

RULES: dict[tuple[State, Event], Rule] = {(r.source, r.event): r for r in TRANSITIONS}

DECISION_EVENTS: dict[Outcome, Event] = {
    "auto_execute": "auto_approve",
    "require_approval": "request_approval",
    "analyze": "request_analysis",
    "reject": "policy_reject",
}
"""Which event a scored proposal's decision outcome fires."""

_ACTION_STATES: dict[State, ActionState] = {
    "executing": "executing",
    "verifying": "verifying",
    "succeeded": "succeeded",
    "rolled_back": "rolled_back",
    "failed": "failed",
}


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Actor:
    """Who fires an event: a principal (with its role) or the platform (role ``system``)."""

    principal_id: str
    tenant_id: str
    role: str
    on_behalf_of: str | None = None

    @classmethod
    def system(cls, tenant_id: str) -> Actor:
        return cls(principal_id=SYSTEM, tenant_id=tenant_id, role=SYSTEM)

    @property
    def party(self) -> str:
        """The principal this actor answers for (separation of duties compares parties)."""
        return self.on_behalf_of or self.principal_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "principal_id": self.principal_id,
            "role": self.role,
            "on_behalf_of": self.on_behalf_of,
        }


@dataclass(frozen=True, slots=True)
class ProposalDraft:
    """What the proposer asks for."""

    twin_id: str
    asset_id: str
    setpoint: str
    value: float
    rationale: str
    action_type: str = "setpoint_change"
    anomaly_id: str | None = None
    sim_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "twin_id": self.twin_id,
            "asset_id": self.asset_id,
            "setpoint": self.setpoint,
            "value": self.value,
            "rationale": self.rationale,
            "action_type": self.action_type,
            "anomaly_id": self.anomaly_id,
            "sim_id": self.sim_id,
        }


@dataclass(frozen=True, slots=True)
class Approval:
    """The permission to execute, bound to one content hash."""

    kind: Literal["auto", "human"]
    by: str
    role: str
    at: datetime
    content_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "by": self.by,
            "role": self.role,
            "at": rfc3339(self.at),
            "content_hash": self.content_hash,
        }


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One execution of an approved proposal (``action.v1``); the executor fills in the
    before-value it reads back."""

    action_id: str
    proposal_id: str
    tenant_id: str
    twin_id: str
    asset_id: str
    setpoint: str
    target: float
    steps: tuple[float, ...]
    content_hash: str
    approval: Approval
    started_by: Actor
    started_at: datetime
    state: ActionState = "executing"
    before_value: float | None = None
    finished_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "proposal_id": self.proposal_id,
            "tenant_id": self.tenant_id,
            "twin_id": self.twin_id,
            "asset_id": self.asset_id,
            "setpoint": self.setpoint,
            "target": self.target,
            "steps": list(self.steps),
            "content_hash": self.content_hash,
            "approval": self.approval.to_dict(),
            "started_by": self.started_by.to_dict(),
            "started_at": rfc3339(self.started_at),
            "state": self.state,
            "before_value": self.before_value,
            "finished_at": None if self.finished_at is None else rfc3339(self.finished_at),
        }


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One state change: exactly one per transition, in order (``seq`` from 1)."""

    proposal_id: str
    tenant_id: str
    seq: int
    event: Event
    from_state: State | None
    to_state: State
    actor: Actor
    at: datetime
    reason: str | None
    content_hash: str | None
    policy: Mapping[str, Any] | None
    decision: Outcome | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event": self.event,
            "from": self.from_state,
            "to": self.to_state,
            "actor": self.actor.to_dict(),
            "at": rfc3339(self.at),
            "reason": self.reason,
            "content_hash": self.content_hash,
        }

    def audit_entry(self, record_id: str) -> AuditEntry:
        """The ``audit.v1`` entry for this transition."""
        return AuditEntry(
            record_id=record_id,
            tenant_id=self.tenant_id,
            at=self.at,
            actor_id=self.actor.principal_id,
            role=self.actor.role,
            on_behalf_of=self.actor.on_behalf_of,
            action=f"proposal.{self.event}",
            resource=f"proposal/{self.proposal_id}",
            inputs={} if self.content_hash is None else {"content_hash": self.content_hash},
            policy=self.policy,
            decision=self.decision,
            outcome=self.to_state,
            reason=self.reason,
        )


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal and where it stands. Immutable: every transition makes a new one."""

    proposal_id: str
    tenant_id: str
    proposer: Actor
    draft: ProposalDraft
    created_at: datetime
    state: State = "proposed"
    content: Mapping[str, Any] | None = None
    content_hash: str | None = None
    outcome: Outcome | None = None
    approval_expires_at: datetime | None = None
    rollback_window_s: float | None = None
    approval: Approval | None = None
    action: ActionRecord | None = None
    succeeded_at: datetime | None = None
    transitions: tuple[TransitionRecord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The ``proposal.v1`` JSON form."""
        content = self.content or {}
        return {
            "proposal_id": self.proposal_id,
            "tenant_id": self.tenant_id,
            "state": self.state,
            "proposer": self.proposer.to_dict(),
            "created_at": rfc3339(self.created_at),
            **self.draft.to_dict(),
            "content_hash": self.content_hash,
            "confidence": content.get("confidence"),
            "decision": content.get("decision"),
            "policy": content.get("policy"),
            "evidence": content.get("evidence"),
            "scored_at": content.get("scored_at"),
            "approval_expires_at": None
            if self.approval_expires_at is None
            else rfc3339(self.approval_expires_at),
            "approval": None if self.approval is None else self.approval.to_dict(),
            "action_id": None if self.action is None else self.action.action_id,
            "succeeded_at": None if self.succeeded_at is None else rfc3339(self.succeeded_at),
            "transitions": [t.to_dict() for t in self.transitions],
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """What :meth:`ApprovalWorkflow.apply` returns: the new proposal and its one new record."""

    proposal: Proposal
    record: TransitionRecord


def content_hash(content: Mapping[str, Any]) -> str:
    """``sha256:`` + SHA-256 hex of the canonical JSON of ``content``."""
    return "sha256:" + hashlib.sha256(jsonutil.canonical(dict(content))).hexdigest()


# --- conditions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventContext:
    """What an event carries besides the proposal."""

    actor: Actor
    at: datetime
    reason: str | None = None
    content_hash: str | None = None
    content: Mapping[str, Any] | None = None


Condition = Callable[[Proposal, EventContext], OpsTwinError | None]
"""Returns the error that refuses the transition, or None when the condition holds."""


def _decision_is(outcome: Outcome) -> Condition:
    def check(proposal: Proposal, ctx: EventContext) -> OpsTwinError | None:
        if proposal.outcome == outcome:
            return None
        return Conflict(
            f"the decision is {proposal.outcome}, not {outcome}",
            extensions={"state": proposal.state},
        )

    return check


def _has_content(proposal: Proposal, ctx: EventContext) -> OpsTwinError | None:
    if ctx.content is None:
        return ValidationFailed("scoring needs the scored content")
    return None


def _approver_is_not_proposer(proposal: Proposal, ctx: EventContext) -> OpsTwinError | None:
    proposer, approver = proposal.proposer, ctx.actor
    if approver.party == proposer.party or approver.principal_id in {
        proposer.principal_id,
        proposer.party,
    }:
        return PermissionDenied(
            "separation of duties: the proposer (or a key acting for it) cannot approve",
            extensions={"proposer": proposer.principal_id},
        )
    return None


def _bound_to_content_hash(proposal: Proposal, ctx: EventContext) -> OpsTwinError | None:
    if ctx.content_hash is None or ctx.content_hash != proposal.content_hash:
        return Conflict(
            "the approval names another content hash than the proposal's",
            extensions={"state": proposal.state, "content_hash": proposal.content_hash},
        )
    return None


def _before_approval_expiry(proposal: Proposal, ctx: EventContext) -> OpsTwinError | None:
    expires = proposal.approval_expires_at
    if expires is None or ctx.at >= expires:
        return Conflict(
            "the approval window has passed (approvals expire: default deny)",
            extensions={"state": proposal.state},
        )
    return None


def _approval_expired(proposal: Proposal, ctx: EventContext) -> OpsTwinError | None:
    expires = proposal.approval_expires_at
    if expires is not None and ctx.at < expires:
        return Conflict(
            f"the approval window is open until {rfc3339(expires)}",
            extensions={"state": proposal.state},
        )
    return None


def _reason_given(proposal: Proposal, ctx: EventContext) -> OpsTwinError | None:
    if ctx.reason is None or not ctx.reason.strip():
        return ValidationFailed(
            "a reason is required", errors=[FieldError(detail="required", pointer="/body/reason")]
        )
    return None


def _approval_bound_to_content_hash(proposal: Proposal, ctx: EventContext) -> OpsTwinError | None:
    approval = proposal.approval
    if approval is None or approval.content_hash != proposal.content_hash:
        return Conflict(
            "no approval bound to the proposal's content hash", extensions={"state": proposal.state}
        )
    if approval.kind == "auto" and proposal.outcome != "auto_execute":
        return Conflict(
            "an automatic approval needs the auto-execute decision",
            extensions={"state": proposal.state},
        )
    return None


def _system_executes_only_auto_approvals(
    proposal: Proposal, ctx: EventContext
) -> OpsTwinError | None:
    if ctx.actor.role == SYSTEM and (proposal.approval is None or proposal.approval.kind != "auto"):
        return PermissionDenied("a human approval is executed by an executor, not the platform")
    return None


def _within_rollback_window(proposal: Proposal, ctx: EventContext) -> OpsTwinError | None:
    if proposal.succeeded_at is None or proposal.rollback_window_s is None:
        return Conflict("no rollback window is open", extensions={"state": proposal.state})
    deadline = proposal.succeeded_at + timedelta(seconds=proposal.rollback_window_s)
    if ctx.at > deadline:
        return Conflict(
            f"the rollback window closed at {rfc3339(deadline)}",
            extensions={"state": proposal.state},
        )
    return None


CONDITIONS: dict[str, Condition] = {
    "has_content": _has_content,
    "decision_is_auto_execute": _decision_is("auto_execute"),
    "decision_is_require_approval": _decision_is("require_approval"),
    "decision_is_analyze": _decision_is("analyze"),
    "decision_is_reject": _decision_is("reject"),
    "approver_is_not_proposer": _approver_is_not_proposer,
    "bound_to_content_hash": _bound_to_content_hash,
    "before_approval_expiry": _before_approval_expiry,
    "approval_expired": _approval_expired,
    "reason_given": _reason_given,
    "approval_bound_to_content_hash": _approval_bound_to_content_hash,
    "system_executes_only_auto_approvals": _system_executes_only_auto_approvals,
    "within_rollback_window": _within_rollback_window,
}
"""Every condition a rule may name (explicit registry)."""


# --- the workflow -----------------------------------------------------------------------------


class ApprovalWorkflow:
    """Applies events to proposals by the transition table. Pure: no I/O, time and ids injected."""

    def __init__(self, clock: Clock, ids: IdSource) -> None:
        self._clock = clock
        self._ids = ids

    def propose(self, proposal_id: str, proposer: Actor, draft: ProposalDraft) -> Transition:
        """A new proposal in state ``proposed`` (its creation is the first record)."""
        now = self._clock.now()
        proposal = Proposal(
            proposal_id=proposal_id,
            tenant_id=proposer.tenant_id,
            proposer=proposer,
            draft=draft,
            created_at=now,
        )
        record = TransitionRecord(
            proposal_id=proposal_id,
            tenant_id=proposer.tenant_id,
            seq=1,
            event="propose",
            from_state=None,
            to_state="proposed",
            actor=proposer,
            at=now,
            reason=draft.rationale,
            content_hash=None,
            policy=None,
            decision=None,
        )
        return Transition(replace(proposal, transitions=(record,)), record)

    def score(
        self,
        proposal: Proposal,
        confidence: Confidence,
        decision: Decision,
        policy: Policy,
        evidence: Mapping[str, Any] | None = None,
    ) -> Transition:
        """Freeze and hash the content (``proposed`` or ``needs_analysis`` → ``scored``)."""
        now = self._clock.now()
        expires = now + timedelta(seconds=policy.approval_expiry_s)
        content = {
            "proposal_id": proposal.proposal_id,
            "tenant_id": proposal.tenant_id,
            "proposer": proposal.proposer.to_dict(),
            "draft": proposal.draft.to_dict(),
            "evidence": dict(evidence or {}),
            "confidence": confidence.to_dict(),
            "decision": decision.to_dict(),
            "policy": policy.ref(),
            "windows": {
                "approval_expiry_s": policy.approval_expiry_s,
                "verification_window_s": policy.verification_window_s,
                "rollback_window_s": policy.rollback_window_s,
            },
            "scored_at": rfc3339(now),
            "approval_expires_at": rfc3339(expires),
        }
        return self.apply(
            proposal,
            "score",
            Actor.system(proposal.tenant_id),
            content=content,
            outcome=decision.outcome,
            approval_expires_at=expires,
            rollback_window_s=policy.rollback_window_s,
        )

    def decide(self, proposal: Proposal) -> Transition:
        """Fire the event the decision outcome of a scored proposal calls for."""
        if proposal.outcome is None:
            raise Conflict(
                f"proposal {proposal.proposal_id} is {proposal.state}: nothing to decide",
                extensions={"state": proposal.state},
            )
        return self.apply(
            proposal, DECISION_EVENTS[proposal.outcome], Actor.system(proposal.tenant_id)
        )

    def approve(self, proposal: Proposal, actor: Actor, content_hash: str) -> Transition:
        return self.apply(proposal, "approve", actor, content_hash=content_hash)

    def reject(self, proposal: Proposal, actor: Actor, reason: str) -> Transition:
        return self.apply(proposal, "reject", actor, reason=reason)

    def expire(self, proposal: Proposal) -> Transition:
        return self.apply(proposal, "expire", Actor.system(proposal.tenant_id))

    def apply(
        self,
        proposal: Proposal,
        event: Event,
        actor: Actor,
        *,
        reason: str | None = None,
        content_hash: str | None = None,
        content: Mapping[str, Any] | None = None,
        outcome: Outcome | None = None,
        approval_expires_at: datetime | None = None,
        rollback_window_s: float | None = None,
    ) -> Transition:
        """Fire ``event``: the new proposal and its transition record, or a domain error."""
        rule = RULES.get((proposal.state, event))
        if rule is None:
            allowed = possible_events(proposal.state)
            raise Conflict(
                f"proposal {proposal.proposal_id} is {proposal.state}: {event} is not possible"
                + (f" (possible: {', '.join(allowed)})" if allowed else ""),
                extensions={"state": proposal.state},
            )
        if actor.tenant_id != proposal.tenant_id:
            raise PermissionDenied("the proposal belongs to another tenant")
        if actor.role not in rule.roles:
            raise PermissionDenied(
                f"{event} on a {proposal.state} proposal needs role {' or '.join(sorted(rule.roles))}",
                extensions={"state": proposal.state},
            )
        ctx = EventContext(
            actor=actor,
            at=self._clock.now(),
            reason=reason,
            content_hash=content_hash,
            content=content,
        )
        for name in rule.conditions:
            error = CONDITIONS[name](proposal, ctx)
            if error is not None:
                raise error
        updated = self._effects(
            replace(proposal, state=rule.target),
            rule,
            ctx,
            outcome=outcome,
            approval_expires_at=approval_expires_at,
            rollback_window_s=rollback_window_s,
        )
        record = TransitionRecord(
            proposal_id=proposal.proposal_id,
            tenant_id=proposal.tenant_id,
            seq=len(proposal.transitions) + 1,
            event=event,
            from_state=proposal.state,
            to_state=rule.target,
            actor=actor,
            at=ctx.at,
            reason=reason,
            content_hash=updated.content_hash,
            policy=None if updated.content is None else updated.content["policy"],
            decision=updated.outcome,
        )
        return Transition(replace(updated, transitions=(*proposal.transitions, record)), record)

    def _effects(
        self,
        proposal: Proposal,
        rule: Rule,
        ctx: EventContext,
        *,
        outcome: Outcome | None,
        approval_expires_at: datetime | None,
        rollback_window_s: float | None,
    ) -> Proposal:
        """What a transition changes besides the state."""
        at = ctx.at
        if rule.event == "score" and ctx.content is not None:
            return replace(
                proposal,
                content=dict(ctx.content),
                content_hash=content_hash(ctx.content),
                outcome=outcome,
                approval_expires_at=approval_expires_at,
                rollback_window_s=rollback_window_s,
                approval=None,
            )
        if rule.event in ("auto_approve", "approve") and proposal.content_hash is not None:
            kind: Literal["auto", "human"] = "auto" if rule.event == "auto_approve" else "human"
            approval = Approval(
                kind, ctx.actor.principal_id, ctx.actor.role, at, proposal.content_hash
            )
            return replace(proposal, approval=approval)
        if rule.event == "start_execution" and proposal.approval is not None:
            return replace(proposal, action=self._action(proposal, proposal.approval, ctx))
        if proposal.action is not None and rule.target in _ACTION_STATES:
            finished = at if rule.target in ("succeeded", "rolled_back", "failed") else None
            action = replace(
                proposal.action,
                state=_ACTION_STATES[rule.target],
                finished_at=finished,
            )
            succeeded_at = at if rule.target == "succeeded" else proposal.succeeded_at
            return replace(proposal, action=action, succeeded_at=succeeded_at)
        return proposal

    def _action(self, proposal: Proposal, approval: Approval, ctx: EventContext) -> ActionRecord:
        draft = proposal.draft
        ramp = (proposal.content or {}).get("decision", {}).get("ramp")
        steps = tuple(ramp["steps"]) if ramp else (draft.value,)
        return ActionRecord(
            action_id=self._ids.new("act"),
            proposal_id=proposal.proposal_id,
            tenant_id=proposal.tenant_id,
            twin_id=draft.twin_id,
            asset_id=draft.asset_id,
            setpoint=draft.setpoint,
            target=draft.value,
            steps=steps,
            content_hash=approval.content_hash,
            approval=approval,
            started_by=ctx.actor,
            started_at=ctx.at,
        )


def possible_events(state: State) -> list[Event]:
    """The events the table allows from ``state`` (for error messages and the manifest)."""
    return sorted(e for (s, e) in RULES if s == state)
