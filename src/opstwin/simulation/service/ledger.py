"""A run's stored life: each change of state commits with its change-log event.

Final transitions apply only to a run still ``running`` under this process (or, when recovering,
one whose lease ran out), so a late finisher never overwrites a verdict stored meanwhile.
"""

from __future__ import annotations

from dataclasses import replace

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import ChangeLog, NewEvent
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Database, Transaction
from opstwin.kit.errors import Conflict
from opstwin.kit.idempotency import IdempotencyStore, StoredResponse
from opstwin.simulation.repository import RunRow, SimRunRepository
from opstwin.simulation.results import SimulationResult
from opstwin.simulation.service.records import (
    EVENT_COMPLETED,
    EVENT_FAILED,
    RUNS_PATH,
    SOURCE,
    Failure,
    Outcome,
    Reply,
    final_reply,
    location,
    record_of,
)

log = structlog.get_logger(__name__)


class RunLedger:
    """Stores the outcomes of this process's runs (``owner``) with their events and replies."""

    def __init__(
        self,
        *,
        db: Database,
        repo: SimRunRepository,
        changelog: ChangeLog,
        schemas: SchemaRegistry,
        idempotency: IdempotencyStore,
        clock: Clock,
        owner: str,
    ) -> None:
        self._db = db
        self._repo = repo
        self._changelog = changelog
        self._schemas = schemas
        self._idempotency = idempotency
        self._clock = clock
        self._owner = owner

    async def append(self, tx: Transaction, type_: str, row: RunRow) -> None:
        """Log the event ``type_`` about ``row`` (its ``sim.v1`` record as data) in ``tx``."""
        await self._changelog.append(tx, [self._event(type_, row)])

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

    async def finish(
        self, row: RunRow, outcome: Outcome, *, progress: float, idempotency_key: str | None
    ) -> Reply:
        """Record the outcome with its event (and the idempotent response) in one transaction.

        ``progress`` is what a failed run reports (how far it got).
        """
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
                progress=progress,
                finished_at_us=now_us,
                error=jsonutil.dumps_str(outcome.to_dict()),
                owner=None,
                lease_until_us=None,
            )
        reply = final_reply(final)
        async with self._db.write() as tx:
            if not await self._settle(tx, final):  # recovered meanwhile: the stored verdict stands
                current = await self._repo.get(tx.conn, row.tenant_id, row.sim_id)
                log.warning("sim.result_discarded", sim_id=row.sim_id)
                if current is not None and current.status in ("succeeded", "failed"):
                    reply = final_reply(current)
            if idempotency_key is not None and row.mode == "sync":
                await self.record(tx, row, idempotency_key, reply)
        return reply

    async def fail_abandoned(self, row: RunRow, detail: str, stale_us: int | None = None) -> bool:
        """Fail a ``running`` run nobody will finish (``interrupted``), with its event.

        Without ``stale_us`` the run must be this process's; with it, its lease must have run
        out before then. Returns whether the run was failed here.
        """
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
            return await self._settle(tx, final, stale_before_us=stale_us)

    async def record(self, tx: Transaction, row: RunRow, key: str, reply: Reply) -> None:
        """Store ``reply`` as the response to the request with Idempotency-Key ``key``."""
        await self._idempotency.record(
            tx,
            tenant_id=row.tenant_id,
            principal_id=row.principal_id,
            key=key,
            status_code=reply.status_code,
            body=reply.body.decode(),
        )

    async def replay(self, conn: AsyncConnection, tenant_id: str, stored: StoredResponse) -> Reply:
        """The reply to a retried request: the stored one, the finished run's, or 409 (running)."""
        headers = {"Idempotent-Replayed": "true"}
        if stored.status_code != 0:
            return Reply(stored.status_code, stored.body.encode(), headers)
        sim_id = str(jsonutil.loads(stored.body)["sim_id"])
        row = await self._repo.get(conn, tenant_id, sim_id)
        if row is not None and row.status in ("succeeded", "failed"):
            return replace(final_reply(row), headers={**headers, **location(row)})
        raise Conflict(
            f"the request with this Idempotency-Key is still running as {sim_id}; "
            f"follow {RUNS_PATH}/{sim_id}",
            headers={"Location": f"{RUNS_PATH}/{sim_id}"},
            extensions={"sim_id": sim_id},
        )

    async def _settle(
        self, tx: Transaction, final: RunRow, *, stale_before_us: int | None = None
    ) -> bool:
        """Move a ``running`` run to ``final`` (succeeded or failed) and log its event.

        Applies only to a run this process holds or, with ``stale_before_us``, one whose lease
        ran out before then; returns whether it applied.
        """
        applied = await self._repo.transition(
            tx.conn,
            final.sim_id,
            from_status=("running",),
            owner=None if stale_before_us is not None else self._owner,
            stale_before_us=stale_before_us,
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
            await self.append(tx, event, final)
        return applied
