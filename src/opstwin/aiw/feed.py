"""LogFeed: one reader of the change log fanning out to every live subscriber.

The feed keeps ``position`` — the highest sequence it has read — and a set of
:class:`Subscription` buffers. It wakes when this process committed an append (in-process
listener), when PostgreSQL announces one from any process (LISTEN/NOTIFY), and otherwise every
``poll_interval_s`` (appends by other processes on SQLite). Each new entry is read from the
database once, rendered as an SSE frame once, and offered to every subscriber, which keeps
only what its tenant and filter select. A subscriber whose buffer is full is marked
overflowed and disconnected: it resumes by cursor and never stalls the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from opstwin.aiw.changelog import ChangeLog, EventFilter, LogRow
from opstwin.config import FeedSettings
from opstwin.kit.db import Database
from opstwin.ops.metrics import Metrics

log = structlog.get_logger(__name__)

_READ_BATCH = 1000
_RETRY_S = 1.0  # pause after a failed read (database restarting) before trying again


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One change, as every subscriber will receive it."""

    seq: int
    tenant_id: str
    type: str
    twin_id: str | None
    frame: bytes


def event_frame(changelog: ChangeLog, row: LogRow) -> bytes:
    """The SSE frame of one change: its cursor as ``id``, the envelope as ``data``."""
    cursor = changelog.codec.encode(row.seq)
    return f"id: {cursor}\ndata: {changelog.with_cursor(row)}\n\n".encode()


class Subscription:
    """A subscriber's bounded buffer of entries it has not yet written out."""

    def __init__(self, tenant_id: str, flt: EventFilter, capacity: int, registered_at: int) -> None:
        self.tenant_id = tenant_id
        self.filter = flt
        self.capacity = capacity
        #: The feed position when this subscription was registered: every entry after it is
        #: offered to the buffer; everything up to it must be read from the database.
        self.registered_at = registered_at
        self.overflowed = False
        self._buffer: deque[FeedEntry] = deque()
        self._ready = asyncio.Event()
        self._on_overflow: Callable[[], None] | None = None

    def on_overflow(self, callback: Callable[[], None]) -> None:
        self._on_overflow = callback

    def offer(self, entries: list[FeedEntry]) -> int:
        """Buffer what this subscriber wants of one fan-out; returns how many entries.

        A subscriber that still holds more than ``capacity`` entries from earlier fan-outs has
        not kept up: it is marked overflowed (and cut off) instead. One fan-out is always
        taken whole, so the buffer never exceeds ``capacity`` plus one read page.
        """
        if self.overflowed:
            return 0
        if len(self._buffer) > self.capacity:
            self.overflowed = True
            self._buffer.clear()
            self._ready.set()
            if self._on_overflow is not None:
                self._on_overflow()
            return 0
        tenant, flt = self.tenant_id, self.filter
        wanted = [e for e in entries if e.tenant_id == tenant and flt.matches(e.type, e.twin_id)]
        if wanted:
            self._buffer.extend(wanted)
            self._ready.set()
        return len(wanted)

    def drain(self) -> list[FeedEntry]:
        entries = list(self._buffer)
        self._buffer.clear()
        self._ready.clear()
        return entries

    def tick(self) -> None:
        """Wake the subscriber so it can check its heartbeat and bookmark deadlines."""
        self._ready.set()

    async def wait(self) -> None:
        """Until something is buffered, the buffer overflowed, or the feed's ticker fired.

        No timer per subscriber: the feed's single ticker wakes every subscriber about once a
        second (see :meth:`LogFeed._tick`); with a thousand subscribers that is far cheaper
        than a thousand timeouts rescheduled on every change.
        """
        await self._ready.wait()


class LogFeed:
    """The single tail of the change log in this process."""

    def __init__(
        self, db: Database, changelog: ChangeLog, settings: FeedSettings, metrics: Metrics
    ) -> None:
        self._db = db
        self._changelog = changelog
        self._settings = settings
        self._metrics = metrics
        self._subscribers: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._listen_conn: Any = None
        self.position = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def start(self) -> None:
        async with self._db.read() as conn:
            self.position = (await self._changelog.marks(conn)).head
        self._metrics.changelog_head.set(self.position)
        self._changelog.add_listener(self.poke)
        if self._db.backend == "postgresql":
            await self._listen()
        self._task = asyncio.create_task(self._run(), name="opstwin-log-feed")
        self._ticker = asyncio.create_task(self._tick(), name="opstwin-feed-ticker")

    async def stop(self) -> None:
        for task in (self._task, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._ticker = None
        if self._listen_conn is not None:
            await self._listen_conn.close()
            self._listen_conn = None

    def poke(self) -> None:
        """Something was appended: read it now rather than at the next poll."""
        self._wake.set()

    async def _listen(self) -> None:
        """LISTEN on a dedicated asyncpg connection so appends by any process wake us."""
        import asyncpg  # only with the postgres extra; imported where it is needed

        url = self._db.url.set(drivername="postgresql")
        self._listen_conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        await self._listen_conn.add_listener(self._db.notify_channel, lambda *_args: self.poke())

    def subscribe(self, tenant_id: str, flt: EventFilter) -> Subscription:
        sub = Subscription(
            tenant_id, flt, self._settings.subscriber_buffer, registered_at=self.position
        )
        self._subscribers.add(sub)
        self._metrics.feed_subscribers.set(len(self._subscribers))
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        self._metrics.feed_subscribers.set(len(self._subscribers))

    async def wait_beyond(self, seq: int, max_wait: float) -> bool:
        """Wait until the feed has read past ``seq``; False if ``max_wait`` seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while self.position <= seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            advanced = self._advanced
            try:
                async with asyncio.timeout(remaining):
                    await advanced.wait()
            except TimeoutError:
                return self.position > seq
        return True

    @property
    def tick_s(self) -> float:
        """How often idle subscribers are woken to check heartbeat and bookmark deadlines."""
        settings = self._settings
        return min(1.0, settings.heartbeat_s / 4, settings.bookmark_interval_s / 4)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            for sub in list(self._subscribers):
                sub.tick()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_fanout = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_interval_s):
                    await self._wake.wait()
            # Adaptive batching: right after a fan-out, let changes gather for the rest of the
            # interval, so a busy log wakes each subscriber once per interval with everything
            # new rather than once per change. An idle log is read at once.
            delay = last_fanout + self._settings.fanout_interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._wake.clear()
            last_fanout = loop.time()
            try:
                await self.catch_up()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("feed.read_failed", error=str(exc))
                await asyncio.sleep(_RETRY_S)

    async def catch_up(self) -> None:
        """Read and fan out everything committed after ``position``."""
        while True:
            async with self._db.read() as conn:
                marks = await self._changelog.marks(conn)
                if marks.head <= self.position:
                    return
                if not self._subscribers:
                    # Nobody to fan out to: move on without reading or rendering the entries (a
                    # subscriber that arrives later catches up from the database itself).
                    self._moved(marks.head)
                    return
                page = await self._changelog.read(
                    conn, after=self.position, upto=marks.head, limit=_READ_BATCH, tenant_id=None
                )
            entries = [
                FeedEntry(
                    row.seq, row.tenant_id, row.type, row.twin_id, event_frame(self._changelog, row)
                )
                for row in page.rows
            ]
            delivered = sum(sub.offer(entries) for sub in list(self._subscribers))
            self._metrics.feed_deliveries.inc(delivered)
            self._moved(page.next_seq)
            if not page.has_more:
                return

    def _moved(self, position: int) -> None:
        self.position = position
        self._metrics.changelog_head.set(position)
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()
