"""A change-log writer in its own process, for the concurrent-writers test.

Usage: python -m tests.aiw.writer_process DATABASE_URL SCHEMA|- WRITER_ID COUNT
Appends COUNT events, one transaction each, as fast as it can.
"""

from __future__ import annotations

import asyncio
import sys

from opstwin.aiw.changelog import ChangeLog, NewEvent
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.kit.clock import SystemClock
from opstwin.kit.db import Database
from opstwin.kit.ids import UlidSource


async def main(url: str, schema: str | None, writer: int, count: int) -> None:
    db = Database(url, schema_name=schema, pool_size=2)
    clock = SystemClock()
    changelog = ChangeLog(db, SchemaRegistry.from_package(), clock, UlidSource(clock))
    await changelog.load()
    try:
        for n in range(count):
            async with db.write() as tx:
                await changelog.append(
                    tx,
                    [
                        NewEvent(
                            tenant_id="default",
                            type="ext.test.write",
                            source=f"/writer/{writer}",
                            data={"w": writer, "n": n},
                        )
                    ],
                )
    finally:
        await db.dispose()


if __name__ == "__main__":
    url, schema, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(url, None if schema == "-" else schema, writer, count))
