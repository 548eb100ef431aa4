"""The values the workflow produces: actors, drafts, approvals, action and transition records,
proposals, and the content hash that binds an approval to what was scored."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from opstwin.actions.workflow.states import SYSTEM, ActionState, Event, State
from opstwin.audit.chain import AuditEntry
from opstwin.kit import jsonutil
from opstwin.kit.clock import rfc3339
from opstwin.policy.policy import Outcome

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PROPOSAL_SCHEMA_ID = "urn:opstwin:schema:proposal.v1"
ACTION_SCHEMA_ID = "urn:opstwin:schema:action.v1"


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
        return _field_document(self)


@dataclass(frozen=True, slots=True)
class Approval:
    """The permission to execute, bound to one content hash."""

    kind: Literal["auto", "human"]
    by: str
    role: str
    at: datetime
    content_hash: str
    executed_by: Literal["platform", "executor"] = "platform"
    """Who starts the execution: the platform (always for ``auto``; for ``human`` when the
    approver delegated it) or an executor's explicit request."""

    def to_dict(self) -> dict[str, Any]:
        return _field_document(self)


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
        return _field_document(self)


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


def _field_document(record: DataclassInstance) -> dict[str, Any]:
    """Every field of ``record`` under its own name, in declaration order, as JSON: datetimes in
    RFC 3339, tuples as lists, nested actors and approvals by their own ``to_dict``."""
    return {f.name: _json_value(getattr(record, f.name)) for f in fields(record)}


def _json_value(value: object) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Actor | Approval):
        return value.to_dict()
    return value
