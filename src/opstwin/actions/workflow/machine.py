""":class:`ApprovalWorkflow`: applies events to proposals by the transition table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal

from opstwin.actions.workflow.conditions import CONDITIONS, EventContext
from opstwin.actions.workflow.records import (
    ActionRecord,
    Actor,
    Approval,
    Proposal,
    ProposalDraft,
    Transition,
    TransitionRecord,
    content_hash,
)
from opstwin.actions.workflow.states import ActionState, Event, State
from opstwin.actions.workflow.table import DECISION_EVENTS, RULES, Rule, possible_events
from opstwin.kit.clock import Clock, rfc3339
from opstwin.kit.errors import Conflict, PermissionDenied
from opstwin.kit.ids import IdSource
from opstwin.policy.confidence import Confidence
from opstwin.policy.decision import Decision
from opstwin.policy.policy import Outcome, Policy

_ACTION_STATES: dict[State, ActionState] = {
    "executing": "executing",
    "verifying": "verifying",
    "succeeded": "succeeded",
    "rolled_back": "rolled_back",
    "failed": "failed",
}


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

    def approve(
        self, proposal: Proposal, actor: Actor, content_hash: str, *, delegate: bool = True
    ) -> Transition:
        """Approve the content the approver saw; ``delegate`` lets the platform execute it
        (else an executor must ask for the execution)."""
        return self.apply(
            proposal, "approve", actor, content_hash=content_hash, delegate_execution=delegate
        )

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
        delegate_execution: bool = True,
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
            delegate_execution=delegate_execution,
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
        delegate_execution: bool = True,
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
                kind,
                ctx.actor.principal_id,
                ctx.actor.role,
                at,
                proposal.content_hash,
                "platform" if kind == "auto" or delegate_execution else "executor",
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
