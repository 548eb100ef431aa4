"""HTTP for twins: load a model (`PUT /twins/{id}`), read snapshots (`GET /twins…`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from opstwin.kit import jsonutil
from opstwin.kit.clock import rfc3339
from opstwin.kit.errors import FieldError, PayloadTooLarge, ValidationFailed
from opstwin.policy.deps import RequirePermission, Viewer
from opstwin.policy.principals import Principal
from opstwin.policy.rbac import Permission
from opstwin.twins import service
from opstwin.twins.loader import _parse_json, _parse_yaml
from opstwin.web import ServicesDep, StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute)

TwinWriter = Annotated[Principal, Depends(RequirePermission(Permission.twins_write))]

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


class TwinStored(BaseModel):
    """The outcome of a `PUT /twins/{id}`."""

    twin_id: str
    version: int = Field(description="Current version; unchanged when the model was identical.")
    changed: bool = Field(description="False when the model equals the current version.")
    updated_at: str


class TwinSummary(BaseModel):
    twin_id: str
    name: str | None
    version: int
    updated_at: str
    assets: int


class TwinList(BaseModel):
    twins: list[TwinSummary]
    cursor: str = Field(
        description="Follow `/diff?since=` from here: the list is consistent with it."
    )


class AssetView(BaseModel):
    asset_id: str
    declared: bool = Field(description="False for assets registered by telemetry.")
    reported: dict[str, dict[str, Any]] = Field(
        description="metric → value, ts, quality, event_id, baseline_mean, baseline_std, z_score"
    )
    desired: dict[str, dict[str, Any]] = Field(description="setpoint → value, current, default, …")


class TwinSnapshot(BaseModel):
    twin_id: str
    name: str | None
    version: int
    updated_at: str
    assets: list[AssetView]
    model: dict[str, Any] = Field(
        description="The twin as loaded (one element of twin.v1 `twins`)."
    )
    cursor: str = Field(description="The change-log position this snapshot is consistent with.")


def _json(body: Any, status: int = 200) -> Response:
    return Response(jsonutil.dumps(body), status_code=status, media_type="application/json")


def _decode_twin_body(request: Request, raw: bytes, twin_id: str) -> dict[str, Any]:
    """The body as a ``twin.v1`` document holding exactly the twin ``twin_id``.

    Accepted: a document (``{"twins": [{…}]}``) or one bare twin object; JSON, or YAML with a
    YAML content type. A bare twin without ``id`` takes the one in the path.
    """
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    text = raw.decode("utf-8", errors="replace")
    obj = _parse_yaml(text, "body") if media in YAML_TYPES else _parse_json(text, "body")
    if not isinstance(obj, dict):
        raise ValidationFailed(
            "the body must be a twin object or a twin.v1 document",
            errors=[FieldError("expected an object", pointer="")],
        )
    if "twins" in obj:
        listed = obj["twins"]
        if not isinstance(listed, list) or len(listed) != 1:
            raise ValidationFailed(
                f"PUT /twins/{twin_id} takes exactly one twin; use `opstwin twins load` for files with several",
                errors=[FieldError("expected a list of one twin", pointer="/twins")],
            )
        body_id, pointer = (
            (listed[0].get("id") if isinstance(listed[0], dict) else None),
            "/twins/0/id",
        )
        document = obj
    else:
        body_id, pointer = obj.get("id"), "/id"
        if body_id is None:
            obj = {**obj, "id": twin_id}
            body_id = twin_id
        document = {"twins": [obj]}
    if body_id != twin_id:
        raise ValidationFailed(
            f"the twin's id {body_id!r} differs from the path's {twin_id!r}",
            errors=[FieldError(f"must be {twin_id!r}", pointer=pointer)],
        )
    return document


@router.put(
    "/twins/{twin_id}",
    summary="Create or replace a twin model (twin.v1; JSON or YAML)",
    tags=["twins"],
    response_model=None,
    responses={200: {"model": TwinStored}, 201: {"model": TwinStored}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}, "application/yaml": {}},
        }
    },
)
async def put_twin(
    twin_id: str, request: Request, services: ServicesDep, principal: TwinWriter
) -> Response:
    limit = services.settings.feed.max_event_bytes
    raw = await request.body()
    if len(raw) > limit:
        raise PayloadTooLarge(
            f"the twin model is larger than the limit of {limit} bytes",
            extensions={"limit_bytes": limit},
        )
    document = _decode_twin_body(request, raw, twin_id)
    async with services.db.write() as tx:
        before = await services.twins.find(tx.conn, principal.tenant_id, twin_id)
        (twin,) = await services.twins.put(tx, principal.tenant_id, document)
    changed = before is None or before.version != twin.version
    body = TwinStored(
        twin_id=twin.id,
        version=twin.version,
        changed=changed,
        updated_at=rfc3339(twin.updated_at),
    )
    return _json(body.model_dump(), 201 if before is None else 200)


@router.get(
    "/twins",
    summary="List twins (with the cursor the list is consistent with)",
    tags=["twins"],
    response_model=None,
    responses={200: {"model": TwinList}},
)
async def list_twins(services: ServicesDep, principal: Viewer) -> Response:
    async with services.db.snapshot() as conn:
        body = await service.list_twins(
            conn, services.twins, services.changelog, principal.tenant_id
        )
    return _json(body)


@router.get(
    "/twins/{twin_id}",
    summary="A twin: model, reported and desired state per asset, consistent cursor",
    tags=["twins"],
    response_model=None,
    responses={200: {"model": TwinSnapshot}},
)
async def get_twin(twin_id: str, services: ServicesDep, principal: Viewer) -> Response:
    async with services.db.snapshot() as conn:
        body = await service.twin_snapshot(
            conn, services.twins, services.changelog, principal.tenant_id, twin_id
        )
    return _json(body)


@router.get(
    "/twins/{twin_id}/assets/{asset_id}",
    summary="One asset of a twin: model, reported and desired state, consistent cursor",
    tags=["twins"],
    response_model=None,
    responses={200: {"model": AssetView}},
)
async def get_asset(
    twin_id: str, asset_id: str, services: ServicesDep, principal: Viewer
) -> Response:
    async with services.db.snapshot() as conn:
        body = await service.asset_snapshot(
            conn, services.twins, services.changelog, principal.tenant_id, twin_id, asset_id
        )
    return _json(body)
