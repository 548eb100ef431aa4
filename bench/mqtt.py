"""MQTT publisher → durable row through Mosquitto, with zero loss counted.

The app's MQTT source (``MQTTSensorAdapter``: QoS 1, persistent session, manual acknowledgement
after the batch commits) runs in-process against a fresh database; a publisher in another process
(``mosquitto_pub -l``, one per asset, concurrently; QoS 1 with up to ``PUBLISH_WINDOW`` PUBACKs
outstanding each — pipelined, not one at a time) sends ``MESSAGES`` telemetry.v1 messages (each with an ``event_id``, 5 metrics, 10 assets) as
fast as it can. The clock runs from the first publish until every event is a committed row;
then the rows are counted: each ``event_id`` exactly once (zero loss asserted), and deliveries
beyond ``MESSAGES`` (redeliveries, stored once) reported as duplicates.

Two brokers: the machine's Mosquitto on ``localhost:1883`` as configured (default in-flight
window: 20 unacknowledged messages per client), and a Mosquitto the bench starts on a free
loopback port from ``bench/mosquitto-bench.conf`` (``max_inflight_messages 1000``).

Baseline (bench broker): a bare subscriber in this process — the same publisher, broker and
client library (aiomqtt over paho-mqtt, QoS 1, MQTT 3.1.1) receiving and acknowledging only, no
parsing, no database — the most this process can take off the socket with that library.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import aiomqtt
import orjson
from sqlalchemy import func, select

from bench.common import database_url, pg_available
from opstwin.app import create_app
from opstwin.config import DatabaseSettings, MqttSettings, Settings
from opstwin.services import Services
from opstwin.telemetry.tables import telemetry_events
from opstwin.twins.loader import parse_twin_document

MESSAGES = int(os.environ.get("OPSTWIN_BENCH_MQTT_MESSAGES", "50000"))
PUBLISH_WINDOW = 1000
METRICS = ("temp_c", "pressure_mtorr", "rf_w", "flow_sccm", "bias_w")
ASSETS = 10
STALL_S = 5.0
CONF = Path(__file__).with_name("mosquitto-bench.conf")


def _twin() -> dict[str, object]:
    metric = {"unit": "1", "hard_limits": {"low": -1e9, "high": 1e9}}
    return {
        "id": "bench_line",
        "assets": [
            {"id": f"tool_{a}", "metrics": {m: dict(metric) for m in METRICS}}
            for a in range(ASSETS)
        ],
    }


def _write_lines(directory: Path, count: int) -> list[Path]:
    """One file per asset: a telemetry.v1 message per line (``mosquitto_pub -l`` input)."""
    start = datetime.now(UTC) - timedelta(hours=1)
    lines: list[list[bytes]] = [[] for _ in range(ASSETS)]
    for i in range(count):
        event = {
            "event_id": f"m{i}",
            "ts": (start + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
            "metrics": {m: 50.0 + ((i * 7 + k) % 13) for k, m in enumerate(METRICS)},
        }
        lines[i % ASSETS].append(orjson.dumps(event))
    files = []
    for asset, chunk in enumerate(lines):
        path = directory / f"tool_{asset}.ndjson"
        path.write_bytes(b"\n".join(chunk) + b"\n")
        files.append(path)
    return files


async def _publish(port: int, prefix: str, files: list[Path]) -> tuple[float, float]:
    """Publish every line, QoS 1, one ``mosquitto_pub -l`` per asset, concurrently, each with up
    to ``PUBLISH_WINDOW`` PUBACKs outstanding; (first publish, last PUBACK) in epoch seconds."""
    binary = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
    began = time.time()
    processes = []
    for asset, path in enumerate(files):
        with path.open("rb") as stdin:
            processes.append(
                await asyncio.create_subprocess_exec(
                    binary,
                    *("-h", "127.0.0.1", "-p", str(port), "-q", "1", "-M", str(PUBLISH_WINDOW)),
                    *("-t", f"{prefix}/bench_line/tool_{asset}/telemetry", "-l"),
                    stdin=stdin,
                )
            )
    codes = await asyncio.gather(*(process.wait() for process in processes))
    if any(codes):
        raise RuntimeError(f"mosquitto_pub exit codes {codes}")
    return began, time.time()


async def _stored(services: Services) -> tuple[int, int]:
    """(rows, distinct event ids) of the bench's tenant."""
    async with services.db.read() as conn:
        row = (
            await conn.execute(
                select(func.count(), func.count(func.distinct(telemetry_events.c.event_id))).where(
                    telemetry_events.c.tenant_id == "default"
                )
            )
        ).one()
    return int(row[0]), int(row[1])


async def _run(port: int, backend: str) -> tuple[float, float, int, int]:
    """(msg/s publisher → durable, publisher-only msg/s, lost, duplicate deliveries)."""
    token = secrets.token_hex(4)
    prefix = f"bench{token}"
    mqtt = MqttSettings(
        url=f"mqtt://127.0.0.1:{port}",
        topic_filter=f"{prefix}/+/+/telemetry",
        client_id=f"opstwin-bench-{token}",
    )
    async with database_url(backend) as (url, schema):
        with TemporaryDirectory(prefix="opstwin-bench-") as tmp:
            settings = Settings(
                env="test",
                data_dir=Path(tmp),
                database=DatabaseSettings(url=url, schema_name=schema),
                mqtt=mqtt,
            )
            app = create_app(settings)
            services: Services = app.state.services
            async with app.router.lifespan_context(app):
                async with services.db.write() as tx:
                    document = parse_twin_document({"twins": [_twin()]})
                    await services.twins.put(tx, "default", document)
                source = services.mqtt
                assert source is not None
                async with asyncio.timeout(10):
                    await source.connected.wait()
                files = _write_lines(Path(tmp), MESSAGES)
                began, published = await _publish(port, prefix, files)
                # Until every event is a row, or nothing more commits for STALL_S (the broker
                # dropped messages it had acknowledged to the publisher: lost). The source's
                # counter is watched (cheap); the rows are counted once it says all are in.
                progress, seen, distinct = time.monotonic(), -1, 0
                while True:
                    committed = source.messages_committed
                    if committed != seen:
                        progress, seen, finished = time.monotonic(), committed, time.time()
                        if committed >= MESSAGES:
                            distinct = (await _stored(services))[1]
                            if distinct >= MESSAGES:
                                break
                    elif time.monotonic() - progress > STALL_S:
                        distinct = (await _stored(services))[1]
                        break
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.5)  # let late redeliveries show up in the count
                rows, distinct = await _stored(services)
                if rows != distinct:
                    raise RuntimeError(f"{rows} rows for {distinct} distinct event ids")
                duplicates = source.messages_committed - distinct
    # Forget the bench's persistent session on the broker.
    async with aiomqtt.Client("127.0.0.1", port, identifier=mqtt.client_id, clean_session=True):
        pass
    return (
        distinct / (finished - began),
        MESSAGES / (published - began),
        MESSAGES - distinct,
        duplicates,
    )


async def _run_bare(port: int) -> float:
    """Baseline: msg/s from first publish until a bare subscriber in this process has received
    (and acknowledged) every message — the same broker, publisher and client library (aiomqtt
    over paho, QoS 1, MQTT 3.1.1), no parsing, no database: the ceiling of receiving here."""
    token = secrets.token_hex(4)
    prefix = f"bare{token}"
    with TemporaryDirectory(prefix="opstwin-bench-") as tmp:
        files = _write_lines(Path(tmp), MESSAGES)
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=f"opstwin-bench-bare-{token}",
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
        ) as client:
            await client.subscribe(f"{prefix}/+/+/telemetry", qos=1)
            received = 0
            last = 0.0

            async def receive() -> None:
                nonlocal received, last
                async for _message in client.messages:
                    received += 1
                    if received >= MESSAGES:
                        last = time.time()
                        return

            receiver = asyncio.create_task(receive())
            began, _ = await _publish(port, prefix, files)
            try:
                async with asyncio.timeout(STALL_S * 12):
                    await receiver
            except TimeoutError:
                raise RuntimeError(f"the bare subscriber got {received} of {MESSAGES}") from None
    return MESSAGES / (last - began)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def _tuned_broker() -> Iterator[int]:
    """A Mosquitto of the bench's own (``bench/mosquitto-bench.conf``) on a free loopback port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    with TemporaryDirectory(prefix="opstwin-bench-mosquitto-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(CONF.read_text() + f"\nlistener {port} 127.0.0.1\n")
        broker = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while not _listening(port):
                if broker.poll() is not None or time.monotonic() > deadline:
                    err = broker.stderr.read().decode() if broker.stderr else ""
                    raise RuntimeError(f"bench mosquitto did not start: {err}")
                time.sleep(0.05)
            yield port
        finally:
            broker.terminate()
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()


def _report(label: str, port: int, backend: str, *, zero_loss: bool) -> None:
    rate, publisher, lost, duplicates = asyncio.run(_run(port, backend))
    bare = f"   bare subscriber {asyncio.run(_run_bare(port)):>8,.0f} msg/s" if zero_loss else ""
    print(
        f"   {label:<32} {backend:<10} {MESSAGES:,} msgs  {rate:>8,.0f} msg/s durable   "
        f"(publisher {publisher:>8,.0f} msg/s)   lost {lost}   duplicates {duplicates}{bare}"
    )
    if lost and zero_loss:
        raise RuntimeError(f"{lost} of {MESSAGES} messages lost")


def run() -> None:
    backends = ["sqlite"] + (["postgresql"] if pg_available() else [])
    for backend in backends:
        if _listening(1883):
            # Its max_queued_messages (1000 by default) drops QoS 1 messages a slow subscriber
            # has not taken yet, after PUBACKing them to the publisher: losses are reported.
            _report("system broker :1883 (defaults)", 1883, backend, zero_loss=False)
        else:
            print("   system broker: nothing on 127.0.0.1:1883, skipped")
        with _tuned_broker() as port:
            _report("bench broker (window 1000)", port, backend, zero_loss=True)
    if "postgresql" not in backends:
        print("   postgresql: not reachable on 127.0.0.1:5432, skipped")
