"""FastAPI dependencies for principals: ``CurrentPrincipal`` and ``RequirePermission``.

Routes declare what they need with ``Annotated`` aliases (``Viewer``, ``Agent``, ``Admin``…);
the manifest reads the same declarations back, so the published role table and what the
server enforces cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from opstwin.kit.errors import PermissionDenied, Unauthenticated
from opstwin.policy.principals import Principal
from opstwin.policy.rbac import Permission, Role, permissions_of
from opstwin.web import ServicesDep

_bearer = HTTPBearer(
    auto_error=False, description="An OpsTwin API key: `Authorization: Bearer otk_…`"
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="opstwin"'}


async def current_principal(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthenticated(
            "this endpoint needs an API key: send `Authorization: Bearer otk_…`", headers=_CHALLENGE
        )
    try:
        principal = await services.keys.authenticate(credentials.credentials)
    except Unauthenticated as exc:
        exc.headers.update(_CHALLENGE)
        raise
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


class RequirePermission:
    """Dependency: the caller must hold ``permission`` (403 otherwise)."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, principal: CurrentPrincipal) -> Principal:
        if not principal.can(self.permission):
            holders = sorted(r.value for r in Role if self.permission in permissions_of(r))
            raise PermissionDenied(
                f"role {principal.role.value!r} lacks permission {self.permission.value!r} "
                f"(held by: {', '.join(holders)})"
            )
        return principal


Viewer = Annotated[Principal, Depends(RequirePermission(Permission.read))]
Subscriber = Annotated[Principal, Depends(RequirePermission(Permission.subscribe))]
EventWriter = Annotated[Principal, Depends(RequirePermission(Permission.events_append))]
KeyAdmin = Annotated[Principal, Depends(RequirePermission(Permission.keys_manage))]
AuditReader = Annotated[Principal, Depends(RequirePermission(Permission.audit_read))]
PolicyAdmin = Annotated[Principal, Depends(RequirePermission(Permission.policies_write))]
