"""ApprovalWorkflow: the table, content hash binding, separation of duties, expiry, and the
proposal.v1 / action.v1 documents it produces."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from opstwin.actions.workflow import (
    RULES,
    STATES,
    TRANSITIONS,
    Actor,
    ApprovalWorkflow,
    Proposal,
    ProposalDraft,
    content_hash,
)
from opstwin.kit.clock import ManualClock
from opstwin.kit.errors import Conflict, PermissionDenied, ValidationFailed
from opstwin.kit.ids import SequentialIds
from opstwin.policy.confidence import ComponentScore, Confidence
from opstwin.policy.decision import DecisionMaker, ProposedChange
from opstwin.policy.policy import Outcome, Policy
from opstwin.twins.model import SetpointSpec

SCHEMAS = Path(__file__).resolve().parents[2] / "src" / "opstwin" / "aiw" / "schemas"
PROPOSAL_SCHEMA = Draft202012Validator(json.loads((SCHEMAS / "proposal.v1.json").read_text()))
ACTION_SCHEMA = Draft202012Validator(json.loads((SCHEMAS / "action.v1.json").read_text()))
SPEC = SetpointSpec.model_validate(
    {
        "unit": "degC",
        "bounds": {"low": 40.0, "high": 80.0},
        "max_step": 2.0,
        "actuator": "plant",
        "default": 60.0,
    }
)
DRAFT = ProposalDraft(
    "fab", "etch_tool_7", "esc_temp_sp", 61.0, "drift on esc temp", anomaly_id="ano_1"
)
AGENT = Actor("key_agent", "default", "agent")
AGENT_TWIN = Actor("key_agent_2", "default", "agent", on_behalf_of="key_agent")
SUPERVISOR = Actor("key_sup", "default", "supervisor")
EXECUTOR = Actor("key_exec", "default", "executor")
TOTALS: dict[Outcome, float] = {
    "auto_execute": 0.95,
    "require_approval": 0.8,
    "analyze": 0.6,
    "reject": 0.2,
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def workflow(clock: ManualClock) -> ApprovalWorkflow:
    return ApprovalWorkflow(clock, SequentialIds())


def confidence_of(total: float) -> Confidence:
    """A confidence whose four components all equal ``total`` (so the weighted mean is it)."""
    weights = Policy().weights.normalised()
    return Confidence(
        total=total,
        components={
            name: ComponentScore(total, weight, False, {"method": "test"})
            for name, weight in weights.items()
        },
    )


def scored(workflow: ApprovalWorkflow, band: Outcome, proposer: Actor = AGENT) -> Proposal:
    proposal = workflow.propose("prp_1", proposer, DRAFT).proposal
    change = ProposedChange(
        "prp_1", "setpoint_change", "fab", "etch_tool_7", None, "esc_temp_sp", SPEC, 61.0, 60.0
    )
    confidence = confidence_of(TOTALS[band])
    decision = DecisionMaker().decide(change, confidence, Policy())
    proposal = workflow.score(
        proposal, confidence, decision, Policy(), {"sim_id": "sim_1"}
    ).proposal
    return workflow.decide(proposal).proposal


def test_every_rule_names_known_states_and_the_table_is_unambiguous() -> None:
    assert len(RULES) == len(TRANSITIONS)
    for rule in TRANSITIONS:
        assert rule.source in STATES
        assert rule.target in STATES


@pytest.mark.parametrize(
    ("band", "state"),
    [
        ("auto_execute", "approved"),
        ("require_approval", "awaiting_approval"),
        ("analyze", "needs_analysis"),
        ("reject", "rejected"),
    ],
)
def test_decision_routes_the_scored_proposal(
    workflow: ApprovalWorkflow, band: Outcome, state: str
) -> None:
    proposal = scored(workflow, band)
    assert proposal.state == state
    assert [t.to_state for t in proposal.transitions] == ["proposed", "scored", state]
    assert proposal.content_hash == content_hash(proposal.content or {})


def test_a_delegated_human_approval_is_executed_by_the_platform(
    workflow: ApprovalWorkflow,
) -> None:
    proposal = scored(workflow, "require_approval")
    proposal = workflow.approve(proposal, SUPERVISOR, proposal.content_hash or "").proposal
    assert proposal.approval is not None
    assert proposal.approval.executed_by == "platform"
    started = workflow.apply(proposal, "start_execution", Actor.system("default")).proposal
    assert started.state == "executing"


def test_full_happy_path_with_human_approval(
    workflow: ApprovalWorkflow, clock: ManualClock
) -> None:
    proposal = scored(workflow, "require_approval")
    proposal = workflow.approve(
        proposal, SUPERVISOR, proposal.content_hash or "", delegate=False
    ).proposal
    assert proposal.approval is not None
    assert proposal.approval.kind == "human"
    assert proposal.approval.executed_by == "executor"
    with pytest.raises(PermissionDenied):  # not delegated: only an executor may start it
        workflow.apply(proposal, "start_execution", Actor.system("default"))
    proposal = workflow.apply(proposal, "start_execution", EXECUTOR).proposal
    proposal = workflow.apply(proposal, "begin_verification", Actor.system("default")).proposal
    proposal = workflow.apply(proposal, "verify_success", Actor.system("default")).proposal
    assert proposal.state == "succeeded"
    assert proposal.action is not None
    assert proposal.action.state == "succeeded"
    clock.advance(60)
    rolled = workflow.apply(proposal, "rollback", EXECUTOR, reason="yield dropped")
    assert rolled.proposal.state == "rolled_back"
    assert [t.seq for t in rolled.proposal.transitions] == list(range(1, 9))
    for document in (proposal.to_dict(), rolled.proposal.to_dict()):
        assert list(PROPOSAL_SCHEMA.iter_errors(document)) == []
    for action in (proposal.action, rolled.proposal.action):
        assert action is not None
        assert list(ACTION_SCHEMA.iter_errors(action.to_dict())) == []


def test_auto_approved_runs_under_the_platform(workflow: ApprovalWorkflow) -> None:
    proposal = scored(workflow, "auto_execute")
    assert proposal.approval is not None
    assert proposal.approval.kind == "auto"
    proposal = workflow.apply(proposal, "start_execution", Actor.system("default")).proposal
    assert proposal.action is not None
    document: dict[str, Any] = proposal.action.to_dict()
    assert document["approval"]["content_hash"] == proposal.content_hash
    assert document["steps"] == [61.0]
    assert document["action_id"] == "act_000001"
    assert list(ACTION_SCHEMA.iter_errors(document)) == []


def test_invalid_transition_is_a_conflict_naming_the_state(workflow: ApprovalWorkflow) -> None:
    proposal = scored(workflow, "require_approval")
    with pytest.raises(Conflict) as caught:
        workflow.apply(proposal, "start_execution", EXECUTOR)
    assert caught.value.extensions["state"] == "awaiting_approval"
    assert "awaiting_approval" in caught.value.detail
    assert caught.value.problem()["state"] == "awaiting_approval"


@pytest.mark.parametrize("approver", [AGENT, AGENT_TWIN])
def test_proposer_and_its_keys_cannot_approve(workflow: ApprovalWorkflow, approver: Actor) -> None:
    supervisor_like = Actor(approver.principal_id, "default", "supervisor", approver.on_behalf_of)
    proposal = scored(workflow, "require_approval")
    with pytest.raises(PermissionDenied, match="separation of duties"):
        workflow.approve(proposal, supervisor_like, proposal.content_hash or "")


def test_a_proposer_acting_for_a_supervisor_cannot_be_approved_by_it(
    workflow: ApprovalWorkflow,
) -> None:
    proposal = scored(
        workflow,
        "require_approval",
        proposer=Actor("key_bot", "default", "agent", on_behalf_of="key_sup"),
    )
    with pytest.raises(PermissionDenied):
        workflow.approve(proposal, SUPERVISOR, proposal.content_hash or "")


def test_roles_and_tenants_are_enforced(workflow: ApprovalWorkflow) -> None:
    proposal = scored(workflow, "require_approval")
    with pytest.raises(PermissionDenied):
        workflow.approve(
            proposal, Actor("key_x", "default", "executor"), proposal.content_hash or ""
        )
    with pytest.raises(PermissionDenied):
        workflow.approve(
            proposal, Actor("key_y", "other", "supervisor"), proposal.content_hash or ""
        )


def test_approval_binds_to_the_content_hash(workflow: ApprovalWorkflow) -> None:
    proposal = scored(workflow, "require_approval")
    with pytest.raises(Conflict, match="content hash"):
        workflow.approve(proposal, SUPERVISOR, "sha256:" + "0" * 64)


def test_approvals_expire_by_default(workflow: ApprovalWorkflow, clock: ManualClock) -> None:
    proposal = scored(workflow, "require_approval")
    with pytest.raises(Conflict):  # not yet expired
        workflow.expire(proposal)
    clock.advance(timedelta(seconds=Policy().approval_expiry_s))
    with pytest.raises(Conflict, match="default deny"):
        workflow.approve(proposal, SUPERVISOR, proposal.content_hash or "")
    assert workflow.expire(proposal).proposal.state == "expired"


def test_an_expired_approval_never_executes(workflow: ApprovalWorkflow, clock: ManualClock) -> None:
    proposal = scored(workflow, "require_approval")
    proposal = workflow.approve(proposal, SUPERVISOR, proposal.content_hash or "").proposal
    clock.advance(timedelta(hours=2))
    with pytest.raises(Conflict):
        workflow.apply(proposal, "start_execution", EXECUTOR)
    assert workflow.expire(proposal).proposal.state == "expired"


def test_reject_needs_a_reason_and_vetoes_an_approval(workflow: ApprovalWorkflow) -> None:
    proposal = scored(workflow, "auto_execute")
    with pytest.raises(ValidationFailed):
        workflow.reject(proposal, SUPERVISOR, " ")
    vetoed = workflow.reject(proposal, SUPERVISOR, "not during the lot change")
    assert vetoed.proposal.state == "rejected"
    assert vetoed.record.reason == "not during the lot change"


def test_manual_rollback_only_within_the_window(
    workflow: ApprovalWorkflow, clock: ManualClock
) -> None:
    proposal = scored(workflow, "auto_execute")
    system = Actor.system("default")
    for event in ("start_execution", "begin_verification", "verify_success"):
        proposal = workflow.apply(proposal, event, system).proposal  # type: ignore[arg-type]
    clock.advance(Policy().rollback_window_s + 1)
    with pytest.raises(Conflict, match="rollback window"):
        workflow.apply(proposal, "rollback", SUPERVISOR, reason="late")
    with pytest.raises(PermissionDenied):
        workflow.apply(proposal, "rollback", AGENT, reason="agents cannot")


def test_rescoring_makes_a_new_hash(workflow: ApprovalWorkflow, clock: ManualClock) -> None:
    proposal = scored(workflow, "analyze")
    first = proposal.content_hash
    clock.advance(30)
    change = ProposedChange(
        "prp_1", "setpoint_change", "fab", "etch_tool_7", None, "esc_temp_sp", SPEC, 61.0, 60.0
    )
    confidence = confidence_of(0.8)
    decision = DecisionMaker().decide(change, confidence, Policy())
    rescored = workflow.score(
        proposal, confidence, decision, Policy(), {"sim_id": "sim_2"}
    ).proposal
    assert rescored.state == "scored"
    assert rescored.content_hash != first
    assert workflow.decide(rescored).proposal.state == "awaiting_approval"


def test_a_transition_becomes_one_audit_entry(workflow: ApprovalWorkflow) -> None:
    proposal = scored(workflow, "require_approval")
    record = workflow.approve(proposal, SUPERVISOR, proposal.content_hash or "").record
    entry = record.audit_entry("aud_1")
    assert entry.content() == {
        "record_id": "aud_1",
        "tenant_id": "default",
        "at": "2026-01-01T00:00:00Z",
        "actor": {"principal_id": "key_sup", "role": "supervisor", "on_behalf_of": None},
        "action": "proposal.approve",
        "resource": "proposal/prp_1",
        "inputs": {"content_hash": proposal.content_hash},
        "policy": {"policy_id": "default", "version": 1},
        "decision": "require_approval",
        "outcome": "approved",
        "reason": None,
    }
