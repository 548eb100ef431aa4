"""Computing a run in a worker thread under a wall-time limit, with a progress estimate.

The thread cannot be killed: a run past its limit becomes a ``timeout`` failure, its thread's
late result is discarded, and the thread is tracked until it ends (:meth:`RunExecutor.wait_idle`).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.simulation.coupler import HybridCoupler
from opstwin.simulation.monte_carlo import MonteCarloEngine, RunSettings
from opstwin.simulation.results import SimulationResult
from opstwin.simulation.service.records import Failure, Outcome
from opstwin.simulation.service.requests import PreparedRun

log = structlog.get_logger(__name__)

PILOT_SAMPLES = 1024
"""Samples of the pilot that times a run's cost per sample (for its progress estimate)."""

PROGRESS_CEILING = 0.99
"""Progress is an estimate; only a finished run reports 1."""


class Progress:
    """Progress of one computing run: elapsed time over the time a pilot predicted."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.expected_s: float | None = None  # set by the worker thread after its pilot

    def value(self) -> float:
        if self.expected_s is None or self.expected_s <= 0:
            return 0.0
        return min(PROGRESS_CEILING, (time.monotonic() - self.started) / self.expected_s)


class RunExecutor:
    """Computes prepared runs in threads; knows the progress of those computing now."""

    def __init__(self, coupler: HybridCoupler) -> None:
        self._coupler = coupler
        self._pilot_engine = MonteCarloEngine()
        self._progress: dict[str, Progress] = {}
        self._threads: set[asyncio.Future[SimulationResult]] = set()

    @property
    def computing(self) -> bool:
        """Whether a run is being computed (under its limit) now."""
        return bool(self._progress)

    def progress(self) -> dict[str, float]:
        """The estimated progress of each run being computed, by ``sim_id``."""
        return {sim_id: p.value() for sim_id, p in self._progress.items()}

    def progress_of(self, sim_id: str, stored: float) -> float:
        """The progress of ``sim_id``: estimated while it computes, else ``stored``."""
        progress = self._progress.get(sim_id)
        return stored if progress is None else progress.value()

    async def compute(self, sim_id: str, prepared: PreparedRun, timeout_s: float) -> Outcome:
        """Run in a thread under a wall-time limit; every failure becomes a :class:`Failure`."""
        progress = Progress()
        self._progress[sim_id] = progress
        future = asyncio.ensure_future(asyncio.to_thread(self._run_blocking, prepared, progress))
        self._threads.add(future)
        future.add_done_callback(self._thread_done)
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout_s)
        finally:
            self._progress.pop(sim_id, None)
        if not done:
            log.warning("sim.timeout", sim_id=sim_id, limit_s=timeout_s)
            return Failure(
                reason="timeout",
                detail=f"the run did not finish within the limit of {timeout_s:g} s; "
                "ask for fewer samples (or max_samples), or a looser target",
                errors=(FieldError(detail=f"limit {timeout_s:g} s", pointer="/samples"),),
                limit_s=timeout_s,
            )
        try:
            return future.result()
        except ValidationFailed as exc:  # e.g. non-finite values found while evaluating
            return Failure(reason="invalid", detail=exc.detail, errors=tuple(exc.errors))
        except Exception as exc:  # the job edge: record the failure, never leave it running
            log.exception("sim.crashed", sim_id=sim_id, error_type=type(exc).__name__)
            return Failure(
                reason="internal",
                detail="the run failed unexpectedly; it has been logged",
                status=500,
            )

    async def wait_idle(self) -> None:
        """Until no thread is computing (timed-out ones included)."""
        while self._threads:
            await asyncio.gather(*self._threads, return_exceptions=True)

    def _run_blocking(self, prepared: PreparedRun, progress: Progress) -> SimulationResult:
        """The numpy work, in a worker thread: a pilot to predict the duration, then the run."""
        if prepared.engine != "quantum":
            pilot = RunSettings(seed=prepared.settings.seed, samples=PILOT_SAMPLES, method="mc")
            started = time.monotonic()
            self._pilot_engine.sample(prepared.model, pilot)
            per_sample = (time.monotonic() - started) / PILOT_SAMPLES
            progress.expected_s = per_sample * prepared.most_samples
            progress.started = time.monotonic()
        if prepared.recommendation is not None:
            return prepared.recommendation.run(self._coupler, prepared.model, prepared.settings)
        return self._coupler.run(
            prepared.model, prepared.settings, engine=prepared.engine, query=prepared.query
        )

    def _thread_done(self, future: asyncio.Future[SimulationResult]) -> None:
        self._threads.discard(future)
        if not future.cancelled() and future.exception() is not None:
            # Already reported by compute unless the run had timed out; retrieve it either way.
            log.debug("sim.thread_failed", error=str(future.exception()))
