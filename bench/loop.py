"""The closed loop (issue 6): fault → ``verifying`` with auto-execution, and a plant at scale.

Run with ``.venv/bin/python -m bench loop`` (about 10 minutes with PostgreSQL reachable). The
latency part with steps instead of drifts: ``.venv/bin/python -c 'from bench.loop import
latency_report; latency_report(["sqlite", "postgresql"], fault="offset")'``.

**Latency.** The example fab twin as the end-to-end tests run it (``tests/actions/
plant_fixtures.py``): chuck time constant 0.3 s, 10 Hz sampling, ``esc_temp_sp`` ramping at
20 °C/s, 30 s of history backfilled so the detector's baseline is mature, and a policy under which
the loop's proposals auto-execute with a 1 s verification window. The app runs in process with
the loop tuned for latency (:data:`LATENCY_ACTIONS`, :data:`LATENCY_AUTOMATION`). Each fault is
the end-to-end tests' drift on ``etch_tool_7/temp_c`` (or a step, ``fault="offset"``): the
heater's bias moves by 3 °C at 1.5 °C/s, away from its calibrated value and back again,
alternately up and down, so every fault starts with the chuck at 60 °C, compensated and settled.
The bias is changed between two plant steps by the telemetry sink, so the first sample it moved
is known exactly: every time below is measured from that sample's timestamp, with the platform's
own stamps (the anomaly's change-log entry, the automation task, the simulation run, the
proposal's transitions, the action's write log).

The playbook's 11 candidate setpoints are 3 °C apart in the bench's twin (the example's are 1 °C
apart), so each fault is corrected by one proposal and its timeline is one cycle. The loop
proposes the best candidate as soon as it improves with P ≥ 0.95; the simulation's
tracking-error input is the mean of the chuck's newest readings since the anomaly opened (at
most 5). A 3 °C step is justified at P ≥ 0.95 only once the error reaches
:data:`JUSTIFIED_C` (2.32 °C): the drift keeps growing after the detector fires, and that wait
is the fault's, not the platform's (*growth*, computed from the chuck's noise-free response).

The time is split into the plant's own dynamics and the platform's part:

* build-up (plant) — first affected sample → the sample that opened the anomaly: the fault
  growing through the chuck's response and the noise until the detector is sure;
* detect — that sample → ``opstwin.anomaly.detected`` appended (ingest commit, the detector's
  page and its 100 ms batch window);
* decide — anomaly → ``approved``: the automation intake; the *evidence wait*, looks every
  ``recheck_s`` that find no candidate with P(improvement) ≥ ``min_p_improvement`` — split into
  the fault's *growth* to :data:`JUSTIFIED_C` (plant) and the estimate catching up with it (the
  mean of the newest readings lags the chuck, looks are ``recheck_s`` apart); the last look (the
  simulation the proposal cites, and the proposal); scoring and decision;
* execute — ``approved`` → ``verifying``: the executor's pickup and the writes; the ramp
  (plant) is the time between the first and last write, paced by the setpoint's ramp rate.

**Scale.** A synthetic twin of 200 assets × 5 metrics at 1 Hz (normal ranges only, no process
models), a :class:`~opstwin.plant.runner.PlantRunner` ticking every second into in-process
ingest, for 60 s after a warm-up, once with the loop off (ingest only) and once with it on
(detector, automation loop, executor; default settings). CPU is the process's CPU time over
wall time (all threads, including the database driver's); event lag is, per tick, the time
from the ingest commit (and from the samples' own timestamps) until each change-log consumer has
scanned past the tick's entries, polled every 10 ms.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from sqlalchemy import select

from bench.common import database_url, pct, pg_available
from opstwin.actions import repository as repo
from opstwin.actions.actuators.simulated import SimulatedPlantActuator
from opstwin.actions.tables import automation_tasks
from opstwin.aiw.consumers import LogConsumer
from opstwin.aiw.tables import change_log
from opstwin.app import create_app
from opstwin.config import (
    ActionSettings,
    AutomationSettings,
    DatabaseSettings,
    DetectionSettings,
    Settings,
)
from opstwin.kit.clock import to_micros
from opstwin.logging import configure_logging
from opstwin.plant.faults import FaultSpec
from opstwin.plant.runner import PlantRunner
from opstwin.plant.simulated import SimulatedPlant
from opstwin.policy.rbac import Role
from opstwin.services import Services
from opstwin.simulation.tables import sim_runs
from opstwin.telemetry.detection import anomalies
from opstwin.twins.loader import parse_twin_document

ROOT = Path(__file__).resolve().parents[1]
FAB = ROOT / "examples" / "fab-line.yaml"
TENANT = "default"
TWIN = "fab_line_3"
ETCH = "etch_tool_7"
METRIC = "temp_c"

# -- latency -----------------------------------------------------------------------------------

FAULTS = 20
SHIFT_C = 3.0
"""Size of each fault: half the chuck's normal range (57–63 °C)."""
DRIFT_RATE_PER_S = 1.5
"""How fast the heater's bias moves (the end-to-end tests' drift): the shift is complete in 2 s."""
GRID_C = 3.0
"""Spacing of the playbook's candidate setpoints in the bench's twin (see the module docstring)."""
RAMP_RATE_PER_S = 20.0
"""``esc_temp_sp``'s ramp rate in the bench's twin (the example's is 0.5 °C/s)."""
TIME_CONSTANT_S = 0.3
SAMPLING_PERIOD_S = 0.1
HISTORY_S = 30.0
VERIFICATION_WINDOW_S = 1.0
SETTLE_S = 2.5
"""Quiet time before the next fault, so each starts from settled readings."""
ERROR_STD_C = 0.5
"""The etch model's spread of the tracking error (``esc_error.std`` in the example twin)."""
Z_95 = 1.6449
"""Φ⁻¹(0.95): the loop's ``min_p_improvement``."""
JUSTIFIED_C = GRID_C / 2 + Z_95 * ERROR_STD_C
"""Tracking error from which a one-step (GRID_C) correction improves a wafer with P ≥ 0.95:
the candidate beats do-nothing when the error exceeds half the step, and the simulated error
spreads with ERROR_STD_C around the estimate — 2.32 °C for a 3 °C step."""
CYCLE_TIMEOUT_S = 45.0
TERMINAL = ("succeeded", "rolled_back", "failed", "rejected", "expired")
NOMINAL_C = 60.0
SETPOINT = "esc_temp_sp"
Fault = Literal["drift", "offset"]

LATENCY_ACTIONS = {
    "evidence_window_s": 2.0,
    "ramp_write_interval_s": 0.05,
    "poll_interval_s": 0.05,
    "write_timeout_s": 3.0,
    "sim_samples": 1000,
}
LATENCY_AUTOMATION = AutomationSettings(enabled=True, poll_interval_s=0.05, recheck_s=0.2)
POLICY = {
    # The demo policy's weights (examples/demo-policy.yaml), as in the end-to-end tests: a
    # fresh asset with the loop's P(improvement) ≥ 0.95 scores into the auto-execute band.
    "weights": {
        "historical_success": 0.10,
        "data_quality": 0.20,
        "simulation_consistency": 0.70,
        "ai_consensus": 0.0,
    },
    "verification_window_s": VERIFICATION_WINDOW_S,
}

# -- scale -------------------------------------------------------------------------------------

SCALE_ASSETS = 200
SCALE_METRICS = 5
SCALE_HISTORY_S = 60
SCALE_WARMUP_S = 10.0
SCALE_MEASURE_S = 60.0
LAG_POLL_S = 0.01
# unit, centre and half-width of the normal range of metric m<i> (as the fab's chamber metrics)
SCALE_UNITS = [
    ("degC", 60.0, 3.0),
    ("mTorr", 10.0, 1.0),
    ("W", 1500.0, 50.0),
    ("sccm", 100.0, 5.0),
    ("Torr", 10.0, 1.0),
]


def _settings(tmp: str, url: str, schema: str | None, **groups: Any) -> Settings:
    return Settings(
        env="test",
        data_dir=Path(tmp),
        log_level="error",
        database=DatabaseSettings(url=url, schema_name=schema),
        **groups,
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


# == latency ===================================================================================


def _fab_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(FAB.read_text())
    (twin,) = document["twins"]
    etch = next(a for a in twin["assets"] if a["id"] == ETCH)
    etch["setpoints"][SETPOINT]["ramp_rate_per_s"] = RAMP_RATE_PER_S
    twin["anomaly_defaults"]["warmup_samples"] = 30  # 3 s of 10 Hz telemetry
    model = next(m for m in twin["process_models"] if m["id"] == "etch_yield_model")
    model["inputs"]["pressure"]["std"] = 0.3
    playbook = next(p for p in twin["playbooks"] if p["id"] == "etch_temp_excursion")
    (action,) = playbook["actions"]
    # 11 candidates as in the example, GRID_C apart: a fault of SHIFT_C is corrected in one
    # proposal instead of a first partial one (see the module docstring).
    action["search"] = {"low": NOMINAL_C - 5 * GRID_C, "high": NOMINAL_C + 5 * GRID_C, "steps": 11}
    return document


class FaultSink:
    """The plant's telemetry sink (in-process ingest) that also changes faults *between* two
    plant steps, so the first sample a change affected is exactly the next step's first
    reading of the chuck."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._action: Callable[[], object] | None = None
        self._first: asyncio.Future[datetime] | None = None
        self._armed = False

    async def __call__(self, events: list[dict[str, Any]]) -> None:
        first = self._first
        if self._armed and first is not None and not first.done():
            stamps = [e["ts"] for e in events if e["asset_id"] == ETCH and METRIC in e["metrics"]]
            if stamps:
                first.set_result(datetime.fromisoformat(min(stamps)))
        async with self._services.db.write() as tx:
            await self._services.ingestor.ingest(tx, TENANT, events)
        if self._action is not None:
            action, self._action = self._action, None
            action()
            self._armed = True

    async def apply(self, action: Callable[[], object]) -> datetime:
        """Run ``action`` at the next tick; the timestamp of the first chuck sample after it."""
        self._first = asyncio.get_running_loop().create_future()
        self._armed = False
        self._action = action
        async with asyncio.timeout(5.0):
            return await self._first


def _set_bias(plant: SimulatedPlant, start: float, end: float, fault: Fault) -> None:
    """The heater's bias on the chuck, from ``start`` to ``end``: ``drift`` — ``start`` held as
    an offset plus a drift at :data:`DRIFT_RATE_PER_S` (continuous); ``offset`` — a step."""
    plant.clear(ETCH, METRIC)
    held = start if fault == "drift" else end
    if held:
        plant.inject(FaultSpec(kind="offset", asset=ETCH, metric=METRIC, magnitude=held))
    if fault == "drift" and end != start:
        rate = DRIFT_RATE_PER_S if end > start else -DRIFT_RATE_PER_S
        plant.inject(
            FaultSpec(
                kind="drift",
                asset=ETCH,
                metric=METRIC,
                rate_per_s=rate,
                max_offset=abs(end - start),
            )
        )


@dataclass(frozen=True, slots=True)
class Cycle:
    """One fault followed to ``verifying``: seconds between the platform's own timestamps."""

    outcome: str
    build_up: float
    """First affected sample → the sample that opened the anomaly (the fault growing through
    the chuck's response and the noise until the detector is sure)."""
    detect: float
    """That sample → ``opstwin.anomaly.detected`` appended to the change log."""
    intake: float
    """Anomaly appended → the automation task of the anomaly the proposal cites."""
    evidence_wait: float
    """Task → the simulation the proposal cites was submitted: the looks before it found no
    candidate improving with P ≥ ``min_p_improvement``."""
    growth: float
    """Of the evidence wait, the part the fault itself needed to grow to :data:`JUSTIFIED_C`
    after the anomaly opened (the chuck's noise-free response; plant dynamics): no observer,
    however quick, could justify the step earlier."""
    last_look: float
    """That simulation submitted → ``proposed``."""
    simulate: float
    """Of which the simulation run itself (started → finished)."""
    score: float
    """``proposed`` → ``approved`` (scoring and decision)."""
    pickup: float
    """``approved`` → ``executing`` (the executor's pass)."""
    writes: float
    """``executing`` → ``verifying`` (read-back, ramp writes, transition)."""
    ramp: float
    """First → last ramp write (paced by the setpoint's ramp rate: plant dynamics)."""
    looks: int
    """Simulations of the fault before the proposal (the last one included)."""
    step: float
    """The setpoint change the loop made (°C)."""

    @property
    def detection(self) -> float:
        return self.build_up + self.detect

    @property
    def decision(self) -> float:
        return self.intake + self.evidence_wait + self.last_look + self.score

    @property
    def execution(self) -> float:
        return self.pickup + self.writes

    @property
    def total(self) -> float:
        return self.detection + self.decision + self.execution

    @property
    def plant(self) -> float:
        return self.build_up + self.growth + self.ramp

    @property
    def estimation(self) -> float:
        """The evidence wait beyond the fault's growth: the tracking-error estimate (the mean of
        the newest readings) catching up, and the look interval."""
        return self.evidence_wait - self.growth

    @property
    def processing(self) -> float:
        """The platform's work: everything but the plant and the wait for evidence."""
        return self.total - self.plant - self.estimation


async def _newest_row(services: Services) -> int:
    async with services.db.read() as conn:
        found, _ = await repo.page_proposals(
            conn, TENANT, repo.ProposalFilter(asset_id=ETCH), before_row=None, limit=1
        )
    return found[0][0] if found else 0


async def _poll(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll an async predicate until it returns something truthy, with a deadline."""
    try:
        async with asyncio.timeout(timeout_s):
            while not (value := await predicate()):
                await asyncio.sleep(0.05)
            return value
    except TimeoutError:
        raise TimeoutError(f"no {what} within {timeout_s:g} s") from None


def _offset_at(fault: Fault, t: float) -> float:
    """The chuck's noise-free offset ``t`` s after the fault began (first-order response with
    :data:`TIME_CONSTANT_S` to the heater bias: a step of SHIFT_C, or a ramp at
    DRIFT_RATE_PER_S up to SHIFT_C)."""
    tau = TIME_CONSTANT_S
    if fault == "offset":
        return SHIFT_C * (1 - math.exp(-t / tau))
    rate, end = DRIFT_RATE_PER_S, SHIFT_C / DRIFT_RATE_PER_S

    def ramp(x: float) -> float:  # response to rate·x from 0, x ≥ 0
        return rate * (x - tau * (1 - math.exp(-x / tau))) if x > 0 else 0.0

    return ramp(t) - ramp(t - end)  # the ramp stops at SHIFT_C: subtract a delayed ramp


def _justified_after(fault: Fault) -> float:
    """Seconds after the fault began when the chuck's offset reaches :data:`JUSTIFIED_C`,
    rounded up to the next sample."""
    low, high = 0.0, 30.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _offset_at(fault, mid) < JUSTIFIED_C else (low, mid)
    return math.ceil(high / SAMPLING_PERIOD_S - 1e-9) * SAMPLING_PERIOD_S


async def _follow(services: Services, first: datetime, after_row: int, fault: Fault) -> Cycle:
    """Wait for the loop's proposal after a fault and read its timeline back."""

    async def proposal() -> str | None:
        async with services.db.read() as conn:
            found, _ = await repo.page_proposals(
                conn, TENANT, repo.ProposalFilter(asset_id=ETCH), before_row=None, limit=1
            )
        return found[0][1].proposal_id if found and found[0][0] > after_row else None

    proposal_id: str = await _poll(proposal, CYCLE_TIMEOUT_S, "proposal from the loop")
    done = await services.proposals.wait_for_state(TENANT, proposal_id, TERMINAL, CYCLE_TIMEOUT_S)
    at = {t.to_state: to_micros(t.at) for t in done.transitions}
    if "verifying" not in at:
        raise RuntimeError(f"proposal {proposal_id} ended {done.state} without verifying")
    async with services.db.read() as conn:
        opened = (
            await conn.execute(
                select(anomalies.c.seq, anomalies.c.opened_at_us)
                .where(
                    anomalies.c.tenant_id == TENANT,
                    anomalies.c.asset_id == ETCH,
                    anomalies.c.metric == METRIC,
                    anomalies.c.opened_at_us >= to_micros(first),
                )
                .order_by(anomalies.c.seq)
                .limit(1)
            )
        ).one()
        appended_us = int(
            (
                await conn.execute(
                    select(change_log.c.recorded_at_us).where(change_log.c.seq == opened.seq)
                )
            ).scalar_one()
        )
        task = (
            await conn.execute(
                select(automation_tasks.c.created_at_us, automation_tasks.c.attempts).where(
                    automation_tasks.c.tenant_id == TENANT,
                    automation_tasks.c.anomaly_id == done.draft.anomaly_id,
                )
            )
        ).one()
        sim = (
            await conn.execute(
                select(
                    sim_runs.c.created_at_us, sim_runs.c.started_at_us, sim_runs.c.finished_at_us
                ).where(sim_runs.c.sim_id == done.draft.sim_id)
            )
        ).one()
        assert done.action is not None
        action = await repo.load_action(conn, TENANT, done.action.action_id)
    execution = (action or {}).get("execution") or {}
    stamps = [to_micros(datetime.fromisoformat(w["at"])) for w in execution.get("writes", [])]
    first_us = to_micros(first)
    return Cycle(
        outcome=done.state,
        build_up=(opened.opened_at_us - first_us) / 1e6,
        detect=(appended_us - opened.opened_at_us) / 1e6,
        intake=(task.created_at_us - appended_us) / 1e6,
        evidence_wait=(sim.created_at_us - task.created_at_us) / 1e6,
        growth=min(
            (sim.created_at_us - task.created_at_us) / 1e6,
            max(0.0, _justified_after(fault) - (opened.opened_at_us - first_us) / 1e6),
        ),
        last_look=(at["proposed"] - sim.created_at_us) / 1e6,
        simulate=(sim.finished_at_us - sim.started_at_us) / 1e6,
        score=(at["approved"] - at["proposed"]) / 1e6,
        pickup=(at["executing"] - at["approved"]) / 1e6,
        writes=(at["verifying"] - at["executing"]) / 1e6,
        ramp=(stamps[-1] - stamps[0]) / 1e6 if stamps else 0.0,
        looks=int(task.attempts),
        step=done.draft.value - float(execution.get("before_value", done.draft.value)),
    )


async def _settled(services: Services) -> None:
    """Until nothing is open, pending or in flight on the chuck; then :data:`SETTLE_S`."""

    async def quiet() -> bool:
        async with services.db.read() as conn:
            open_ = await repo.open_anomalies(conn, TENANT, TWIN, ETCH)
            active = await repo.active_on_asset(conn, TENANT, TWIN, ETCH)
            pending = await conn.scalar(
                select(automation_tasks.c.anomaly_id)
                .where(automation_tasks.c.state == "pending")
                .limit(1)
            )
        return not open_ and not active and pending is None

    await _poll(quiet, CYCLE_TIMEOUT_S, "quiet chuck (no open anomaly, task or proposal)")
    await asyncio.sleep(SETTLE_S)  # the plant's settling, not a wait for a condition


@dataclass
class LatencyRun:
    fault: Fault
    faults: list[Cycle] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0


async def _latency(backend: str, fault: Fault) -> LatencyRun:
    async with database_url(backend) as (url, schema):
        with tempfile.TemporaryDirectory() as tmp:
            base = _settings(tmp, url, schema)
            settings = base.model_copy(
                update={
                    "actions": base.actions.model_copy(update=LATENCY_ACTIONS),
                    "automation": LATENCY_AUTOMATION,
                }
            )
            app = create_app(settings)
            services: Services = app.state.services
            async with app.router.lifespan_context(app):
                return await _measure_latency(app, services, fault)


async def _measure_latency(app: Any, services: Services, fault: Fault) -> LatencyRun:
    document = _fab_document()
    async with services.db.write() as tx:
        admin = await services.keys.create(tx.conn, name="bench-admin", role=Role.admin)
        await services.twins.put(tx, TENANT, document)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bench"
    ) as client:
        response = await client.put(
            "/policy", json=POLICY, headers={"Authorization": f"Bearer {admin.token}"}
        )
        assert response.status_code == 200, response.text
    (spec,) = parse_twin_document(document).twins
    plant = SimulatedPlant(
        spec,
        seed=11,
        time_constant_s=TIME_CONSTANT_S,
        max_sampling_period_s=SAMPLING_PERIOD_S,
        clock=services.clock,
    )
    services.actuators.register(SimulatedPlantActuator(plant))
    sink = FaultSink(services)
    start = services.clock.now() - timedelta(seconds=HISTORY_S)
    for second in range(int(HISTORY_S)):
        await sink(plant.step(1.0, at=start + timedelta(seconds=second + 1)))
    run = LatencyRun(fault)
    started = time.perf_counter()
    bias, away = 0.0, SHIFT_C  # the heater's bias now, and where the next fault away takes it
    async with PlantRunner(plant, sink, services.clock, tick_s=SAMPLING_PERIOD_S):
        await _settled(services)
        for index in range(FAULTS):
            # Away from the calibrated value and back, alternately up and down: every fault
            # starts from the chuck at its nominal temperature, compensated and settled.
            target = away if bias == 0 else 0.0
            if bias == 0:
                away = -away
            row = await _newest_row(services)
            first = await sink.apply(partial(_set_bias, plant, bias, target, fault))
            bias = target
            try:
                run.faults.append(await _follow(services, first, row, fault))
            except (TimeoutError, RuntimeError) as exc:
                run.failures.append(f"fault {index + 1}: {exc}")
            try:
                await _settled(services)
            except TimeoutError as exc:
                run.failures.append(f"after fault {index + 1}: {exc}")
            # Whatever the loop did, the next fault starts from the chuck at nominal.
            applied = plant.commanded(ETCH, SETPOINT)
            if abs(applied + bias - NOMINAL_C) > 1e-9:
                run.failures.append(
                    f"after fault {index + 1}: {SETPOINT} at {applied:g} with a bias of "
                    f"{bias:+g} °C; bias reset to {NOMINAL_C - applied:+g} °C"
                )
                fixed = NOMINAL_C - applied
                await sink.apply(partial(_set_bias, plant, fixed, fixed, fault))
                bias = fixed
                await _settled(services)
    run.wall_s = time.perf_counter() - started
    return run


def _stats(values: list[float]) -> str:
    return f"{_ms(pct(values, 50)):>6} {_ms(pct(values, 90)):>6} {_ms(max(values)):>6}"


def _describe(fault: Fault) -> str:
    if fault == "drift":
        return f"heater bias drifting ±{SHIFT_C:g} °C at {DRIFT_RATE_PER_S:g} °C/s"
    return f"heater bias stepping ±{SHIFT_C:g} °C"


def _print_latency(backend: str, run: LatencyRun) -> None:
    faults = run.faults
    outcomes = sorted({c.outcome for c in faults})
    print(
        f"   {backend}: {len(faults)} of {FAULTS} faults ({_describe(run.fault)} on "
        f"{ETCH}/{METRIC}) followed to verifying in "
        f"{run.wall_s:.0f} s; outcomes "
        + ", ".join(f"{o} {sum(c.outcome == o for c in faults)}" for o in outcomes)
    )
    if not faults:
        return
    rows: list[tuple[str, Callable[[Cycle], float]]] = [
        ("first anomalous point → verifying (total)", lambda c: c.total),
        ("  detection: point → anomaly.detected", lambda c: c.detection),
        (f"    build-up (plant: {run.fault}, τ 0.3 s, noise)", lambda c: c.build_up),
        ("    detector (sample → anomaly appended)", lambda c: c.detect),
        ("  decision: anomaly → approved", lambda c: c.decision),
        ("    intake (anomaly → task)", lambda c: c.intake),
        ("    evidence wait (looks without P ≥ 0.95)", lambda c: c.evidence_wait),
        (f"      fault growing to {JUSTIFIED_C:.2f} °C (plant)", lambda c: c.growth),
        ("      estimate catching up, look interval", lambda c: c.estimation),
        ("    last look (simulation → proposed)", lambda c: c.last_look),
        ("      of which the simulation run", lambda c: c.simulate),
        ("    score + decide (proposed → approved)", lambda c: c.score),
        ("  execution: approved → verifying", lambda c: c.execution),
        ("    executor pickup (→ executing)", lambda c: c.pickup),
        ("    writes (executing → verifying)", lambda c: c.writes),
        ("      of which ramp pacing (plant)", lambda c: c.ramp),
        ("plant's own dynamics (build-up + growth + ramp)", lambda c: c.plant),
        ("platform's part (total − plant)", lambda c: c.total - c.plant),
        ("  of which processing (− the estimate's lag)", lambda c: c.processing),
    ]
    print(f"   {'':<46} {'p50':>6} {'p90':>6} {'max':>6}  ms")
    for label, of in rows:
        print(f"   {label:<46} {_stats([of(c) for c in faults])}")
    looks = sorted(c.looks for c in faults)
    steps = sorted(abs(c.step) for c in faults)
    print(
        f"   looks (simulations) per fault: median {looks[len(looks) // 2]}, max {looks[-1]}; "
        f"setpoint step median {steps[len(steps) // 2]:g} °C (min {steps[0]:g}, max {steps[-1]:g})"
    )
    for failure in run.failures:
        print(f"   ! {failure}")


# == scale =====================================================================================


def _scale_document() -> dict[str, Any]:
    assets = [
        {
            "id": f"tool_{a:03d}",
            "metrics": {
                f"m{m}": {
                    "unit": unit,
                    "normal_range": {"low": centre - half, "high": centre + half},
                    "sampling_period_s": 1.0,
                }
                for m, (unit, centre, half) in enumerate(SCALE_UNITS[:SCALE_METRICS])
            },
        }
        for a in range(SCALE_ASSETS)
    ]
    twin = {"id": "scale_line", "anomaly_defaults": {"warmup_samples": 30}, "assets": assets}
    return {"twins": [twin]}


@dataclass
class Tick:
    seq: int
    sampled: datetime
    committed: float


class LagProbe:
    """Sink (in-process ingest, one transaction per tick) that remembers each tick's last log
    sequence, and a poller that notes when each consumer has scanned past it."""

    def __init__(self, services: Services, consumers: dict[str, LogConsumer]) -> None:
        self._services = services
        self._consumers = consumers
        self._ticks: dict[str, deque[Tick]] = {name: deque() for name in consumers}
        self.ingest_s: list[float] = []
        self.lag_commit: dict[str, list[float]] = {name: [] for name in consumers}
        self.lag_sample: dict[str, list[float]] = {name: [] for name in consumers}
        self.behind: dict[str, list[int]] = {name: [] for name in consumers}
        self.head = 0

    def reset(self) -> None:
        self.ingest_s.clear()
        for name in self._consumers:
            self.lag_commit[name].clear()
            self.lag_sample[name].clear()
            self.behind[name].clear()

    async def sink(self, events: list[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with self._services.db.write() as tx:
            result = await self._services.ingestor.ingest(tx, TENANT, events)
        committed = loop.time()
        self.ingest_s.append(committed - started)
        if result.appended:
            self.head = max(a.seq for a in result.appended)
            sampled = datetime.fromisoformat(max(e["ts"] for e in events))
            for ticks in self._ticks.values():
                ticks.append(Tick(self.head, sampled, committed))

    async def poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LAG_POLL_S)
            now, wall = loop.time(), self._services.clock.now()
            for name, consumer in self._consumers.items():
                ticks = self._ticks[name]
                while ticks and ticks[0].seq <= consumer.position:
                    tick = ticks.popleft()
                    self.lag_commit[name].append(now - tick.committed)
                    self.lag_sample[name].append((wall - tick.sampled).total_seconds())
                self.behind[name].append(max(0, self.head - consumer.position))


@dataclass(frozen=True, slots=True)
class ScaleRun:
    cpu: float
    ticks: int
    points: int
    ingest_p50: float
    lag_commit: dict[str, list[float]]
    lag_sample: dict[str, list[float]]
    behind: dict[str, list[int]]
    anomalies: int


async def _scale(backend: str, loop_on: bool) -> ScaleRun:
    async with database_url(backend) as (url, schema):
        with tempfile.TemporaryDirectory() as tmp:
            settings = _settings(
                tmp,
                url,
                schema,
                detection=DetectionSettings(enabled=loop_on),
                actions=ActionSettings(enabled=loop_on),
                automation=AutomationSettings(enabled=loop_on),
            )
            app = create_app(settings)
            services: Services = app.state.services
            async with app.router.lifespan_context(app):
                return await _measure_scale(services)


async def _measure_scale(services: Services) -> ScaleRun:
    document = _scale_document()
    async with services.db.write() as tx:
        await services.twins.put(tx, TENANT, document)
    (spec,) = parse_twin_document(document).twins
    plant = SimulatedPlant(spec, seed=3, clock=services.clock)
    consumers: dict[str, LogConsumer] = {}
    if services.detection is not None:
        consumers["detector"] = services.detection
    if services.automation is not None:
        consumers["automation intake"] = services.automation.intake
    probe = LagProbe(services, consumers)
    start = services.clock.now() - timedelta(seconds=SCALE_HISTORY_S)
    for second in range(SCALE_HISTORY_S):  # mature baselines (warm-up is 30 samples)
        await probe.sink(plant.step(1.0, at=start + timedelta(seconds=second + 1)))
    poller = asyncio.create_task(probe.poll())
    try:
        runner = PlantRunner(plant, probe.sink, services.clock, tick_s=1.0)
        async with runner:
            await asyncio.sleep(SCALE_WARMUP_S)  # the detector catches up with the history
            probe.reset()
            ticks, sent, found = runner.ticks, runner.events_sent, _records(services)
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.sleep(SCALE_MEASURE_S)  # the measurement window
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            ticks, sent = runner.ticks - ticks, runner.events_sent - sent
            found = _records(services) - found
    finally:
        poller.cancel()
    return ScaleRun(
        cpu=cpu / wall,
        ticks=ticks,
        points=sent * SCALE_METRICS,
        ingest_p50=pct(probe.ingest_s, 50),
        lag_commit=probe.lag_commit,
        lag_sample=probe.lag_sample,
        behind=probe.behind,
        anomalies=found,
    )


def _records(services: Services) -> int:
    detection = services.anomaly_detection
    return 0 if detection is None else detection.records_emitted


def _plant_cpu() -> float:
    """CPU share of stepping the synthetic plant alone in real time (no I/O)."""
    (spec,) = parse_twin_document(_scale_document()).twins
    plant = SimulatedPlant(spec, seed=3)
    started = time.process_time()
    for _ in range(20):
        plant.step(1.0)
    return (time.process_time() - started) / 20


def _print_scale(backend: str, off: ScaleRun, on: ScaleRun) -> None:
    label = f"{SCALE_ASSETS} assets × {SCALE_METRICS} metrics at 1 Hz"
    print(
        f"   {backend}: {label}, {SCALE_MEASURE_S:g} s: CPU loop on {on.cpu * 100:.1f} % of a core, "
        f"ingest only {off.cpu * 100:.1f} %  (ratio {on.cpu / off.cpu:.2f}; "
        f"{on.points:,} points in {on.ticks} ticks, ingest p50 {_ms(on.ingest_p50)} ms per tick, "
        f"{on.anomalies} anomaly records)"
    )
    for name in on.lag_commit:
        commit, sample, behind = on.lag_commit[name], on.lag_sample[name], on.behind[name]
        if not commit:
            print(f"     {name}: never passed a tick")
            continue
        print(
            f"     {name} lag, ingest commit → scanned past: p50 {_ms(pct(commit, 50))} ms   "
            f"p99 {_ms(pct(commit, 99))} ms   max {_ms(max(commit))} ms;  from the samples' "
            f"timestamps p50 {_ms(pct(sample, 50))} ms  p99 {_ms(pct(sample, 99))} ms;  "
            f"entries behind max {max(behind)}"
        )


def latency_report(backends: list[str], fault: Fault = "drift") -> None:
    """Part one alone (``fault="offset"``: steps instead of the end-to-end tests' drift)."""
    configure_logging(Settings(log_level="error"))
    tuned = ", ".join(f"{k} {v:g}" for k, v in LATENCY_ACTIONS.items())
    print(
        f"   latency settings: actions {tuned}; automation poll_interval_s "
        f"{LATENCY_AUTOMATION.poll_interval_s:g}, recheck_s {LATENCY_AUTOMATION.recheck_s:g}, "
        f"min_p_improvement {LATENCY_AUTOMATION.min_p_improvement:g}; policy verification "
        f"window {VERIFICATION_WINDOW_S:g} s; esc_temp_sp ramp {RAMP_RATE_PER_S:g} °C/s"
    )
    for backend in backends:
        _print_latency(backend, asyncio.run(_latency(backend, fault)))


def scale_report(backends: list[str]) -> None:
    """Part two alone."""
    configure_logging(Settings(log_level="error"))
    print(f"   plant physics alone: {_plant_cpu() * 100:.1f} % of a core")
    for backend in backends:
        off = asyncio.run(_scale(backend, loop_on=False))
        on = asyncio.run(_scale(backend, loop_on=True))
        _print_scale(backend, off, on)


def run() -> None:
    backends = ["sqlite"] + (["postgresql"] if pg_available() else [])
    latency_report(backends)
    scale_report(backends)
    if "postgresql" not in backends:
        print("   postgresql: not reachable on 127.0.0.1:5432, skipped")


if __name__ == "__main__":
    run()
