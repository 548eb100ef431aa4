"""GET /subscribe (SSE) against a real server: resume, heartbeat, bookmarks, slow consumers."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest

from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.aiw.helpers import append, ext_event
from tests.aiw.sse_client import Frame, frames
from tests.conftest import Keys, LiveServer


@pytest.fixture
def feed_overrides() -> dict[str, float | int]:
    return {"heartbeat_s": 0.3, "bookmark_interval_s": 0.2, "subscriber_buffer": 20}


async def _collect(
    stream: Any, count: int, *, kind: str = "message", within: float = 10
) -> list[Frame]:
    got: list[Frame] = []
    async with asyncio.timeout(within):
        async for frame in stream:
            if frame.event == kind:
                got.append(frame)
                if len(got) == count:
                    return got
    raise AssertionError(f"stream ended after {len(got)} of {count} {kind} frames")


async def test_first_frame_is_immediate_and_changes_follow(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    async with (
        httpx.AsyncClient(base_url=live_server.url, timeout=10) as http,
        http.stream(
            "GET", "/subscribe", params={"since": "now"}, headers=keys.headers(Role.viewer)
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        stream = frames(resp)
        async with asyncio.timeout(2):
            first = await anext(stream)
        assert first.event == "bookmark"
        assert first.retry is not None
        head = (
            await http.get("/diff", params={"since": "now"}, headers=keys.headers(Role.viewer))
        ).json()
        assert first.id == head["next_cursor"]
        appended = await append(services, [ext_event(i) for i in range(3)])
        got = await _collect(stream, 3)
    assert [f.id for f in got] == [services.changelog.cursor(a.seq) for a in appended]
    assert [json.loads(f.data)["data"]["n"] for f in got] == [0, 1, 2]
    assert [json.loads(f.data)["cursor"] for f in got] == [
        services.changelog.cursor(a.seq) for a in appended
    ]


async def test_disconnect_and_resume_with_last_event_id_loses_and_repeats_nothing(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    await append(services, [ext_event(i) for i in range(10)])
    headers = keys.headers(Role.viewer)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        async with http.stream("GET", "/subscribe", headers=headers) as resp:
            first_part = await _collect(frames(resp), 4)
        # Disconnected mid-stream; the world goes on.
        await append(services, [ext_event(i) for i in range(10, 15)])
        resume = {**headers, "Last-Event-ID": first_part[-1].id or ""}
        # Last-Event-ID wins over since=now.
        async with http.stream(
            "GET", "/subscribe", params={"since": "now"}, headers=resume
        ) as resp:
            stream = frames(resp)
            second_part = await _collect(stream, 11)
            await append(services, [ext_event(15)])
            live = await _collect(stream, 1)
    numbers = [json.loads(f.data)["data"]["n"] for f in first_part + second_part + live]
    assert numbers == list(range(16))


async def test_heartbeat_comment_arrives_when_idle(live_server: LiveServer, keys: Keys) -> None:
    async with (
        httpx.AsyncClient(base_url=live_server.url, timeout=10) as http,
        http.stream(
            "GET", "/subscribe", params={"since": "now"}, headers=keys.headers(Role.viewer)
        ) as resp,
    ):
        async with asyncio.timeout(5):
            async for frame in frames(resp):
                if "heartbeat" in frame.comments:
                    break


async def test_filtered_stream_gets_bookmarks_past_excluded_changes(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        params = {"since": "now", "types": "ext.wanted"}
        async with http.stream(
            "GET", "/subscribe", params=params, headers=keys.headers(Role.viewer)
        ) as resp:
            stream = frames(resp)
            await anext(stream)  # the opening bookmark
            appended = await append(services, [ext_event(i, type_="ext.other") for i in range(3)])
            (bookmark,) = await _collect(stream, 1, kind="bookmark")
            assert bookmark.id == services.changelog.cursor(appended[-1].seq)
            # Resuming from the bookmark delivers only what came after it.
            await append(services, [ext_event(9, type_="ext.wanted")])
            (wanted,) = await _collect(stream, 1)
    assert json.loads(wanted.data)["data"]["n"] == 9


async def test_other_tenants_changes_are_never_streamed(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    async with (
        httpx.AsyncClient(base_url=live_server.url, timeout=10) as http,
        http.stream(
            "GET", "/subscribe", params={"since": "now"}, headers=keys.auth(keys.other_viewer)
        ) as resp,
    ):
        stream = frames(resp)
        await anext(stream)
        await append(services, [ext_event(1), ext_event(2, tenant="other")])
        (only,) = await _collect(stream, 1)
    assert json.loads(only.data)["data"]["n"] == 2


async def test_errors_before_streaming_are_problems_not_streams(
    live_server: LiveServer, keys: Keys
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        bad = await http.get(
            "/subscribe", params={"since": "garbage"}, headers=keys.headers(Role.viewer)
        )
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"
        resume = await http.get(
            "/subscribe", headers={**keys.headers(Role.viewer), "Last-Event-ID": "x" * 39}
        )
        assert resume.status_code == 400
        anonymous = await http.get("/subscribe")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")


async def test_slow_subscriber_is_disconnected_while_a_fast_one_keeps_receiving(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    token = keys.by_role[Role.viewer].token
    host, port = live_server.url.removeprefix("http://").split(":")
    # The slow subscriber: sends its request, then never reads (its socket buffers fill up).
    # A small receive buffer (set before connecting, so the window stays small): the kernel can't
    # absorb the stream on the slow side, and the server's buffer for it must fill up.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        await _slow_and_fast(reader, writer, host, token, live_server, services)
    finally:
        writer.close()
        await writer.wait_closed()


async def _slow_and_fast(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    token: str,
    live_server: LiveServer,
    services: Services,
) -> None:
    writer.write(
        f"GET /subscribe?since=now HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    async with asyncio.timeout(5):
        while services.feed.subscriber_count < 1:
            await asyncio.sleep(0.01)

    total = 300
    payload = "x" * 30_000  # 300 × 30 kB ≫ loopback socket buffers
    async with (
        httpx.AsyncClient(base_url=live_server.url, timeout=30) as http,
        http.stream(
            "GET",
            "/subscribe",
            params={"since": "now"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        stream = frames(resp)
        await anext(stream)

        async def produce() -> None:
            for start in range(0, total, 10):
                await append(
                    services, [ext_event(i, pad=payload) for i in range(start, start + 10)]
                )
                await asyncio.sleep(0.005)

        producer = asyncio.create_task(produce())
        received = await _collect(stream, total, within=60)
        await producer
    assert [json.loads(f.data)["data"]["n"] for f in received] == list(range(total))

    # The slow one was cut off: its subscription is gone and the metric says why.
    async with asyncio.timeout(10):
        while services.feed.subscriber_count > 0:
            await asyncio.sleep(0.02)
    disconnects = services.metrics.feed_disconnects.labels("slow_consumer")._value.get()
    assert disconnects >= 1
    # Reading what it was sent ends in EOF well before all the changes.
    data = b""
    async with asyncio.timeout(10):
        while chunk := await reader.read(1 << 20):
            data += chunk
    assert data.count(b"\nid: ") + data.count(b"\r\nid: ") < total
