"""PlantMqttBridge: the simulated plant as an MQTT device.

Topics (prefix default ``opstwin``), one connection for all of them:

* ``<prefix>/<twin>/<asset>/telemetry`` — published by :meth:`PlantMqttBridge.publish_telemetry`
  (a :data:`~opstwin.plant.runner.TelemetrySink`): each event as JSON in the ``telemetry.v1``
  input shape (``event_id``, ``twin_id``, ``asset_id``, ``ts``, ``metrics``, ``tags``), QoS 1,
  not retained — what the telemetry source (``opstwin/+/+/telemetry``) ingests; the
  ``event_id`` makes a redelivery a duplicate, not a second sample.
* ``<prefix>/<twin>/+/cmd`` — subscribed (QoS 1): setpoint commands, applied with the same rules
  as a direct write (bounds, ramp, idempotency key).
* ``<prefix>/<twin>/<asset>/setpoints`` — the asset's retained setpoint report, published (QoS 1)
  for every asset when the bridge connects, in answer to every command (``last_key`` = its key;
  ``duplicate`` when the key was applied before; ``rejected`` with the reason when refused), and
  whenever applied values change while ramping (at most once per plant step).

Payloads are those of :mod:`opstwin.actions.actuators.mqtt_contract`. A malformed command is
answered with a rejection when its key can be read, else only logged; a command for an asset the
twin does not have is logged and not answered (nobody serves that asset: the writer's deadline
expires). The session is clean: commands sent while the plant is down are not applied when it
comes back (a stale command executing late would surprise everyone); their writers time out
and reconcile by reading the retained report.

On losing the broker the bridge reconnects with exponential backoff (``reconnect_min_s``
doubling up to ``reconnect_max_s``); meanwhile :meth:`publish_telemetry` raises
:class:`PlantOffline` and the runner counts the tick's samples as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiomqtt
import orjson
import structlog

from opstwin.actions.actuators.base import ActuatorRejected, ActuatorUnavailable
from opstwin.actions.actuators.mqtt_contract import (
    COMMAND_SUFFIX,
    DEFAULT_TOPIC_PREFIX,
    NO_DELAY,
    InvalidCommand,
    Rejection,
    SetpointCommand,
    SetpointReport,
    command_filter,
    payload_bytes,
    setpoints_topic,
    split_topic,
)
from opstwin.kit.clock import Clock, rfc3339
from opstwin.kit.mqtt import DEFAULT_PORT, BrokerAddress, keep_connected
from opstwin.kit.tasks import log_crash
from opstwin.plant.simulated import SimulatedPlant

log = structlog.get_logger(__name__)

TELEMETRY_SUFFIX = "telemetry"


def telemetry_topic(prefix: str, twin_id: str, asset_id: str) -> str:
    return f"{prefix}/{twin_id}/{asset_id}/{TELEMETRY_SUFFIX}"


class PlantOffline(ConnectionError):
    """The bridge has no broker connection right now (telemetry not sent)."""


class PlantMqttBridge:
    """Publishes a plant's telemetry and setpoint reports, and applies its MQTT commands."""

    def __init__(
        self,
        plant: SimulatedPlant,
        *,
        clock: Clock,
        url: str | None = None,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        username: str | None = None,
        password: str | None = None,
        topic_prefix: str = DEFAULT_TOPIC_PREFIX,
        client_id: str | None = None,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
    ) -> None:
        """``url`` (``mqtt://[user:password@]host[:port]``) wins over ``host``/``port``/credentials."""
        self._address = BrokerAddress.of(url, host, port, username, password)
        self.plant = plant
        self._clock = clock
        self._prefix = topic_prefix
        self._client_id = client_id or f"opstwin-plant-{plant.twin_id}-{secrets.token_hex(4)}"
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()
        self._dirty_event = asyncio.Event()
        self._unlisten: Callable[[], None] | None = None
        #: Set while connected, subscribed, and the start-up reports are published.
        self.connected = asyncio.Event()
        #: Counters.
        self.connections = 0
        self.commands_applied = 0
        self.commands_duplicate = 0
        self.commands_rejected = 0
        self.telemetry_published = 0

    @property
    def topic_prefix(self) -> str:
        return self._prefix

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background (a no-op when started)."""
        if self._task is None or self._task.done():
            self._unlisten = self.plant.add_setpoint_listener(self._mark_dirty)
            self._task = asyncio.create_task(
                self._run(), name=f"opstwin-plant-mqtt-{self.plant.twin_id}"
            )
            self._task.add_done_callback(log_crash("plant.mqtt.crashed"))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # a crash was logged by its done callback
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- the telemetry sink -----------------------------------------------------------------------

    async def publish_telemetry(self, events: list[dict[str, Any]]) -> None:
        """Publish each event on its asset's telemetry topic (QoS 1), all acknowledged before
        returning. Raises :class:`PlantOffline` when not connected, ``aiomqtt.MqttError`` when
        the broker fails mid-way."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise PlantOffline(
                f"plant {self.plant.twin_id!r}: no broker connection, {len(events)} events not sent"
            )
        await asyncio.gather(
            *(
                client.publish(
                    telemetry_topic(self._prefix, event["twin_id"], event["asset_id"]),
                    orjson.dumps(event),
                    qos=1,
                )
                for event in events
            )
        )
        self.telemetry_published += len(events)

    # --- internals --------------------------------------------------------------------------------

    def _mark_dirty(self, asset: str) -> None:
        self._dirty.add(asset)
        self._dirty_event.set()

    def _new_client(self) -> aiomqtt.Client:
        return self._address.client(self._client_id, clean_session=True, socket_options=(NO_DELAY,))

    async def _run(self) -> None:
        await keep_connected(
            self._new_client,
            self._session,
            backoff=self._reconnect,
            disconnected="plant.mqtt.disconnected",
            on_lost=self._lost,
            twin_id=self.plant.twin_id,
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe(command_filter(self._prefix, self.plant.twin_id), qos=1)
        self._client = client
        for asset in self.plant.asset_ids():
            await self._publish_report(client, asset)
        self.connections += 1
        self.connected.set()
        log.info(
            "plant.mqtt.connected",
            twin_id=self.plant.twin_id,
            host=self._address.host,
            port=self._address.port,
            prefix=self._prefix,
        )
        flusher = asyncio.create_task(self._flush_reports(client))
        try:
            async for message in client.messages:
                await self._on_message(client, str(message.topic), message.payload)
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    def _lost(self) -> None:
        self._client = None
        self.connected.clear()

    async def _flush_reports(self, client: aiomqtt.Client) -> None:
        """Publish the reports of assets whose setpoints changed (ramps), coalesced."""
        try:
            while True:
                await self._dirty_event.wait()
                self._dirty_event.clear()
                while self._dirty:
                    await self._publish_report(client, self._dirty.pop())
        except aiomqtt.MqttError as exc:  # the message loop sees the same disconnection
            log.warning("plant.mqtt.report_failed", twin_id=self.plant.twin_id, error=str(exc))

    async def _publish_report(
        self,
        client: aiomqtt.Client,
        asset: str,
        *,
        duplicate: bool = False,
        rejected: Rejection | None = None,
    ) -> None:
        snapshot = self.plant.snapshot(asset)
        self._dirty.discard(asset)  # this report carries the change
        report = SetpointReport(
            setpoints=snapshot.applied,
            commanded=snapshot.commanded,
            last_key=snapshot.last_key,
            ts=rfc3339(self._clock.now()),
            duplicate=duplicate,
            rejected=rejected,
        )
        topic = setpoints_topic(self._prefix, self.plant.twin_id, asset)
        await client.publish(topic, report.to_payload(), qos=1, retain=True)

    async def _on_message(self, client: aiomqtt.Client, topic: str, raw: object) -> None:
        parts = split_topic(self._prefix, topic)
        if parts is None or parts[0] != self.plant.twin_id or parts[2] != COMMAND_SUFFIX:
            return
        asset = parts[1]
        if not self.plant.serves(asset):
            log.warning("plant.mqtt.unknown_asset", twin_id=self.plant.twin_id, asset_id=asset)
            return
        try:
            command = SetpointCommand.parse(payload_bytes(raw))
        except InvalidCommand as exc:
            log.warning("plant.mqtt.bad_command", topic=topic, reason=exc.reason)
            if exc.idempotency_key is not None:
                self.commands_rejected += 1
                rejection = Rejection(exc.idempotency_key, exc.reason)
                await self._publish_report(client, asset, rejected=rejection)
            return
        try:
            result = self.plant.write(
                asset, command.setpoint, command.value, idempotency_key=command.idempotency_key
            )
        except (ActuatorRejected, ActuatorUnavailable) as exc:
            self.commands_rejected += 1
            log.info(
                "plant.mqtt.command_rejected",
                twin_id=self.plant.twin_id,
                asset_id=asset,
                key=command.idempotency_key,
                reason=str(exc),
            )
            rejection = Rejection(command.idempotency_key, str(exc))
            await self._publish_report(client, asset, rejected=rejection)
            return
        if result.duplicate:
            self.commands_duplicate += 1
        else:
            self.commands_applied += 1
        await self._publish_report(client, asset, duplicate=result.duplicate)
