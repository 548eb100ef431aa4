"""The simulated plant as a component of a running OpsTwin (``OPSTWIN_PLANT_ENABLED``).

It simulates one twin of the registry (:class:`~opstwin.plant.simulated.SimulatedPlant`), starting
from the desired setpoints the database holds (so a restarted demo continues where it was), and
connects it like a real device:

* ``in_process`` — telemetry goes straight into ingest (one transaction per tick) and the
  ``simulated_plant`` actuator writes the plant directly;
* ``mqtt`` — the plant is an MQTT device on the broker at ``OPSTWIN_MQTT_URL``
  (:class:`~opstwin.plant.mqtt.PlantMqttBridge`): its telemetry reaches the server through the
  MQTT source, and ``simulated_plant`` is routed to the MQTT actuator (command topic, retained
  read-back), exactly the path a real asset takes.

**Faults.** After ``first_fault_after_s`` and then every ``fault_interval_s`` the next playbook
of the rotation acts on its metric: the playbooks whose metric is read back by one of the
setpoints they may change and whose process model simulates that setpoint (a fault the loop can
correct). Odd rounds drift the process by half the metric's normal range over about twenty
seconds (a heater or thermocouple drifting); even rounds repair it (the bias ends at once, a step
back), so a long demo keeps cycling instead of walking the setpoints to their bounds.

"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from opstwin.config import Settings
from opstwin.twins.desired import desired_values
from opstwin.twins.model import SetpointInput, TwinSpec

if TYPE_CHECKING:
    from opstwin.plant.faults import FaultSpec
    from opstwin.plant.mqtt import PlantMqttBridge
    from opstwin.plant.runner import PlantRunner
    from opstwin.plant.simulated import SimulatedPlant
    from opstwin.services import Services

log = structlog.get_logger("opstwin.demo")

DRIFT_SECONDS = 20.0
"""A demo drift reaches its full size in about this long."""


@dataclass(frozen=True, slots=True)
class DriftTarget:
    asset: str
    metric: str
    size: float
    playbook: str


def drift_targets(twin: TwinSpec) -> list[DriftTarget]:
    """The metrics of the playbooks a setpoint change can correct — the setpoint reads the
    metric back and the playbook's process model simulates it — with half their normal range."""
    out: list[DriftTarget] = []
    for playbook in twin.playbooks:
        if "drift" not in playbook.kinds:
            continue
        asset = twin.asset(playbook.asset)
        metric = asset.metrics.get(playbook.metric) if asset else None
        normal = metric.normal_range if metric else None
        if asset is None or normal is None or normal.low is None or normal.high is None:
            continue
        model = next(
            (
                pm
                for pm in twin.process_models
                if playbook.objective is not None and pm.id == playbook.objective.process_model
            ),
            None,
        )
        simulated = {
            (src.asset, src.setpoint)
            for src in (model.inputs.values() if model else ())
            if isinstance(src, SetpointInput)
        }
        correctable = any(
            (action.asset or playbook.asset) == asset.id
            and (sp := asset.setpoints.get(action.setpoint)) is not None
            and sp.metric == playbook.metric
            and (asset.id, action.setpoint) in simulated
            for action in playbook.actions
        )
        if correctable:
            size = (normal.high - normal.low) / 2.0
            out.append(DriftTarget(asset.id, playbook.metric, size, playbook.id))
    return out


class DemoPlant:
    """Builds, connects and runs the plant; injects the fault rotation."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self._settings = settings
        self._services = services
        self.plant: SimulatedPlant | None = None
        self._runner: PlantRunner | None = None
        self._bridge: PlantMqttBridge | None = None
        self._faults: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from opstwin.actions.actuators.simulated import SIMULATED_PLANT, SimulatedPlantActuator
        from opstwin.plant.runner import PlantRunner
        from opstwin.plant.simulated import SimulatedPlant

        cfg = self._settings.plant
        services = self._services
        async with services.db.read() as conn:
            twin = await services.twins.find(conn, cfg.tenant_id, cfg.twin_id)
            desired = await desired_values(conn, cfg.tenant_id, cfg.twin_id)
        if twin is None:
            log.error(
                "plant.no_twin",
                twin_id=cfg.twin_id,
                tenant_id=cfg.tenant_id,
                hint="load it first: opstwin twins load examples/fab-line.yaml",
            )
            return
        plant = SimulatedPlant(
            twin.spec,
            seed=cfg.seed,
            time_constant_s=cfg.time_constant_s,
            initial_setpoints=dict(desired),
            max_sampling_period_s=cfg.max_sampling_period_s,
            clock=services.clock,
        )
        self.plant = plant
        if cfg.transport == "mqtt":
            from opstwin.actions.actuators.mqtt import MqttActuator
            from opstwin.plant.mqtt import PlantMqttBridge

            url = self._settings.mqtt.url
            if url is None:
                raise ValueError("OPSTWIN_PLANT_TRANSPORT=mqtt needs OPSTWIN_MQTT_URL")
            self._bridge = PlantMqttBridge(plant, clock=services.clock, url=url)
            await self._bridge.start()
            # Shorter than the executor's own deadline, so the actuator's OutcomeUnknown (which
            # says what was missing) arrives before a bare timeout.
            timeout_s = max(0.5, self._settings.actions.write_timeout_s / 2)
            services.actuators.register(MqttActuator(url, name="mqtt", timeout_s=timeout_s))
            services.actuators.alias(SIMULATED_PLANT, "mqtt")
            sink = self._bridge.publish_telemetry
        else:
            services.actuators.register(SimulatedPlantActuator(plant))
            sink = self._ingest
        self._runner = PlantRunner(plant, sink, services.clock, tick_s=cfg.tick_s)
        await self._runner.start()
        if cfg.fault_interval_s is not None:
            self._faults = asyncio.create_task(
                self._rotate(twin.spec, cfg.first_fault_after_s, cfg.fault_interval_s),
                name="opstwin-demo-faults",
            )
        log.info(
            "plant.running",
            twin_id=cfg.twin_id,
            transport=cfg.transport,
            setpoints_from_database=len(desired),
        )

    async def _ingest(self, events: list[dict[str, Any]]) -> None:
        async with self._services.db.write() as tx:
            await self._services.ingestor.ingest(tx, self._settings.plant.tenant_id, events)

    async def _rotate(self, twin: TwinSpec, first_s: float, interval_s: float) -> None:
        from opstwin.plant.faults import FaultSpec

        targets = drift_targets(twin)
        if not targets:
            log.warning("plant.no_correctable_playbooks", twin_id=twin.id)
            return
        rounds: dict[tuple[str, str], int] = {}
        pause = first_s
        for target in itertools.cycle(targets):
            await asyncio.sleep(pause)  # the demo's pace, not a wait for a condition
            pause = interval_s
            key = (target.asset, target.metric)
            round_ = rounds.get(key, 0)
            rounds[key] = round_ + 1
            assert self.plant is not None
            if round_ % 2 == 1:  # the repair: the bias ends at once (a step back)
                self.plant.clear(target.asset, target.metric)
                log.info(
                    "demo.fault_repaired",
                    asset=target.asset,
                    metric=target.metric,
                    playbook=target.playbook,
                )
                continue
            fault: FaultSpec = FaultSpec(
                kind="drift",
                asset=target.asset,
                metric=target.metric,
                rate_per_s=target.size / DRIFT_SECONDS,
                max_offset=target.size,
            )
            self.plant.inject(fault)
            log.info(
                "demo.fault_injected",
                asset=target.asset,
                metric=target.metric,
                drift=f"+{target.size:g} over {DRIFT_SECONDS:g} s",
                playbook=target.playbook,
            )

    async def stop(self) -> None:
        if self._faults is not None:
            self._faults.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._faults
        if self._runner is not None:
            await self._runner.stop()
        if self._bridge is not None:
            await self._bridge.stop()
