"""SimulatedPlantActuator and ActuatorRegistry: reads and writes through the protocol,
idempotency, refusals, and name resolution with aliases."""

from __future__ import annotations

import pytest

from opstwin.actions.actuators import (
    Actuator,
    ActuatorRegistry,
    ActuatorRejected,
    ActuatorUnavailable,
    ManagedActuator,
    MqttActuator,
    SetpointRef,
    SimulatedPlantActuator,
    WebhookActuator,
)
from opstwin.plant import SimulatedPlant
from tests.plant.helpers import START, make_plant


def ref(plant: SimulatedPlant, setpoint: str = "temp_sp", asset: str = "heater") -> SetpointRef:
    found = plant.twin.asset(asset)
    spec = found.setpoints[setpoint] if found is not None and setpoint in found.setpoints else None
    any_spec = spec or plant.twin.assets[0].setpoints["temp_sp"]
    return SetpointRef("default", plant.twin_id, asset, setpoint, any_spec)


async def test_write_returns_the_commanded_value_and_read_the_applied_one() -> None:
    plant = make_plant()
    actuator = SimulatedPlantActuator(plant)
    assert actuator.name == "simulated_plant"
    assert isinstance(actuator, Actuator)
    assert await actuator.read(ref(plant)) == 60.0
    assert await actuator.write(ref(plant), 65.0, idempotency_key="a1") == 65.0
    assert await actuator.read(ref(plant)) == 65.0
    # a ramped setpoint: commanded at once, applied as the plant steps
    flow = ref(plant, "flow_sp")
    assert await actuator.write(flow, 110.0, idempotency_key="a2") == 110.0
    assert await actuator.read(flow) == 100.0
    plant.step(2.0, at=START)
    assert await actuator.read(flow) == pytest.approx(104.0)
    commanded = SimulatedPlantActuator(plant, reads="commanded")
    assert await commanded.read(flow) == 110.0


async def test_a_repeated_key_changes_nothing() -> None:
    plant = make_plant()
    actuator = SimulatedPlantActuator(plant)
    assert await actuator.write(ref(plant), 65.0, idempotency_key="same") == 65.0
    assert await actuator.write(ref(plant), 70.0, idempotency_key="same") == 65.0
    assert plant.commanded("heater", "temp_sp") == 65.0


async def test_refusals() -> None:
    plant = make_plant()
    actuator = SimulatedPlantActuator(plant)
    with pytest.raises(ActuatorRejected, match="outside the bounds"):
        await actuator.write(ref(plant), 81.0, idempotency_key="x")
    with pytest.raises(ActuatorRejected, match="no setpoint"):
        await actuator.write(ref(plant, "nope"), 1.0, idempotency_key="y")
    with pytest.raises(ActuatorUnavailable, match="no asset 'ghost'"):
        await actuator.read(ref(plant, asset="ghost"))
    other = SetpointRef("default", "other_twin", "heater", "temp_sp", ref(plant).spec)
    with pytest.raises(
        ActuatorUnavailable,
        match=r"no simulated plant runs twin 'other_twin' \(simulated twins: cell\)",
    ):
        await actuator.write(other, 60.0, idempotency_key="z")
    assert plant.commanded("heater", "temp_sp") == 60.0


def test_one_plant_per_twin() -> None:
    with pytest.raises(ValueError, match="same twin"):
        SimulatedPlantActuator([make_plant(), make_plant()])


async def test_registry_resolves_names_and_aliases() -> None:
    plant = make_plant()
    simulated = SimulatedPlantActuator(plant)
    mqtt = MqttActuator(host="127.0.0.1", port=1, timeout_s=0.1)
    registry = ActuatorRegistry([simulated])
    assert registry.get("simulated_plant") is simulated
    with pytest.raises(
        ActuatorUnavailable,
        match=r"no actuator named 'opc_ua' is configured \(configured: simulated_plant\)",
    ):
        registry.get("opc_ua")

    # the plant behind MQTT: the twin model's name routes to the MQTT actuator
    routed = ActuatorRegistry([mqtt], aliases={"simulated_plant": "mqtt"})
    assert routed.get("simulated_plant") is mqtt
    assert "simulated_plant" in routed
    assert routed.names() == ["mqtt", "simulated_plant"]
    with pytest.raises(ActuatorUnavailable, match=r"configured: mqtt, simulated_plant → mqtt"):
        routed.get("webhook")
    with pytest.raises(ValueError, match="already configured"):
        routed.register(MqttActuator(host="127.0.0.1", port=1))
    with pytest.raises(ValueError, match="no actuator named 'nope'"):
        routed.alias("x", "nope")
    with pytest.raises(ActuatorUnavailable, match=r"configured: none"):
        ActuatorRegistry().get("mqtt")


async def test_registry_starts_and_stops_managed_actuators() -> None:
    webhook = WebhookActuator("hook", "http://127.0.0.1:1/")
    mqtt = MqttActuator(host="127.0.0.1", port=1, timeout_s=0.1)
    simulated = SimulatedPlantActuator(make_plant())
    assert isinstance(webhook, ManagedActuator)
    assert isinstance(mqtt, ManagedActuator)
    assert not isinstance(simulated, ManagedActuator)
    registry = ActuatorRegistry([simulated, webhook, mqtt])
    await registry.start()
    try:
        with pytest.raises(ActuatorUnavailable, match="no connection to the broker"):
            await mqtt.read(ref(simulated.plant("cell")))
    finally:
        await registry.stop()
