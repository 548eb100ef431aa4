"""The actuator protocol: how an approved action reaches the asset.

Every adapter (the simulated plant, MQTT with read-back, an HTTP webhook) implements
:class:`Actuator`. Writes are **absolute** (the target value, never a delta) and carry an
idempotency key, so writing the same key twice has the effect of writing it once. ``read``
returns the value the asset reports for the setpoint right now (``None``: it reports none).

A write whose outcome cannot be determined (no acknowledgement or read-back before the timeout)
raises :class:`OutcomeUnknown`: the executor then reconciles by reading back — it never
retries blindly. A write the asset refused raises :class:`ActuatorRejected`; an adapter that
cannot be reached at all raises :class:`ActuatorUnavailable`::

    ActuatorError
    ├── ActuatorUnavailable   nothing was written (not reachable, not configured)
    ├── ActuatorRejected      nothing was written (the asset refused)
    └── OutcomeUnknown        maybe written: read back before doing anything else

Adapters that hold connections also implement :class:`ManagedActuator` (``start``/``stop``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from opstwin.twins.model import SetpointSpec

SetpointReading = Literal["applied", "commanded"]
"""What ``read`` returns for an asset that ramps its setpoints: the value it applies now (still
moving toward the target while ramping) or the target last commanded (stable once written)."""


@dataclass(frozen=True, slots=True)
class SetpointRef:
    """Which setpoint of which asset an actuator reads or writes, with its declared limits."""

    tenant_id: str
    twin_id: str
    asset_id: str
    setpoint: str
    spec: SetpointSpec

    @property
    def path(self) -> str:
        return f"{self.twin_id}/{self.asset_id}/{self.setpoint}"


class ActuatorError(Exception):
    """Base of actuator failures; ``str(error)`` is a sentence for the audit trail."""


class ActuatorUnavailable(ActuatorError):
    """The adapter cannot reach the asset (nothing was written)."""


class ActuatorRejected(ActuatorError):
    """The asset refused the write (nothing was written)."""


class OutcomeUnknown(ActuatorError):
    """The write may or may not have taken effect; reconcile by reading back."""


@runtime_checkable
class Actuator(Protocol):
    """An adapter that reads and writes setpoints of assets."""

    @property
    def name(self) -> str:
        """The name twin models use in a setpoint's ``actuator`` field."""
        ...

    async def read(self, ref: SetpointRef) -> float | None:
        """The value the asset reports for the setpoint now (None: it reports none)."""
        ...

    async def write(self, ref: SetpointRef, value: float, *, idempotency_key: str) -> float:
        """Write the absolute ``value``; return the value read back after the write.

        The same ``idempotency_key`` written twice has the effect of one write.
        """
        ...


@runtime_checkable
class ManagedActuator(Actuator, Protocol):
    """An actuator that holds connections: started before use, stopped at shutdown."""

    async def start(self) -> None:
        """Open what the actuator needs (it may keep connecting in the background)."""
        ...

    async def stop(self) -> None:
        """Close it; calls still waiting end with an ActuatorError."""
        ...
