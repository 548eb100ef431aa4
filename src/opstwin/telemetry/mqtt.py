"""MQTTSensorAdapter: telemetry from an MQTT broker, acknowledged only once it is durable.

Delivery
--------
The adapter subscribes with QoS 1 on a **persistent session** (``clean_session=False``, a
fixed client id): while the server is down the broker keeps the messages for it. Messages are
acknowledged *manually* (paho-mqtt 2's ``manual_ack``; aiomqtt 2.5 does not expose it yet, so
it is switched on its underlying paho client before connecting) and only after the batch they
belong to committed — telemetry rows, their change-log entries and any dead letters in one
``db.write()`` transaction through :class:`TelemetryIngestor`. A crash between commit and
acknowledgement makes the broker deliver the batch again: delivery is at least once, and
events that carry an ``event_id`` are stored once (the ingestor acknowledges a duplicate
without storing it). An event without one but with its own ``ts`` — a flat payload with a
``"ts"`` key, or a telemetry.v1 object without ``event_id`` — gets an id derived from its
topic and content (:func:`derived_event_id`), so a redelivered copy is a duplicate too: the
same topic, time and values are the same reading. Without a ``ts`` the event is a sample
taken at receipt and nothing tells a redelivery from a new reading that repeats the last
values (a stuck sensor does exactly that), so it is stored again: publishers that need
exactly-once send ``ts`` or ``event_id``.
PUBACKs go out in the order the messages arrived (MQTT 3.1.1 §4.6).

Batching: a batch is committed when it holds ``batch_size`` messages, when its first
message has waited ``batch_max_delay_s``, or when nothing arrived for ``batch_idle_s`` —
the broker stops sending at its in-flight window (Mosquitto's ``max_inflight_messages``,
20 by default) until we acknowledge, so waiting longer would only add latency. That window
caps every batch: production brokers need it at least ``batch_size`` (docs/operations.md, MQTT).
Messages the client has already queued are taken synchronously (no task per message); the
PUBACKs of a batch are queued together after its commit and leave in one socket write round.

Payload mappings (topic ``<prefix>/<twin_id>/<asset_id>/<suffix>``, levels 2 and 3):

* **flat**: ``{"temp": 62.1, "pressure": 10.2}`` — every key a metric, except ``ts`` (the
  time of the reading, RFC 3339) when present; twin and asset from the topic; without ``ts``
  the time of receipt;
* **telemetry.v1**: an object with ``metrics`` (and optionally ``event_id``, ``ts``, ``tags``,
  ``units``, ``quality``, ``twin_id``/``asset_id`` — which must then agree with the topic), or
  a JSON array of such objects. A missing ``ts`` is the time of receipt.

Anything else — not UTF-8 JSON, not an object, a topic that names no twin and asset, a payload
naming another asset than its topic — becomes a dead letter with the reason, as does every
event the ingestor rejects (with its errors). None is dropped silently.

Connection: on losing the broker the adapter reconnects with exponential backoff
(``reconnect_min_s`` doubling up to ``reconnect_max_s``); a batch that cannot be committed
(database down) is retried, unacknowledged, until it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiomqtt
import orjson
import structlog
from sqlalchemy.exc import SQLAlchemyError

from opstwin.config import MqttSettings
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, rfc3339
from opstwin.kit.db import Database
from opstwin.kit.errors import OpsTwinError
from opstwin.kit.mqtt import BrokerAddress, keep_connected
from opstwin.telemetry.dead_letters import DeadLetter, record_dead_letters
from opstwin.telemetry.ingest import Rejection, TelemetryIngestor

log = structlog.get_logger(__name__)

#: Pause before retrying a batch the database refused (it is restarting), doubling up to the max.
COMMIT_RETRY_MIN_S = 0.2
COMMIT_RETRY_MAX_S = 5.0


@dataclass(slots=True)
class Mapped:
    """One message turned into ingestor input: the events, or why there are none."""

    events: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None


def map_payload(topic: str, payload: bytes, received_at: datetime) -> Mapped:
    """Flat or telemetry.v1 payload → raw events for the ingestor (see the module docstring)."""
    levels = topic.split("/")
    if len(levels) < 3 or not levels[1] or not levels[2]:
        return Mapped(reason="topic names no twin and asset (expected <prefix>/<twin>/<asset>/…)")
    twin_id, asset_id = levels[1], levels[2]
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Mapped(reason=f"payload is not JSON: {exc}")
    ts = rfc3339(received_at)
    items = body if isinstance(body, list) else [body]
    if not items:
        return Mapped(reason="payload is an empty array")
    events: list[dict[str, Any]] = []
    for position, item in enumerate(items):
        where = f" (array element {position})" if isinstance(body, list) else ""
        if not isinstance(item, dict):
            return Mapped(reason=f"payload{where} is not a JSON object")
        if "metrics" in item:  # the telemetry.v1 shape
            event = dict(item)
            for key, expected in (("twin_id", twin_id), ("asset_id", asset_id)):
                if event.setdefault(key, expected) != expected:
                    return Mapped(
                        reason=f"payload{where} {key} {event[key]!r} differs from the topic's {expected!r}"
                    )
            if event.get("event_id") is None and "ts" in item:
                event["event_id"] = derived_event_id(topic, item)
            event.setdefault("ts", ts)
            events.append(event)
        elif isinstance(body, list):
            return Mapped(reason=f"payload{where} has no metrics (arrays hold telemetry.v1 events)")
        elif not item:
            return Mapped(reason="payload is an empty object")
        elif item.keys() == {"ts"}:
            return Mapped(reason="payload has a ts but no metrics")
        elif "ts" in item:  # flat, with the time of the reading
            metrics = {k: v for k, v in item.items() if k != "ts"}
            events.append(
                {
                    "event_id": derived_event_id(topic, item),
                    "twin_id": twin_id,
                    "asset_id": asset_id,
                    "ts": item["ts"],
                    "metrics": metrics,
                }
            )
        else:  # flat: every key a metric, read at receipt
            events.append({"twin_id": twin_id, "asset_id": asset_id, "ts": ts, "metrics": item})
    return Mapped(events=events)


def derived_event_id(topic: str, event: dict[str, Any]) -> str:
    """``mqtt_`` + 128 bits of SHA-256 over the topic and the event as published (keys
    sorted): the same reading delivered twice gets the same id, so the ingestor stores it
    once. Only for events that carry their own ``ts`` (see the module docstring)."""
    digest = hashlib.sha256(topic.encode() + b"\0" + jsonutil.canonical(event)).hexdigest()
    return f"mqtt_{digest[:32]}"


def rejection_reason(rejection: Rejection) -> str:
    """A dead letter's reason for an event the normalizer refused."""
    parts = [
        f"{error.detail} (at {error.pointer})" if error.pointer else error.detail
        for error in rejection.errors
    ]
    return "rejected by the normalizer: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: datetime


class MQTTSensorAdapter:
    """Subscribes to telemetry topics and ingests them (started by the app lifespan)."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        db: Database,
        ingestor: TelemetryIngestor,
        clock: Clock,
    ) -> None:
        if settings.url is None:
            raise ValueError("the MQTT source needs mqtt.url")
        self._settings = settings
        self._address = BrokerAddress.parse(settings.url)
        self._db = db
        self._ingestor = ingestor
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        #: Counters (also what tests and the benchmark wait on).
        self.messages_committed = 0
        self.dead_letters = 0
        #: Commits the database refused (retried, the batch unacknowledged meanwhile).
        self.commit_failures = 0
        self.connected = asyncio.Event()
        self.connections = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="opstwin-mqtt-source")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _client(self) -> aiomqtt.Client:
        client = self._address.client(self._settings.client_id, clean_session=False)
        # Acknowledge only what is durable. Set before connecting: a persistent session's
        # queued messages arrive right after CONNACK. (aiomqtt 2.5 has no public switch:
        # https://github.com/empicano/aiomqtt/issues/345.)
        client._client.manual_ack_set(True)
        return client

    async def _run(self) -> None:
        s = self._settings
        await keep_connected(
            self._client,
            self._session,
            backoff=(s.reconnect_min_s, s.reconnect_max_s),
            disconnected="mqtt.disconnected",
            on_lost=self.connected.clear,
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self._settings.topic_filter, qos=1)
        self.connections += 1
        self.connected.set()
        log.info(
            "mqtt.connected",
            host=self._address.host,
            port=self._address.port,
            topics=self._settings.topic_filter,
        )
        await self._consume(client)

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Batch, commit, acknowledge — until the connection drops (MqttError)."""
        loop = asyncio.get_running_loop()
        messages = client.messages
        settings = self._settings
        # One outstanding read at a time, never cancelled: cancelling a read that has just
        # taken a message off the queue would lose it (unacknowledged until the next session).
        pending: asyncio.Task[aiomqtt.Message] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(messages))
                first = await pending
                pending = None
                batch = [self._received(first)]
                deadline = loop.time() + settings.batch_max_delay_s
                while len(batch) < settings.batch_size:
                    # Take what the client has already queued without a task per message: a
                    # synchronous get cannot be cancelled half-way, so nothing is lost.
                    self._drain(client, batch, settings.batch_size)
                    if len(batch) >= settings.batch_size:
                        break
                    wait = min(settings.batch_idle_s, deadline - loop.time())
                    if wait <= 0:
                        break
                    pending = asyncio.ensure_future(anext(messages))
                    done, _ = await asyncio.wait({pending}, timeout=wait)
                    if not done:
                        break  # keep `pending`: the next batch starts with it
                    batch.append(self._received(pending.result()))
                    pending = None
                await self._commit(batch)
                for message in batch:
                    client._client.ack(message.mid, message.qos)
        finally:
            if pending is not None:
                pending.cancel()

    def _drain(self, client: aiomqtt.Client, batch: list[Received], limit: int) -> None:
        """Move messages aiomqtt has already queued into ``batch`` (up to ``limit``).

        ``Client.messages`` offers only ``anext`` (a task and an ``asyncio.wait`` per message);
        its queue (``_queue``, what ``len(client.messages)`` counts) is read directly here.
        """
        queue: asyncio.Queue[aiomqtt.Message] = client._queue
        while len(batch) < limit and not queue.empty():
            batch.append(self._received(queue.get_nowait()))

    def _received(self, message: aiomqtt.Message) -> Received:
        raw = message.payload  # typed loosely by aiomqtt; received messages carry bytes
        payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw).encode()
        return Received(
            topic=message.topic.value,
            payload=payload,
            mid=message.mid,
            qos=message.qos,
            received_at=self._clock.now(),
        )

    async def _commit(self, batch: list[Received]) -> None:
        """Store ``batch`` durably (retrying while the database is away)."""
        retry = COMMIT_RETRY_MIN_S
        while True:
            try:
                try:
                    await self._store(batch)
                except OpsTwinError as exc:
                    # The batch as a whole was refused (a limit, say): take the messages one
                    # at a time, so that one bad message cannot hold back the others.
                    log.warning("mqtt.batch_refused", error=exc.detail, size=len(batch))
                    for message in batch:
                        await self._store_single(message)
                self.messages_committed += len(batch)
                return
            except (SQLAlchemyError, OSError) as exc:
                self.commit_failures += 1
                log.warning("mqtt.commit_failed", error=str(exc), retry_in_s=retry)
                await asyncio.sleep(retry)
                retry = min(retry * 2, COMMIT_RETRY_MAX_S)

    async def _store_single(self, message: Received) -> None:
        try:
            await self._store([message])
        except OpsTwinError as exc:
            letter = DeadLetter(
                topic=message.topic,
                payload=message.payload,
                reason=f"refused by ingest: {exc.detail}",
                received_at=message.received_at,
            )
            async with self._db.write() as tx:
                await record_dead_letters(tx, self._settings.tenant_id, [letter])
            self.dead_letters += 1

    async def _store(self, batch: list[Received]) -> None:
        events: list[dict[str, Any]] = []
        origins: list[Received] = []
        letters: list[DeadLetter] = []
        for message in batch:
            mapped = map_payload(message.topic, message.payload, message.received_at)
            if mapped.reason is not None:
                letters.append(
                    DeadLetter(message.topic, message.payload, mapped.reason, message.received_at)
                )
                continue
            events.extend(mapped.events)
            origins.extend([message] * len(mapped.events))
        tenant_id = self._settings.tenant_id
        async with self._db.write() as tx:
            if events:
                outcome = await self._ingestor.ingest(tx, tenant_id, events)
                for rejection in outcome.rejected:
                    origin = origins[rejection.index]
                    letters.append(
                        DeadLetter(
                            origin.topic,
                            origin.payload,
                            rejection_reason(rejection),
                            origin.received_at,
                        )
                    )
            await record_dead_letters(tx, tenant_id, letters)
        self.dead_letters += len(letters)
