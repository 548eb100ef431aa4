"""SimulationService: the one object endpoints and the app's lifespan talk to."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import ChangeLog
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.config import SimulationSettings
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Database
from opstwin.kit.errors import (
    BadRequest,
    FieldError,
    NotFound,
    ServiceUnavailable,
    ValidationFailed,
)
from opstwin.kit.idempotency import IdempotencyStore
from opstwin.kit.ids import IdSource
from opstwin.simulation.coupler import HybridCoupler
from opstwin.simulation.monte_carlo import DEFAULT_TARGET_RSE
from opstwin.simulation.quantum import AmplitudeEstimator, quantum_unavailable
from opstwin.simulation.repository import RunRow, SimRunRepository
from opstwin.simulation.service.execution import RunExecutor
from opstwin.simulation.service.jobs import BackgroundJobs, lease_until
from opstwin.simulation.service.ledger import RunLedger
from opstwin.simulation.service.model_source import (
    TELEMETRY_POINTER,
    EmpiricalPlan,
    ModelSource,
    TelemetryWindow,
)
from opstwin.simulation.service.recommendations import plan_recommendation
from opstwin.simulation.service.records import EVENT_QUEUED, Reply, accepted_reply, record_of
from opstwin.simulation.service.requests import (
    PreparedRun,
    compile_request,
    limit_error,
    normalise_request,
)


class SimulationService:
    """Runs simulations for the API and its background workers (one instance per app)."""

    def __init__(
        self,
        *,
        settings: SimulationSettings,
        db: Database,
        changelog: ChangeLog,
        schemas: SchemaRegistry,
        idempotency: IdempotencyStore,
        clock: Clock,
        ids: IdSource,
        coupler: HybridCoupler,
        quantum: AmplitudeEstimator,
        models: ModelSource | None = None,
    ) -> None:
        self.settings = settings
        self._db = db
        self._idempotency = idempotency
        self._clock = clock
        self._ids = ids
        self._quantum = quantum
        self._models = models
        self._repo = SimRunRepository()
        self.owner = ids.new("simw")
        self._executor = RunExecutor(coupler)
        self._ledger = RunLedger(
            db=db,
            repo=self._repo,
            changelog=changelog,
            schemas=schemas,
            idempotency=idempotency,
            clock=clock,
            owner=self.owner,
        )
        self._jobs = BackgroundJobs(
            settings=lambda: self.settings,
            db=db,
            repo=self._repo,
            clock=clock,
            owner=self.owner,
            ledger=self._ledger,
            executor=self._executor,
        )

    @property
    def models_available(self) -> bool:
        return self._models is not None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover abandoned runs, then start the workers and the lease keeper."""
        await self._jobs.start()

    async def stop(self) -> None:
        """Stop the workers; fail this process's running runs, release its queued ones."""
        await self._jobs.stop()

    async def renew(self) -> None:
        """Extend the leases of the runs this process holds and write their progress."""
        await self._jobs.renew()

    async def recover(self) -> int:
        """Take over runs whose owner stopped renewing: re-queue queued ones, fail running ones.

        Returns how many runs were recovered.
        """
        return await self._jobs.recover()

    async def wait_idle(self) -> None:
        """Until no thread of this service is computing (for orderly shutdown and tests)."""
        await self._executor.wait_idle()

    # -- validation ------------------------------------------------------------------------

    async def prepare(
        self,
        conn: AsyncConnection | None,
        tenant_id: str,
        body: Mapping[str, Any],
    ) -> PreparedRun:
        """Check a request against the limits and the domain; 422 with pointers when it fails.

        ``body`` is the request as parsed by :class:`~opstwin.simulation.schemas.SimRunIn`
        (``model_dump()``); a ``model_ref`` is resolved through the twin registry on ``conn``.
        """
        inline, ref = body.get("model"), body.get("model_ref")
        if (inline is None) == (ref is None):
            raise limit_error("/model", "give exactly one of 'model' (inline) or 'model_ref'")
        twin_id = process_model = None
        if ref is None and body.get("inputs_from_telemetry") is not None:
            raise limit_error(
                TELEMETRY_POINTER, "inputs_from_telemetry needs model_ref (a twin's process model)"
            )
        if ref is not None:
            if self._models is None or conn is None:
                raise limit_error("/model_ref", "model_ref is not available on this server")
            twin_id, process_model = str(ref["twin_id"]), str(ref["process_model"])
            inline = await self._models.inline_model(
                conn, tenant_id, twin_id, process_model, self._empirical_plan(body)
            )
        request = normalise_request(body, inline)
        prepared = self.compile(request, twin_id=twin_id, process_model=process_model)
        if prepared.engine == "quantum" and prepared.query is not None:
            reason = await asyncio.to_thread(self._quantum.unavailable_reason)
            if reason is not None:
                raise quantum_unavailable(reason)
        return prepared

    async def prepare_recommendation(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        body: Mapping[str, Any],
        *,
        tracking_since_us: int | None = None,
    ) -> PreparedRun:
        """Check a ``POST /sim/recommend`` request (``SimRecommendIn`` dumped by alias).

        The run it prepares ranks candidate setpoints (:mod:`.recommendations`) and is stored,
        computed and logged like any run. Tracking-error inputs read the readings since
        ``tracking_since_us`` — or, when the request names its anomaly (``anomaly.anomaly_id``),
        since that anomaly opened.
        """
        if self._models is None:
            raise limit_error("/twin_id", "recommendations are not available on this server")
        twin_id = str(body["twin_id"])
        twin = await self._models.twin(conn, tenant_id, twin_id)
        process_model, task = plan_recommendation(twin, body)
        ref = body.get("anomaly")
        if ref is not None and ref.get("anomaly_id") is not None:
            # The anomaly as stored: its asset (the request's when absent), its canonical metric.
            asset_id = str(ref.get("asset_id") or body["asset_id"])
            asset = twin.asset(asset_id)
            metric = str(ref["metric"])
            ref = {
                **ref,
                "asset_id": asset_id,
                "metric": (asset.canonical_metric(metric) if asset else None) or metric,
            }
            tracking_since_us = await self._models.anomaly_onset(conn, tenant_id, twin_id, ref)
        inline = await self._models.inline_model(
            conn,
            tenant_id,
            twin_id,
            process_model,
            self._empirical_plan(body),
            tracking_since_us=tracking_since_us,
        )
        run = {
            "samples": body["samples"],
            "seed": body.get("seed"),
            "method": body["method"],
            "target_rse": DEFAULT_TARGET_RSE,
            "adaptive": False,
            "max_samples": None,
            "converge_on": "mean",
            "engine": "classical",
            "query": None,
            "sobol_scrambles": body["sobol_scrambles"],
        }
        request = normalise_request(run, inline)
        request["recommend"] = task.to_request()
        return self.compile(request, twin_id=twin_id, process_model=process_model)

    def _empirical_plan(self, body: Mapping[str, Any]) -> EmpiricalPlan | None:
        """The request's ``inputs_from_telemetry``, defaults from the settings."""
        spec = body.get("inputs_from_telemetry")
        if spec is None:
            return None
        default = TelemetryWindow(window_s=spec.get("window_s"), count=spec.get("count"))
        if default.window_s is None and default.count is None:
            default = TelemetryWindow(window_s=self.settings.empirical_window_s)
        per_input = spec.get("inputs")
        return EmpiricalPlan(
            default=default,
            per_input=None
            if per_input is None
            else {
                str(name): TelemetryWindow(window_s=w.get("window_s"), count=w.get("count"))
                for name, w in per_input.items()
            },
            now_us=to_micros(self._clock.now()),
            min_points=self.settings.empirical_min_points,
            max_points=self.settings.empirical_max_points,
        )

    def compile(
        self,
        request: dict[str, Any],
        *,
        twin_id: str | None = None,
        process_model: str | None = None,
    ) -> PreparedRun:
        """Validate a normalised request (fills in ``max_samples``) and build the engine's inputs."""
        return compile_request(request, self.settings, twin_id=twin_id, process_model=process_model)

    def is_background(self, prepared: PreparedRun) -> bool:
        return prepared.most_samples > self.settings.sync_max_samples

    # -- submitting --------------------------------------------------------------------------

    async def submit(
        self,
        prepared: PreparedRun,
        *,
        tenant_id: str,
        principal_id: str,
        idempotency_key: str | None,
        req_hash: str,
    ) -> Reply:
        """Store and run ``prepared`` (in the request, or queued for a worker)."""
        jobs = self._jobs
        background = self.is_background(prepared)
        if background and jobs.pending >= self.settings.max_queued:
            raise ServiceUnavailable(
                f"{jobs.pending} background runs are waiting (the limit is "
                f"{self.settings.max_queued}); retry later",
                headers={"Retry-After": "30"},
                extensions={"limit_queued": self.settings.max_queued},
            )
        now_us = to_micros(self._clock.now())
        row = RunRow(
            row_id=0,
            sim_id=self._ids.new("sim"),
            tenant_id=tenant_id,
            principal_id=principal_id,
            status="queued" if background else "running",
            mode="background" if background else "sync",
            progress=0.0,
            twin_id=prepared.twin_id,
            process_model=prepared.process_model,
            created_at_us=now_us,
            started_at_us=None if background else now_us,
            finished_at_us=None,
            request=jsonutil.dumps_str(prepared.request),
            result=None,
            error=None,
            owner=self.owner,
            lease_until_us=lease_until(self.settings, now_us),
        )
        if background:
            jobs.pending += 1  # reserved before the first await: the bound holds under load
        try:
            async with self._db.write() as tx:
                if idempotency_key is not None:
                    replay = await self._idempotency.reserve(
                        tx,
                        tenant_id=tenant_id,
                        principal_id=principal_id,
                        key=idempotency_key,
                        req_hash=req_hash,
                    )
                    if replay is not None:
                        if background:
                            jobs.pending -= 1
                            background = False
                        return await self._ledger.replay(tx.conn, tenant_id, replay)
                values = {
                    name: getattr(row, name)
                    for name in RunRow.__dataclass_fields__
                    if name != "row_id"
                }
                await self._repo.insert(tx.conn, **values)
                if background:
                    reply = accepted_reply(row)
                    await self._ledger.append(tx, EVENT_QUEUED, row)
                    if idempotency_key is not None:
                        await self._ledger.record(tx, row, idempotency_key, reply)
                elif idempotency_key is not None:
                    # In progress: a concurrent retry finds the run through this placeholder.
                    await self._idempotency.record(
                        tx,
                        tenant_id=tenant_id,
                        principal_id=principal_id,
                        key=idempotency_key,
                        status_code=0,
                        body=jsonutil.dumps_str({"sim_id": row.sim_id}),
                    )
        except BaseException:
            if background:
                jobs.pending -= 1
            raise
        if background:
            jobs.enqueue(row.sim_id)
            return reply
        outcome = await self._executor.compute(row.sim_id, prepared, self.settings.timeout_s)
        return await self._ledger.finish(
            row,
            outcome,
            progress=self._executor.progress_of(row.sim_id, row.progress),
            idempotency_key=idempotency_key,
        )

    # -- reading -----------------------------------------------------------------------------

    async def get(self, conn: AsyncConnection, tenant_id: str, sim_id: str) -> dict[str, Any]:
        """The ``sim.v1`` record of a run of ``tenant_id`` (404 otherwise)."""
        row = await self._repo.get(conn, tenant_id, sim_id)
        if row is None:
            raise NotFound(f"no simulation run {sim_id!r} in this tenant")
        return record_of(row)

    async def page(
        self, conn: AsyncConnection, tenant_id: str, *, before: str | None, limit: int | None
    ) -> tuple[list[dict[str, Any]], str | None, bool]:
        """Runs newest first: (records, ``before`` for the next page, whether there are more)."""
        size = limit or self.settings.page_size_default
        if size > self.settings.page_size_max:
            raise ValidationFailed(
                f"limit must be at most {self.settings.page_size_max}",
                errors=[
                    FieldError(detail=f"at most {self.settings.page_size_max}", parameter="limit")
                ],
            )
        before_row = None
        if before is not None:
            before_row = await self._repo.row_id_of(conn, tenant_id, before)
            if before_row is None:
                raise BadRequest(
                    f"before: no run {before!r} in this tenant (pass a `next_before` you received)",
                    errors=[FieldError(detail="unknown run", parameter="before")],
                )
        rows = await self._repo.page(conn, tenant_id, before_row=before_row, limit=size)
        has_more = len(rows) > size
        rows = rows[:size]
        next_before = rows[-1].sim_id if has_more and rows else None
        return [record_of(row) for row in rows], next_before, has_more
