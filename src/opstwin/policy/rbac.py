"""Roles and permissions, as data (the manifest publishes this table as it is).

Hierarchy (DESIGN §7)::

    viewer  <  agent  <  executor  ┐
                      <  supervisor ┴ <  admin

``executor`` and ``supervisor`` both extend ``agent``; neither includes the other.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    viewer = "viewer"
    agent = "agent"
    executor = "executor"
    supervisor = "supervisor"
    admin = "admin"


class Permission(StrEnum):
    read = "read"  # read resources, /diff, /whoami
    subscribe = "subscribe"  # /subscribe
    events_append = "events:append"  # POST /events
    ingest = "telemetry:ingest"
    simulate = "sim:run"
    propose = "proposals:create"
    vote = "proposals:vote"
    execute = "actions:execute"
    approve = "proposals:approve"
    rollback = "actions:rollback"
    keys_manage = "keys:manage"
    policies_write = "policies:write"
    twins_write = "twins:write"
    audit_read = "audit:read"  # GET /audit, /audit/verify


#: Roles each role extends.
ROLE_PARENTS: dict[Role, tuple[Role, ...]] = {
    Role.viewer: (),
    Role.agent: (Role.viewer,),
    Role.executor: (Role.agent,),
    Role.supervisor: (Role.agent,),
    Role.admin: (Role.executor, Role.supervisor),
}

#: Permissions each role adds to those it inherits.
ROLE_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.viewer: frozenset({Permission.read, Permission.subscribe}),
    Role.agent: frozenset(
        {
            Permission.events_append,
            Permission.ingest,
            Permission.simulate,
            Permission.propose,
            Permission.vote,
        }
    ),
    Role.executor: frozenset({Permission.execute, Permission.rollback}),
    Role.supervisor: frozenset({Permission.approve, Permission.rollback, Permission.audit_read}),
    Role.admin: frozenset(
        {Permission.keys_manage, Permission.policies_write, Permission.twins_write}
    ),
}


def permissions_of(role: Role) -> frozenset[Permission]:
    """Every permission ``role`` has, inherited ones included."""
    granted = set(ROLE_GRANTS[role])
    for parent in ROLE_PARENTS[role]:
        granted |= permissions_of(parent)
    return frozenset(granted)


def role_table() -> dict[str, dict[str, list[str]]]:
    """The role table as the manifest and ``/whoami`` publish it."""
    return {
        role.value: {
            "extends": [p.value for p in ROLE_PARENTS[role]],
            "permissions": sorted(p.value for p in permissions_of(role)),
        }
        for role in Role
    }
