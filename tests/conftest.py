"""Fixtures shared by the whole suite: real SQLite and real PostgreSQL, real HTTP.

``backend`` parametrises a test over both databases. PostgreSQL tests run against the local
server (``OPSTWIN_TEST_PG_URL``, default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``),
each in a schema of its own that is dropped afterwards. When the server is down they are
skipped with the reason — except under ``CI=true``, where a missing service is a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from opstwin.app import create_app
from opstwin.config import AutomationSettings, DatabaseSettings, FeedSettings, Settings
from opstwin.policy.principals import IssuedKey
from opstwin.policy.rbac import Role
from opstwin.services import Services

PG_URL = os.environ.get("OPSTWIN_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (fail under CI) when a local service the test needs is not running."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service is a failure)")
    pytest.skip(message)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_service("PostgreSQL", "127.0.0.1", 5432)
    return str(request.param)


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def make_settings(
    backend: str, data_dir: Path, schema: str | None = None, **feed: float | int
) -> Settings:
    database = (
        DatabaseSettings(url=PG_URL, schema_name=schema)
        if backend == "postgresql"
        else DatabaseSettings()
    )
    feed_settings = FeedSettings.model_validate({"poll_interval_s": 0.05, **feed})
    # The automation loop proposes fixes for anomalies; tests of the loop turn it on.
    return Settings(
        env="test",
        data_dir=data_dir,
        database=database,
        feed=feed_settings,
        automation=AutomationSettings(enabled=False),
    )


@pytest.fixture
async def db_settings(backend: str, tmp_path: Path) -> AsyncIterator[Settings]:
    schema = f"t_{secrets.token_hex(6)}" if backend == "postgresql" else None
    yield make_settings(backend, tmp_path, schema)
    if schema is not None:
        await drop_schema(schema)


@pytest.fixture
def feed_overrides() -> dict[str, float | int]:
    """Override in a test module to tune feed settings (heartbeat, buffer, …)."""
    return {}


@pytest.fixture
async def settings(db_settings: Settings, feed_overrides: dict[str, float | int]) -> Settings:
    if feed_overrides:
        return db_settings.model_copy(
            update={"feed": db_settings.feed.model_copy(update=feed_overrides)}
        )
    return db_settings


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def services(app: FastAPI) -> Services:
    found: Services = app.state.services
    return found


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opstwin.test"
    ) as c:
        yield c


@dataclass
class Keys:
    """One key per role in tenant ``default``, plus an admin and a viewer in tenant ``other``."""

    by_role: dict[Role, IssuedKey]
    other_admin: IssuedKey
    other_viewer: IssuedKey

    def headers(self, role: Role | str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.by_role[Role(role)].token}"}

    @staticmethod
    def auth(key: IssuedKey) -> dict[str, str]:
        return {"Authorization": f"Bearer {key.token}"}


@pytest.fixture
async def keys(services: Services) -> Keys:
    async with services.db.write() as tx:
        by_role = {
            role: await services.keys.create(tx.conn, name=f"test-{role.value}", role=role)
            for role in Role
        }
        other_admin = await services.keys.create(
            tx.conn, name="other-admin", role=Role.admin, tenant_id="other"
        )
        other_viewer = await services.keys.create(
            tx.conn, name="other-viewer", role=Role.viewer, tenant_id="other"
        )
    return Keys(by_role=by_role, other_admin=other_admin, other_viewer=other_viewer)


@dataclass
class LiveServer:
    url: str
    app: FastAPI


@pytest.fixture
async def live_server(app: FastAPI) -> AsyncIterator[LiveServer]:
    """The app served by a real uvicorn on a free loopback port (for streaming tests).

    The app's lifespan is already running (``app`` fixture), so uvicorn's is turned off.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    yield LiveServer(url=f"http://127.0.0.1:{port}", app=app)
    server.should_exit = True
    async with asyncio.timeout(10):
        await task
    sock.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "backend" in getattr(item, "fixturenames", ()) and "[postgresql" in item.nodeid:
            item.add_marker(pytest.mark.postgres)
