"""HTTP for principals: `/whoami` and API-key management (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import AwareDatetime, BaseModel, Field

from opstwin.policy.deps import CurrentPrincipal, KeyAdmin
from opstwin.policy.principals import ApiKeyRecord
from opstwin.policy.rbac import Role, role_table
from opstwin.web import ServicesDep, StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute)


class WhoAmI(BaseModel):
    key_id: str
    name: str
    tenant_id: str
    role: Role
    permissions: list[str]
    expires_at: datetime | None
    roles: dict[str, dict[str, list[str]]] = Field(
        description="The whole role table, for reference."
    )


@router.get(
    "/whoami", summary="The calling principal and its effective permissions", tags=["principals"]
)
async def whoami(principal: CurrentPrincipal) -> WhoAmI:
    return WhoAmI(
        key_id=principal.key_id,
        name=principal.name,
        tenant_id=principal.tenant_id,
        role=principal.role,
        permissions=sorted(p.value for p in principal.permissions),
        expires_at=principal.expires_at,
        roles=role_table(),
    )


class KeyOut(BaseModel):
    key_id: str
    name: str
    tenant_id: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> KeyOut:
        return cls(
            key_id=record.key_id,
            name=record.name,
            tenant_id=record.tenant_id,
            role=record.role,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
        )


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role
    expires_at: AwareDatetime | None = None


class KeyCreated(KeyOut):
    token: str = Field(description="The API key. Shown this once; only its hash is stored.")


@router.post(
    "/keys",
    summary="Create an API key in the caller's tenant",
    tags=["principals"],
    status_code=201,
)
async def create_key(body: KeyCreate, services: ServicesDep, principal: KeyAdmin) -> KeyCreated:
    async with services.db.write() as tx:
        issued = await services.keys.create(
            tx.conn,
            name=body.name,
            role=body.role,
            tenant_id=principal.tenant_id,
            expires_at=body.expires_at,
        )
    return KeyCreated(**KeyOut.of(issued.record).model_dump(), token=issued.token)


@router.get("/keys", summary="List the API keys of the caller's tenant", tags=["principals"])
async def list_keys(services: ServicesDep, principal: KeyAdmin) -> list[KeyOut]:
    async with services.db.read() as conn:
        records = await services.keys.list(conn, tenant_id=principal.tenant_id)
    return [KeyOut.of(r) for r in records]


@router.delete("/keys/{key_id}", summary="Revoke an API key", tags=["principals"], status_code=204)
async def revoke_key(
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")],
    services: ServicesDep,
    principal: KeyAdmin,
) -> Response:
    async with services.db.write() as tx:
        await services.keys.revoke(tx.conn, key_id, tenant_id=principal.tenant_id)
    return Response(status_code=204)
