"""Proposals as stored: the workflow's values to and from JSON without losing anything.

``Proposal.to_dict`` is the public ``proposal.v1`` form (it leaves out what an API reader does not
need); the store keeps every field so a proposal read back is equal to the one written.
Datetimes are kept as integer microseconds.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from opstwin.actions.workflow import (
    ActionRecord,
    Actor,
    Approval,
    Proposal,
    ProposalDraft,
    TransitionRecord,
)
from opstwin.actions.workflow.states import ActionState, Event, State
from opstwin.kit.clock import from_micros, to_micros
from opstwin.policy.policy import Outcome


def _actor(actor: Actor) -> dict[str, Any]:
    return {
        "principal_id": actor.principal_id,
        "tenant_id": actor.tenant_id,
        "role": actor.role,
        "on_behalf_of": actor.on_behalf_of,
    }


def _actor_of(d: dict[str, Any]) -> Actor:
    return Actor(d["principal_id"], d["tenant_id"], d["role"], d.get("on_behalf_of"))


def _approval(a: Approval | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "kind": a.kind,
        "by": a.by,
        "role": a.role,
        "at_us": to_micros(a.at),
        "content_hash": a.content_hash,
        "executed_by": a.executed_by,
    }


def _approval_of(d: dict[str, Any] | None) -> Approval | None:
    if d is None:
        return None
    kind: Literal["auto", "human"] = "auto" if d["kind"] == "auto" else "human"
    executed_by: Literal["platform", "executor"] = (
        "platform" if d.get("executed_by", "platform") == "platform" else "executor"
    )
    return Approval(
        kind, d["by"], d["role"], from_micros(d["at_us"]), d["content_hash"], executed_by
    )


def _opt_us(value: Any) -> int | None:
    return None if value is None else to_micros(value)


def _opt_dt(value: int | None) -> Any:
    return None if value is None else from_micros(value)


def action_state(a: ActionRecord) -> dict[str, Any]:
    return {
        "action_id": a.action_id,
        "proposal_id": a.proposal_id,
        "tenant_id": a.tenant_id,
        "twin_id": a.twin_id,
        "asset_id": a.asset_id,
        "setpoint": a.setpoint,
        "target": a.target,
        "steps": list(a.steps),
        "content_hash": a.content_hash,
        "approval": _approval(a.approval),
        "started_by": _actor(a.started_by),
        "started_at_us": to_micros(a.started_at),
        "state": a.state,
        "before_value": a.before_value,
        "finished_at_us": _opt_us(a.finished_at),
    }


def action_of(d: dict[str, Any]) -> ActionRecord:
    approval = _approval_of(d["approval"])
    assert approval is not None
    return ActionRecord(
        action_id=d["action_id"],
        proposal_id=d["proposal_id"],
        tenant_id=d["tenant_id"],
        twin_id=d["twin_id"],
        asset_id=d["asset_id"],
        setpoint=d["setpoint"],
        target=float(d["target"]),
        steps=tuple(float(v) for v in d["steps"]),
        content_hash=d["content_hash"],
        approval=approval,
        started_by=_actor_of(d["started_by"]),
        started_at=from_micros(d["started_at_us"]),
        state=cast(ActionState, d["state"]),
        before_value=None if d["before_value"] is None else float(d["before_value"]),
        finished_at=_opt_dt(d["finished_at_us"]),
    )


def _transition(t: TransitionRecord) -> dict[str, Any]:
    return {
        "seq": t.seq,
        "event": t.event,
        "from": t.from_state,
        "to": t.to_state,
        "actor": _actor(t.actor),
        "at_us": to_micros(t.at),
        "reason": t.reason,
        "content_hash": t.content_hash,
        "policy": None if t.policy is None else dict(t.policy),
        "decision": t.decision,
    }


def _transition_of(proposal_id: str, tenant_id: str, d: dict[str, Any]) -> TransitionRecord:
    return TransitionRecord(
        proposal_id=proposal_id,
        tenant_id=tenant_id,
        seq=int(d["seq"]),
        event=cast(Event, d["event"]),
        from_state=cast(State | None, d["from"]),
        to_state=cast(State, d["to"]),
        actor=_actor_of(d["actor"]),
        at=from_micros(d["at_us"]),
        reason=d["reason"],
        content_hash=d["content_hash"],
        policy=d["policy"],
        decision=cast(Outcome | None, d["decision"]),
    )


def proposal_state(p: Proposal) -> dict[str, Any]:
    """Everything of ``p``, as JSON."""
    return {
        "proposal_id": p.proposal_id,
        "tenant_id": p.tenant_id,
        "proposer": _actor(p.proposer),
        "draft": p.draft.to_dict(),
        "created_at_us": to_micros(p.created_at),
        "state": p.state,
        "content": None if p.content is None else dict(p.content),
        "content_hash": p.content_hash,
        "outcome": p.outcome,
        "approval_expires_at_us": _opt_us(p.approval_expires_at),
        "rollback_window_s": p.rollback_window_s,
        "approval": _approval(p.approval),
        "action": None if p.action is None else action_state(p.action),
        "succeeded_at_us": _opt_us(p.succeeded_at),
        "transitions": [_transition(t) for t in p.transitions],
    }


def proposal_of(d: dict[str, Any]) -> Proposal:
    """The proposal :func:`proposal_state` stored."""
    draft = d["draft"]
    return Proposal(
        proposal_id=d["proposal_id"],
        tenant_id=d["tenant_id"],
        proposer=_actor_of(d["proposer"]),
        draft=ProposalDraft(
            twin_id=draft["twin_id"],
            asset_id=draft["asset_id"],
            setpoint=draft["setpoint"],
            value=float(draft["value"]),
            rationale=draft["rationale"],
            action_type=draft["action_type"],
            anomaly_id=draft["anomaly_id"],
            sim_id=draft["sim_id"],
        ),
        created_at=from_micros(d["created_at_us"]),
        state=cast(State, d["state"]),
        content=d["content"],
        content_hash=d["content_hash"],
        outcome=cast(Outcome | None, d["outcome"]),
        approval_expires_at=_opt_dt(d["approval_expires_at_us"]),
        rollback_window_s=d["rollback_window_s"],
        approval=_approval_of(d["approval"]),
        action=None if d["action"] is None else action_of(d["action"]),
        succeeded_at=_opt_dt(d["succeeded_at_us"]),
        transitions=tuple(
            _transition_of(d["proposal_id"], d["tenant_id"], t) for t in d["transitions"]
        ),
    )
