"""MQTT source against the real Mosquitto on localhost:1883: flat and telemetry.v1 payloads
become rows and change-log entries; malformed ones dead letters; at-least-once across a
restart of the app, with duplicates stored once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import structlog.testing
from sqlalchemy import func, select

from opstwin.app import create_app
from opstwin.config import MqttSettings, Settings
from opstwin.services import Services
from opstwin.telemetry.dead_letters import dead_letters
from opstwin.telemetry.mqtt import MQTTSensorAdapter, map_payload
from opstwin.telemetry.tables import telemetry_events
from opstwin.twins import load_twin_file
from tests.conftest import IN_CI, Keys, require_service

pytestmark = pytest.mark.mqtt

ROOT = Path(__file__).resolve().parents[2]
TWIN, ASSET = "fab_line_3", "etch_tool_7"


@pytest.fixture
async def mqtt_settings(settings: Settings) -> AsyncIterator[Settings]:
    """The app's settings with an MQTT source on a topic prefix and session of its own."""
    require_service("Mosquitto", "127.0.0.1", 1883)
    token = secrets.token_hex(4)
    mqtt = MqttSettings(
        url="mqtt://127.0.0.1:1883",
        topic_filter=f"t{token}/+/+/telemetry",
        client_id=f"opstwin-test-{token}",
        batch_max_delay_s=0.02,
        reconnect_min_s=0.1,
        reconnect_max_s=1.0,
    )
    yield settings.model_copy(update={"mqtt": mqtt})
    # Forget the persistent session on the broker.
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=mqtt.client_id, clean_session=True):
        pass


@pytest.fixture
async def mqtt_app(mqtt_settings: Settings) -> AsyncIterator[Services]:
    async with running(mqtt_settings) as (services, _source):
        yield services


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Services, MQTTSensorAdapter]]:
    """The app started on ``settings`` with the example twin loaded and its MQTT source
    connected."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        assert services.mqtt is not None
        await load_model(services)
        await connected(services)
        yield services, services.mqtt


async def load_model(services: Services) -> None:
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", load_twin_file(ROOT / "examples" / "fab-line.yaml"))


async def connected(services: Services) -> None:
    assert services.mqtt is not None
    async with asyncio.timeout(10):
        await services.mqtt.connected.wait()


def topic(settings: Settings, twin: str = TWIN, asset: str = ASSET) -> str:
    return settings.mqtt.topic_filter.replace("+/+", f"{twin}/{asset}")


async def publish(messages: list[tuple[str, bytes]], port: int = 1883) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for name, payload in messages:
            await client.publish(name, payload, qos=1)


def numbered(name: str, tag: str, numbers: range, *, hour: int) -> list[tuple[str, bytes]]:
    """telemetry.v1 messages on topic ``name``, event ids ``<tag>-0000``…, one second apart
    from ``hour`` o'clock on 2026-01-01, each with one ``temp_c`` reading."""
    return [
        (
            name,
            json.dumps(
                {
                    "event_id": f"{tag}-{i:04d}",
                    "ts": f"2026-01-01T{hour:02d}:{i // 60:02d}:{i % 60:02d}Z",
                    "metrics": {"temp_c": 60.0 + (i % 7) * 0.1},
                }
            ).encode(),
        )
        for i in numbers
    ]


async def stored_event_ids(services: Services) -> list[str]:
    async with services.db.read() as conn:
        rows = await conn.execute(
            select(telemetry_events.c.event_id).where(telemetry_events.c.tenant_id == "default")
        )
        return sorted(rows.scalars().all())


async def dead_letter_count(services: Services) -> int:
    async with services.db.read() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(dead_letters))).scalar_one()
        )


async def until(condition: Callable[[], Awaitable[bool]], deadline_s: float = 15.0) -> None:
    """Poll an async predicate until it holds (fails the test at the deadline)."""
    async with asyncio.timeout(deadline_s):
        while not await condition():
            await asyncio.sleep(0.02)


def test_payload_mappings() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    flat = map_payload("opstwin/a/b/telemetry", b'{"temp": 62.1}', now)
    assert flat.events == [
        {"twin_id": "a", "asset_id": "b", "ts": "2026-01-01T12:00:00Z", "metrics": {"temp": 62.1}}
    ]
    full = map_payload(
        "opstwin/a/b/telemetry",
        b'{"event_id": "e1", "ts": "2026-01-01T00:00:00Z", "metrics": {"x": 1}}',
        now,
    )
    assert full.events[0]["event_id"] == "e1"
    assert full.events[0]["ts"] == "2026-01-01T00:00:00Z"
    assert full.events[0]["twin_id"] == "a"
    for payload, reason in [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b"{}", "empty object"),
        (b'{"twin_id": "z", "metrics": {"x": 1}}', "differs from the topic"),
    ]:
        mapped = map_payload("opstwin/a/b/telemetry", payload, now)
        assert mapped.reason is not None
        assert reason in mapped.reason
    assert map_payload("opstwin", b"{}", now).reason is not None


def test_events_with_their_own_time_get_an_id_from_topic_and_content() -> None:
    """A redelivery is byte for byte the message it repeats: with a ``ts`` of its own, an
    event without ``event_id`` gets the same derived id on every delivery; a different
    reading, topic or time gets another. Without ``ts`` there is nothing to tell a
    redelivery from a sensor repeating its last values, so no id is derived."""
    from datetime import UTC, datetime

    first = datetime(2026, 1, 1, 12, tzinfo=UTC)
    later = datetime(2026, 1, 1, 13, tzinfo=UTC)
    name = "opstwin/a/b/telemetry"
    flat = b'{"temp": 62.1, "ts": "2026-01-01T11:59:59Z"}'
    once, again = map_payload(name, flat, first), map_payload(name, flat, later)
    assert once.events == again.events
    assert once.events == [
        {
            "event_id": once.events[0]["event_id"],
            "twin_id": "a",
            "asset_id": "b",
            "ts": "2026-01-01T11:59:59Z",
            "metrics": {"temp": 62.1},
        }
    ]
    assert once.events[0]["event_id"].startswith("mqtt_")
    # Key order does not matter; values, time and topic do.
    reordered = b'{"ts": "2026-01-01T11:59:59Z", "temp": 62.1}'
    assert map_payload(name, reordered, later).events == once.events
    others = [
        map_payload(name, b'{"temp": 62.2, "ts": "2026-01-01T11:59:59Z"}', first),
        map_payload(name, b'{"temp": 62.1, "ts": "2026-01-01T12:00:00Z"}', first),
        map_payload("opstwin/a/c/telemetry", flat, first),
    ]
    ids = {once.events[0]["event_id"], *(m.events[0]["event_id"] for m in others)}
    assert len(ids) == 4

    full = b'{"ts": "2026-01-01T11:59:59Z", "metrics": {"temp": 62.1}}'
    derived = map_payload(name, full, first).events[0]["event_id"]
    assert derived == map_payload(name, full, later).events[0]["event_id"]
    given = b'{"event_id": "e1", "ts": "2026-01-01T11:59:59Z", "metrics": {"temp": 62.1}}'
    assert map_payload(name, given, first).events[0]["event_id"] == "e1"

    for untimed in (b'{"temp": 62.1}', b'{"metrics": {"temp": 62.1}}'):
        assert "event_id" not in map_payload(name, untimed, first).events[0]
    assert "no metrics" in (
        map_payload(name, b'{"ts": "2026-01-01T00:00:00Z"}', first).reason or ""
    )


async def test_a_redelivered_event_without_event_id_is_stored_once(
    mqtt_app: Services, mqtt_settings: Settings, backend: str
) -> None:
    """QoS 1 may deliver a message twice (a crash between commit and acknowledgement): a
    flat or telemetry.v1 event with its own ``ts`` is stored once however often it comes;
    an untimed flat reading is a new sample each time (a stuck sensor repeats itself)."""
    services = mqtt_app
    name = topic(mqtt_settings)
    timed_flat = b'{"temp_c": 61.5, "ts": "2026-01-01T00:00:01Z"}'
    timed_full = b'{"ts": "2026-01-01T00:00:02Z", "metrics": {"temp_c": 61.6}}'
    untimed = b'{"temp_c": 61.7}'
    await publish([(name, timed_flat), (name, timed_full), (name, untimed)] * 2)
    assert services.mqtt is not None
    async with asyncio.timeout(15):
        while services.mqtt.messages_committed < 6:
            await asyncio.sleep(0.02)
    ids = await stored_event_ids(services)
    assert len(ids) == 4
    assert sum(i.startswith("mqtt_") for i in ids) == 2


async def test_flat_and_full_payloads_are_stored_and_malformed_ones_dead_lettered(
    mqtt_app: Services, mqtt_settings: Settings, client: httpx.AsyncClient, keys: Keys, backend: str
) -> None:
    services = mqtt_app
    name = topic(mqtt_settings)
    full = {"event_id": "mqtt-full-1", "ts": "2026-01-01T00:00:00Z", "metrics": {"temp_c": 60.5}}
    await publish(
        [
            (name, b'{"temp_c": 62.1, "pressure_mtorr": 10.1}'),
            (name, json.dumps(full).encode()),
            (name, b"{not json"),
            (name, b'{"temp_c": "hot"}'),  # the normalizer refuses strings for numbers
            (topic(mqtt_settings, asset="no_such_tool"), b'{"temp_c": 1.0}'),
        ]
    )
    await until(lambda: _at_least(stored_event_ids(services), 2))
    await until(lambda: _count_at_least(dead_letter_count(services), 3))

    ids = await stored_event_ids(services)
    assert "mqtt-full-1" in ids
    assert len(ids) == 2
    async with services.db.read() as conn:
        marks = await services.changelog.marks(conn)
        page = await services.changelog.read(
            conn, after=0, upto=marks.head, limit=1000, tenant_id="default"
        )
    appended = [json.loads(r.envelope) for r in page.rows if r.type == "opstwin.telemetry.appended"]
    points = [p for env in appended for p in env["data"]["points"]]
    assert {p["event_id"] for p in points} == set(ids)
    assert all(env["subject"] == f"twin/{TWIN}/asset/{ASSET}" for env in appended)
    flat = next(p for p in points if p["event_id"] != "mqtt-full-1")
    assert flat["metrics"] == {"temp_c": 62.1, "pressure_mtorr": 10.1}

    response = await client.get("/telemetry/dead-letters", headers=keys.headers("viewer"))
    assert response.status_code == 200
    items = response.json()["items"]
    assert len(items) == 3
    by_excerpt = {i["payload_excerpt"]: i for i in items}
    assert "not JSON" in by_excerpt["{not json"]["reason"]
    assert "normalizer" in by_excerpt['{"temp_c": "hot"}']["reason"]
    assert all(i["topic"].startswith(mqtt_settings.mqtt.topic_filter.split("/")[0]) for i in items)
    assert all(i["received_at"].endswith("Z") for i in items)
    other = await client.get("/telemetry/dead-letters", headers=keys.auth(keys.other_viewer))
    assert other.json()["items"] == []


async def test_messages_published_while_down_are_ingested_once_after_restart(
    mqtt_settings: Settings, backend: str
) -> None:
    """The persistent session keeps QoS 1 messages for the stopped app; after restart every
    one is stored, and a message delivered twice (same event_id) is stored once."""
    app = create_app(mqtt_settings)
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        await load_model(services)
        await connected(services)  # the session and its subscription exist on the broker

    name = topic(mqtt_settings)
    count = 300
    messages = numbered(name, "down", range(count), hour=0)
    await publish(messages + messages[:10])  # ten delivered twice

    app = create_app(mqtt_settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        await until(lambda: _at_least(stored_event_ids(services), count))
        assert services.mqtt is not None
        await until(lambda: _committed(services, count + 10))
        ids = await stored_event_ids(services)
    assert ids == [f"down-{i:04d}" for i in range(count)]


async def test_no_acknowledged_message_is_lost_while_the_database_is_unavailable(
    mqtt_settings: Settings, backend: str
) -> None:
    """SQLite locked by another connection (BEGIN EXCLUSIVE) mid-stream: the source's commits
    fail and are retried, unacknowledged; once the lock goes, every message published before,
    during and after is stored exactly once."""
    if backend != "sqlite":
        pytest.skip("the database is made unavailable by locking the SQLite file")
    settings = mqtt_settings.model_copy(
        update={"database": mqtt_settings.database.model_copy(update={"busy_timeout_s": 0.1})}
    )
    name = topic(settings)

    def events(start: int, stop: int) -> list[tuple[str, bytes]]:
        return numbered(name, "lock", range(start, stop), hour=1)

    async with running(settings) as (services, source):
        await publish(events(0, 100))
        await until(lambda: _at_least(stored_event_ids(services), 100))

        # Waits (up to a minute) for the app's own writers to let go: under a second test
        # process on two cores one BEGIN EXCLUSIVE once timed out after 10 s.
        lock = sqlite3.connect(settings.data_dir / "opstwin.db", timeout=60)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            await publish(events(100, 300))  # PUBACKed by the broker, not yet by us
            failures = source.commit_failures
            await until(lambda: _true(source.commit_failures >= failures + 2))
        finally:
            lock.rollback()
            lock.close()
        await publish(events(300, 400))
        await until(lambda: _at_least(stored_event_ids(services), 400))
        await until(lambda: _committed(services, 400))
        ids = await stored_event_ids(services)
    assert ids == [f"lock-{i:04d}" for i in range(400)]


@contextlib.contextmanager
def private_broker(port: int, persistence: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A Mosquitto of the test's own on ``port`` (it keeps sessions in ``persistence``, so a
    restart behaves like a production broker's), stopped on exit."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        message = "the mosquitto binary is not installed"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing service is a failure)")
        pytest.skip(message)
    persistence.mkdir(exist_ok=True)
    conf = persistence / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence true\npersistence_location {persistence}/\n"
    )
    broker = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if broker.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mosquitto did not start on {port}") from None
                time.sleep(0.02)
        yield broker
    finally:
        broker.terminate()
        broker.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_source_reconnects_with_backoff_when_the_broker_restarts(
    settings: Settings, tmp_path: Path, backend: str
) -> None:
    """The broker goes away mid-stream and comes back on the same address: the source notices,
    retries with growing pauses, reconnects on its own, and every message — before the outage,
    and published while it was reconnecting — is stored once."""
    port = free_port()
    token = secrets.token_hex(4)
    mqtt = MqttSettings(
        url=f"mqtt://127.0.0.1:{port}",
        topic_filter=f"r{token}/+/+/telemetry",
        client_id=f"opstwin-test-{token}",
        batch_max_delay_s=0.02,
        reconnect_min_s=0.05,
        reconnect_max_s=0.4,
    )
    name = mqtt.topic_filter.replace("+/+", f"{TWIN}/{ASSET}")

    def events(start: int, stop: int) -> list[tuple[str, bytes]]:
        return numbered(name, "re", range(start, stop), hour=2)

    with private_broker(port, tmp_path / "broker") as broker:
        async with running(settings.model_copy(update={"mqtt": mqtt})) as (services, source):
            await publish(events(0, 50), port)
            await until(lambda: _at_least(stored_event_ids(services), 50))

            with structlog.testing.capture_logs() as logs:
                broker.terminate()
                broker.wait(10)
                await until(lambda: _true(not source.connected.is_set()))
                # Retries against the closed port while it is down (connection refused).
                await until(lambda: _true(_retries(logs) >= 3))
            pauses = _retries_s(logs)
            assert pauses[:3] == [0.05, 0.1, 0.2]  # doubling from reconnect_min_s
            assert max(pauses) <= 0.4  # up to reconnect_max_s
            with private_broker(port, tmp_path / "broker"):
                await until(lambda: _true(source.connections >= 2))
                await publish(events(50, 100), port)
                await until(lambda: _at_least(stored_event_ids(services), 100))
                ids = await stored_event_ids(services)
    assert ids == [f"re-{i:04d}" for i in range(100)]
    assert source.connections == 2


def _retries_s(logs: list[dict[str, Any]]) -> list[float]:
    return [float(e["retry_in_s"]) for e in logs if e["event"] == "mqtt.disconnected"]


def _retries(logs: list[dict[str, Any]]) -> int:
    return len(_retries_s(logs))


async def _true(value: bool) -> bool:
    return value


async def _at_least(ids: Awaitable[list[str]], n: int) -> bool:
    return len(await ids) >= n


async def _count_at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n


async def _committed(services: Services, n: int) -> bool:
    assert services.mqtt is not None
    return services.mqtt.messages_committed >= n
