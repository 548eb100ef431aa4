"""The automation loop: anomaly → simulation → proposal (→ decision → execution → verification).

Two parts, so that nothing is lost or done twice when the process is killed at any point:

* **Intake** — a change-log consumer (:class:`~opstwin.aiw.consumers.LogConsumer`, name
  ``automation``, with its own persisted cursor) that reads ``opstwin.anomaly.detected`` and, for
  each one whose ``recommended_next`` is ``sim_run``, inserts a *task* in ``automation_tasks``
  in the same transaction as its cursor. Every anomaly becomes exactly one task. An anomaly the
  detector only asks to ``observe`` (a low spike) becomes a task too, taken up ``recheck_s``
  later and only if the anomaly is still open: an excursion that lasts is acted on even when
  its first alarm looked transient (the detector keeps an excursion's first kind and severity).
* **Worker** — takes pending tasks in order and, for each: finds the twin's playbook for
  (asset, metric, kind); while a proposal is still active on an asset the playbook would change
  ("never two proposals in flight for the same asset") it waits, looking again every
  ``recheck_s``; ranks the playbook's candidate
  values of each of its setpoints by simulation (``POST /sim/recommend`` semantics, each run
  under an idempotency key of the anomaly); proposes the best improvement through the proposal
  service — with an ``Idempotency-Key`` derived from the anomaly, so a retry after a crash finds
  the proposal it made instead of making another — and marks the task done. From there the
  policy decides and the executor executes and verifies (:mod:`.executor`): that part resumes
  from stored state too. The loop proposes only a candidate the simulation says improves with
  probability at least ``min_p_improvement``; when none does yet (the first samples of a drift
  barely show it), the task stays pending and is looked at again every ``recheck_s`` while the
  anomaly lasts (at most :data:`MAX_REEVALUATIONS` times). When one of its proposals is rolled
  back or fails, or is verified while its anomaly stays open (a drift that kept growing, a
  correction that was not enough), the task is reopened and the loop looks again with fresh
  evidence — the readings since the setpoint changed — (at most :data:`MAX_PROPOSALS` proposals
  per anomaly).

The loop acts as its own principal, ``automation`` with role ``agent`` (it proposes; it cannot
approve). Automatic execution is the platform's (``system``) under the policy, and the audit
records it so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.actions import repository as repo
from opstwin.actions.service import ProposalRequest, ProposalService
from opstwin.actions.tables import automation_tasks
from opstwin.actions.workflow import Actor
from opstwin.aiw.changelog import ChangeLog, EventFilter, LogRow
from opstwin.aiw.consumers import ConsumerSettings, LogConsumer
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Database, Transaction
from opstwin.kit.errors import OpsTwinError
from opstwin.kit.idempotency import request_hash
from opstwin.twins.model import Playbook, TwinSpec
from opstwin.twins.registry import TwinRegistry

if TYPE_CHECKING:
    from opstwin.simulation.service import SimulationService

log = structlog.get_logger("opstwin.automation")

CONSUMER_NAME = "automation"
PRINCIPAL = "automation"
"""The loop's principal id (role ``agent``)."""
ANOMALY_DETECTED = "opstwin.anomaly.detected"
PROPOSAL_ENDED = frozenset(
    {"opstwin.proposal.rolled_back", "opstwin.proposal.failed", "opstwin.proposal.succeeded"}
)
"""A proposal of the loop ending so reopens its task (the anomaly may still need a fix): always
after a rollback or failure, after a verified change only while its anomaly is still open."""
MAX_PROPOSALS = 3
"""Proposals the loop makes for one anomaly at most (after rollbacks or failures)."""
MAX_ATTEMPTS = 3
"""Failures (simulation or proposal refused) before a task is given up."""
MAX_REEVALUATIONS = 12
"""Looks at an anomaly whose simulation shows no improvement yet, before settling on none."""


@dataclass(frozen=True, slots=True)
class Task:
    tenant_id: str
    anomaly_id: str
    twin_id: str
    asset_id: str
    metric: str
    kind: str
    attempts: int


def _insert(conn: AsyncConnection, table: Any) -> Any:
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


class AnomalyIntake:
    """The consumer's handler: one pending task per anomaly that asks for a simulation."""

    def __init__(self, clock: Clock, on_commit: Any) -> None:
        self._clock = clock
        self._on_commit = on_commit

    async def load(self, conn: AsyncConnection) -> None:
        """Nothing is kept in memory: the tasks table is the state."""

    async def handle(self, tx: Transaction, rows: list[LogRow]) -> None:
        now_us = to_micros(self._clock.now())
        values = []
        for row in rows:
            if row.type in PROPOSAL_ENDED:
                await self._reopen(tx, row, now_us)
                continue
            if row.type != ANOMALY_DETECTED:
                continue
            data = jsonutil.loads(row.envelope).get("data") or {}
            nxt = data.get("recommended_next")
            if nxt not in ("sim_run", "observe"):
                continue
            # "observe" (a low spike): watched, and taken up like the others only if it is still
            # open ``recheck_s`` later — a sustained excursion is no transient.
            watching = nxt == "observe"
            values.append(
                {
                    "tenant_id": row.tenant_id,
                    "anomaly_id": str(data["anomaly_id"]),
                    "twin_id": str(data["twin_id"]),
                    "asset_id": str(data["asset_id"]),
                    "metric": str(data["metric"]),
                    "kind": str(data["kind"]),
                    "state": "pending",
                    "proposal_id": None,
                    "detail": "watching: acted on if it lasts" if watching else None,
                    "attempts": 1 if watching else 0,
                    "created_at_us": now_us,
                    "updated_at_us": now_us,
                }
            )
        if values:
            await tx.conn.execute(
                _insert(tx.conn, automation_tasks).values(values).on_conflict_do_nothing()
            )
            tx.after_commit(self._on_commit)

    async def _reopen(self, tx: Transaction, row: LogRow, now_us: int) -> None:
        """A proposal of the loop ended: look at its anomaly again (a verified one only while
        the anomaly is open)."""
        data = jsonutil.loads(row.envelope).get("data") or {}
        anomaly_id = data.get("anomaly_id")
        if anomaly_id is None or (data.get("proposer") or {}).get("principal_id") != PRINCIPAL:
            return
        if data.get("state") == "succeeded":
            found = await repo.anomaly_record(tx.conn, row.tenant_id, str(anomaly_id))
            if found is None or found[0] != "open":
                return
        result = await tx.conn.execute(
            update(automation_tasks)
            .where(
                automation_tasks.c.tenant_id == row.tenant_id,
                automation_tasks.c.anomaly_id == anomaly_id,
                automation_tasks.c.state == "proposed",
            )
            .values(
                state="pending",
                detail=f"proposal {data.get('proposal_id')} ended {data.get('state')}; "
                "looking again while the anomaly lasts",
                updated_at_us=now_us,
            )
        )
        if result.rowcount:
            tx.after_commit(self._on_commit)


class AutomationLoop:
    """Intake consumer plus worker (see the module docstring)."""

    def __init__(
        self,
        *,
        db: Database,
        changelog: ChangeLog,
        clock: Clock,
        proposals: ProposalService,
        simulation: SimulationService,
        twins: TwinRegistry,
        samples: int,
        poll_interval_s: float,
        recheck_s: float = 5.0,
        min_p_improvement: float = 0.95,
    ) -> None:
        self._db = db
        self._clock = clock
        self._proposals = proposals
        self._simulation = simulation
        self._twins = twins
        self._samples = samples
        self._poll_interval_s = poll_interval_s
        self._recheck_s = recheck_s
        self._min_p = min_p_improvement
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.intake = LogConsumer(
            CONSUMER_NAME,
            db=db,
            changelog=changelog,
            clock=clock,
            handler=AnomalyIntake(clock, self.poke),
            flt=EventFilter(types=frozenset({ANOMALY_DETECTED, *PROPOSAL_ENDED})),
            settings=ConsumerSettings(page_size=200, poll_interval_s=poll_interval_s),
        )

    def poke(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        await self.intake.start()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="opstwin-automation")

    async def stop(self) -> None:
        await self.intake.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                while await self.run_once():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # logged; the task stays pending and is retried at the next poll
                log.exception("automation pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    async def pending(self) -> list[Task]:
        """Pending tasks that are due: new ones, and the others ``recheck_s`` after their last
        attempt."""
        due_us = to_micros(self._clock.now()) - round(self._recheck_s * 1_000_000)
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(automation_tasks)
                .where(
                    automation_tasks.c.state == "pending",
                    (automation_tasks.c.attempts == 0)
                    | (automation_tasks.c.updated_at_us <= due_us),
                )
                .order_by(automation_tasks.c.created_at_us, automation_tasks.c.anomaly_id)
                .limit(50)
            )
            return [
                Task(
                    r.tenant_id,
                    r.anomaly_id,
                    r.twin_id,
                    r.asset_id,
                    r.metric,
                    r.kind,
                    int(r.attempts),
                )
                for r in rows
            ]

    async def run_once(self) -> bool:
        """Work through the pending tasks; True when there may be more."""
        tasks = await self.pending()
        for task in tasks:
            await self.process(task)
        return len(tasks) == 50

    async def _finish(
        self, task: Task, state: str, detail: str | None, proposal_id: str | None = None
    ) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(
                update(automation_tasks)
                .where(
                    automation_tasks.c.tenant_id == task.tenant_id,
                    automation_tasks.c.anomaly_id == task.anomaly_id,
                )
                .values(
                    state=state,
                    detail=detail,
                    proposal_id=proposal_id,
                    attempts=task.attempts + 1,
                    updated_at_us=to_micros(self._clock.now()),
                )
            )
        log.info(
            "automation task " + state,
            anomaly_id=task.anomaly_id,
            asset_id=task.asset_id,
            metric=task.metric,
            kind=task.kind,
            proposal_id=proposal_id,
            detail=detail,
        )

    async def process(self, task: Task) -> None:
        """Take one task as far as a proposal (or a recorded reason not to)."""
        actor = Actor(PRINCIPAL, task.tenant_id, "agent")
        async with self._db.read() as conn:
            made = await repo.proposals_for_anomaly(conn, task.tenant_id, task.anomaly_id)
            live = [pid for pid, state in made if state in repo.ACTIVE_STATES]
            if live:  # a retry after a crash: the proposal exists already
                await self._finish(task, "proposed", "proposal made before a restart", live[0])
                return
            found = await repo.anomaly_record(conn, task.tenant_id, task.anomaly_id)
            if found is not None and found[0] != "open" and (task.attempts > 0 or made):
                await self._finish(
                    task,
                    "done" if made else "skipped",
                    f"the anomaly ended after {len(made)} proposal(s)"
                    if made
                    else "the anomaly ended before a fix was needed",
                )
                return
            if len(made) >= MAX_PROPOSALS:
                await self._finish(
                    task, "no_action", f"{len(made)} proposals for this anomaly did not hold"
                )
                return
            twin = await self._twins.find(conn, task.tenant_id, task.twin_id)
            if twin is None:
                await self._finish(task, "skipped", f"twin {task.twin_id!r} no longer exists")
                return
            playbook = _playbook(twin.spec, task)
            if playbook is None:
                await self._finish(
                    task,
                    "skipped",
                    f"twin {task.twin_id!r} has no playbook for {task.kind} of "
                    f"{task.asset_id}/{task.metric}",
                )
                return
            for action in playbook.actions:
                asset = action.asset or playbook.asset
                active = await repo.active_on_asset(conn, task.tenant_id, task.twin_id, asset)
                if active:
                    # One proposal per asset: wait for it to end, then look at this anomaly
                    # with what that change left (it may have fixed it, or not).
                    pid, state = active[0]
                    detail = f"proposal {pid} is still {state} on {asset}: one proposal per asset"
                    if task.attempts + 1 < MAX_REEVALUATIONS:
                        await self._again(task, detail + "; will look again")
                    else:
                        await self._finish(task, "skipped", detail)
                    return
        try:
            best = await self._rank(task, actor, playbook)
        except OpsTwinError as exc:
            await self._retry_or_fail(task, f"simulation failed: {exc.detail}")
            return
        if best is None or best[0] < self._min_p:
            # Early in an excursion the evidence may not show it yet (a drift has only begun):
            # look again while the anomaly lasts, a bounded number of times.
            detail = (
                "no candidate of the playbook improves on doing nothing"
                if best is None
                else f"the best candidate ({best[1][1]} → "
                f"{best[1][2]['recommendation']['recommended']:g}) improves with probability "
                f"{best[0]:.2f} only (< {self._min_p:g})"
            )
            if task.attempts + 1 < MAX_REEVALUATIONS:
                await self._again(task, detail + "; will look again")
            else:
                await self._finish(task, "no_action", detail)
            return
        asset, setpoint, record = best[1]
        rec = record["recommendation"]
        improvement = (rec.get("expected_improvement") or {}).get("value")
        rationale = (
            f"playbook {playbook.id}: {task.kind} of {task.asset_id}/{task.metric} "
            f"(anomaly {task.anomaly_id}); simulation {record['sim_id']} recommends "
            f"{setpoint} {rec['current']:g} → {rec['recommended']:g}"
            + (
                ""
                if improvement is None
                else f" ({rec['objective']['output']} {improvement:+.4g}, "
                f"P(improvement) {rec.get('p_improvement', 0):.2f})"
            )
        )
        request = ProposalRequest(
            twin_id=task.twin_id,
            asset_id=asset,
            setpoint=setpoint,
            value=float(rec["recommended"]),
            rationale=rationale,
            anomaly_id=task.anomaly_id,
            sim_id=record["sim_id"],
        )
        key = f"automation:{task.anomaly_id}:{len(made)}"
        try:
            created = await self._proposals.create(
                actor,
                request,
                idempotency_key=key,
                req_hash=request_hash("POST", "/proposals", key.encode()),
            )
        except OpsTwinError as exc:
            await self._retry_or_fail(task, f"proposal refused: {exc.detail}")
            return
        body = created.body
        await self._finish(
            task,
            "proposed",
            f"{body['state']} (confidence {body['confidence']['total']:.3f})",
            body["proposal_id"],
        )

    async def _retry_or_fail(self, task: Task, detail: str) -> None:
        if task.attempts + 1 >= MAX_ATTEMPTS:
            await self._finish(task, "failed", detail)
            return
        await self._again(task, detail)
        log.warning("automation task will be retried", anomaly_id=task.anomaly_id, detail=detail)

    async def _again(self, task: Task, detail: str) -> None:
        """Keep the task pending; it is taken up again ``recheck_s`` from now."""
        async with self._db.write() as tx:
            await tx.conn.execute(
                update(automation_tasks)
                .where(
                    automation_tasks.c.tenant_id == task.tenant_id,
                    automation_tasks.c.anomaly_id == task.anomaly_id,
                )
                .values(
                    attempts=task.attempts + 1,
                    detail=detail,
                    updated_at_us=to_micros(self._clock.now()),
                )
            )

    async def _rank(
        self, task: Task, actor: Actor, playbook: Playbook
    ) -> tuple[float, tuple[str, str, dict[str, Any]]] | None:
        """P(improvement) and (asset, setpoint, sim record) of the most probable improvement."""
        best: tuple[float, tuple[str, str, dict[str, Any]]] | None = None
        for action in playbook.actions:
            asset = action.asset or playbook.asset
            body = {
                "twin_id": task.twin_id,
                "asset_id": asset,
                "setpoint": action.setpoint,
                "anomaly": {
                    "kind": task.kind,
                    "metric": task.metric,
                    "asset_id": task.asset_id,
                    "anomaly_id": task.anomaly_id,
                },
                "samples": self._samples,
            }
            record = await self._recommend(task, actor, body)
            rec = record.get("recommendation") or {}
            if rec.get("recommended") is None or rec.get("do_nothing"):
                continue
            p = float(rec.get("p_improvement") or 0.0)
            if best is None or p > best[0]:
                best = (p, (asset, action.setpoint, record))
        return best

    async def _recommend(self, task: Task, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        from opstwin.simulation.schemas import SimRecommendIn

        parsed = SimRecommendIn.model_validate(body)
        async with self._db.read() as conn:
            prepared = await self._simulation.prepare_recommendation(
                conn, task.tenant_id, parsed.model_dump(by_alias=True)
            )
        # One run per look (a re-evaluation must see fresh evidence, not replay the last run);
        # a retry of the same look after a crash replays it.
        key = f"automation:{task.anomaly_id}:{task.attempts}:{body['asset_id']}:{body['setpoint']}"
        reply = await self._simulation.submit(
            prepared,
            tenant_id=task.tenant_id,
            principal_id=actor.principal_id,
            idempotency_key=key,
            req_hash=request_hash("POST", "/sim/recommend", key.encode()),
        )
        record: dict[str, Any] = jsonutil.loads(reply.body)
        if record.get("status") != "succeeded":
            raise OpsTwinError(f"simulation {record.get('sim_id')} is {record.get('status')}")
        return record

    async def tasks(self, tenant_id: str) -> Sequence[dict[str, Any]]:
        """Every task of a tenant, oldest first (status views and tests)."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(automation_tasks)
                .where(automation_tasks.c.tenant_id == tenant_id)
                .order_by(automation_tasks.c.created_at_us, automation_tasks.c.anomaly_id)
            )
            return [dict(r._mapping) for r in rows]


def _playbook(twin: TwinSpec, task: Task) -> Playbook | None:
    for playbook in twin.playbooks:
        if (
            playbook.asset == task.asset_id
            and playbook.metric == task.metric
            and task.kind in playbook.kinds
        ):
            return playbook
    return None
