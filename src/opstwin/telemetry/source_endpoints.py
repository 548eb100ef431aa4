"""HTTP for what the telemetry pipeline produced besides data: anomalies and dead letters."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from opstwin.kit.errors import BadRequest
from opstwin.policy.deps import Viewer
from opstwin.telemetry.dead_letters import list_dead_letters
from opstwin.telemetry.repository import list_anomalies
from opstwin.web import ServicesDep, StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute)

PAGE_DEFAULT = 100
PAGE_MAX = 1000


class DeadLetterOut(BaseModel):
    id: int = Field(description="Increasing; newest first in listings.")
    source: str = Field(description="Where it came from (`mqtt`).")
    topic: str
    payload_excerpt: str = Field(description="The first 1024 bytes of the payload, as text.")
    payload_bytes: int
    reason: str
    received_at: str


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    next_before: int | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )


@router.get(
    "/telemetry/dead-letters",
    summary="Telemetry input that could not be stored, with the reason (newest first)",
    tags=["telemetry"],
)
async def get_dead_letters(
    services: ServicesDep,
    principal: Viewer,
    before: Annotated[
        int | None, Query(ge=1, description="Only dead letters older than this id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> DeadLetterPage:
    async with services.db.read() as conn:
        items, next_before = await list_dead_letters(
            conn, principal.tenant_id, before=before, limit=limit
        )
    return DeadLetterPage(
        items=[DeadLetterOut.model_validate(i) for i in items], next_before=next_before
    )


class AnomalyOut(BaseModel):
    anomaly_id: str
    status: Literal["open", "resolved"] = Field(description="Current status of the anomaly.")
    record: dict[str, Any] = Field(description="The anomaly.v1 record that opened it.")
    resolution: dict[str, Any] | None = Field(
        description="The anomaly.v1 record that resolved it; null while open."
    )
    sequence: str = Field(description="Change-log sequence of its `opstwin.anomaly.detected`.")


class AnomalyPage(BaseModel):
    items: list[AnomalyOut]
    next_before: str | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )


@router.get(
    "/anomalies",
    summary="Anomalies the detector opened, newest first (filter by twin, asset, status)",
    tags=["telemetry"],
)
async def get_anomalies(
    services: ServicesDep,
    principal: Viewer,
    twin_id: str | None = None,
    asset_id: str | None = None,
    status: Literal["open", "resolved"] | None = None,
    before: Annotated[
        str | None, Query(description="`next_before` of the previous page.", pattern=r"^\d{1,20}$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> AnomalyPage:
    if asset_id is not None and twin_id is None:
        raise BadRequest("asset_id needs twin_id (asset ids are unique within a twin)")
    async with services.db.read() as conn:
        records, more = await list_anomalies(
            conn,
            principal.tenant_id,
            twin_id=twin_id,
            asset_id=asset_id,
            status=status,
            before_seq=None if before is None else int(before),
            limit=limit,
        )
    items = [
        AnomalyOut(
            anomaly_id=r.anomaly_id,
            status=r.status,
            record=r.record,
            resolution=r.resolution,
            sequence=f"{r.seq:020d}",
        )
        for r in records
    ]
    return AnomalyPage(items=items, next_before=items[-1].sequence if more else None)
