"""HTTP for simulation: ``POST /sim/run``, ``POST /sim/recommend``, ``GET /sim/runs[/{sim_id}]``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from opstwin.kit import jsonutil
from opstwin.kit.errors import PayloadTooLarge
from opstwin.kit.idempotency import HEADER as IDEMPOTENCY_HEADER
from opstwin.kit.idempotency import request_hash
from opstwin.policy.deps import RequirePermission, Viewer
from opstwin.policy.principals import Principal
from opstwin.policy.rbac import Permission
from opstwin.services import Services
from opstwin.simulation.schemas import SimRecommendIn, SimRunIn, SimRunOut, SimRunPage
from opstwin.simulation.service import PreparedRun, Reply
from opstwin.web import ServicesDep, StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute)

Simulator = Annotated[Principal, Depends(RequirePermission(Permission.simulate))]


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the simulation request is larger than the limit of {limit} bytes",
        extensions={"limit_bytes": limit},
    )


async def _limit_body(request: Request, services: ServicesDep) -> None:
    limit = services.settings.simulation.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


@router.post(
    "/sim/run",
    summary="Run a simulation (inline model or a twin's process model)",
    tags=["simulation"],
    status_code=201,
    response_model=None,
    responses={
        201: {"model": SimRunOut, "description": "Finished in the request (sim.v1)."},
        202: {"model": SimRunOut, "description": "Queued: follow `Location` (sim.v1, queued)."},
    },
    dependencies=[Depends(_limit_body)],
)
async def run_simulation(
    request: Request,
    body: SimRunIn,
    services: ServicesDep,
    principal: Simulator,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> Response:
    raw = await _checked_body(request, services, idempotency_key)
    simulation = services.simulation
    if body.model_ref is not None:
        async with services.db.read() as conn:
            prepared = await simulation.prepare(conn, principal.tenant_id, body.model_dump())
    else:
        prepared = await simulation.prepare(None, principal.tenant_id, body.model_dump())
    return await _submit(services, principal, prepared, idempotency_key, "/sim/run", raw)


async def _checked_body(request: Request, services: Services, idempotency_key: str | None) -> bytes:
    """The raw body (for the idempotency hash), within the size limit, with a valid key."""
    raw = await request.body()
    limit = services.settings.simulation.max_request_bytes
    if len(raw) > limit:
        raise _too_large(limit)
    if idempotency_key is not None:
        services.idempotency.check_key(idempotency_key)
    return raw


async def _submit(
    services: Services,
    principal: Principal,
    prepared: PreparedRun,
    idempotency_key: str | None,
    path: str,
    raw: bytes,
) -> Response:
    reply = await services.simulation.submit(
        prepared,
        tenant_id=principal.tenant_id,
        principal_id=principal.key_id,
        idempotency_key=idempotency_key,
        req_hash=request_hash("POST", path, raw),
    )
    return _response(reply)


def _response(reply: Reply) -> Response:
    return Response(
        reply.body,
        status_code=reply.status_code,
        media_type=reply.media_type,
        headers=dict(reply.headers),
    )


@router.post(
    "/sim/recommend",
    summary="Rank candidate setpoint values of a twin's process model by simulation",
    tags=["simulation"],
    status_code=201,
    response_model=None,
    responses={
        201: {
            "model": SimRunOut,
            "description": "Ranked in the request (sim.v1 with `recommendation`).",
        },
        202: {"model": SimRunOut, "description": "Queued: follow `Location` (sim.v1, queued)."},
    },
    dependencies=[Depends(_limit_body)],
)
async def recommend_setpoint(
    request: Request,
    body: SimRecommendIn,
    services: ServicesDep,
    principal: Simulator,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> Response:
    raw = await _checked_body(request, services, idempotency_key)
    async with services.db.read() as conn:
        prepared = await services.simulation.prepare_recommendation(
            conn, principal.tenant_id, body.model_dump(by_alias=True)
        )
    return await _submit(services, principal, prepared, idempotency_key, "/sim/recommend", raw)


@router.get(
    "/sim/runs/{sim_id}",
    summary="One simulation run: status, progress, result (sim.v1)",
    tags=["simulation"],
    response_model=None,
    responses={200: {"model": SimRunOut}},
)
async def get_simulation_run(sim_id: str, services: ServicesDep, principal: Viewer) -> Response:
    async with services.db.read() as conn:
        record = await services.simulation.get(conn, principal.tenant_id, sim_id)
    in_flight = record["status"] in ("queued", "running")
    return Response(
        jsonutil.dumps(record),
        media_type="application/json",
        headers={"Cache-Control": "no-store" if in_flight else "private, max-age=60"},
    )


@router.get(
    "/sim/runs",
    summary="Simulation runs of the caller's tenant, newest first",
    tags=["simulation"],
    response_model=None,
    responses={200: {"model": SimRunPage}},
)
async def list_simulation_runs(
    services: ServicesDep,
    principal: Viewer,
    before: Annotated[
        str | None, Query(description="`next_before` of the previous page (keyset paging).")
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, description="Page size (default and maximum in the settings).")
    ] = None,
) -> Response:
    async with services.db.read() as conn:
        runs, next_before, has_more = await services.simulation.page(
            conn, principal.tenant_id, before=before, limit=limit
        )
    page: dict[str, Any] = {"runs": runs, "next_before": next_before, "has_more": has_more}
    return Response(
        jsonutil.dumps(page), media_type="application/json", headers={"Cache-Control": "no-store"}
    )
