"""Hypothesis state machine over the ApprovalWorkflow: random events by random actors at random
times, checking the safety properties after every step."""

from __future__ import annotations

from datetime import timedelta
from typing import get_args

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from opstwin.actions.workflow import (
    FINAL_STATES,
    STATES,
    Actor,
    ApprovalWorkflow,
    Event,
    Proposal,
    ProposalDraft,
    Transition,
    possible_events,
)
from opstwin.audit.chain import AuditChain, verify_chain
from opstwin.kit.clock import ManualClock
from opstwin.kit.errors import OpsTwinError
from opstwin.kit.ids import SequentialIds
from opstwin.policy.confidence import ComponentScore, Confidence
from opstwin.policy.decision import AssetStatus, DecisionMaker, ProposedChange
from opstwin.policy.policy import Policy
from opstwin.twins.model import SetpointSpec

POLICY = Policy.model_validate({"approval_expiry_s": 600, "rollback_window_s": 300})
SPEC = SetpointSpec.model_validate(
    {
        "unit": "degC",
        "bounds": {"low": 40.0, "high": 80.0},
        "max_step": 2.0,
        "actuator": "plant",
        "default": 60.0,
    }
)
PROPOSER = Actor("key_agent", "default", "agent")
ACTORS = [
    PROPOSER,
    Actor("key_agent_2", "default", "agent", on_behalf_of="key_agent"),
    Actor(
        "key_sup_bot", "default", "supervisor", on_behalf_of="key_agent"
    ),  # acts for the proposer
    Actor("key_agent", "default", "supervisor"),  # the proposer's id with a stronger role
    Actor("key_sup", "default", "supervisor"),
    Actor("key_admin", "default", "admin"),
    Actor("key_exec", "default", "executor"),
    Actor("key_viewer", "default", "viewer"),
    Actor("key_other", "other", "supervisor"),
    Actor.system("default"),
]
# Every event the machine may be offered, except those that create or score a proposal (the
# test's own setup does those): derived from the type, so a new event is exercised at once.
EVENTS: list[Event] = [e for e in get_args(Event) if e not in ("propose", "score")]


def _confidence(total: float) -> Confidence:
    return Confidence(
        total=total,
        components={
            name: ComponentScore(total, weight, False, {})
            for name, weight in POLICY.weights.normalised().items()
        },
    )


class WorkflowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.workflow = ApprovalWorkflow(self.clock, SequentialIds())
        created = self.workflow.propose(
            "prp_1", PROPOSER, ProposalDraft("fab", "tool", "sp", 61.0, "why")
        )
        self.proposal: Proposal = created.proposal
        self.records = [created.record]
        self.chain = AuditChain()
        self.sealed = [self.chain.append(created.record.audit_entry("aud_1"))]

    def _accept(self, before: Proposal, result: Transition) -> None:
        after = result.proposal
        # Exactly one new record per transition, and it is the one returned.
        assert after.transitions[:-1] == before.transitions
        assert after.transitions[-1] == result.record
        assert result.record.from_state == before.state
        assert result.record.to_state == after.state
        assert before.state not in FINAL_STATES
        if after.state == "executing":
            self._check_execution_is_authorised(before, after)
        if result.record.event == "approve":
            approver = result.record.actor
            assert approver.party != PROPOSER.party
            assert approver.principal_id != PROPOSER.principal_id
        self.proposal = after
        self.records.append(result.record)
        self.sealed.append(self.chain.append(result.record.audit_entry(f"aud_{len(self.records)}")))

    def _check_execution_is_authorised(self, before: Proposal, after: Proposal) -> None:
        approval = before.approval
        assert approval is not None
        assert approval.content_hash == before.content_hash == after.content_hash
        if approval.kind == "auto":
            assert before.outcome == "auto_execute"
        else:
            assert approval.role in ("supervisor", "admin")
            assert approval.by != PROPOSER.principal_id
        if after.transitions[-1].actor.role == "system":  # the platform runs delegated ones only
            assert approval.executed_by == "platform"
        assert before.approval_expires_at is not None
        assert self.clock.now() < before.approval_expires_at  # expired approvals never execute

    @rule(total=st.sampled_from([0.2, 0.55, 0.75, 0.95, 0.99]), locked=st.booleans())
    def score_and_decide(self, total: float, locked: bool) -> None:
        before = self.proposal
        change = ProposedChange(
            "prp_1",
            "setpoint_change",
            "fab",
            "tool",
            None,
            "sp",
            SPEC,
            61.0,
            60.0,
            AssetStatus(locked=locked),
        )
        confidence = _confidence(total)
        decision = DecisionMaker().decide(change, confidence, POLICY)
        try:
            result = self.workflow.score(before, confidence, decision, POLICY)
        except OpsTwinError:
            assert before.state not in ("proposed", "needs_analysis")
            return
        self._accept(before, result)
        self._accept(result.proposal, self.workflow.decide(result.proposal))

    @rule(
        data=st.data(),
        actor=st.sampled_from(ACTORS),
        right_hash=st.booleans(),
        reason=st.sampled_from([None, "", "because"]),
    )
    def fire_a_possible_event(
        self, data: st.DataObject, actor: Actor, right_hash: bool, reason: str | None
    ) -> None:
        possible = possible_events(self.proposal.state)
        if possible:
            self.fire(data.draw(st.sampled_from(possible)), actor, right_hash, reason)

    @rule(data=st.data(), reason=st.sampled_from([None, "verification failed"]))
    def the_platform_moves_on(self, data: st.DataObject, reason: str | None) -> None:
        possible = possible_events(self.proposal.state)
        if possible:
            self.fire(data.draw(st.sampled_from(possible)), ACTORS[-1], True, reason)

    @rule(
        event=st.sampled_from(EVENTS),
        actor=st.sampled_from(ACTORS),
        right_hash=st.booleans(),
        reason=st.sampled_from([None, "", "because"]),
    )
    def fire(self, event: Event, actor: Actor, right_hash: bool, reason: str | None) -> None:
        before = self.proposal
        claimed = before.content_hash if right_hash else "sha256:" + "f" * 64
        try:
            result = self.workflow.apply(before, event, actor, reason=reason, content_hash=claimed)
        except OpsTwinError:
            assert self.proposal is before
            return
        if event == "approve":
            assert right_hash
        self._accept(before, result)

    @precondition(lambda self: self.proposal.state == "awaiting_approval")
    @rule()
    def a_good_approval(self) -> None:
        before = self.proposal
        try:
            result = self.workflow.approve(before, ACTORS[4], before.content_hash or "")
        except OpsTwinError:
            assert self.proposal.approval_expires_at is not None
            assert self.clock.now() >= self.proposal.approval_expires_at
            return
        self._accept(before, result)

    @rule(seconds=st.sampled_from([1, 59, 299, 301, 599, 601, 3600]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(timedelta(seconds=seconds))

    @invariant()
    def records_match_transitions_and_the_audit_chain(self) -> None:
        assert list(self.proposal.transitions) == self.records
        assert [r.seq for r in self.records] == list(range(1, len(self.records) + 1))
        assert self.proposal.state in STATES
        # Every transition has exactly one audit record, and the chain verifies.
        verification = verify_chain(self.sealed, anchor=self.chain.head)
        assert verification.ok
        assert verification.checked == len(self.records)


TestWorkflowMachine = WorkflowMachine.TestCase
TestWorkflowMachine.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
