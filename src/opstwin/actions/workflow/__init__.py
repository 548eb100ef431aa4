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

from opstwin.actions.workflow.conditions import CONDITIONS, Condition, EventContext
from opstwin.actions.workflow.machine import ApprovalWorkflow
from opstwin.actions.workflow.records import (
    ACTION_SCHEMA_ID,
    PROPOSAL_SCHEMA_ID,
    ActionRecord,
    Actor,
    Approval,
    Proposal,
    ProposalDraft,
    Transition,
    TransitionRecord,
    content_hash,
)
from opstwin.actions.workflow.states import (
    FINAL_STATES,
    STATES,
    SYSTEM,
    ActionState,
    Event,
    State,
)
from opstwin.actions.workflow.table import (
    DECISION_EVENTS,
    RULES,
    TRANSITIONS,
    Rule,
    possible_events,
)

__all__ = [
    "ACTION_SCHEMA_ID",
    "CONDITIONS",
    "DECISION_EVENTS",
    "FINAL_STATES",
    "PROPOSAL_SCHEMA_ID",
    "RULES",
    "STATES",
    "SYSTEM",
    "TRANSITIONS",
    "ActionRecord",
    "ActionState",
    "Actor",
    "Approval",
    "ApprovalWorkflow",
    "Condition",
    "Event",
    "EventContext",
    "Proposal",
    "ProposalDraft",
    "Rule",
    "State",
    "Transition",
    "TransitionRecord",
    "content_hash",
    "possible_events",
]
