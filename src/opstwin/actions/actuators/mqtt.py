"""MqttActuator: setpoint writes as MQTT commands, confirmed by the device's retained read-back.

The topics and payloads are those of :mod:`opstwin.actions.actuators.mqtt_contract`.

One connection per actuator, opened by :meth:`MqttActuator.start` (or ``async with``) and kept
open, reconnecting with exponential backoff (``reconnect_min_s`` doubling up to
``reconnect_max_s``) when the broker goes away. On every (re)connection it subscribes to every
setpoint report under its prefix (``<prefix>/+/+/setpoints``, QoS 1) and keeps the latest report
per asset. The broker sends the retained reports right after the subscription; to know when
they have all arrived the actuator then publishes a marker to a topic of its own that matches
the same subscription (``<prefix>/_sync/<token>/setpoints``; ``_sync`` cannot be a twin id)
and waits for it to come back — the broker delivers in order, so everything retained came
first. Until then the actuator is not *synced* and reads and writes wait for it.

* ``read(ref)``: the synced report's ``setpoints[ref.setpoint]`` (the applied value; with
  ``reads="commanded"`` its ``commanded[ref.setpoint]``), or None when no device reports that
  setpoint.
* ``write(ref, value, key)``: publishes the command (QoS 1) and waits — on a condition, with a
  deadline of ``timeout_s`` for the whole write — for a report that answers the key: its
  ``commanded[ref.setpoint]`` is returned; a rejection of the key raises
  :class:`ActuatorRejected`. No answer in time raises :class:`OutcomeUnknown` (nobody serves
  the asset, or the device is slow or down: reconcile with ``read``). Not connected within the
  deadline (nothing was sent) raises :class:`ActuatorUnavailable`.
"""

from __future__ import annotations

import asyncio
import secrets
from types import TracebackType
from typing import Self

import aiomqtt
import paho.mqtt.client as paho
import structlog

from opstwin.actions.actuators.base import (
    ActuatorRejected,
    ActuatorUnavailable,
    OutcomeUnknown,
    SetpointReading,
    SetpointRef,
)
from opstwin.actions.actuators.mqtt_contract import (
    DEFAULT_TOPIC_PREFIX,
    NO_DELAY,
    SETPOINTS_SUFFIX,
    SetpointCommand,
    SetpointReport,
    command_topic,
    payload_bytes,
    setpoints_filter,
    split_topic,
)
from opstwin.kit.mqtt import DEFAULT_PORT, BrokerAddress, keep_connected
from opstwin.kit.tasks import log_crash

log = structlog.get_logger(__name__)

SYNC_LEVEL = "_sync"
"""Twin level of the actuator's own marker topic; twin ids cannot start with ``_``."""

_Waiter = tuple[str, str, str]
"""(twin_id, asset_id, idempotency_key) of a write waiting for its read-back."""


class MqttActuator:
    """Writes setpoints through the MQTT command topic and reads them from the retained report."""

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        username: str | None = None,
        password: str | None = None,
        topic_prefix: str = DEFAULT_TOPIC_PREFIX,
        timeout_s: float = 5.0,
        name: str = "mqtt",
        client_id: str | None = None,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
        reads: SetpointReading = "applied",
    ) -> None:
        """``url`` (``mqtt://[user:password@]host[:port]``) wins over ``host``/``port``/credentials."""
        address = BrokerAddress.of(url, host, port, username, password)
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if (
            not topic_prefix
            or topic_prefix.endswith("/")
            or "+" in topic_prefix
            or "#" in topic_prefix
        ):
            raise ValueError(f"invalid topic prefix {topic_prefix!r}")
        self._address = address
        self._prefix = topic_prefix
        self._timeout_s = timeout_s
        self._name = name
        self._client_id = client_id or f"opstwin-actuator-{secrets.token_hex(4)}"
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._reads = reads
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._reports: dict[tuple[str, str], SetpointReport] = {}
        self._waiters: dict[_Waiter, list[asyncio.Future[SetpointReport]]] = {}
        self._marker = ""
        self._sync_token = secrets.token_hex(6)
        #: Set while connected and every retained report has been received.
        self.synced = asyncio.Event()
        self.connections = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background (a no-op when started)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"opstwin-actuator-{self._name}")
            self._task.add_done_callback(log_crash("actuator.mqtt.crashed"))

    async def stop(self) -> None:
        """Disconnect; writes still waiting end with OutcomeUnknown."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # a crash was logged by its done callback
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.cancel()

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

    # --- the actuator protocol --------------------------------------------------------------------

    async def read(self, ref: SetpointRef) -> float | None:
        """The applied value the device reports for the setpoint (or the commanded one, see
        ``reads``); None when no report names it."""
        loop = asyncio.get_running_loop()
        await self._wait_synced(loop.time() + self._timeout_s, ref)
        report = self._reports.get((ref.twin_id, ref.asset_id))
        if report is None:
            return None
        values = report.commanded if self._reads == "commanded" else report.setpoints
        return values.get(ref.setpoint)

    async def write(self, ref: SetpointRef, value: float, *, idempotency_key: str) -> float:
        """Command the absolute ``value`` and return the device's read-back (module docstring)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        await self._wait_synced(deadline, ref)
        client = self._client
        if client is None:
            raise ActuatorUnavailable(
                f"MQTT actuator {self._name!r}: lost the broker before sending"
            )
        waiter: _Waiter = (ref.twin_id, ref.asset_id, idempotency_key)
        future: asyncio.Future[SetpointReport] = loop.create_future()
        self._waiters.setdefault(waiter, []).append(future)
        topic = command_topic(self._prefix, ref.twin_id, ref.asset_id)
        payload = SetpointCommand(ref.setpoint, float(value), idempotency_key).to_payload()
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    await client.publish(topic, payload, qos=1)
                except aiomqtt.MqttCodeError as exc:
                    if exc.rc == paho.MQTT_ERR_NO_CONN:
                        raise ActuatorUnavailable(
                            f"MQTT actuator {self._name!r}: not connected, {ref.path} not sent"
                        ) from exc
                    raise OutcomeUnknown(
                        f"publishing the command for {ref.path} failed ({exc}); it may have "
                        "reached the device: reconcile by reading back"
                    ) from exc
                except aiomqtt.MqttError as exc:
                    raise OutcomeUnknown(
                        f"publishing the command for {ref.path} failed ({exc}); it may have "
                        "reached the device: reconcile by reading back"
                    ) from exc
                report = await future
        except TimeoutError:
            raise OutcomeUnknown(
                f"no read-back for {ref.path} (key {idempotency_key}) on "
                f"{self._prefix}/{ref.twin_id}/{ref.asset_id}/{SETPOINTS_SUFFIX} within "
                f"{self._timeout_s:g} s: the device may be down or slow; reconcile by reading back"
            ) from None
        except asyncio.CancelledError:
            if future.cancelled() and not _current_task_cancelling():
                raise OutcomeUnknown(
                    f"MQTT actuator {self._name!r} stopped before {ref.path} was read back"
                ) from None
            raise
        finally:
            futures = self._waiters.get(waiter, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                self._waiters.pop(waiter, None)
        if report.rejected is not None and report.rejected.idempotency_key == idempotency_key:
            raise ActuatorRejected(
                f"{ref.path}: the device refused {value:g}: {report.rejected.reason}"
            )
        read_back = report.commanded.get(ref.setpoint)
        if read_back is None:
            raise OutcomeUnknown(
                f"the read-back for {ref.path} (key {idempotency_key}) does not name the "
                "setpoint; reconcile by reading back"
            )
        return read_back

    # --- internals --------------------------------------------------------------------------------

    async def _wait_synced(self, deadline: float, ref: SetpointRef) -> None:
        if self._task is None:
            raise ActuatorUnavailable(f"MQTT actuator {self._name!r} is not started")
        try:
            async with asyncio.timeout_at(deadline):
                await self.synced.wait()
        except TimeoutError:
            raise ActuatorUnavailable(
                f"MQTT actuator {self._name!r}: no connection to the broker at "
                f"{self._address.host}:{self._address.port} within {self._timeout_s:g} s "
                f"({ref.path} not sent)"
            ) from None

    def _new_client(self) -> aiomqtt.Client:
        return self._address.client(self._client_id, clean_session=True, socket_options=(NO_DELAY,))

    async def _run(self) -> None:
        await keep_connected(
            self._new_client,
            self._session,
            backoff=self._reconnect,
            disconnected="actuator.mqtt.disconnected",
            on_lost=self._lost,
            actuator=self._name,
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        marker_topic = f"{self._prefix}/{SYNC_LEVEL}/{self._sync_token}/{SETPOINTS_SUFFIX}"
        self._reports.clear()
        await client.subscribe(setpoints_filter(self._prefix), qos=1)
        self._client = client
        self.connections += 1
        self._marker = secrets.token_hex(8)
        await client.publish(marker_topic, self._marker.encode(), qos=1)
        log.info(
            "actuator.mqtt.connected",
            actuator=self._name,
            host=self._address.host,
            port=self._address.port,
        )
        async for message in client.messages:
            self._receive(str(message.topic), payload_bytes(message.payload))

    def _lost(self) -> None:
        self._client = None
        self.synced.clear()

    def _receive(self, topic: str, payload: bytes) -> None:
        parts = split_topic(self._prefix, topic)
        if parts is None or parts[2] != SETPOINTS_SUFFIX:
            return
        twin_id, asset_id, _ = parts
        if twin_id == SYNC_LEVEL:
            if asset_id == self._sync_token and payload.decode(errors="replace") == self._marker:
                self.synced.set()
            return
        if not payload:  # a retained report was deleted
            self._reports.pop((twin_id, asset_id), None)
            return
        try:
            report = SetpointReport.parse(payload)
        except ValueError as exc:
            log.warning("actuator.mqtt.bad_report", topic=topic, error=str(exc))
            return
        self._reports[(twin_id, asset_id)] = report
        for key in {report.last_key, report.rejected.idempotency_key if report.rejected else None}:
            if key is None:
                continue
            for future in self._waiters.get((twin_id, asset_id, key), []):
                if not future.done():
                    future.set_result(report)


def _current_task_cancelling() -> bool:
    """Whether the task running this code is itself being cancelled (not just a future)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
