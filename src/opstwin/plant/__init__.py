"""The simulated plant: a twin's assets as a small physics model, for demos and tests.

* :class:`SimulatedPlant` (:mod:`~opstwin.plant.simulated`) — first-order process values with
  noise, ramped setpoints with bounds and idempotent writes, KPIs from the twin's process
  models; a pure ``step(dt_s)`` that returns ``telemetry.v1`` events;
* :class:`FaultSpec` (:mod:`~opstwin.plant.faults`) — drift, offset, spike and flatline faults;
* :class:`PlantRunner` (:mod:`~opstwin.plant.runner`) — steps a plant in real time into a sink;
* :class:`PlantMqttBridge` (:mod:`~opstwin.plant.mqtt`) — the plant as an MQTT device:
  telemetry out, setpoint commands in, retained setpoint reports out.

Typical wiring::

    plant = SimulatedPlant(twin_spec, seed=7, clock=clock)
    bridge = PlantMqttBridge(plant, url="mqtt://localhost:1883", clock=clock)
    runner = PlantRunner(plant, bridge.publish_telemetry, clock, tick_s=0.5)
    await bridge.start(); await runner.start()
"""

from opstwin.plant.faults import FAULT_KINDS, FaultKind, FaultSpec, FaultStatus
from opstwin.plant.kpi import KpiBinding, bind_kpis
from opstwin.plant.mqtt import PlantMqttBridge, PlantOffline, telemetry_topic
from opstwin.plant.runner import PlantRunner, TelemetrySink
from opstwin.plant.simulated import (
    KpiError,
    SetpointSnapshot,
    SimulatedPlant,
    WriteResult,
)

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "FaultSpec",
    "FaultStatus",
    "KpiBinding",
    "KpiError",
    "PlantMqttBridge",
    "PlantOffline",
    "PlantRunner",
    "SetpointSnapshot",
    "SimulatedPlant",
    "TelemetrySink",
    "WriteResult",
    "bind_kpis",
    "telemetry_topic",
]
