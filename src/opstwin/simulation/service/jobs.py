"""Background runs: the queue and its workers, this process's leases, recovery of abandoned runs.

Each process holds the in-flight runs it accepted under an id of its own (``owner``) and a lease
it renews every ``progress_interval_s`` (with progress). A run whose lease ran out is recovered
by any process: a ``queued`` one is claimed and run, a ``running`` one fails as ``interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from sqlalchemy.exc import SQLAlchemyError

from opstwin.config import SimulationSettings
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Database
from opstwin.kit.errors import ValidationFailed
from opstwin.simulation.repository import RunRow, SimRunRepository
from opstwin.simulation.service.execution import RunExecutor
from opstwin.simulation.service.ledger import RunLedger
from opstwin.simulation.service.records import Failure, Outcome
from opstwin.simulation.service.requests import compile_request

log = structlog.get_logger(__name__)

RECOVERY_BATCH = 100
"""Abandoned runs recovered per sweep."""


def lease_until(settings: SimulationSettings, now_us: int) -> int:
    """When a lease taken or renewed at ``now_us`` runs out (µs)."""
    return now_us + int(settings.lease_s * 1e6)


class BackgroundJobs:
    """The queue of background runs this process holds, its workers and its lease keeper.

    ``settings`` is read on every use: the service's settings may be replaced while it runs.
    """

    def __init__(
        self,
        *,
        settings: Callable[[], SimulationSettings],
        db: Database,
        repo: SimRunRepository,
        clock: Clock,
        owner: str,
        ledger: RunLedger,
        executor: RunExecutor,
    ) -> None:
        self._settings = settings
        self._db = db
        self._repo = repo
        self._clock = clock
        self._owner = owner
        self._ledger = ledger
        self._executor = executor
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self.pending = 0
        """Runs waiting in the queue, or reserved for it (bounded by ``max_queued``)."""
        self._tasks: list[asyncio.Task[None]] = []

    def enqueue(self, sim_id: str) -> None:
        """Hand a stored ``queued`` run to the workers (counted in ``pending`` already)."""
        self._queue.put_nowait(sim_id)

    async def start(self) -> None:
        """Recover abandoned runs, then start the workers and the lease keeper."""
        await self.recover()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"opstwin-sim-worker-{i}")
            for i in range(self._settings().background_concurrency)
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
                held = await self._repo.held_by(conn, self._owner)
            for row in held:
                if row.status == "running":
                    await self._ledger.fail_abandoned(
                        row, "the server stopped while the run was computing"
                    )
                else:
                    async with self._db.write() as tx:
                        await self._repo.transition(
                            tx.conn,
                            row.sim_id,
                            from_status=("queued",),
                            owner=self._owner,
                            values={"owner": None, "lease_until_us": None},
                        )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("sim.stop_cleanup_failed", error=str(exc))

    async def renew(self) -> None:
        """Extend the leases of the runs this process holds and write their progress."""
        if not self._executor.computing and not self.pending:
            return
        until = lease_until(self._settings(), to_micros(self._clock.now()))
        progress = self._executor.progress()
        async with self._db.write() as tx:
            await self._repo.renew(tx.conn, self._owner, until, progress)

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
                if await self._ledger.fail_abandoned(
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
                        "owner": self._owner,
                        "lease_until_us": lease_until(self._settings(), now_us),
                    },
                )
            if claimed:
                self.pending += 1
                self.enqueue(row.sim_id)
                recovered += 1
        if recovered:
            log.info("sim.recovered", runs=recovered)
        return recovered

    async def _worker(self) -> None:
        while True:
            sim_id = await self._queue.get()
            self.pending = max(0, self.pending - 1)
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
                owner=self._owner,
                values={"status": "running", "started_at_us": now_us},
            )
            row: RunRow | None = (
                await self._repo.get_any_tenant(tx.conn, sim_id) if started else None
            )
        if row is None:
            return  # recovered by another process meanwhile
        settings = self._settings()
        try:
            prepared = compile_request(
                jsonutil.loads(row.request),
                settings,
                twin_id=row.twin_id,
                process_model=row.process_model,
            )
        except ValidationFailed as exc:  # accepted under other limits (settings changed)
            outcome: Outcome = Failure(
                reason="invalid", detail=exc.detail, errors=tuple(exc.errors)
            )
        else:
            outcome = await self._executor.compute(sim_id, prepared, settings.background_timeout_s)
        await self._ledger.finish(
            row,
            outcome,
            progress=self._executor.progress_of(row.sim_id, row.progress),
            idempotency_key=None,
        )

    async def _keeper(self) -> None:
        """Renew this process's leases (with progress) and recover abandoned runs, periodically."""
        while True:
            await asyncio.sleep(self._settings().progress_interval_s)
            try:
                await self.renew()
                await self.recover()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("sim.keeper_failed", error=str(exc))
