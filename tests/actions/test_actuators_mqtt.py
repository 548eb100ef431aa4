"""MqttActuator end to end against the real Mosquitto, with the simulated plant as the device:
write with read-back, read from the retained report, idempotent repeats, refusals, an asset
nobody serves (OutcomeUnknown within the deadline), and no broker at all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt
import pytest

from opstwin.actions.actuators import (
    ActuatorRejected,
    ActuatorUnavailable,
    MqttActuator,
    OutcomeUnknown,
    SetpointRef,
)
from opstwin.actions.actuators.mqtt_contract import setpoints_topic
from opstwin.kit.clock import ManualClock
from opstwin.plant import PlantMqttBridge, PlantRunner, SimulatedPlant
from tests.plant.helpers import START, make_plant
from tests.plant.mqtt_helpers import URL, clear_retained, publish, recording, unique_prefix

pytestmark = pytest.mark.mqtt

TIMEOUT_S = 2.0


@dataclass
class Setup:
    plant: SimulatedPlant
    bridge: PlantMqttBridge
    actuator: MqttActuator
    prefix: str

    def ref(self, setpoint: str = "temp_sp", asset: str = "heater") -> SetpointRef:
        spec = self.plant.twin.assets[0].setpoints[setpoint]
        return SetpointRef("default", self.plant.twin_id, asset, setpoint, spec)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    prefix = unique_prefix()
    plant = make_plant()
    bridge = PlantMqttBridge(plant, url=URL, topic_prefix=prefix, clock=ManualClock(START))
    async with bridge:
        async with asyncio.timeout(5):
            await bridge.connected.wait()
        async with MqttActuator(URL, topic_prefix=prefix, timeout_s=TIMEOUT_S) as actuator:
            yield Setup(plant, bridge, actuator, prefix)
    await clear_retained([setpoints_topic(prefix, plant.twin_id, a) for a in plant.asset_ids()])


async def test_write_reads_back_and_read_returns_it(setup: Setup) -> None:
    actuator, ref = setup.actuator, setup.ref()
    assert actuator.name == "mqtt"
    assert await actuator.read(ref) == 60.0  # the retained report, from the bridge's start
    assert await actuator.write(ref, 64.5, idempotency_key="w1") == 64.5
    assert setup.plant.commanded("heater", "temp_sp") == 64.5
    assert await actuator.read(ref) == 64.5
    assert setup.actuator.connections == 1


async def test_a_second_write_with_the_same_key_is_a_no_op(setup: Setup) -> None:
    actuator, ref = setup.actuator, setup.ref()
    assert await actuator.write(ref, 62.0, idempotency_key="once") == 62.0
    assert await actuator.write(ref, 70.0, idempotency_key="once") == 62.0
    assert setup.plant.commanded("heater", "temp_sp") == 62.0
    assert (setup.bridge.commands_applied, setup.bridge.commands_duplicate) == (1, 1)


async def test_out_of_bounds_is_rejected_by_the_device(setup: Setup) -> None:
    with pytest.raises(ActuatorRejected, match=r"99 degC is outside the bounds \[40, 80\]"):
        await setup.actuator.write(setup.ref(), 99.0, idempotency_key="too-hot")
    assert setup.plant.commanded("heater", "temp_sp") == 60.0


async def test_an_asset_nobody_serves_times_out_as_outcome_unknown(setup: Setup) -> None:
    ghost = setup.ref(asset="ghost")
    quick = MqttActuator(URL, topic_prefix=setup.prefix, timeout_s=0.3, name="quick")
    async with quick:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown, match="no read-back for cell/ghost/temp_sp"):
            await quick.write(ghost, 61.0, idempotency_key="lost")
        assert time.monotonic() - started < 1.5
        assert await quick.read(ghost) is None  # no report: answered at once, not after a wait


async def test_ramped_setpoints_read_applied_or_commanded(setup: Setup) -> None:
    flow = setup.ref("flow_sp")
    assert await setup.actuator.write(flow, 101.0, idempotency_key="ramp") == 101.0
    assert await setup.actuator.read(flow) == 100.0  # the plant has not stepped yet
    async with MqttActuator(URL, topic_prefix=setup.prefix, reads="commanded") as commanded:
        assert await commanded.read(flow) == 101.0

    async def sink(events: list[dict[str, object]]) -> None:
        return None

    async with PlantRunner(setup.plant, sink, ManualClock(START), tick_s=0.02):
        async with asyncio.timeout(5):
            while await setup.actuator.read(flow) != 101.0:
                await asyncio.sleep(0.02)


async def test_a_foreign_device_report_is_understood(setup: Setup) -> None:
    """Any device speaking the contract works, not only the plant: a retained report for a
    setpoint the plant does not know is read back as published."""
    topic = setpoints_topic(setup.prefix, "cell", "chiller")
    try:
        await publish(
            topic,
            b'{"setpoints": {"temp_sp": 12.5}, "commanded": {"temp_sp": 12.0}, "last_key": null, "ts": ""}',
            retain=True,
        )
        chiller = setup.ref(asset="chiller")
        async with asyncio.timeout(5):
            while await setup.actuator.read(chiller) is None:
                await asyncio.sleep(0.02)
        assert await setup.actuator.read(chiller) == 12.5
    finally:
        await clear_retained([topic])


async def test_without_a_broker_nothing_is_sent() -> None:
    down = MqttActuator(host="127.0.0.1", port=1, timeout_s=0.2, reconnect_min_s=0.05)
    ref = SetpointRef(
        "default", "cell", "heater", "temp_sp", make_plant().twin.assets[0].setpoints["temp_sp"]
    )
    with pytest.raises(ActuatorUnavailable, match="is not started"):
        await down.write(ref, 61.0, idempotency_key="k")
    async with down:
        with pytest.raises(
            ActuatorUnavailable, match=r"no connection to the broker at 127\.0\.0\.1:1"
        ):
            await down.write(ref, 61.0, idempotency_key="k")


async def test_reconnects_after_losing_the_broker(setup: Setup) -> None:
    """Another client taking over the actuator's client id makes the broker drop it (a real
    disconnection); the actuator reconnects, re-syncs and writes again."""
    actuator = MqttActuator(
        URL, topic_prefix=setup.prefix, client_id=f"{setup.prefix}-act", reconnect_min_s=0.05
    )
    async with actuator:
        ref = setup.ref()
        assert await actuator.write(ref, 61.0, idempotency_key="before") == 61.0
        async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"{setup.prefix}-act"):
            pass
        async with asyncio.timeout(5):
            while actuator.connections < 2 or not actuator.synced.is_set():
                await asyncio.sleep(0.01)
        assert await actuator.write(ref, 62.0, idempotency_key="after") == 62.0
        assert await actuator.read(ref) == 62.0


async def test_stopping_ends_a_waiting_write_as_outcome_unknown(setup: Setup) -> None:
    actuator = MqttActuator(URL, topic_prefix=setup.prefix, timeout_s=10.0)
    await actuator.start()
    async with recording(f"{setup.prefix}/cell/ghost/cmd") as sent:
        write = asyncio.create_task(
            actuator.write(setup.ref(asset="ghost"), 61.0, idempotency_key="k")
        )
        await sent.wait_for(lambda _t, body: body["idempotency_key"] == "k")
        await actuator.stop()
    with pytest.raises(OutcomeUnknown, match="stopped before cell/ghost/temp_sp was read back"):
        await write
