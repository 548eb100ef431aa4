"""The resuming /subscribe client: cut off as a slow consumer, it reconnects with Last-Event-ID
and still sees every change exactly once, in order."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from opstwin.aiw.client import follow
from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.aiw.helpers import append, ext_event
from tests.conftest import Keys, LiveServer


@pytest.fixture
def feed_overrides() -> dict[str, float | int]:
    return {"subscriber_buffer": 5, "fanout_interval_s": 0.0}


async def test_follow_resumes_after_being_cut_off(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    total = 200
    disconnects = services.metrics.feed_disconnects.labels("slow_consumer")
    before = disconnects._value.get()
    seen: list[int] = []
    async with httpx.AsyncClient(base_url=live_server.url) as client:

        async def produce() -> None:
            for start in range(0, total, 20):
                # 30 kB each: enough to fill the socket buffers, so a slow reader backs up
                # into the server's subscriber buffer.
                await append(
                    services, [ext_event(i, pad="x" * 30_000) for i in range(start, start + 20)]
                )

        producer = asyncio.create_task(produce())
        async with asyncio.timeout(60):
            async for frame in follow(
                client, token=keys.by_role[Role.viewer].token, types="ext.test.*"
            ):
                seen.append(json.loads(frame.data)["data"]["n"])
                if len(seen) < 60:
                    await asyncio.sleep(0.05)  # a deliberately slow consumer at first
                if len(seen) == total:
                    break
        await producer
    assert seen == list(range(total))
    assert disconnects._value.get() > before, (
        "the slow phase should have been cut off at least once"
    )
