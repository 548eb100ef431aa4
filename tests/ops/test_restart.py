"""Durability: what the server acknowledged survives SIGKILL, and old cursors keep working."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from opstwin.config import Settings
from opstwin.kit.clock import SystemClock
from opstwin.kit.db import Database
from opstwin.policy.principals import ApiKeyService
from opstwin.policy.rbac import Role

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSTWIN_")}
    env["OPSTWIN_DATA_DIR"] = str(settings.data_dir)
    env["OPSTWIN_FEED_POLL_INTERVAL_S"] = "0.05"
    if settings.database.url:
        env["OPSTWIN_DATABASE_URL"] = settings.database.url
    if settings.database.schema_name:
        env["OPSTWIN_DATABASE_SCHEMA_NAME"] = settings.database.schema_name
    return env


@asynccontextmanager
async def server(settings: Settings, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "opstwin",
        "serve",
        "--port",
        str(port),
        env=_env(settings),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
            asyncio.timeout(30),
        ):
            while True:
                try:
                    if (await http.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
async def test_acknowledged_appends_survive_sigkill_and_cursors_still_work(
    db_settings: Settings,
) -> None:
    db = Database(db_settings.database_url, schema_name=db_settings.database.schema_name)
    await db.migrate()
    async with db.write() as tx:
        issued = await ApiKeyService(db, SystemClock()).create(
            tx.conn, name="durability", role=Role.agent
        )
    await db.dispose()
    headers = {"Authorization": f"Bearer {issued.token}"}
    port = _free_port()
    acknowledged: dict[str, str] = {}  # event id → cursor

    async def producer(http: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while True:
            event_id = f"w{worker}-{n}"
            body = {
                "specversion": "1.0",
                "id": event_id,
                "source": "/durability",
                "type": "ext.test.durable",
                "data": {"n": n},
            }
            try:
                response = await http.post("/events", json=body, headers=headers)
            except httpx.TransportError:
                return  # the server died under us: this one was never acknowledged
            assert response.status_code == 201, response.text
            acknowledged[event_id] = response.json()["cursor"]
            n += 1

    async with (
        server(db_settings, port) as proc,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        producers = [asyncio.create_task(producer(http, w)) for w in range(4)]
        async with asyncio.timeout(30):
            while len(acknowledged) < 150:
                await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await asyncio.gather(*producers)

    async with (
        server(db_settings, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        stored: dict[str, str] = {}
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 1000}
            if cursor:
                params["since"] = cursor
            body = (await http.get("/diff", params=params, headers=headers)).json()
            stored.update({e["id"]: e["cursor"] for e in body["events"]})
            cursor = body["next_cursor"]
            if not body["has_more"]:
                break
        missing = set(acknowledged) - set(stored)
        assert not missing, f"{len(missing)} acknowledged events lost"
        assert all(stored[i] == c for i, c in acknowledged.items()), (
            "cursors changed across the restart"
        )
        # An old cursor still reads exactly what follows it.
        order = list(stored)  # ids in log order
        middle = next(i for i in order[len(order) // 2 :] if i in acknowledged)
        after = (
            await http.get(
                "/diff", params={"since": acknowledged[middle], "limit": 5}, headers=headers
            )
        ).json()
        position = order.index(middle)
        assert [e["id"] for e in after["events"]] == order[position + 1 : position + 6]
