"""Gap-free ordering under concurrent writers: the reader sees every entry exactly once, in order."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from opstwin.aiw.changelog import NewEvent
from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.conftest import Keys

WRITERS = 8
PER_WRITER = 250  # 2,000 commits racing from 8 writers per test
ROOT = Path(__file__).resolve().parents[2]


async def _read_until(
    client: httpx.AsyncClient, headers: dict[str, str], total: int, deadline_s: float
) -> list[dict[str, int]]:
    seen: list[dict[str, int]] = []
    seqs: list[int] = []
    cursor = None
    async with asyncio.timeout(deadline_s):
        while len(seen) < total:
            params: dict[str, str | int | float] = {
                "limit": 1000,
                "wait": 2,
                "types": "ext.test.write",
            }
            if cursor is not None:
                params["since"] = cursor
            body = (await client.get("/diff", params=params, headers=headers)).json()
            for event in body["events"]:
                seen.append(event["data"])
                seqs.append(int(event["sequence"]))
            cursor = body["next_cursor"]
    assert seqs == sorted(seqs), "sequence numbers increase"
    assert len(set(seqs)) == len(seqs), "no sequence number twice"
    return seen


def _check(seen: list[dict[str, int]]) -> None:
    assert len(seen) == WRITERS * PER_WRITER
    keys = {(d["w"], d["n"]) for d in seen}
    assert len(keys) == len(seen), "no entry seen twice"
    for writer in range(WRITERS):
        own = [d["n"] for d in seen if d["w"] == writer]
        assert own == list(range(PER_WRITER)), f"writer {writer}'s entries missing or out of order"


@pytest.mark.slow
async def test_writer_processes_and_a_long_polling_reader(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    settings = services.settings
    schema = settings.database.schema_name or "-"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.aiw.writer_process",
            settings.database_url,
            schema,
            str(w),
            str(PER_WRITER),
            cwd=ROOT,
        )
        for w in range(WRITERS)
    ]
    reader = asyncio.create_task(
        _read_until(client, keys.headers(Role.viewer), WRITERS * PER_WRITER, 240)
    )
    codes = await asyncio.gather(*(p.wait() for p in procs))
    assert codes == [0] * WRITERS
    _check(await reader)


async def test_in_process_writers_and_a_long_polling_reader(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    if services.db.backend == "sqlite":
        pytest.skip(
            "SQLite: in-process writers queue on one lock; the multi-process test covers SQLite"
        )

    async def write(writer: int) -> None:
        for n in range(PER_WRITER):
            async with services.db.write() as tx:
                await services.changelog.append(
                    tx,
                    [
                        NewEvent(
                            tenant_id="default",
                            type="ext.test.write",
                            source=f"/w/{writer}",
                            data={"w": writer, "n": n},
                        )
                    ],
                )

    reader = asyncio.create_task(
        _read_until(client, keys.headers(Role.viewer), WRITERS * PER_WRITER, 240)
    )
    await asyncio.gather(*(write(w) for w in range(WRITERS)))
    _check(await reader)
