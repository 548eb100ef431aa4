"""Proposals and actions: the approval workflow (later: actuators, verification, rollback)."""
