"""The app factory: ``create_app(settings)`` builds every component and a lifespan that owns them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from datetime import timedelta

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from opstwin import __version__
from opstwin.actions import endpoints as action_endpoints
from opstwin.aiw import endpoints as aiw_endpoints
from opstwin.aiw.manifest import ResourceType
from opstwin.audit import endpoints as audit_endpoints
from opstwin.config import Settings
from opstwin.dashboard.endpoints import mount_dashboard
from opstwin.kit.clock import Clock, SystemClock
from opstwin.kit.errors import OpsTwinError
from opstwin.kit.ids import IdSource, UlidSource
from opstwin.ops import endpoints as ops_endpoints
from opstwin.policy import endpoints as policy_endpoints
from opstwin.policy import policy_endpoints as action_policy_endpoints
from opstwin.services import Services, build_services
from opstwin.simulation import endpoints as simulation_endpoints
from opstwin.telemetry import endpoints as telemetry_endpoints
from opstwin.telemetry import source_endpoints as telemetry_source_endpoints
from opstwin.twins import endpoints as twins_endpoints
from opstwin.web import (
    RequestMetricsMiddleware,
    handle_http_exception,
    handle_opstwin_error,
    handle_unexpected,
    handle_validation_error,
)

log = structlog.get_logger(__name__)

#: Idempotency records are kept this long; a retry later than that is a new request.
IDEMPOTENCY_TTL = timedelta(hours=24)


async def _maintenance(services: Services) -> None:
    """Retention: compact the change log and forget old idempotency keys, periodically."""
    interval = services.settings.feed.compaction_interval_s
    while True:
        try:
            now = services.clock.now()
            await services.changelog.compact(
                now - timedelta(seconds=services.settings.feed.retention_s)
            )
            async with services.db.write() as tx:
                await services.idempotency.expire(tx, now - IDEMPOTENCY_TTL)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("maintenance.failed", error=str(exc))
        await asyncio.sleep(interval)


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    ids: IdSource | None = None,
) -> FastAPI:
    """A fully wired OpsTwin app; nothing connects until its lifespan starts."""
    settings = settings or Settings()
    clock = clock or SystemClock()
    services = build_services(settings, clock, ids or UlidSource(clock))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.database.auto_migrate:
            await services.db.migrate()
        await services.changelog.load()
        await services.feed.start()
        await services.simulation.start()
        if services.detection is not None:
            await services.detection.start()
        if services.mqtt is not None:
            await services.mqtt.start()
        if services.plant is not None:
            await services.plant.start()
        await services.actuators.start()
        if services.executor is not None:
            await services.executor.start()
        if services.automation is not None:
            await services.automation.start()
        maintenance = asyncio.create_task(_maintenance(services), name="opstwin-maintenance")
        # Everything built so far (app, routes, schemas, engines) lives as long as the process:
        # move it out of the collector's reach so full collections stay short (tail latency).
        gc.collect()
        gc.freeze()
        log.info("opstwin.started", backend=services.db.backend, epoch=services.changelog.epoch)
        try:
            yield
        finally:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            if services.automation is not None:
                await services.automation.stop()
            if services.executor is not None:
                await services.executor.stop()
            await services.actuators.stop()
            if services.plant is not None:
                await services.plant.stop()
            if services.mqtt is not None:
                await services.mqtt.stop()
            if services.detection is not None:
                await services.detection.stop()
            await services.simulation.stop()
            await services.feed.stop()
            await services.db.dispose()
            log.info("opstwin.stopped")

    app = FastAPI(
        title="OpsTwin",
        version=__version__,
        summary="Operational digital twin with an AIW interface for agents.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_exception_handler(OpsTwinError, handle_opstwin_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected)
    app.add_middleware(RequestMetricsMiddleware, metrics=services.metrics)

    app.state.api_routers = [
        aiw_endpoints.router,
        policy_endpoints.router,
        ops_endpoints.router,
        twins_endpoints.router,
        telemetry_endpoints.router,
        telemetry_source_endpoints.router,
        simulation_endpoints.router,
        audit_endpoints.router,
        action_endpoints.router,
        action_policy_endpoints.router,
    ]
    for router in app.state.api_routers:
        app.include_router(router)
    mount_dashboard(app)

    services.manifest.add_resource(
        ResourceType(
            name="event",
            schema="event.v1",
            collection="/diff",
            description="Every change, in order: the change log. Caller-defined events use type ext.*.",
            event_types=("ext.*",),
        )
    )
    services.manifest.add_resource(
        ResourceType(
            name="twin",
            schema="twin.v1",
            collection="/twins",
            description="Twin models with each asset's reported and desired state; GET /twins/{id} returns a snapshot with the cursor it is consistent with.",
            event_types=("opstwin.twin.updated",),
            snapshot=True,
        )
    )
    services.manifest.add_resource(
        ResourceType(
            name="telemetry",
            schema="telemetry.v1",
            # No parameterless collection: points are read per asset (GET /telemetry/query).
            collection=None,
            description="Normalised telemetry events, read per asset with GET /telemetry/query?twin_id=&asset_id= (and /telemetry/aggregate); each ingested batch appends one opstwin.telemetry.appended per asset (data: twin_id, asset_id, points).",
            event_types=("opstwin.telemetry.appended",),
        )
    )
    services.manifest.add_resource(
        ResourceType(
            name="sim",
            schema="sim.v1",
            collection="/sim/runs",
            description="Simulation runs of POST /sim/run (inline or twin process models): request, status, progress and result; GET /sim/runs/{sim_id} for one.",
            event_types=("opstwin.sim.queued", "opstwin.sim.completed", "opstwin.sim.failed"),
        )
    )
    services.manifest.add_resource(
        ResourceType(
            name="anomaly",
            schema="anomaly.v1",
            collection="/anomalies",
            description="Anomalies the streaming detector opened on a (twin, asset, metric) series, with the record that resolved each; the detector consumes opstwin.telemetry.appended from the change log.",
            event_types=("opstwin.anomaly.detected", "opstwin.anomaly.resolved"),
        )
    )
    services.manifest.add_resource(
        ResourceType(
            name="policy",
            schema="policy.v1",
            collection="/policy",
            description="The tenant's action policy in force (confidence weights, decision bands, windows, overrides) with its version; every version is kept (GET /policy/versions); admins replace it with PUT /policy.",
            event_types=("opstwin.policy.updated",),
        )
    )
    services.manifest.add_resource(
        ResourceType(
            name="audit",
            schema="audit.v1",
            collection="/audit",
            description="The tenant's tamper-evident audit chain: one hash-chained record per decision and transition (who, role, what, input hashes, policy version, decision, outcome); GET /audit/verify names the first altered, removed or reordered record. Supervisors and admins.",
        )
    )
    services.manifest.add_resource(
        ResourceType(
            name="proposal",
            schema="proposal.v1",
            collection="/proposals",
            description="Proposed setpoint changes and their way through the approval workflow: evidence (anomaly, simulation, telemetry quality, history, votes), confidence, the decision with every guard, approvals bound to the content hash, execution, verification and rollback. One event per transition (opstwin.proposal.<state>, data proposal.v1).",
            event_types=tuple(
                f"opstwin.proposal.{state}"
                for state in (
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
                    "vote",
                )
            ),
        )
    )
    services.manifest.add_resource(
        ResourceType(
            name="action",
            schema="action.v1",
            collection="/actions",
            description="Executions of approved proposals: before-value read back, the absolute writes (ramp steps) with their read-backs, verification checks, rollback.",
        )
    )
    return app
