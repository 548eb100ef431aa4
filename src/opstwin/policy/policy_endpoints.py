"""HTTP for the action policy (``policy.v1``): read the active one and its versions, replace it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from opstwin.kit import jsonutil
from opstwin.kit.clock import rfc3339
from opstwin.kit.errors import FieldError, PayloadTooLarge, ValidationFailed
from opstwin.policy.deps import PolicyAdmin, Viewer
from opstwin.policy.store import PolicyVersion, StoredPolicy
from opstwin.web import ServicesDep, StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute)

PAGE_DEFAULT = 100
PAGE_MAX = 1000
MAX_VERSION = 2**31 - 1  # the versions column is a 32-bit integer


class PolicyOut(BaseModel):
    """One version of the tenant's policy."""

    policy_id: str
    version: int = Field(description="1 is the built-in defaults; each stored change adds one.")
    builtin: bool = Field(
        description="True for the built-in defaults (the tenant has stored no policy)."
    )
    created_by: str | None = Field(description="Key id of the admin who stored it.")
    created_at: str | None = Field(description="When it was stored (null: built in).")
    policy: dict[str, Any] = Field(
        description="The policy.v1 document (`urn:opstwin:schema:policy.v1`), defaults spelt out."
    )

    @classmethod
    def of(cls, stored: StoredPolicy) -> PolicyOut:
        return cls(
            policy_id=stored.policy.policy_id,
            version=stored.version,
            builtin=stored.builtin,
            created_by=stored.created_by,
            created_at=None if stored.created_at is None else rfc3339(stored.created_at),
            policy=stored.document(),
        )


class PolicyVersionOut(BaseModel):
    version: int
    builtin: bool
    created_by: str | None
    created_at: str | None
    digest: str = Field(description="sha256 of the canonical policy.v1 document.")

    @classmethod
    def of(cls, listed: PolicyVersion) -> PolicyVersionOut:
        return cls(
            version=listed.version,
            builtin=listed.builtin,
            created_by=listed.created_by,
            created_at=None if listed.created_at is None else rfc3339(listed.created_at),
            digest=listed.digest,
        )


class PolicyVersionList(BaseModel):
    active: int = Field(description="The version in force.")
    items: list[PolicyVersionOut] = Field(description="Newest first; version 1 (built in) last.")
    next_before: int | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )


@router.get(
    "/policy", summary="The action policy in force (policy.v1) and its version", tags=["policy"]
)
async def get_policy(services: ServicesDep, principal: Viewer) -> PolicyOut:
    async with services.db.read() as conn:
        stored = await services.policies.current(conn, principal.tenant_id)
    return PolicyOut.of(stored)


@router.get(
    "/policy/versions", summary="Every version of the action policy, newest first", tags=["policy"]
)
async def list_policy_versions(
    services: ServicesDep,
    principal: Viewer,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="Only versions older than this.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> PolicyVersionList:
    async with services.db.snapshot() as conn:
        current = await services.policies.current(conn, principal.tenant_id)
        listed, more = await services.policies.versions(
            conn, principal.tenant_id, before=before, limit=limit
        )
    return PolicyVersionList(
        active=current.version,
        items=[PolicyVersionOut.of(v) for v in listed],
        next_before=listed[-1].version if more else None,
    )


@router.get(
    "/policy/versions/{version}", summary="One version of the action policy", tags=["policy"]
)
async def get_policy_version(
    version: Annotated[int, Path(ge=1, le=MAX_VERSION)], services: ServicesDep, principal: Viewer
) -> PolicyOut:
    async with services.db.read() as conn:
        stored = await services.policies.get(conn, principal.tenant_id, version)
    return PolicyOut.of(stored)


@router.put(
    "/policy",
    summary="Replace the action policy: store a policy.v1 document as the next version",
    tags=["policy"],
    description="Send `version` equal to the current version + 1, or leave it out; another "
    "value is 409 (someone changed the policy since you read it). Every change is kept, appended "
    "to the change log (`opstwin.policy.updated`) and to the audit chain (`policy.update`).",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "description": "A policy.v1 document: GET /schemas/policy.v1.",
                    }
                },
            },
        }
    },
)
async def put_policy(request: Request, services: ServicesDep, principal: PolicyAdmin) -> PolicyOut:
    limit = services.settings.feed.max_event_bytes
    raw = await request.body()
    if len(raw) > limit:
        raise PayloadTooLarge(
            f"the policy is larger than the limit of {limit} bytes",
            extensions={"limit_bytes": limit},
        )
    try:
        document = jsonutil.loads(raw)
    except ValueError as exc:
        raise ValidationFailed(
            f"the body is not JSON: {exc}", errors=[FieldError("invalid JSON", pointer="")]
        ) from None
    async with services.db.write() as tx:
        stored = await services.policies.put(tx, principal.tenant_id, document, principal)
    return PolicyOut.of(stored)
