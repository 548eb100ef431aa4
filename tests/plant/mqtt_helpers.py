"""Helpers for tests against the real Mosquitto: a topic prefix per test (so tests never see
each other's retained messages), a recording subscriber, and cleanup of retained reports."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import orjson

from tests.conftest import require_service

HOST, PORT = "127.0.0.1", 1883
URL = f"mqtt://{HOST}:{PORT}"


def unique_prefix() -> str:
    require_service("Mosquitto", HOST, PORT)
    return f"t{secrets.token_hex(5)}"


@dataclass
class Recorder:
    """Every message received on the subscriptions, in order, with a way to wait for one."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, topic: str, payload: bytes, retained: bool) -> None:
        self.messages.append((topic, payload, retained))
        self._arrived.set()

    def json(self, topic_suffix: str = "") -> list[dict[str, Any]]:
        return [orjson.loads(p) for t, p, _ in self.messages if t.endswith(topic_suffix) and p]

    async def wait_until(self, condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
        """Until ``condition()`` holds, re-checked as messages arrive."""
        async with asyncio.timeout(deadline_s):
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], deadline_s: float = 5.0
    ) -> dict[str, Any]:
        """The first message (topic, decoded JSON) satisfying ``predicate``, waiting if needed."""
        seen = 0
        async with asyncio.timeout(deadline_s):
            while True:
                for topic, payload, _ in self.messages[seen:]:
                    seen += 1
                    if payload:
                        body = orjson.loads(payload)
                        if predicate(topic, body):
                            return dict(body)
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def recording(*topic_filters: str) -> AsyncIterator[Recorder]:
    """Subscribe to ``topic_filters`` (QoS 1) and record what arrives while inside."""
    recorder = Recorder()
    async with aiomqtt.Client(HOST, PORT) as client:
        for topic_filter in topic_filters:
            await client.subscribe(topic_filter, qos=1)

        async def consume() -> None:
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                recorder.add(str(message.topic), data, bool(message.retain))

        task = asyncio.create_task(consume())
        try:
            yield recorder
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client(HOST, PORT) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


async def clear_retained(topics: list[str]) -> None:
    """Delete retained messages (an empty retained payload), so the broker keeps nothing."""
    async with aiomqtt.Client(HOST, PORT) as client:
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)
