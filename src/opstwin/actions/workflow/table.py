"""The transition table as data: (state, event) → next state, allowed roles, named conditions."""

from __future__ import annotations

from dataclasses import dataclass

from opstwin.actions.workflow.states import SYSTEM, Event, State
from opstwin.policy.policy import Outcome
from opstwin.policy.rbac import Role

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
            "platform_executes_only_delegated_approvals",
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


def possible_events(state: State) -> list[Event]:
    """The events the table allows from ``state`` (for error messages and the manifest)."""
    return sorted(e for (s, e) in RULES if s == state)
