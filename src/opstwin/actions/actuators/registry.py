"""ActuatorRegistry: the actuators of a running app, by the names twin models use.

A setpoint names its actuator (``SetpointSpec.actuator``, e.g. ``simulated_plant``); the
executor asks the registry for it. Aliases route one name to another actuator: when the plant
runs behind MQTT, ``simulated_plant`` is an alias of ``mqtt``, so the same twin model works
with the plant in process or across the broker.

Actuators that hold connections (:class:`ManagedActuator`: ``start``/``stop``) are started and
stopped with the registry, in registration order (stopped in reverse).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opstwin.actions.actuators.base import Actuator, ActuatorUnavailable, ManagedActuator


class ActuatorRegistry:
    """Name → actuator, with aliases; a plain dict behind a small API."""

    def __init__(
        self,
        actuators: Iterable[Actuator] = (),
        *,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self._actuators: dict[str, Actuator] = {}
        self._aliases: dict[str, str] = {}
        for actuator in actuators:
            self.register(actuator)
        for alias, target in (aliases or {}).items():
            self.alias(alias, target)

    def register(self, actuator: Actuator) -> None:
        """Add ``actuator`` under its own name; a name already taken is a ValueError."""
        name = actuator.name
        if name in self._actuators or name in self._aliases:
            raise ValueError(f"an actuator named {name!r} is already configured")
        self._actuators[name] = actuator

    def alias(self, alias: str, target: str) -> None:
        """Route ``alias`` to the actuator registered as ``target`` (which must exist)."""
        if target not in self._actuators:
            raise ValueError(f"alias {alias!r}: no actuator named {target!r} is configured")
        if alias in self._actuators:
            raise ValueError(f"alias {alias!r} would hide the actuator of that name")
        self._aliases[alias] = target

    def get(self, name: str) -> Actuator:
        """The actuator for ``name`` (an actuator's name or an alias).

        Raises :class:`ActuatorUnavailable` naming what is configured when there is none.
        """
        found = self._actuators.get(self._aliases.get(name, name))
        if found is None:
            raise ActuatorUnavailable(
                f"no actuator named {name!r} is configured (configured: {self._describe()})"
            )
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._actuators or name in self._aliases

    def names(self) -> list[str]:
        """Every name ``get`` accepts, actuators then aliases, sorted within each."""
        return sorted(self._actuators) + sorted(self._aliases)

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    async def start(self) -> None:
        """Start every actuator that holds connections."""
        for actuator in self._actuators.values():
            if isinstance(actuator, ManagedActuator):
                await actuator.start()

    async def stop(self) -> None:
        """Stop them, last started first."""
        for actuator in reversed(list(self._actuators.values())):
            if isinstance(actuator, ManagedActuator):
                await actuator.stop()

    def _describe(self) -> str:
        if not self._actuators:
            return "none"
        parts = sorted(self._actuators) + [f"{a} → {t}" for a, t in sorted(self._aliases.items())]
        return ", ".join(parts)
