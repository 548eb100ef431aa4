"""The simulated fab line as an MQTT device, for end-to-end tests across the real Mosquitto.

The app runs the plant itself (``plant.enabled``, ``plant.transport="mqtt"``): the plant's
telemetry goes through the broker to the MQTT source, and ``simulated_plant`` is the
:class:`~opstwin.actions.actuators.mqtt.MqttActuator` (command topic, retained read-back).

Each test gets a twin id of its own (``fab-<token>``), hence topics of its own
(``opstwin/fab-<token>/…``): the plant and the actuator use the default prefix, and the MQTT
source subscribes to that twin only, so parallel runs and retained reports left by earlier
ones cannot interfere. The plant starts with the app and needs its twin in the registry, so
:func:`prepare_database` loads it (with thirty seconds of history, so the detector's baseline is
mature) through a short-lived app on the same database before the real one starts.
:func:`forget_broker_state` deletes what the test left on the broker.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any

import aiomqtt
import orjson

from opstwin.actions.actuators import MqttActuator, SetpointRef
from opstwin.actions.actuators.mqtt_contract import DEFAULT_TOPIC_PREFIX, setpoints_topic
from opstwin.app import create_app
from opstwin.config import (
    AutomationSettings,
    DetectionSettings,
    MqttSettings,
    PlantSettings,
    Settings,
)
from opstwin.plant.simulated import SimulatedPlant
from opstwin.services import Services
from opstwin.twins.loader import parse_twin_document
from tests.actions.plant_fixtures import ETCH, HISTORY_S, fab_document
from tests.plant.mqtt_helpers import HOST, PORT, URL, clear_retained, unique_prefix

SEED = 11
TICK_S = 0.1
"""The plant's step and publishing period: the 10 Hz sampling of :func:`fab_document`."""


def mqtt_plant_settings(base: Settings, *, automation: AutomationSettings) -> Settings:
    """``base`` with the plant on MQTT under a twin id of its own, and the MQTT source
    subscribed to that twin's telemetry with a session of its own."""
    token = unique_prefix()  # skips (fails under CI) when the broker is down
    twin_id = f"fab-{token}"
    mqtt = MqttSettings(
        url=URL,
        topic_filter=f"{DEFAULT_TOPIC_PREFIX}/{twin_id}/+/telemetry",
        client_id=f"opstwin-e2e-{token}",
        batch_max_delay_s=0.02,
        reconnect_min_s=0.1,
        reconnect_max_s=1.0,
    )
    plant = PlantSettings(
        enabled=True,
        twin_id=twin_id,
        transport="mqtt",
        tick_s=TICK_S,
        time_constant_s=0.3,
        max_sampling_period_s=TICK_S,
        seed=SEED,
        fault_interval_s=None,  # the test injects its own faults
    )
    return base.model_copy(update={"mqtt": mqtt, "plant": plant, "automation": automation})


def twin_document(twin_id: str) -> dict[str, Any]:
    """The test-timed fab line of :func:`fab_document`, renamed ``twin_id``."""
    document = fab_document()
    (twin,) = document["twins"]
    twin["id"] = twin_id
    return document


async def prepare_database(settings: Settings) -> None:
    """Migrate, load the twin and ingest ``HISTORY_S`` of its telemetry, through a short-lived
    app on the database of ``settings`` (no plant, no MQTT, no consumers: the real app's
    detector reads the history from the change log when it starts)."""
    setup = settings.model_copy(
        update={
            "mqtt": MqttSettings(),
            "plant": PlantSettings(enabled=False),
            "detection": DetectionSettings(enabled=False),
            "automation": AutomationSettings(enabled=False),
            "actions": settings.actions.model_copy(update={"enabled": False}),
        }
    )
    app = create_app(setup)
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        document = twin_document(settings.plant.twin_id)
        async with services.db.write() as tx:
            await services.twins.put(tx, settings.plant.tenant_id, document)
        # A plant of the same twin, stepped as fast as it computes over the last thirty
        # seconds: the history a plant that has been running would have left.
        (spec,) = parse_twin_document(document).twins
        history = SimulatedPlant(
            spec,
            seed=SEED,
            time_constant_s=settings.plant.time_constant_s,
            max_sampling_period_s=settings.plant.max_sampling_period_s,
            clock=services.clock,
        )
        start = services.clock.now() - timedelta(seconds=HISTORY_S)
        for second in range(int(HISTORY_S)):
            events = history.step(1.0, at=start + timedelta(seconds=second + 1))
            async with services.db.write() as tx:
                await services.ingestor.ingest(tx, settings.plant.tenant_id, events)


def esc_temp_sp(services: Services, twin_id: str) -> SetpointRef:
    """The chuck temperature setpoint of the etch tool."""
    plant = running_plant(services)
    asset = plant.twin.asset(ETCH)
    assert asset is not None
    return SetpointRef("default", twin_id, ETCH, "esc_temp_sp", asset.setpoints["esc_temp_sp"])


def running_plant(services: Services) -> SimulatedPlant:
    """The plant the app runs (the lifespan started it)."""
    assert services.plant is not None, "plant.enabled is off"
    assert services.plant.plant is not None, "the plant did not start (no twin?)"
    return services.plant.plant


def mqtt_actuator(services: Services) -> MqttActuator:
    """The actuator ``simulated_plant`` routes to."""
    actuator = services.actuators.get("simulated_plant")
    assert isinstance(actuator, MqttActuator), actuator
    assert actuator.name == "mqtt"
    return actuator


async def wait_connected(services: Services, twin_id: str, timeout_s: float = 10.0) -> None:
    """Until the MQTT source is subscribed and the actuator holds the plant's retained report."""
    assert services.mqtt is not None
    ref = esc_temp_sp(services, twin_id)
    actuator = mqtt_actuator(services)
    async with asyncio.timeout(timeout_s):
        await services.mqtt.connected.wait()
        while await actuator.read(ref) is None:  # the bridge's start-up report not seen yet
            await asyncio.sleep(0.02)


async def retained_report(twin_id: str, asset_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The asset's retained setpoint report, as a subscriber that connects now receives it."""
    topic = setpoints_topic(DEFAULT_TOPIC_PREFIX, twin_id, asset_id)
    async with aiomqtt.Client(HOST, PORT, identifier=f"e2e-reader-{secrets.token_hex(4)}") as c:
        await c.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout_s):
            async for message in c.messages:
                payload = message.payload
                if message.retain and isinstance(payload, bytes) and payload:
                    report: dict[str, Any] = orjson.loads(payload)
                    return report
    raise AssertionError(f"no retained report on {topic}")  # the subscription ended


async def forget_broker_state(settings: Settings) -> None:
    """Delete the retained setpoint reports of the test's twin and the MQTT source's
    persistent session, so the broker keeps nothing of the test."""
    (spec,) = parse_twin_document(twin_document(settings.plant.twin_id)).twins
    await clear_retained(
        [setpoints_topic(DEFAULT_TOPIC_PREFIX, spec.id, asset.id) for asset in spec.assets]
    )
    async with aiomqtt.Client(HOST, PORT, identifier=settings.mqtt.client_id, clean_session=True):
        pass
