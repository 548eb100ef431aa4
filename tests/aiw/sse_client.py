"""A small, strict SSE parser for tests (spec: HTML Living Standard, server-sent events)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx


@dataclass
class Frame:
    event: str = "message"
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    @property
    def is_comment_only(self) -> bool:
        return not self.data_lines and self.comments != [] and self.id is None


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    frame = Frame()
    async for line in response.aiter_lines():
        if line == "":
            if (
                frame.data_lines
                or frame.comments
                or frame.id is not None
                or frame.event != "message"
            ):
                yield frame
            frame = Frame()
            continue
        if line.startswith(":"):
            frame.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            frame.data_lines.append(value)
        elif name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "retry":
            frame.retry = int(value)
