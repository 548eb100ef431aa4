"""HTTP for operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from opstwin.kit.errors import ServiceUnavailable
from opstwin.policy.deps import Viewer
from opstwin.web import ServicesDep, StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    migration: str
    head: int


@router.get("/health", summary="Liveness: the process serves requests", tags=["ops"])
async def health() -> Health:
    return Health(status="ok")


@router.get("/ready", summary="Readiness: database reachable and migrated", tags=["ops"])
async def ready(services: ServicesDep) -> Readiness:
    try:
        current, head = await services.db.migration_status()
    except (SQLAlchemyError, OSError) as exc:
        raise ServiceUnavailable(f"database unreachable: {exc.__class__.__name__}") from exc
    if current != head:
        raise ServiceUnavailable(
            f"database schema at revision {current or 'none'}, code expects {head}: run `opstwin migrate`"
        )
    return Readiness(
        status="ready",
        database=services.db.backend,
        migration=str(current),
        head=services.feed.position,
    )


@router.get("/metrics", summary="Prometheus metrics", tags=["ops"], response_class=Response)
async def metrics(services: ServicesDep, _principal: Viewer) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
