"""Actuator adapters: how an approved action reaches the asset.

The protocol and its errors are in :mod:`~opstwin.actions.actuators.base`; the adapters are

* :class:`SimulatedPlantActuator` (``simulated_plant``) — the in-process simulated plant;
* :class:`MqttActuator` (``mqtt``) — command topic with retained read-back
  (contract: :mod:`~opstwin.actions.actuators.mqtt_contract`);
* :class:`WebhookActuator` — an HTTP service that fronts the asset;

and :class:`ActuatorRegistry` maps the names twin models use (with aliases) to them.
"""

from opstwin.actions.actuators.base import (
    Actuator,
    ActuatorError,
    ActuatorRejected,
    ActuatorUnavailable,
    ManagedActuator,
    OutcomeUnknown,
    SetpointRef,
)
from opstwin.actions.actuators.mqtt import MqttActuator
from opstwin.actions.actuators.registry import ActuatorRegistry
from opstwin.actions.actuators.simulated import SIMULATED_PLANT, SimulatedPlantActuator
from opstwin.actions.actuators.webhook import WebhookActuator

__all__ = [
    "SIMULATED_PLANT",
    "Actuator",
    "ActuatorError",
    "ActuatorRegistry",
    "ActuatorRejected",
    "ActuatorUnavailable",
    "ManagedActuator",
    "MqttActuator",
    "OutcomeUnknown",
    "SetpointRef",
    "SimulatedPlantActuator",
    "WebhookActuator",
]
