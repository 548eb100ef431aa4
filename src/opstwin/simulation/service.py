"""SimulationService: accepts, stores, computes and reports ``POST /sim/run`` runs.

Life of a run (every step that changes state commits with its change-log entry)::

    request ──validate──▶ 422 (nothing stored)
       │
       ├─ may draw ≤ sync_max_samples ─▶ row `running` ─compute in a thread─▶ `succeeded` | `failed`
       │                                  (tx 1)                              (tx 2 + opstwin.sim.completed
       │                                                                           | opstwin.sim.failed)
       └─ larger ──▶ row `queued` + opstwin.sim.queued ─▶ 202 + Location
                       └─ worker: `running` ─compute in a thread─▶ `succeeded` | `failed` (+ event)

A run spans two transactions on purpose: holding a write transaction while numpy works would
block every other writer (SQLite has one). So this service is the *edge* of its jobs and owns
their transactions, like an endpoint owns a request's.

Ownership and recovery
    Each process holds the in-flight runs it accepted under an id of its own (``owner``) and a
    lease it renews every ``progress_interval_s`` (together with progress). A run whose lease ran
    out — its process died — is recovered by any process within about ``lease_s``, including the
    same server after a restart: a ``queued`` run never started, so it is claimed and run (same
    seed: same result); a ``running`` run is marked ``failed`` with reason ``interrupted`` and an
    ``opstwin.sim.failed`` event, because half-done work cannot be resumed. A graceful shutdown
    does this at once for its own runs (failing the running ones, releasing the queued ones).

Limits
    The thread computing a run cannot be killed. A run past its wall-time limit is recorded as
    failed (``timeout``); its thread's late result is discarded (transitions only apply to runs
    still ``running`` under this owner) and it keeps its worker slot until it ends, so background
    concurrency stays bounded. Adaptive runs get 80 % of the limit as a time budget, so they stop
    on their own and report ``converged: false`` rather than time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import ChangeLog, NewEvent
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.config import SimulationSettings
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, from_micros, rfc3339, to_micros
from opstwin.kit.db import Database, Transaction
from opstwin.kit.errors import (
    BadRequest,
    Conflict,
    FieldError,
    NotFound,
    OpsTwinError,
    ServiceUnavailable,
    ValidationFailed,
)
from opstwin.kit.idempotency import IdempotencyStore, StoredResponse
from opstwin.kit.ids import IdSource
from opstwin.simulation.coupler import HybridCoupler, Query, parse_query
from opstwin.simulation.distributions import escape_pointer
from opstwin.simulation.model import ProcessModel, parse_model
from opstwin.simulation.monte_carlo import MAX_VALUES_IN_MEMORY, MonteCarloEngine, RunSettings
from opstwin.simulation.quantum import AmplitudeEstimator, quantum_unavailable
from opstwin.simulation.repository import RunRow, SimRunRepository
from opstwin.simulation.results import SimulationResult
from opstwin.twins.model import MetricInput, SetpointInput
from opstwin.twins.state import reported_state

if TYPE_CHECKING:
    from opstwin.twins.registry import Twin

log = structlog.get_logger(__name__)

SOURCE = "/opstwin/sim"
RUNS_PATH = "/sim/runs"
EVENT_QUEUED = "opstwin.sim.queued"
EVENT_COMPLETED = "opstwin.sim.completed"
EVENT_FAILED = "opstwin.sim.failed"

PILOT_SAMPLES = 1024
"""Samples of the pilot that times a run's cost per sample (for its progress estimate)."""

ADAPTIVE_BUDGET_SHARE = 0.8
"""Share of the wall-time limit an adaptive run may spend before stopping on its own."""

PROGRESS_CEILING = 0.99
"""Progress is an estimate; only a finished run reports 1."""

RECOVERY_BATCH = 100
"""Abandoned runs recovered per sweep."""

Status = Literal["queued", "running", "succeeded", "failed"]
FailureReason = Literal["invalid", "timeout", "interrupted", "internal"]


class ModelSource(Protocol):
    """Where ``model_ref`` runs get their model: the twin registry (see :mod:`.twin_models`)."""

    async def inline_model(
        self, conn: AsyncConnection, tenant_id: str, twin_id: str, process_model: str
    ) -> dict[str, Any]: ...


class TwinRegistryReader(Protocol):
    """The part of :class:`opstwin.twins.registry.TwinRegistry` a ``model_ref`` needs."""

    async def get(self, conn: AsyncConnection, tenant_id: str, twin_id: str) -> Twin: ...


@dataclass(frozen=True, slots=True, eq=False)
class PreparedRun:
    """A validated run: what is stored (``request``) and what the engine needs."""

    request: dict[str, Any]
    model: ProcessModel
    settings: RunSettings
    engine: str
    query: Query | None
    most_samples: int
    twin_id: str | None = None
    process_model: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """What the edge sends back: status, JSON body, headers."""

    status_code: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def media_type(self) -> str:
        return "application/problem+json" if self.status_code >= 400 else "application/json"


@dataclass(frozen=True, slots=True)
class Failure:
    reason: FailureReason
    detail: str
    errors: tuple[FieldError, ...] = ()
    limit_s: float | None = None
    status: int = 422

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": self.reason, "detail": self.detail}
        if self.errors:
            body["errors"] = [
                {k: v for k, v in e.as_dict().items() if k in ("detail", "pointer")}
                for e in self.errors
            ]
        if self.limit_s is not None:
            body["limit_s"] = self.limit_s
        return body


Outcome = SimulationResult | Failure


class _Progress:
    """Progress of one computing run: elapsed time over the time a pilot predicted."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.expected_s: float | None = None  # set by the worker thread after its pilot

    def value(self) -> float:
        if self.expected_s is None or self.expected_s <= 0:
            return 0.0
        return min(PROGRESS_CEILING, (time.monotonic() - self.started) / self.expected_s)


def _limit_error(pointer: str, detail: str, **extensions: Any) -> ValidationFailed:
    return ValidationFailed(
        detail, errors=[FieldError(detail=detail, pointer=pointer)], extensions=extensions
    )


def record_of(row: RunRow) -> dict[str, Any]:
    """The ``sim.v1`` record of a stored run."""
    record: dict[str, Any] = {
        "sim_id": row.sim_id,
        "status": row.status,
        "mode": row.mode,
        "progress": row.progress,
        "created_at": rfc3339(from_micros(row.created_at_us)),
    }
    if row.started_at_us is not None:
        record["started_at"] = rfc3339(from_micros(row.started_at_us))
    if row.finished_at_us is not None:
        record["finished_at"] = rfc3339(from_micros(row.finished_at_us))
    if row.twin_id is not None and row.process_model is not None:
        record["model_ref"] = {"twin_id": row.twin_id, "process_model": row.process_model}
    record["request"] = jsonutil.loads(row.request)
    if row.status == "succeeded" and row.result is not None:
        record.update(jsonutil.loads(row.result))
    if row.status == "failed" and row.error is not None:
        record["error"] = jsonutil.loads(row.error)
    return record


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
        self._changelog = changelog
        self._schemas = schemas
        self._idempotency = idempotency
        self._clock = clock
        self._ids = ids
        self._coupler = coupler
        self._quantum = quantum
        self._models = models
        self._repo = SimRunRepository()
        self._pilot_engine = MonteCarloEngine()
        self.owner = ids.new("simw")
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending = 0
        self._progress: dict[str, _Progress] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._threads: set[asyncio.Future[SimulationResult]] = set()

    @property
    def models_available(self) -> bool:
        return self._models is not None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover abandoned runs, then start the workers and the lease keeper."""
        await self.recover()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"opstwin-sim-worker-{i}")
            for i in range(self.settings.background_concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._keeper(), name="opstwin-sim-keeper"))

    async def stop(self) -> None:
        """Stop the workers; fail this process's running runs, release its queued ones."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:
            async with self._db.read() as conn:
                held = await self._repo.held_by(conn, self.owner)
            for row in held:
                if row.status == "running":
                    await self._fail_abandoned(
                        row, "the server stopped while the run was computing"
                    )
                else:
                    async with self._db.write() as tx:
                        await self._repo.transition(
                            tx.conn,
                            row.sim_id,
                            from_status=("queued",),
                            owner=self.owner,
                            values={"owner": None, "lease_until_us": None},
                        )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("sim.stop_cleanup_failed", error=str(exc))

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
            raise _limit_error("/model", "give exactly one of 'model' (inline) or 'model_ref'")
        twin_id = process_model = None
        if ref is not None:
            if self._models is None or conn is None:
                raise _limit_error("/model_ref", "model_ref is not available on this server")
            twin_id, process_model = str(ref["twin_id"]), str(ref["process_model"])
            inline = await self._models.inline_model(conn, tenant_id, twin_id, process_model)
        request = {
            "model": inline,
            "samples": body["samples"],
            "seed": body["seed"] if body.get("seed") is not None else secrets.randbits(63),
            "method": body["method"],
            "target_rse": body["target_rse"],
            "adaptive": body["adaptive"],
            "max_samples": body.get("max_samples"),
            "converge_on": body["converge_on"],
            "engine": body["engine"],
            "query": body.get("query"),
            "sobol_scrambles": body["sobol_scrambles"],
        }
        prepared = self.compile(request, twin_id=twin_id, process_model=process_model)
        if prepared.engine == "quantum" and prepared.query is not None:
            reason = await asyncio.to_thread(self._quantum.unavailable_reason)
            if reason is not None:
                raise quantum_unavailable(reason)
        return prepared

    def compile(
        self,
        request: dict[str, Any],
        *,
        twin_id: str | None = None,
        process_model: str | None = None,
    ) -> PreparedRun:
        """Validate a normalised request (fills in ``max_samples``) and build the engine's inputs."""
        limits = self.settings
        samples = request["samples"]
        if isinstance(samples, int) and samples > limits.max_samples:
            raise _limit_error(
                "/samples",
                f"samples is {samples}; the limit is {limits.max_samples}",
                limit_samples=limits.max_samples,
            )
        if request.get("max_samples") is None:
            request["max_samples"] = min(limits.max_samples, max(samples, limits.sync_max_samples))
        max_samples = request["max_samples"]
        if max_samples > limits.max_samples:
            raise _limit_error(
                "/max_samples",
                f"max_samples is {max_samples}; the limit is {limits.max_samples}",
                limit_samples=limits.max_samples,
            )
        model_json = request["model"]
        outputs = model_json.get("outputs") if isinstance(model_json, Mapping) else None
        if isinstance(outputs, Mapping):
            for name, source in outputs.items():
                if isinstance(source, str) and len(source) > limits.max_expression_chars:
                    raise _limit_error(
                        f"/model/outputs/{escape_pointer(str(name))}",
                        f"expression is {len(source)} characters; the limit is "
                        f"{limits.max_expression_chars}",
                        limit_chars=limits.max_expression_chars,
                    )
        model = parse_model(model_json)
        query = parse_query(request["query"]) if request.get("query") is not None else None
        if query is not None and query.output not in model.outputs:
            raise _limit_error("/query/output", f"{query.output!r} is not an output of the model")
        engine = request["engine"]
        if engine == "quantum" and query is None:
            raise _limit_error(
                "/engine",
                "the quantum engine answers one scalar query (tail_probability or "
                "bounded_expectation); give 'query' or use engine 'classical'",
            )
        adaptive = bool(request["adaptive"])
        bounded_by_cap = adaptive or query is not None
        most = max_samples if bounded_by_cap else samples
        background = most > limits.sync_max_samples
        timeout = limits.background_timeout_s if background else limits.timeout_s
        settings = RunSettings(
            seed=request["seed"],
            samples=samples,
            method=request["method"],
            adaptive=adaptive,
            target_rse=request["target_rse"],
            max_samples=max_samples,
            converge_on=request["converge_on"],
            time_budget_s=timeout * ADAPTIVE_BUDGET_SHARE if adaptive else None,
            sobol_scrambles=request["sobol_scrambles"],
        )
        columns = len(model.inputs) + len(model.outputs)
        if most * columns > MAX_VALUES_IN_MEMORY:
            pointer = "/max_samples" if bounded_by_cap else "/samples"
            raise _limit_error(
                pointer,
                f"{most} samples × {columns} inputs+outputs exceeds the in-memory limit of "
                f"{MAX_VALUES_IN_MEMORY} values; at most {MAX_VALUES_IN_MEMORY // columns} fit",
                limit_samples=MAX_VALUES_IN_MEMORY // columns,
            )
        return PreparedRun(
            request=request,
            model=model,
            settings=settings,
            engine=engine,
            query=query,
            most_samples=most,
            twin_id=twin_id,
            process_model=process_model,
        )

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
        background = self.is_background(prepared)
        if background and self._pending >= self.settings.max_queued:
            raise ServiceUnavailable(
                f"{self._pending} background runs are waiting (the limit is "
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
            lease_until_us=now_us + int(self.settings.lease_s * 1e6),
        )
        if background:
            self._pending += 1  # reserved before the first await: the bound holds under load
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
                            self._pending -= 1
                            background = False
                        return await self._replay(tx.conn, tenant_id, replay)
                values = {
                    name: getattr(row, name)
                    for name in RunRow.__dataclass_fields__
                    if name != "row_id"
                }
                await self._repo.insert(tx.conn, **values)
                if background:
                    reply = self._accepted(row)
                    await self._changelog.append(tx, [self._event(EVENT_QUEUED, row)])
                    if idempotency_key is not None:
                        await self._record(tx, row, idempotency_key, reply)
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
                self._pending -= 1
            raise
        if background:
            self._queue.put_nowait(row.sim_id)
            return reply
        outcome = await self._compute(row.sim_id, prepared, self.settings.timeout_s)
        return await self._finish(row, outcome, idempotency_key)

    async def _replay(self, conn: AsyncConnection, tenant_id: str, stored: StoredResponse) -> Reply:
        headers = {"Idempotent-Replayed": "true"}
        if stored.status_code != 0:
            return Reply(stored.status_code, stored.body.encode(), headers)
        sim_id = str(jsonutil.loads(stored.body)["sim_id"])
        row = await self._repo.get(conn, tenant_id, sim_id)
        if row is not None and row.status in ("succeeded", "failed"):
            return replace(self._final_reply(row), headers={**headers, **self._location(row)})
        raise Conflict(
            f"the request with this Idempotency-Key is still running as {sim_id}; "
            f"follow {RUNS_PATH}/{sim_id}",
            headers={"Location": f"{RUNS_PATH}/{sim_id}"},
            extensions={"sim_id": sim_id},
        )

    async def _record(self, tx: Transaction, row: RunRow, key: str, reply: Reply) -> None:
        await self._idempotency.record(
            tx,
            tenant_id=row.tenant_id,
            principal_id=row.principal_id,
            key=key,
            status_code=reply.status_code,
            body=reply.body.decode(),
        )

    @staticmethod
    def _location(row: RunRow) -> dict[str, str]:
        return {"Location": f"{RUNS_PATH}/{row.sim_id}"}

    def _accepted(self, row: RunRow) -> Reply:
        return Reply(202, jsonutil.dumps(record_of(row)), self._location(row))

    def _final_reply(self, row: RunRow) -> Reply:
        """The response a finished run gives its request: the record, or its failure."""
        record = record_of(row)
        if row.status == "succeeded":
            return Reply(201, jsonutil.dumps(record), self._location(row))
        error = record["error"]
        failure = Failure(
            reason=error["reason"],
            detail=error["detail"],
            errors=tuple(FieldError(**e) for e in error.get("errors", [])),
            limit_s=error.get("limit_s"),
            status=500 if error["reason"] == "internal" else 422,
        )
        problem = self._problem(failure, row)
        return Reply(
            problem.status,
            jsonutil.dumps(problem.problem(instance="/sim/run")),
            self._location(row),
        )

    @staticmethod
    def _problem(failure: Failure, row: RunRow) -> OpsTwinError:
        extensions: dict[str, Any] = {"sim_id": row.sim_id, "reason": failure.reason}
        if failure.limit_s is not None:
            extensions["limit_s"] = failure.limit_s
        kind = OpsTwinError if failure.status >= 500 else ValidationFailed
        return kind(failure.detail, errors=list(failure.errors), extensions=extensions)

    # -- computing ---------------------------------------------------------------------------

    def _run_blocking(self, prepared: PreparedRun, progress: _Progress) -> SimulationResult:
        """The numpy work, in a worker thread: a pilot to predict the duration, then the run."""
        if prepared.engine != "quantum":
            pilot = RunSettings(seed=prepared.settings.seed, samples=PILOT_SAMPLES, method="mc")
            started = time.monotonic()
            self._pilot_engine.sample(prepared.model, pilot)
            per_sample = (time.monotonic() - started) / PILOT_SAMPLES
            progress.expected_s = per_sample * prepared.most_samples
            progress.started = time.monotonic()
        return self._coupler.run(
            prepared.model, prepared.settings, engine=prepared.engine, query=prepared.query
        )

    async def _compute(self, sim_id: str, prepared: PreparedRun, timeout_s: float) -> Outcome:
        """Run in a thread under a wall-time limit; every failure becomes a :class:`Failure`."""
        progress = _Progress()
        self._progress[sim_id] = progress
        future = asyncio.ensure_future(asyncio.to_thread(self._run_blocking, prepared, progress))
        self._threads.add(future)
        future.add_done_callback(self._thread_done)
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout_s)
        finally:
            self._progress.pop(sim_id, None)
        if not done:
            log.warning("sim.timeout", sim_id=sim_id, limit_s=timeout_s)
            return Failure(
                reason="timeout",
                detail=f"the run did not finish within the limit of {timeout_s:g} s; "
                "ask for fewer samples (or max_samples), or a looser target",
                errors=(FieldError(detail=f"limit {timeout_s:g} s", pointer="/samples"),),
                limit_s=timeout_s,
            )
        try:
            return future.result()
        except ValidationFailed as exc:  # e.g. non-finite values found while evaluating
            return Failure(reason="invalid", detail=exc.detail, errors=tuple(exc.errors))
        except Exception as exc:  # the job edge: record the failure, never leave it running
            log.exception("sim.crashed", sim_id=sim_id, error_type=type(exc).__name__)
            return Failure(
                reason="internal",
                detail="the run failed unexpectedly; it has been logged",
                status=500,
            )

    def _thread_done(self, future: asyncio.Future[SimulationResult]) -> None:
        self._threads.discard(future)
        if not future.cancelled() and future.exception() is not None:
            # Already reported by _compute unless the run had timed out; retrieve it either way.
            log.debug("sim.thread_failed", error=str(future.exception()))

    async def _finish(self, row: RunRow, outcome: Outcome, idempotency_key: str | None) -> Reply:
        """Record the outcome with its event (and the idempotent response) in one transaction."""
        now_us = to_micros(self._clock.now())
        if isinstance(outcome, SimulationResult):
            final = replace(
                row,
                status="succeeded",
                progress=1.0,
                finished_at_us=now_us,
                result=jsonutil.dumps_str(outcome.to_dict()),
                owner=None,
                lease_until_us=None,
            )
        else:
            final = replace(
                row,
                status="failed",
                progress=self._progress_of(row),
                finished_at_us=now_us,
                error=jsonutil.dumps_str(outcome.to_dict()),
                owner=None,
                lease_until_us=None,
            )
        reply = self._final_reply(final)
        async with self._db.write() as tx:
            applied = await self._repo.transition(
                tx.conn,
                row.sim_id,
                from_status=("running",),
                owner=self.owner,
                values={
                    "status": final.status,
                    "progress": final.progress,
                    "finished_at_us": final.finished_at_us,
                    "result": final.result,
                    "error": final.error,
                    "owner": None,
                    "lease_until_us": None,
                },
            )
            if applied:
                event = EVENT_COMPLETED if final.status == "succeeded" else EVENT_FAILED
                await self._changelog.append(tx, [self._event(event, final)])
            else:  # recovered meanwhile (lease lost): the stored verdict stands
                current = await self._repo.get(tx.conn, row.tenant_id, row.sim_id)
                log.warning("sim.result_discarded", sim_id=row.sim_id)
                if current is not None and current.status in ("succeeded", "failed"):
                    reply = self._final_reply(current)
            if idempotency_key is not None and row.mode == "sync":
                await self._record(tx, row, idempotency_key, reply)
        return reply

    def _progress_of(self, row: RunRow) -> float:
        progress = self._progress.get(row.sim_id)
        return row.progress if progress is None else progress.value()

    def _event(self, type_: str, row: RunRow) -> NewEvent:
        subject = f"twin/{row.twin_id}/sim/{row.sim_id}" if row.twin_id else f"sim/{row.sim_id}"
        return NewEvent(
            tenant_id=row.tenant_id,
            type=type_,
            source=SOURCE,
            subject=subject,
            dataschema=self._schemas.id_of("sim.v1"),
            data=record_of(row),
        )

    # -- background ------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            sim_id = await self._queue.get()
            self._pending = max(0, self._pending - 1)
            try:
                await self._run_queued(sim_id)
            except (SQLAlchemyError, OSError) as exc:
                # The run stays in flight under our lease; if we cannot renew it either, it is
                # recovered elsewhere once the lease runs out.
                log.warning("sim.worker_failed", sim_id=sim_id, error=str(exc))

    async def _run_queued(self, sim_id: str) -> None:
        now_us = to_micros(self._clock.now())
        async with self._db.write() as tx:
            started = await self._repo.transition(
                tx.conn,
                sim_id,
                from_status=("queued",),
                owner=self.owner,
                values={"status": "running", "started_at_us": now_us},
            )
            row = await self._repo.get_any_tenant(tx.conn, sim_id) if started else None
        if row is None:
            return  # recovered by another process meanwhile
        try:
            prepared = self.compile(
                jsonutil.loads(row.request), twin_id=row.twin_id, process_model=row.process_model
            )
        except ValidationFailed as exc:  # accepted under other limits (settings changed)
            outcome: Outcome = Failure(
                reason="invalid", detail=exc.detail, errors=tuple(exc.errors)
            )
        else:
            outcome = await self._compute(sim_id, prepared, self.settings.background_timeout_s)
        await self._finish(row, outcome, None)

    async def _keeper(self) -> None:
        """Renew this process's leases (with progress) and recover abandoned runs, periodically."""
        while True:
            await asyncio.sleep(self.settings.progress_interval_s)
            try:
                await self.renew()
                await self.recover()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("sim.keeper_failed", error=str(exc))

    async def renew(self) -> None:
        """Extend the leases of the runs this process holds and write their progress."""
        if not self._progress and not self._pending:
            return
        lease_until = to_micros(self._clock.now()) + int(self.settings.lease_s * 1e6)
        progress = {sim_id: p.value() for sim_id, p in self._progress.items()}
        async with self._db.write() as tx:
            await self._repo.renew(tx.conn, self.owner, lease_until, progress)

    async def recover(self) -> int:
        """Take over runs whose owner stopped renewing: re-queue queued ones, fail running ones.

        Returns how many runs were recovered.
        """
        now_us = to_micros(self._clock.now())
        async with self._db.read() as conn:
            abandoned = await self._repo.abandoned(conn, now_us, RECOVERY_BATCH)
        recovered = 0
        for row in abandoned:
            if row.status == "running":
                if await self._fail_abandoned(
                    row, "the process computing the run stopped before it finished", stale_us=now_us
                ):
                    recovered += 1
                continue
            async with self._db.write() as tx:
                claimed = await self._repo.transition(
                    tx.conn,
                    row.sim_id,
                    from_status=("queued",),
                    stale_before_us=now_us,
                    values={
                        "owner": self.owner,
                        "lease_until_us": now_us + int(self.settings.lease_s * 1e6),
                    },
                )
            if claimed:
                self._pending += 1
                self._queue.put_nowait(row.sim_id)
                recovered += 1
        if recovered:
            log.info("sim.recovered", runs=recovered)
        return recovered

    async def _fail_abandoned(self, row: RunRow, detail: str, stale_us: int | None = None) -> bool:
        failure = Failure(
            reason="interrupted", detail=f"{detail}; run it again (same seed, same result)"
        )
        final = replace(
            row,
            status="failed",
            finished_at_us=to_micros(self._clock.now()),
            error=jsonutil.dumps_str(failure.to_dict()),
            owner=None,
            lease_until_us=None,
        )
        async with self._db.write() as tx:
            applied = await self._repo.transition(
                tx.conn,
                row.sim_id,
                from_status=("running",),
                owner=None if stale_us is not None else self.owner,
                stale_before_us=stale_us,
                values={
                    "status": "failed",
                    "finished_at_us": final.finished_at_us,
                    "error": final.error,
                    "owner": None,
                    "lease_until_us": None,
                },
            )
            if applied:
                await self._changelog.append(tx, [self._event(EVENT_FAILED, final)])
        return applied

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

    async def wait_idle(self) -> None:
        """Until no thread of this service is computing (for orderly shutdown and tests)."""
        while self._threads:
            await asyncio.gather(*self._threads, return_exceptions=True)


class TwinModelSource:
    """Builds the inline model of a twin's process model (``model_ref`` runs).

    Inputs become distributions: a declared distribution as it is; a setpoint its desired value
    (``current``, else ``default``) — normal with the input's ``std`` when it gives one, else a
    constant; a metric the asset's reported state — normal around the detector's baseline mean
    (else the latest value) with the input's ``std``, else the baseline's. A metric input with no
    reported value or no known spread has no distribution yet: 422 saying so.
    """

    def __init__(self, registry: TwinRegistryReader) -> None:
        self._registry = registry

    async def inline_model(
        self, conn: AsyncConnection, tenant_id: str, twin_id: str, process_model: str
    ) -> dict[str, Any]:
        twin = await self._registry.get(conn, tenant_id, twin_id)
        spec = next((pm for pm in twin.spec.process_models if pm.id == process_model), None)
        if spec is None:
            known = ", ".join(pm.id for pm in twin.spec.process_models) or "none"
            raise _limit_error(
                "/model_ref/process_model",
                f"twin {twin_id!r} has no process model {process_model!r} (it has: {known})",
            )
        reported = None
        inputs: dict[str, Any] = {}
        for name, source in spec.inputs.items():
            if isinstance(source, SetpointInput):
                asset = twin.spec.asset(source.asset)
                setpoint = asset.setpoints.get(source.setpoint) if asset else None
                if setpoint is None:  # the loader checks references; guard anyway
                    raise _limit_error(
                        "/model_ref/process_model",
                        f"input {name!r}: setpoint {source.asset}/{source.setpoint} is not declared",
                    )
                value = setpoint.current if setpoint.current is not None else setpoint.default
                inputs[name] = (
                    {"dist": "normal", "mean": value, "std": source.std}
                    if source.std is not None
                    else {"dist": "constant", "value": value}
                )
            elif isinstance(source, MetricInput):
                if reported is None:
                    reported = await reported_state(conn, tenant_id, twin_id)
                state = reported.get(source.asset, {}).get(source.metric)
                where = f"{source.asset}/{source.metric}"
                if state is None or state.value is None:
                    raise _limit_error(
                        "/model_ref/process_model",
                        f"input {name!r} has no distribution yet: it reads metric {where}, which "
                        "has no reported value; send telemetry for it, or declare a distribution "
                        "for the input in the twin model",
                    )
                std = source.std if source.std is not None else state.baseline_std
                if std is None or not std > 0:
                    raise _limit_error(
                        "/model_ref/process_model",
                        f"input {name!r} has no distribution yet: metric {where} has no learnt "
                        "baseline spread; give the input a 'std' in the twin model, or wait for "
                        "the anomaly detector's baseline",
                    )
                mean = state.baseline_mean if state.baseline_mean is not None else state.value
                inputs[name] = {"dist": "normal", "mean": mean, "std": std}
            else:
                inputs[name] = source.model_dump(mode="json")
        return {
            "inputs": inputs,
            "outputs": {name: kpi.expression for name, kpi in spec.outputs.items()},
        }
