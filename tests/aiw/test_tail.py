"""`opstwin tail` follows /subscribe as a person would: readable lines, raw JSON, resume."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.aiw.helpers import append, ext_event
from tests.conftest import Keys, LiveServer

ROOT = Path(__file__).resolve().parents[2]


async def _tail(live_server: LiveServer, token: str, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSTWIN_")}
    env.update({"OPSTWIN_KEY": token, "OPSTWIN_URL": live_server.url})
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "opstwin",
        "tail",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_tail_prints_a_line_per_event_from_the_oldest(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    await append(services, [ext_event(1, type_="ext.shift.note"), ext_event(2)])
    proc = await _tail(live_server, keys.by_role[Role.viewer].token, "--count", "3")
    await append(
        services, [ext_event(3)]
    )  # before or after tail connected: it reads from the oldest
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 3
    assert "ext.shift.note" in lines[0]
    assert "twin/line1/asset/a1" in lines[0]
    assert '{"n":1}' in lines[0]
    assert '{"n":3}' in lines[2]


async def test_tail_json_filters_and_starts_at_a_cursor(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    first = await append(services, [ext_event(1), ext_event(2, type_="ext.other"), ext_event(3)])
    cursor = services.changelog.cursor(first[0].seq)
    proc = await _tail(
        live_server,
        keys.by_role[Role.viewer].token,
        "--since",
        cursor,
        "--types",
        "ext.test.*",
        "--count",
        "1",
        "--json",
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    (line,) = out.decode().splitlines()
    assert json.loads(line)["data"] == {"n": 3}


async def test_tail_reports_a_refused_stream_clearly(live_server: LiveServer) -> None:
    proc = await _tail(live_server, "otk_0000000000000000_" + "A" * 43, "--count", "1")
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "401" in err.decode()
    assert "unknown API key" in err.decode()
