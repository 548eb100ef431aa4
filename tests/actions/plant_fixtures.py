"""A running simulated fab line for end-to-end tests of proposals and the loop.

The example twin with test-friendly timing: fast sampling (10 Hz), a chuck that settles in a
fraction of a second, a ramp rate a test can wait for, and the pressure input given a spread so
the etch model runs before the detector has learnt a baseline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from opstwin.actions.actuators.simulated import SimulatedPlantActuator
from opstwin.config import Settings
from opstwin.plant.runner import PlantRunner
from opstwin.plant.simulated import SimulatedPlant
from opstwin.services import Services
from opstwin.twins.loader import parse_twin_document

FAB = Path(__file__).resolve().parents[2] / "examples" / "fab-line.yaml"
TWIN = "fab_line_3"
ETCH = "etch_tool_7"
HISTORY_S = 30.0


def fast_actions(base: Settings) -> Settings:
    """``base`` with the executor and evidence tuned for tests against the fast plant: short
    evidence window, quick polls and ramp writes, a small simulation."""
    actions = base.actions.model_copy(
        update={
            "evidence_window_s": 2.0,
            "ramp_write_interval_s": 0.1,
            "poll_interval_s": 0.1,
            "write_timeout_s": 3.0,
            "sim_samples": 1000,
        }
    )
    return base.model_copy(update={"actions": actions})


def trusting_policy(verification_window_s: float) -> dict[str, Any]:
    """A policy document with the demo policy's weights (examples/demo-policy.yaml): with the
    loop's minimum P(improvement) of 0.95 a fresh asset scores at least 0.05 + 0.20 + 0.665 =
    0.915, above the auto-execute band, so the loop's proposals execute without a human."""
    return {
        "weights": {
            "historical_success": 0.10,
            "data_quality": 0.20,
            "simulation_consistency": 0.70,
            "ai_consensus": 0.0,
        },
        "verification_window_s": verification_window_s,
    }


def fab_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(FAB.read_text())
    (twin,) = document["twins"]
    etch = next(a for a in twin["assets"] if a["id"] == ETCH)
    etch["setpoints"]["esc_temp_sp"]["ramp_rate_per_s"] = 20.0
    twin["anomaly_defaults"]["warmup_samples"] = 30  # 3 s of 10 Hz telemetry
    model = next(m for m in twin["process_models"] if m["id"] == "etch_yield_model")
    model["inputs"]["pressure"]["std"] = 0.3
    return document


@dataclass
class RunningPlant:
    plant: SimulatedPlant
    runner: PlantRunner


async def start_plant(services: Services, *, seed: int = 11) -> RunningPlant:
    """Load the twin, build its plant, register it as the ``simulated_plant`` actuator and run
    it in real time, its telemetry ingested in process."""
    document = fab_document()
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", document)
    (spec,) = parse_twin_document(document).twins
    plant = SimulatedPlant(
        spec,
        seed=seed,
        time_constant_s=0.3,
        max_sampling_period_s=0.1,
        clock=services.clock,
    )
    services.actuators.register(SimulatedPlantActuator(plant))

    async def sink(events: list[dict[str, Any]]) -> None:
        async with services.db.write() as tx:
            await services.ingestor.ingest(tx, "default", events)

    # Thirty seconds of history first (300 samples of the chuck), stepped as fast as it
    # computes: the detector's baseline is then mature, as on a plant that has been running.
    start = services.clock.now() - timedelta(seconds=HISTORY_S)
    for second in range(int(HISTORY_S)):
        await sink(plant.step(1.0, at=start + timedelta(seconds=second + 1)))
    runner = PlantRunner(plant, sink, services.clock, tick_s=0.1)
    await runner.start()
    return RunningPlant(plant, runner)


async def wait_until(predicate: Any, timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Poll an async predicate until it returns something truthy, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def plant_fixture(services: Services) -> AsyncIterator[RunningPlant]:
    running = await start_plant(services)
    try:
        yield running
    finally:
        await running.runner.stop()
