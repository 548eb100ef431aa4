"""`/subscribe` as Server-Sent Events: catch up from the database, then follow the feed.

Frames
  * a change: ``id: <cursor>`` + ``data: <envelope>`` (default event type, so a browser's
    ``EventSource.onmessage`` sees every change);
  * ``event: bookmark`` with ``id: <cursor>``: the stream moved past entries this subscriber's
    filter (or tenant) excluded — storing the id as ``Last-Event-ID`` skips them on resume;
  * ``: heartbeat`` comments every ``heartbeat_s`` of silence;
  * ``event: error`` (a problem document) right before the server ends the stream.

The first frame is sent at once (a bookmark for the starting position), so a client knows the
stream is open and has a resume point before any change happens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from opstwin.aiw.changelog import ChangeLog, EventFilter
from opstwin.aiw.feed import LogFeed, Subscription, event_frame
from opstwin.config import FeedSettings
from opstwin.kit import jsonutil
from opstwin.kit.db import Database
from opstwin.kit.errors import PROBLEM_TYPE_PREFIX
from opstwin.ops.metrics import Metrics

log = structlog.get_logger(__name__)

RETRY_MS = 2000  # reconnect delay suggested to clients
_OVERFLOW_GRACE_S = 1.0  # a blocked writer gets this long to notice its overflow before the cut
_CATCH_UP_PAGE = 500


class EventStream:
    """The frames one subscriber receives."""

    def __init__(
        self,
        *,
        db: Database,
        changelog: ChangeLog,
        feed: LogFeed,
        settings: FeedSettings,
        metrics: Metrics,
        tenant_id: str,
        flt: EventFilter,
        start_seq: int,
    ) -> None:
        self._db = db
        self._changelog = changelog
        self._feed = feed
        self._settings = settings
        self._metrics = metrics
        self._tenant_id = tenant_id
        self._flt = flt
        self._start_seq = start_seq
        self.subscription: Subscription = feed.subscribe(tenant_id, flt)

    def close(self) -> None:
        self._feed.unsubscribe(self.subscription)

    def record_overflow(self) -> None:
        self._metrics.feed_disconnects.labels("slow_consumer").inc()
        log.warning(
            "subscribe.slow_consumer", tenant=self._tenant_id, buffer=self.subscription.capacity
        )

    def _bookmark(self, seq: int) -> bytes:
        cursor = self._changelog.codec.encode(seq)
        data = jsonutil.dumps_str({"cursor": cursor, "sequence": f"{seq:020d}"})
        return f"event: bookmark\nid: {cursor}\ndata: {data}\n\n".encode()

    async def frames(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        sub = self.subscription
        last_id = self._start_seq  # the position the client would resume from
        yield f"retry: {RETRY_MS}\n".encode() + self._bookmark(last_id)
        last_frame_at = loop.time()

        # 1. Catch up from the database to where the live buffer starts.
        after = last_id
        while after < sub.registered_at:
            async with self._db.read() as conn:
                page = await self._changelog.read(
                    conn,
                    after=after,
                    upto=sub.registered_at,
                    limit=_CATCH_UP_PAGE,
                    tenant_id=self._tenant_id,
                    flt=self._flt,
                )
            if page.rows:
                yield b"".join(event_frame(self._changelog, row) for row in page.rows)
                last_id = page.rows[-1].seq
                last_frame_at = loop.time()
            after = page.next_seq
        scanned = max(after, last_id)

        # 2. Follow the live buffer (woken by new entries and by the feed's ticker).
        while True:
            await sub.wait()
            if sub.overflowed:
                yield _error_frame(
                    "slow-consumer",
                    "the subscriber fell more than the buffer behind; reconnect with Last-Event-ID to resume",
                )
                return
            entries = [e for e in sub.drain() if e.seq > last_id]
            now = loop.time()
            if entries:
                yield b"".join(e.frame for e in entries)
                last_id = entries[-1].seq
                last_frame_at = now
                continue
            # Nothing buffered: everything up to the feed position was offered and excluded.
            scanned = max(scanned, self._feed.position)
            if scanned > last_id and now - last_frame_at >= self._settings.bookmark_interval_s:
                yield self._bookmark(scanned)
                last_id = scanned
                last_frame_at = now
            elif now - last_frame_at >= self._settings.heartbeat_s:
                yield b": heartbeat\n\n"
                last_frame_at = now


def _error_frame(slug: str, detail: str) -> bytes:
    problem = {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": "Stream ended",
        "status": 503,
        "detail": detail,
    }
    return f"event: error\ndata: {jsonutil.dumps_str(problem)}\n\n".encode()


class EventStreamResponse(Response):
    """Streams an :class:`EventStream`; ends it when the client leaves or falls too far behind."""

    media_type = "text/event-stream"

    def __init__(self, stream: EventStream) -> None:
        # Like StreamingResponse: no body attribute, so no Content-Length header.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        completed = False
        try:
            async with anyio.create_task_group() as tg:
                cut: list[Any] = []

                def on_overflow() -> None:
                    self._stream.record_overflow()
                    # If the writer is stuck in send() (client not reading), cut it off.
                    handle = asyncio.get_running_loop().call_later(
                        _OVERFLOW_GRACE_S, tg.cancel_scope.cancel
                    )
                    cut.append(handle)

                self._stream.subscription.on_overflow(on_overflow)
                tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
                async with contextlib.aclosing(self._stream.frames()) as frames:
                    async for chunk in frames:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                completed = True
                for handle in cut:
                    handle.cancel()
                tg.cancel_scope.cancel()
        finally:
            self._stream.close()
        if completed:
            with anyio.move_on_after(_OVERFLOW_GRACE_S):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            log.info("subscribe.closed", overflowed=self._stream.subscription.overflowed)


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
