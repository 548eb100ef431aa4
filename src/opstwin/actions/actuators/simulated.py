"""SimulatedPlantActuator: the actuator of the built-in simulated plant, in process.

``write`` commands the plant's setpoint and returns the commanded value (the plant's read-back;
the applied value then ramps toward it at the setpoint's ``ramp_rate_per_s``); ``read`` returns
the applied value (``reads="commanded"``: the commanded one, which equals a write's target at
once even while the plant still ramps). Idempotency is the plant's: a key it has applied before is a no-op that
returns the current commanded value. Out-of-bounds values and unknown setpoints raise
:class:`ActuatorRejected`; a twin or asset no plant here simulates raises
:class:`ActuatorUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from opstwin.actions.actuators.base import ActuatorUnavailable, SetpointReading, SetpointRef

if TYPE_CHECKING:  # the plant imports the actuator errors; keep the import one-way at runtime
    from opstwin.plant.simulated import SimulatedPlant

SIMULATED_PLANT = "simulated_plant"
"""The actuator name twin models use for the simulated plant."""


class SimulatedPlantActuator:
    """Reads and writes the setpoints of one or more simulated plants (one per twin)."""

    def __init__(
        self,
        plants: SimulatedPlant | Iterable[SimulatedPlant],
        *,
        name: str = SIMULATED_PLANT,
        reads: SetpointReading = "applied",
    ) -> None:
        from opstwin.plant.simulated import SimulatedPlant

        found = [plants] if isinstance(plants, SimulatedPlant) else list(plants)
        self._plants = {plant.twin_id: plant for plant in found}
        if len(self._plants) != len(found):
            raise ValueError("two simulated plants for the same twin")
        self._name = name
        self._reads = reads

    @property
    def name(self) -> str:
        return self._name

    def plant(self, twin_id: str) -> SimulatedPlant:
        """The plant simulating ``twin_id``; ActuatorUnavailable when there is none."""
        plant = self._plants.get(twin_id)
        if plant is None:
            served = ", ".join(sorted(self._plants)) or "none"
            raise ActuatorUnavailable(
                f"no simulated plant runs twin {twin_id!r} (simulated twins: {served})"
            )
        return plant

    async def read(self, ref: SetpointRef) -> float | None:
        """The applied value of the setpoint now (or the commanded one, see ``reads``)."""
        plant = self.plant(ref.twin_id)
        if self._reads == "commanded":
            return plant.commanded(ref.asset_id, ref.setpoint)
        return plant.applied(ref.asset_id, ref.setpoint)

    async def write(self, ref: SetpointRef, value: float, *, idempotency_key: str) -> float:
        """Command the absolute ``value``; returns the commanded value read back."""
        result = self.plant(ref.twin_id).write(
            ref.asset_id, ref.setpoint, value, idempotency_key=idempotency_key
        )
        return result.commanded
