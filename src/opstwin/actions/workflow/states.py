"""The states and events of the approval workflow, and the role of the platform itself."""

from __future__ import annotations

from typing import Literal, get_args

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
STATES: tuple[State, ...] = get_args(State)
"""Every state, in the order :data:`State` lists them."""
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
