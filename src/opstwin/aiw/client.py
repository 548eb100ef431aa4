"""A resuming `/subscribe` client: parses Server-Sent Events and reconnects with Last-Event-ID.

Used by `opstwin tail` (and usable by any Python agent). It never loses or repeats a change:
every frame's ``id`` is remembered (events and bookmarks alike) and sent back as
``Last-Event-ID`` when the stream has to be reopened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from opstwin.kit import jsonutil

log = structlog.get_logger(__name__)

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 15.0


@dataclass(slots=True)
class SseFrame:
    """One server-sent event as received."""

    event: str = "message"
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    def json(self) -> Any:
        return jsonutil.loads(self.data)


class StreamFailed(Exception):
    """The server refused the stream (a problem document that retrying won't fix)."""

    def __init__(self, status: int, problem: Any) -> None:
        detail = problem.get("detail") if isinstance(problem, dict) else problem
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.problem = problem


async def parse_frames(lines: AsyncIterator[str]) -> AsyncIterator[SseFrame]:
    """Frames from the lines of an SSE body (comments are skipped)."""
    frame = SseFrame()
    async for line in lines:
        if not line:
            if frame.data_lines or frame.id is not None or frame.event != "message":
                yield frame
            frame = SseFrame()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                frame.data_lines.append(value)
            elif name == "id":
                frame.id = value
            elif name == "event":
                frame.event = value


async def follow(
    client: httpx.AsyncClient,
    *,
    token: str,
    since: str | None = None,
    types: str | None = None,
    twin_id: str | None = None,
) -> AsyncIterator[SseFrame]:
    """Change events from ``/subscribe`` for ever, resuming after disconnects.

    Bookmarks move the resume point but are not yielded; ``event: error`` frames (the server
    ending the stream, e.g. a slow consumer) lead to a reconnect from the last id. A 4xx before
    the stream starts raises :class:`StreamFailed`; network errors and 5xx are retried with
    exponential backoff.
    """
    last_id = since
    backoff = _BACKOFF_START_S
    while True:
        params = {k: v for k, v in {"types": types, "twin_id": twin_id}.items() if v}
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        try:
            async with client.stream(
                "GET", "/subscribe", params=params, headers=headers, timeout=None
            ) as response:
                if 400 <= response.status_code < 500:
                    body = await response.aread()
                    raise StreamFailed(response.status_code, jsonutil.loads(body) if body else None)
                response.raise_for_status()
                backoff = _BACKOFF_START_S
                async for frame in parse_frames(response.aiter_lines()):
                    if frame.id is not None:
                        last_id = frame.id
                    if frame.event == "message":
                        yield frame
                    elif frame.event == "error":
                        log.warning("subscribe.ended_by_server", problem=frame.data)
                        break
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            log.warning("subscribe.reconnecting", error=str(exc), in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
