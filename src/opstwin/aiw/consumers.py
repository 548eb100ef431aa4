"""Change-log consumers: in-process components that read the log from a persisted cursor.

A consumer (the anomaly detector, later the automation loop) handles a page of log entries
and, **in the same transaction**, records how far it got in ``consumer_cursors``. What it
writes and where it is therefore commit or roll back together: a crash or restart resumes at
the first entry whose effects were not committed — nothing lost, nothing done twice.

The cursor is advanced with a compare-and-set (``WHERE position = <what we last saw>``):
when two processes run the same consumer on one database, exactly one of them commits a
page; the other rolls back, reloads its state and carries on from the winner's position.

A consumer wakes when this process appended to the log (``ChangeLog.add_listener``, as the
feed does) and otherwise polls, for appends by other processes. Any in-memory state a
handler keeps is a cache of what it persisted: after a failed transaction it is reloaded
(:meth:`LogHandler.load`) before the next page.

A handler may also do a page's expensive, read-only work *before* the write transaction
(:class:`PreparingLogHandler`): on SQLite a write transaction holds the database's one write
lock, which every other writer waits for. ``prepare`` must not change what the handler
treats as committed; the usual shape is to compute on copies and swap them in from
``tx.after_commit`` in ``handle``, so a lost race or a failed commit leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog
from sqlalchemy import BigInteger, Column, String, Table, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import ChangeLog, EventFilter, LogRow
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Database, Transaction, metadata
from opstwin.kit.errors import OpsTwinError

log = structlog.get_logger(__name__)

#: One row per consumer: the highest log sequence whose effects it has committed.
consumer_cursors = Table(
    "consumer_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

# After a failed page (database restarting), wait this long before trying again.
RETRY_S = 1.0


class LostRace(Exception):
    """Another process advanced this consumer's cursor first."""


class LogHandler(Protocol):
    """What a consumer does with the entries it reads."""

    async def load(self, conn: AsyncConnection) -> None:
        """(Re)load persisted state; called at start and after any failed transaction."""
        ...

    async def handle(self, tx: Transaction, rows: list[LogRow]) -> None:
        """Apply ``rows`` (in log order) inside ``tx``; the cursor advances in the same one."""
        ...


@runtime_checkable
class PreparingLogHandler(LogHandler, Protocol):
    """A :class:`LogHandler` that does part of a page's work outside the write transaction.

    Optional: the consumer calls :meth:`prepare` when the handler has it. ``handle`` must
    still be correct on its own (it may be called without a ``prepare`` of the same rows,
    e.g. after a retry) and is the only place where effects become committed.
    """

    async def prepare(self, conn: AsyncConnection, rows: list[LogRow]) -> None:
        """Called with the read connection ``rows`` were read on, right before
        :meth:`handle` of the same ``rows``: compute what needs no write transaction."""
        ...


async def read_position(conn: AsyncConnection, name: str) -> int | None:
    """The committed position of consumer ``name`` (None: it never committed a page)."""
    found = await conn.execute(
        select(consumer_cursors.c.position).where(consumer_cursors.c.name == name)
    )
    value = found.scalar_one_or_none()
    return None if value is None else int(value)


async def advance_position(
    tx: Transaction, name: str, *, expected: int | None, position: int, now_us: int
) -> None:
    """Move ``name`` from ``expected`` to ``position`` (compare-and-set; :class:`LostRace`
    when another process moved it). ``expected=None``: the row must not exist yet."""
    if expected is None:
        try:
            async with tx.conn.begin_nested():
                await tx.conn.execute(
                    insert(consumer_cursors).values(
                        name=name, position=position, updated_at_us=now_us
                    )
                )
        except SQLAlchemyError as exc:  # the primary key exists: someone else was first
            raise LostRace(name) from exc
        return
    result = await tx.conn.execute(
        update(consumer_cursors)
        .where(consumer_cursors.c.name == name, consumer_cursors.c.position == expected)
        .values(position=position, updated_at_us=now_us)
    )
    if result.rowcount != 1:
        raise LostRace(name)


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """How a consumer reads: page size, the poll period for other processes' appends, and
    how long appends may gather after a page before the next is read.

    ``batch_window_s`` trades latency for throughput: while the log is busy, a consumer whose
    cost is mostly per page (per transaction, per series touched) handles one larger page per
    window instead of one small page per append. An idle log is still read at once.
    """

    page_size: int = 500
    poll_interval_s: float = 0.5
    batch_window_s: float = 0.0


class LogConsumer:
    """Runs a :class:`LogHandler` over the change log, from its persisted cursor, forever."""

    def __init__(
        self,
        name: str,
        *,
        db: Database,
        changelog: ChangeLog,
        clock: Clock,
        handler: LogHandler,
        flt: EventFilter,
        settings: ConsumerSettings | None = None,
    ) -> None:
        self.name = name
        self._db = db
        self._changelog = changelog
        self._clock = clock
        self._handler = handler
        self._prepare = handler.prepare if isinstance(handler, PreparingLogHandler) else None
        self._filter = flt
        self._settings = settings or ConsumerSettings()
        self._wake = asyncio.Event()
        #: Callers in wait_for; while there are any, the batch window is cut short.
        self._waiters = 0
        self._hurry = asyncio.Event()
        #: When the last page with entries for this consumer committed (event-loop time).
        self._last_page_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        #: The committed cursor as this process last saw it (None: no row yet).
        self._committed: int | None = None
        #: How far this process has scanned: past ``_committed`` only over entries the filter
        #: skipped (those need no write; rescanning them after a restart is harmless).
        self.position = 0
        self._advanced = asyncio.Event()

    async def start(self) -> None:
        self._changelog.add_listener(self.poke)
        self._task = asyncio.create_task(self._run(), name=f"opstwin-consumer-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """The log moved: read it now rather than at the next poll."""
        self._wake.set()

    async def wait_for(self, seq: int) -> None:
        """Until this consumer has scanned past ``seq`` (callers bound it with a timeout).
        A caller waiting is what the batch window trades away, so it reads at once."""
        self._waiters += 1
        try:
            while self.position < seq:
                self._hurry.set()
                await self._advanced.wait()
        finally:
            self._waiters -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Adaptive batching (ConsumerSettings.batch_window_s): right after a page, let
            # appends gather for the rest of the window; an idle log is read at once, and so
            # is a busy one that someone waits for.
            self._hurry.clear()
            delay = self._last_page_at + self._settings.batch_window_s - loop.time()
            if delay > 0 and not self._waiters:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._hurry.wait()
            self._wake.clear()
            try:
                while await self.step():
                    pass
            except (SQLAlchemyError, OSError) as exc:  # the database is restarting
                self._loaded = False
                log.warning("consumer.failed", consumer=self.name, error=str(exc))
                await asyncio.sleep(RETRY_S)
                continue
            except (OpsTwinError, LookupError, TypeError, ValueError) as exc:
                # An entry this handler cannot take: stop here, loudly, and retry — skipping
                # it would silently drop work; the log shows what to fix.
                self._loaded = False
                log.error("consumer.entry_failed", consumer=self.name, error=repr(exc))
                await asyncio.sleep(RETRY_S)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_interval_s):
                    await self._wake.wait()

    async def _load(self) -> None:
        async with self._db.read() as conn:
            committed = await read_position(conn, self.name)
            marks = await self._changelog.marks(conn)
            await self._handler.load(conn)
        start = committed if committed is not None else marks.compacted_through
        if start < marks.compacted_through:
            # Down for longer than the log's retention: the entries in between are gone.
            log.error(
                "consumer.skipped_compacted",
                consumer=self.name,
                position=start,
                compacted_through=marks.compacted_through,
            )
            start = marks.compacted_through
        self._committed = committed
        self._loaded = True
        self._moved_to(start)

    async def step(self) -> bool:
        """Handle one page; True when there may be more to read right away."""
        if not self._loaded:
            await self._load()
        async with self._db.read() as conn:
            marks = await self._changelog.marks(conn)
            if marks.head <= self.position:
                return False
            page = await self._changelog.read(
                conn,
                after=self.position,
                upto=marks.head,
                limit=self._settings.page_size,
                tenant_id=None,
                flt=self._filter,
            )
            if page.rows and self._prepare is not None:
                await self._prepare(conn, page.rows)
        if page.rows:
            try:
                async with self._db.write() as tx:
                    await advance_position(
                        tx,
                        self.name,
                        expected=self._committed,
                        position=page.next_seq,
                        now_us=to_micros(self._clock.now()),
                    )
                    await self._handler.handle(tx, page.rows)
            except LostRace:
                log.info("consumer.lost_race", consumer=self.name)
                self._loaded = False
                return True
            except BaseException:
                self._loaded = False  # the handler's in-memory state may be ahead of the db
                raise
            self._committed = page.next_seq
            self._last_page_at = asyncio.get_running_loop().time()
        self._moved_to(page.next_seq)
        return page.has_more

    def _moved_to(self, position: int) -> None:
        self.position = position
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()
