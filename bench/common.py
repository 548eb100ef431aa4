"""Shared helpers for benchmarks: percentiles, temporary databases, PostgreSQL availability."""

from __future__ import annotations

import secrets
import socket
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


@asynccontextmanager
async def database_url(backend: str) -> AsyncIterator[tuple[str, str | None]]:
    """(url, schema) of a fresh, empty database for one benchmark run."""
    if backend == "sqlite":
        with TemporaryDirectory(prefix="opstwin-bench-") as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", None
        return
    import asyncpg

    schema = f"bench_{secrets.token_hex(4)}"
    try:
        yield PG_URL, schema
    finally:
        conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
