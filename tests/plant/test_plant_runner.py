"""PlantRunner in real time: ticks into a sink, survives a failing sink, and feeds the real
in-process ingest (SQLite and PostgreSQL) without a single rejection."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from opstwin.kit.clock import ManualClock
from opstwin.plant import PlantRunner, SimulatedPlant
from opstwin.services import Services
from opstwin.twins import load_twin_file
from tests.plant.helpers import ROOT, START, make_plant

FAST = 0.05
"""Every metric sampled every 50 ms, so a test sees many ticks in a fraction of a second."""


async def until(condition: Any, deadline_s: float = 5.0) -> None:
    async with asyncio.timeout(deadline_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_runner_steps_in_real_time_into_the_sink() -> None:
    batches: list[list[dict[str, Any]]] = []

    async def sink(events: list[dict[str, Any]]) -> None:
        batches.append(events)

    clock = ManualClock(START)
    plant = make_plant(max_sampling_period_s=FAST)
    async with PlantRunner(plant, sink, clock, tick_s=0.02) as runner:
        await until(lambda: sum(map(len, batches)) >= 20)
    assert not runner.running
    assert runner.events_sent == sum(map(len, batches))
    assert runner.sink_failures == 0
    assert all(batches)  # never called with nothing
    # plant time follows the monotonic clock; stamps come from the injected (pinned) clock:
    # each tick ends at START and its samples sit at most a tick or so before it
    assert plant.elapsed_s > 0.2
    stamps = [datetime.fromisoformat(e["ts"]) for batch in batches for e in batch]
    assert all(START - timedelta(seconds=0.5) < stamp <= START for stamp in stamps)


async def test_a_failing_sink_loses_its_tick_but_not_the_plant() -> None:
    delivered: list[dict[str, Any]] = []
    calls = 0

    async def flaky(events: list[dict[str, Any]]) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("storage is restarting")
        delivered.extend(events)

    runner = PlantRunner(
        make_plant(max_sampling_period_s=FAST), flaky, ManualClock(START), tick_s=0.02
    )
    await runner.start()
    try:
        await until(lambda: len(delivered) >= 5)
    finally:
        await runner.stop()
    assert runner.sink_failures == 2
    assert runner.events_lost > 0
    assert runner.events_sent == len(delivered)


def test_tick_must_be_positive() -> None:
    async def sink(events: list[dict[str, Any]]) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="tick_s"):
        PlantRunner(make_plant(), sink, ManualClock(START), tick_s=0)


async def test_plant_feeds_the_in_process_ingest(services: Services) -> None:
    document = load_twin_file(ROOT / "examples" / "fab-line.yaml")
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", document)
    plant = SimulatedPlant(
        document.twins[0], seed=1, clock=services.clock, max_sampling_period_s=FAST
    )
    accepted = rejected = 0

    async def ingest(events: list[dict[str, Any]]) -> None:
        nonlocal accepted, rejected
        async with services.db.write() as tx:
            result = await services.ingestor.ingest(tx, "default", events)
        accepted += result.accepted
        rejected += len(result.rejected)

    async with PlantRunner(plant, ingest, services.clock, tick_s=0.05):
        await until(lambda: accepted >= 30, deadline_s=10)
    assert rejected == 0
