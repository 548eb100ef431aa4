"""The named conditions a transition rule may require (:data:`CONDITIONS`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from opstwin.actions.workflow.records import Actor, Proposal
from opstwin.actions.workflow.states import SYSTEM
from opstwin.kit.clock import rfc3339
from opstwin.kit.errors import (
    Conflict,
    FieldError,
    OpsTwinError,
    PermissionDenied,
    ValidationFailed,
)
from opstwin.policy.policy import Outcome


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


def _platform_executes_only_delegated_approvals(
    proposal: Proposal, ctx: EventContext
) -> OpsTwinError | None:
    approval = proposal.approval
    if ctx.actor.role == SYSTEM and (approval is None or approval.executed_by != "platform"):
        return PermissionDenied(
            "this approval is executed by an executor, not the platform "
            "(the approver did not delegate execution)"
        )
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
    "platform_executes_only_delegated_approvals": _platform_executes_only_delegated_approvals,
    "within_rollback_window": _within_rollback_window,
}
"""Every condition a rule may name (explicit registry)."""
