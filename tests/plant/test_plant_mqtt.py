"""The plant as an MQTT device, against the real Mosquitto: telemetry out (accepted by the
telemetry source's mapping and the normalizer), commands in, retained setpoint reports out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt
import orjson
import pytest

from opstwin.actions.actuators.mqtt_contract import command_topic, setpoints_topic
from opstwin.config import TelemetrySettings
from opstwin.kit.clock import ManualClock, to_micros
from opstwin.plant import PlantMqttBridge, PlantOffline, PlantRunner, SimulatedPlant
from opstwin.telemetry.mqtt import map_payload
from opstwin.telemetry.normalizer import EventNormalizer, NormalizedEvent, TwinCatalog
from opstwin.twins.registry import Twin
from tests.plant.helpers import START, make_plant
from tests.plant.mqtt_helpers import URL, clear_retained, publish, recording, unique_prefix

pytestmark = pytest.mark.mqtt


@dataclass
class Link:
    plant: SimulatedPlant
    bridge: PlantMqttBridge
    prefix: str

    def cmd(self, asset: str = "heater") -> str:
        return command_topic(self.prefix, self.plant.twin_id, asset)

    def reports(self) -> str:
        return f"{self.prefix}/{self.plant.twin_id}/+/setpoints"


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    prefix = unique_prefix()
    plant = make_plant(max_sampling_period_s=0.05)
    bridge = PlantMqttBridge(
        plant, url=URL, topic_prefix=prefix, clock=ManualClock(START), reconnect_min_s=0.05
    )
    await bridge.start()
    async with asyncio.timeout(5):
        await bridge.connected.wait()
    yield Link(plant, bridge, prefix)
    await bridge.stop()
    await clear_retained([setpoints_topic(prefix, plant.twin_id, a) for a in plant.asset_ids()])


def command(setpoint: str, value: object, key: str) -> bytes:
    return orjson.dumps({"setpoint": setpoint, "value": value, "idempotency_key": key})


async def test_reports_are_retained_from_the_start(link: Link) -> None:
    async with recording(link.reports()) as seen:
        heater = await seen.wait_for(lambda t, _: t.endswith("/heater/setpoints"))
        await seen.wait_for(lambda t, _: t.endswith("/metrology/setpoints"))
    assert heater["setpoints"] == {"temp_sp": 60.0, "flow_sp": 100.0, "valve_sp": 50.0}
    assert heater["commanded"] == heater["setpoints"]
    assert heater["last_key"] is None
    assert heater["ts"] == "2026-03-01T08:00:00Z"
    assert all(retained for _, _, retained in seen.messages)


async def test_telemetry_is_published_for_the_telemetry_source(link: Link) -> None:
    twin = link.plant.twin
    catalog = TwinCatalog.of(Twin("default", twin.id, 1, twin, START))
    normalizer = EventNormalizer(TelemetrySettings())
    async with (
        recording(f"{link.prefix}/+/+/telemetry") as seen,
        PlantRunner(
            link.plant, link.bridge.publish_telemetry, ManualClock(START), tick_s=0.02
        ) as runner,
    ):
        await seen.wait_until(lambda: len(seen.messages) >= 10)
    for topic, payload, retained in seen.messages:
        assert not retained
        mapped = map_payload(topic, payload, START)
        assert mapped.reason is None
        [event] = mapped.events
        assert topic == f"{link.prefix}/{twin.id}/{event['asset_id']}/telemetry"
        outcome = normalizer.normalize(event, {twin.id: catalog}, to_micros(START), "unused")
        assert isinstance(outcome, NormalizedEvent)
        assert outcome.event_id == event["event_id"]  # the plant's own id, kept for dedupe
    # counted once acknowledged (the tick in flight when the runner stopped may not be)
    assert 0 < link.bridge.telemetry_published == runner.events_sent


async def test_commands_are_applied_and_answered(link: Link) -> None:
    async with recording(link.reports()) as seen:
        await publish(link.cmd(), command("temp_sp", 65.0, "k1"))
        report = await seen.wait_for(lambda _t, b: b.get("last_key") == "k1")
        assert report["commanded"]["temp_sp"] == 65.0
        assert report["setpoints"]["temp_sp"] == 65.0
        assert report["duplicate"] is False
        assert link.plant.commanded("heater", "temp_sp") == 65.0

        # the same key again: nothing changes, the report says so
        await publish(link.cmd(), command("temp_sp", 70.0, "k1"))
        again = await seen.wait_for(lambda _t, b: b.get("duplicate") is True)
        assert again["last_key"] == "k1"
        assert again["commanded"]["temp_sp"] == 65.0

        # out of bounds: refused, reported with the reason and the key
        await publish(link.cmd(), command("temp_sp", 99.0, "k2"))
        refused = await seen.wait_for(lambda _t, b: "rejected" in b)
        assert refused["rejected"] == {
            "idempotency_key": "k2",
            "reason": "heater/temp_sp: 99 degC is outside the bounds [40, 80]",
        }
        assert refused["last_key"] == "k1"

        # malformed, with a readable key: refused too
        await publish(link.cmd(), command("temp_sp", "hot", "k3"))
        bad = await seen.wait_for(
            lambda _t, b: (
                isinstance(b.get("rejected"), dict) and b["rejected"]["idempotency_key"] == "k3"
            )
        )
        assert bad["rejected"]["reason"] == "value must be a finite number"

        # an asset the twin does not have: nobody answers (then a real command, to be sure)
        await publish(link.cmd("ghost"), command("temp_sp", 61.0, "k4"))
        await publish(link.cmd(), command("temp_sp", 61.0, "k5"))
        await seen.wait_for(lambda _t, b: b.get("last_key") == "k5")
    assert not [t for t, _, _ in seen.messages if "/ghost/" in t]
    bridge = link.bridge
    assert (bridge.commands_applied, bridge.commands_duplicate, bridge.commands_rejected) == (
        2,
        1,
        2,
    )


async def test_ramping_setpoints_are_reported_as_they_move(link: Link) -> None:
    async with (
        recording(setpoints_topic(link.prefix, link.plant.twin_id, "heater")) as seen,
        PlantRunner(link.plant, link.bridge.publish_telemetry, ManualClock(START), tick_s=0.02),
    ):
        await publish(link.cmd(), command("flow_sp", 101.0, "ramp"))
        first = await seen.wait_for(lambda _t, b: b.get("last_key") == "ramp")
        assert first["commanded"]["flow_sp"] == 101.0
        # 2 sccm/s: the applied value reaches 101 within about half a second
        await seen.wait_for(lambda _t, b: b["setpoints"]["flow_sp"] == 101.0)
    moving = [b["setpoints"]["flow_sp"] for b in seen.json() if b.get("last_key") == "ramp"]
    assert len(moving) >= 3
    assert moving == sorted(moving)
    assert 100.0 < moving[1] < 101.0


async def test_telemetry_without_a_broker_raises() -> None:
    plant = make_plant()
    bridge = PlantMqttBridge(plant, clock=ManualClock(START), host="127.0.0.1", port=1)
    with pytest.raises(PlantOffline, match="no broker connection"):
        await bridge.publish_telemetry(plant.step(1.0, at=START))


async def test_bridge_reconnects_and_serves_commands_again() -> None:
    prefix = unique_prefix()
    plant = make_plant()
    client_id = f"{prefix}-plant"
    bridge = PlantMqttBridge(
        plant,
        url=URL,
        topic_prefix=prefix,
        clock=ManualClock(START),
        client_id=client_id,
        reconnect_min_s=0.05,
    )
    try:
        async with bridge:
            async with asyncio.timeout(5):
                await bridge.connected.wait()
            # another client taking over the id makes the broker drop the bridge
            async with aiomqtt.Client("127.0.0.1", 1883, identifier=client_id):
                pass
            async with asyncio.timeout(5):
                while bridge.connections < 2 or not bridge.connected.is_set():
                    await asyncio.sleep(0.01)
            async with recording(f"{prefix}/cell/+/setpoints") as seen:
                await publish(
                    command_topic(prefix, "cell", "heater"), command("temp_sp", 66.0, "r")
                )
                await seen.wait_for(lambda _t, b: b.get("last_key") == "r")
        assert plant.commanded("heater", "temp_sp") == 66.0
    finally:
        await clear_retained([setpoints_topic(prefix, "cell", a) for a in plant.asset_ids()])
