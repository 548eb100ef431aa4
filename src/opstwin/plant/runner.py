"""PlantRunner: steps a :class:`~opstwin.plant.simulated.SimulatedPlant` in real time.

Every ``tick_s`` seconds (monotonic time, ticks on a fixed grid so they do not drift) the runner
advances the plant by the real time elapsed since the previous tick, stamps the samples with the
injected clock (:meth:`SimulatedPlant.step` ``at=clock.now()``) and hands the tick's events, if
any, to the sink. When a sink call takes longer than a tick, the ticks it overran are skipped and
the next step covers the whole elapsed time: the physics stays in real time, the plant never
"catches up" in a burst.

Sinks are ``async (events) -> None`` callables: the app's in-process ingest, or
:meth:`opstwin.plant.mqtt.PlantMqttBridge.publish_telemetry`. A sink that raises loses that tick's
samples (a real sensor's unsent readings are gone too); the failure is counted, the first of a
streak is logged with its traceback and the recovery with the number of events lost, and the
plant keeps running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from opstwin.kit.clock import Clock
from opstwin.kit.tasks import log_crash
from opstwin.plant.simulated import SimulatedPlant

log = structlog.get_logger(__name__)

TelemetrySink = Callable[[list[dict[str, Any]]], Awaitable[None]]
"""Receives one tick's telemetry.v1 events (never an empty list)."""

DEFAULT_TICK_S = 0.5
"""Step cadence; as short as the shortest sampling period of the example twin."""


class PlantRunner:
    """Runs a plant in real time and feeds its telemetry to a sink (started/stopped by its owner)."""

    def __init__(
        self,
        plant: SimulatedPlant,
        sink: TelemetrySink,
        clock: Clock,
        tick_s: float = DEFAULT_TICK_S,
    ) -> None:
        if not tick_s > 0:
            raise ValueError("tick_s must be positive")
        self.plant = plant
        self._sink = sink
        self._clock = clock
        self._tick_s = tick_s
        self._task: asyncio.Task[None] | None = None
        #: Counters (what tests and the dashboard read).
        self.ticks = 0
        self.events_sent = 0
        self.events_lost = 0
        self.sink_failures = 0
        self._streak_lost = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start stepping in the background (a no-op when already running)."""
        if not self.running:
            self._task = asyncio.create_task(self.run(), name=f"opstwin-plant-{self.plant.twin_id}")
            self._task.add_done_callback(log_crash("plant.crashed"))

    async def stop(self) -> None:
        """Stop stepping; the tick in progress is abandoned."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # a crash was logged by its done callback

    async def __aenter__(self) -> PlantRunner:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def run(self) -> None:
        """Step until cancelled."""
        loop = asyncio.get_running_loop()
        started = previous = loop.time()
        log.info("plant.started", twin_id=self.plant.twin_id, tick_s=self._tick_s)
        try:
            while True:
                self.ticks += 1
                due = started + self.ticks * self._tick_s
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)  # pacing to the tick grid
                else:  # overran: skip the ticks already past
                    self.ticks += int((now - due) // self._tick_s)
                now = loop.time()
                events = self.plant.step(now - previous, at=self._clock.now())
                previous = now
                if events:
                    await self._deliver(events)
        finally:
            log.info("plant.stopped", twin_id=self.plant.twin_id, ticks=self.ticks)

    async def _deliver(self, events: list[dict[str, Any]]) -> None:
        try:
            await self._sink(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the runner's edge: one failed tick must not stop the plant
            self.sink_failures += 1
            self.events_lost += len(events)
            self._streak_lost += len(events)
            if self._streak_lost == len(events):  # the first failure of a streak, in full
                log.exception(
                    "plant.sink_failed",
                    twin_id=self.plant.twin_id,
                    events=len(events),
                    error_type=type(exc).__name__,
                )
        else:
            self.events_sent += len(events)
            if self._streak_lost:
                log.warning(
                    "plant.sink_recovered", twin_id=self.plant.twin_id, lost=self._streak_lost
                )
                self._streak_lost = 0
