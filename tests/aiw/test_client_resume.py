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


#: Events the producer appends at most while waiting for the slow reader to be cut off
#: (30 kB each: 1,500 is 45 MB, far more than any loopback socket buffer holds).
MAX_EVENTS = 1_500


async def test_follow_resumes_after_being_cut_off(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    """The reader stays slow until the server cuts it off, and the producer keeps appending
    until then: how much the sockets buffer (kernel autotuning, machine speed) decides when the
    cut-off comes, not whether it comes. Then a last event marks the end."""
    disconnects = services.metrics.feed_disconnects.labels("slow_consumer")
    before = disconnects._value.get()

    def cut_off() -> bool:
        return bool(disconnects._value.get() > before)

    seen: list[int] = []
    async with httpx.AsyncClient(base_url=live_server.url) as client:

        async def produce() -> int:
            produced = 0
            while produced < 200 or (not cut_off() and produced < MAX_EVENTS):
                batch = range(produced, produced + 20)
                await append(services, [ext_event(i, pad="x" * 30_000) for i in batch])
                produced += 20
            await append(services, [ext_event(produced)])  # the end
            return produced

        producer = asyncio.create_task(produce())
        async with asyncio.timeout(120):
            async for frame in follow(
                client, token=keys.by_role[Role.viewer].token, types="ext.test.*"
            ):
                n = json.loads(frame.data)["data"]["n"]
                seen.append(n)
                if producer.done() and n == producer.result():
                    break
                if not cut_off():
                    await asyncio.sleep(0.05)  # slow until the server gives up on it
        total = await producer
    assert cut_off(), f"the slow reader was never cut off ({total} events of 30 kB)"
    assert seen == list(range(total + 1))
