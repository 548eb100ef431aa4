"""SimulatedPlant physics: first-order dynamics, ramps, noise, sampling, faults, KPIs,
determinism, bounds and idempotent writes — all in plant time, no wall clock."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opstwin.actions.actuators import ActuatorRejected, ActuatorUnavailable
from opstwin.config import TelemetrySettings
from opstwin.kit.clock import rfc3339, to_micros
from opstwin.kit.errors import NotFound
from opstwin.plant import FaultSpec, KpiError
from opstwin.telemetry.normalizer import EventNormalizer, NormalizedEvent, TwinCatalog
from opstwin.twins.registry import Twin
from tests.plant.helpers import START, cell_twin, fab_twin, make_plant, readings, run

TAU = 5.0


# --- dynamics -------------------------------------------------------------------------------------


def test_starts_in_steady_state_at_current_else_default() -> None:
    plant = make_plant()
    assert plant.applied("heater", "temp_sp") == 60.0  # default (no current)
    assert plant.applied("heater", "flow_sp") == 100.0  # current wins over default
    assert plant.true_value("heater", "temp_c") == 60.0
    assert plant.true_value("heater", "flow_sccm") == 100.0
    assert plant.true_value("heater", "level_m") == 0.0  # no range: centred on 0


def test_first_order_approach_to_a_new_setpoint() -> None:
    plant = make_plant()
    result = plant.write("heater", "temp_sp", 70.0, idempotency_key="k1")
    assert (result.commanded, result.applied, result.duplicate) == (70.0, 70.0, False)
    for k in (1, 2, 3):
        plant.step(TAU, at=START)
        expected = 60.0 + 10.0 * (1 - math.exp(-k))
        assert plant.true_value("heater", "temp_c") == pytest.approx(expected, abs=1e-9)
    run(plant, 10 * TAU)
    assert plant.true_value("heater", "temp_c") == pytest.approx(70.0, abs=1e-3)


def test_time_constant_per_metric() -> None:
    plant = make_plant(time_constants={("heater", "temp_c"): 20.0})
    plant.write("heater", "temp_sp", 70.0, idempotency_key="k1")
    plant.step(20.0, at=START)
    assert plant.true_value("heater", "temp_c") == pytest.approx(60.0 + 10 * (1 - math.exp(-1)))


def test_ramp_rate_limits_the_applied_value() -> None:
    plant = make_plant()
    plant.write("heater", "flow_sp", 110.0, idempotency_key="k1")
    assert plant.commanded("heater", "flow_sp") == 110.0
    assert plant.applied("heater", "flow_sp") == 100.0  # ramps at 2 sccm/s
    plant.step(1.0, at=START)
    assert plant.applied("heater", "flow_sp") == pytest.approx(102.0)
    plant.step(2.5, at=START)
    assert plant.applied("heater", "flow_sp") == pytest.approx(107.0)
    plant.step(10.0, at=START)
    assert plant.applied("heater", "flow_sp") == 110.0  # lands exactly, no overshoot


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.tuples(st.floats(50.0, 150.0), st.floats(0.01, 7.0)),
        min_size=1,
        max_size=8,
    )
)
def test_ramp_never_exceeds_its_rate_nor_the_bounds(moves: list[tuple[float, float]]) -> None:
    plant = make_plant()
    for index, (target, dt) in enumerate(moves):
        plant.write("heater", "flow_sp", target, idempotency_key=f"k{index}")
        before = plant.applied("heater", "flow_sp")
        plant.step(dt, at=START)
        after = plant.applied("heater", "flow_sp")
        assert abs(after - before) <= 2.0 * dt + 1e-9
        assert 50.0 <= after <= 150.0
        # moving toward the commanded value, never past it
        assert min(before, target) - 1e-9 <= after <= max(before, target) + 1e-9


# --- measurement -----------------------------------------------------------------------------------


def test_noise_statistics_follow_the_normal_range() -> None:
    plant = make_plant()
    values = np.array(readings(run(plant, 3000), "heater", "temp_c"))
    sigma = 6.0 / 12.0  # normal range 57–63
    assert plant.noise_std("heater", "temp_c") == pytest.approx(sigma)
    assert len(values) == 3000
    assert values.mean() == pytest.approx(60.0, abs=4 * sigma / math.sqrt(len(values)))
    assert values.std(ddof=1) == pytest.approx(sigma, rel=0.05)
    # no two-sided range: a small floor, not zero noise
    assert plant.noise_std("heater", "level_m") == pytest.approx(1e-3)


def test_each_metric_is_sampled_at_its_period_with_timestamps_of_its_instant() -> None:
    plant = make_plant()
    events = plant.step(4.0, at=START)
    counts = {m: len(readings(events, "heater", m)) for m in ("temp_c", "flow_sccm", "level_m")}
    assert counts == {"temp_c": 4, "flow_sccm": 8, "level_m": 2}
    heater = [e for e in events if e["asset_id"] == "heater"]
    stamps = [e["ts"] for e in heater]
    assert stamps == [rfc3339(START - timedelta(seconds=4.0 - 0.5 * i)) for i in range(1, 9)]
    # one event per asset per instant, with every metric due then
    assert set(heater[-1]["metrics"]) == {"temp_c", "flow_sccm", "level_m"}
    assert set(heater[0]["metrics"]) == {"flow_sccm"}
    # steps smaller than a period accumulate to the same schedule
    fine = make_plant()
    few: list[dict[str, Any]] = []
    for _ in range(40):
        few += fine.step(0.1, at=START)
    assert [len(e["metrics"]) for e in few] == [len(e["metrics"]) for e in events]


def test_max_sampling_period_shortens_slow_metrics() -> None:
    plant = make_plant(max_sampling_period_s=2.0)
    events = plant.step(10.0, at=START)
    assert len(readings(events, "metrology", "cd_nm")) == 5  # declared 10 s


def test_events_are_accepted_by_the_normalizer() -> None:
    twin = fab_twin()
    plant = make_plant(twin)
    events = plant.step(2.0, at=START)
    catalog = TwinCatalog.of(Twin("default", twin.id, 1, twin, START))
    normalizer = EventNormalizer(TelemetrySettings())
    for event in events:
        outcome = normalizer.normalize(event, {twin.id: catalog}, to_micros(START), "unused")
        assert isinstance(outcome, NormalizedEvent), outcome
        assert outcome.document["quality"]["issues"] == []
        assert outcome.event_id == event["event_id"]
        assert event["tags"] == {"source": "simulated_plant"}


def test_seeded_plants_repeat_themselves() -> None:
    first, second, other = make_plant(seed=3), make_plant(seed=3), make_plant(seed=4)
    assert run(first, 30) == run(second, 30)
    assert readings(run(make_plant(seed=3), 30), "heater", "temp_c") != readings(
        run(other, 30), "heater", "temp_c"
    )


# --- faults ----------------------------------------------------------------------------------------


def test_drift_grows_at_its_rate_and_is_capped() -> None:
    plant = make_plant()
    plant.inject(FaultSpec("drift", "heater", "temp_c", rate_per_s=0.1, max_offset=1.0))
    plant.step(5.0, at=START)
    [status] = plant.faults()
    assert status.bias == pytest.approx(0.5)
    run(plant, 15)
    [status] = plant.faults()
    assert status.bias == 1.0  # capped after 10 s
    run(plant, 60)
    assert plant.true_value("heater", "temp_c") == pytest.approx(61.0, abs=1e-4)
    # a setpoint change compensates a process drift
    plant.write("heater", "temp_sp", 59.0, idempotency_key="compensate")
    run(plant, 80)
    assert plant.true_value("heater", "temp_c") == pytest.approx(60.0, abs=1e-4)
    assert plant.clear("heater", "temp_c") == 1
    assert plant.faults() == []


def test_negative_drift_is_capped_by_size() -> None:
    plant = make_plant()
    plant.inject(FaultSpec("drift", "heater", "temp_c", rate_per_s=-0.5, max_offset=2.0))
    run(plant, 10)
    [status] = plant.faults()
    assert status.bias == -2.0


def test_offset_is_a_step_and_clearing_relaxes_back() -> None:
    plant = make_plant()
    plant.inject(FaultSpec("offset", "heater", "temp_c", magnitude=2.0))
    run(plant, 100)
    assert plant.true_value("heater", "temp_c") == pytest.approx(62.0, abs=1e-6)
    plant.clear("heater", "temp_c", "offset")
    plant.step(TAU, at=START)
    assert plant.true_value("heater", "temp_c") == pytest.approx(60.0 + 2.0 * math.exp(-1))


def test_spike_alters_exactly_n_samples_then_removes_itself() -> None:
    clean, faulty = make_plant(), make_plant()
    run(clean, 5)
    run(faulty, 5)
    faulty.inject(FaultSpec("spike", "heater", "temp_c", magnitude=10.0, samples=3))
    assert faulty.faults()[0].remaining_samples == 3
    a = readings(run(clean, 10), "heater", "temp_c")
    b = readings(run(faulty, 10), "heater", "temp_c")
    differences = [round(y - x, 9) for x, y in zip(a, b, strict=True)]
    assert differences == [10.0] * 3 + [0.0] * 7
    assert faulty.faults() == []


def test_flatline_reports_the_last_value_or_the_given_one() -> None:
    plant = make_plant()
    last = readings(run(plant, 5), "heater", "temp_c")[-1]
    plant.inject(FaultSpec("flatline", "heater", "temp_c"))
    stuck = readings(run(plant, 20), "heater", "temp_c")
    assert stuck == [last] * 20
    assert plant.faults()[0].held_value == last
    plant.inject(FaultSpec("flatline", "heater", "temp_c", value=55.5))  # replaces the first
    assert set(readings(run(plant, 5), "heater", "temp_c")) == {55.5}
    # the process is untouched: a setpoint change moves the true value, not the reading
    plant.write("heater", "temp_sp", 65.0, idempotency_key="k")
    assert set(readings(run(plant, 30), "heater", "temp_c")) == {55.5}
    assert plant.true_value("heater", "temp_c") == pytest.approx(65.0, abs=0.02)
    plant.clear("heater", "temp_c")
    assert len(set(readings(run(plant, 5), "heater", "temp_c"))) == 5


def test_a_fault_changes_no_other_metric() -> None:
    clean, faulty = make_plant(), make_plant()
    faulty.inject(FaultSpec("drift", "heater", "temp_c", rate_per_s=1.0))
    faulty.inject(FaultSpec("spike", "heater", "flow_sccm", magnitude=5.0))
    a, b = run(clean, 20), run(faulty, 20)
    assert readings(a, "heater", "level_m") == readings(b, "heater", "level_m")
    flow_a, flow_b = readings(a, "heater", "flow_sccm"), readings(b, "heater", "flow_sccm")
    assert [round(y - x, 9) for x, y in zip(flow_a, flow_b, strict=True)] == [5.0] + [0.0] * 39


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"kind": "drift", "asset": "a", "metric": "m"}, "needs rate_per_s"),
        (
            {"kind": "drift", "asset": "a", "metric": "m", "rate_per_s": 1, "magnitude": 1},
            "does not take magnitude",
        ),
        ({"kind": "offset", "asset": "a", "metric": "m"}, "needs magnitude"),
        (
            {"kind": "spike", "asset": "a", "metric": "m", "magnitude": 1, "samples": 0},
            "at least 1",
        ),
        (
            {"kind": "drift", "asset": "a", "metric": "m", "rate_per_s": 1, "max_offset": -1},
            "positive",
        ),
        ({"kind": "flatline", "asset": "a", "metric": "m", "value": math.inf}, "finite"),
        ({"kind": "melt", "asset": "a", "metric": "m"}, "unknown fault kind"),
        (
            {"kind": "offset", "asset": "a", "metric": "m", "magnitude": 1, "x": 1},
            "unknown fault fields",
        ),
        ({"kind": "offset", "metric": "m", "magnitude": 1}, "needs asset"),
    ],
)
def test_fault_specs_are_checked(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultSpec.from_dict(body)


def test_fault_spec_json_round_trip_and_unknown_channel() -> None:
    spec = FaultSpec("drift", "heater", "temp_c", rate_per_s=0.02, max_offset=3.0)
    assert FaultSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict() == {
        "kind": "drift",
        "asset": "heater",
        "metric": "temp_c",
        "rate_per_s": 0.02,
        "max_offset": 3.0,
    }
    plant = make_plant()
    with pytest.raises(NotFound, match="no metric 'nope'"):
        plant.inject(FaultSpec("offset", "heater", "nope", magnitude=1.0))


# --- KPIs ------------------------------------------------------------------------------------------


def test_kpi_bindings_follow_output_names() -> None:
    plant = make_plant()
    [binding] = plant.kpi_bindings
    assert (binding.model_id, binding.output, binding.asset, binding.metric) == (
        "cd_model",
        "cd_nm",
        "metrology",
        "cd_nm",
    )
    fab = make_plant(fab_twin())
    bound = {(b.asset, b.metric): b.model_id for b in fab.kpi_bindings}
    assert bound["inspection_tool_1", "gate_cd_nm"] == "etch_yield_model"
    assert bound["inspection_tool_1", "defect_density_cm2"] == "etch_yield_model"
    assert bound["litho_scanner_2", "overlay_nm"] == "litho_cd_model"


def test_kpi_moves_with_the_setpoint_by_the_models_coefficient() -> None:
    # Same seed: the same draws for `wobble` and the same noise, so the difference between
    # the two plants is exactly the model's response (common random numbers).
    base, moved = make_plant(), make_plant()
    moved.write("heater", "temp_sp", 65.0, idempotency_key="k")
    run(base, 100)
    run(moved, 100)
    a = readings(run(base, 200), "metrology", "cd_nm")
    b = readings(run(moved, 200), "metrology", "cd_nm")
    assert len(a) == 20
    assert [y - x for x, y in zip(a, b, strict=True)] == pytest.approx([-0.12 * 5.0] * 20, abs=1e-6)
    # a setpoint that drives no metric is read at its applied value
    valve = make_plant()
    valve.write("heater", "valve_sp", 70.0, idempotency_key="v")
    run(valve, 100)
    c = readings(run(valve, 200), "metrology", "cd_nm")
    assert [y - x for x, y in zip(a, c, strict=True)] == pytest.approx([0.01 * 20.0] * 20, abs=1e-9)


def test_kpi_sees_the_achieved_value_so_a_drift_shows_and_can_be_compensated() -> None:
    base, drifting = make_plant(), make_plant()
    drifting.inject(FaultSpec("offset", "heater", "temp_c", magnitude=2.0))
    run(base, 100)
    run(drifting, 100)
    a = readings(run(base, 100), "metrology", "cd_nm")
    b = readings(run(drifting, 100), "metrology", "cd_nm")
    assert [y - x for x, y in zip(a, b, strict=True)] == pytest.approx([-0.24] * 10, abs=1e-6)
    drifting.write("heater", "temp_sp", 58.0, idempotency_key="compensate")
    run(base, 100)
    run(drifting, 100)
    a = readings(run(base, 100), "metrology", "cd_nm")
    b = readings(run(drifting, 100), "metrology", "cd_nm")
    assert [y - x for x, y in zip(a, b, strict=True)] == pytest.approx([0.0] * 10, abs=1e-6)


def test_kpi_noise_and_bias_are_the_unmodelled_error() -> None:
    plant = make_plant(kpi_errors={("metrology", "cd_nm"): KpiError(std=0.0, bias=0.5)})
    values = np.array(readings(run(plant, 2000, dt=10.0), "metrology", "cd_nm"))
    # only the model's own `wobble` (σ 0.1) remains, around 30 + 0.5
    assert values.mean() == pytest.approx(30.5, abs=0.02)
    assert values.std(ddof=1) == pytest.approx(0.1, rel=0.1)
    with pytest.raises(ValueError, match="no process model computes it"):
        make_plant(kpi_errors={("heater", "temp_c"): KpiError(std=0.1)})


def test_example_gate_cd_follows_the_chuck_and_a_drift_can_be_compensated() -> None:
    """The demo's story on examples/fab-line.yaml: a chuck drift moves the gate CD by the
    model's −0.12 nm/°C; lowering the ESC setpoint by the drift brings it back."""
    base = make_plant(fab_twin(), max_sampling_period_s=5.0)
    drifting = make_plant(fab_twin(), max_sampling_period_s=5.0)
    drifting.inject(FaultSpec("drift", "etch_tool_7", "temp_c", rate_per_s=0.1, max_offset=2.0))
    run(base, 120)
    run(drifting, 120)
    a = readings(run(base, 50), "inspection_tool_1", "gate_cd_nm")
    b = readings(run(drifting, 50), "inspection_tool_1", "gate_cd_nm")
    assert len(a) == 10
    assert [y - x for x, y in zip(a, b, strict=True)] == pytest.approx([-0.24] * 10, abs=1e-4)
    drifting.write("etch_tool_7", "esc_temp_sp", 58.0, idempotency_key="compensate")
    run(base, 120)
    run(drifting, 120)
    a = readings(run(base, 50), "inspection_tool_1", "gate_cd_nm")
    b = readings(run(drifting, 50), "inspection_tool_1", "gate_cd_nm")
    assert [y - x for x, y in zip(a, b, strict=True)] == pytest.approx([0.0] * 10, abs=1e-4)


# --- writes ----------------------------------------------------------------------------------------


def test_writes_outside_the_bounds_are_refused() -> None:
    plant = make_plant()
    with pytest.raises(ActuatorRejected, match=r"90 degC is outside the bounds \[40, 80\]"):
        plant.write("heater", "temp_sp", 90.0, idempotency_key="k1")
    with pytest.raises(ActuatorRejected, match="not a finite number"):
        plant.write("heater", "temp_sp", math.nan, idempotency_key="k2")
    with pytest.raises(ActuatorRejected, match="no setpoint 'nope'"):
        plant.write("heater", "nope", 60.0, idempotency_key="k3")
    with pytest.raises(ActuatorUnavailable, match="no asset 'nowhere'"):
        plant.write("nowhere", "temp_sp", 60.0, idempotency_key="k4")
    with pytest.raises(ActuatorRejected, match="idempotency key"):
        plant.write("heater", "temp_sp", 60.0, idempotency_key="")
    assert plant.commanded("heater", "temp_sp") == 60.0
    # a refused write does not burn its key
    assert not plant.write("heater", "temp_sp", 61.0, idempotency_key="k1").duplicate


def test_a_repeated_key_is_a_no_op() -> None:
    plant = make_plant()
    changes: list[str] = []
    plant.add_setpoint_listener(changes.append)
    plant.write("heater", "temp_sp", 70.0, idempotency_key="k1")
    plant.write("heater", "temp_sp", 65.0, idempotency_key="k2")
    again = plant.write("heater", "temp_sp", 70.0, idempotency_key="k1")
    assert again.duplicate
    assert (again.commanded, again.applied) == (65.0, 65.0)  # current state, nothing changed
    assert plant.snapshot("heater").last_key == "k1"
    assert changes == ["heater", "heater"]


def test_forgotten_keys_apply_again() -> None:
    plant = make_plant(key_memory=2)
    for key, value in (("a", 61.0), ("b", 62.0), ("c", 63.0)):
        plant.write("heater", "temp_sp", value, idempotency_key=key)
    assert plant.write("heater", "temp_sp", 64.0, idempotency_key="b").duplicate
    assert not plant.write("heater", "temp_sp", 61.0, idempotency_key="a").duplicate
    assert plant.commanded("heater", "temp_sp") == 61.0


def test_initial_setpoints_continue_from_stored_state() -> None:
    plant = make_plant(initial_setpoints={("heater", "temp_sp"): 55.0})
    assert plant.applied("heater", "temp_sp") == 55.0
    assert plant.true_value("heater", "temp_c") == 55.0
    # stored state the model has outgrown is ignored (and logged): the model's value holds
    stale = make_plant(initial_setpoints={("heater", "temp_sp"): 99.0, ("heater", "nope"): 1.0})
    assert stale.applied("heater", "temp_sp") == 60.0


def test_listeners_hear_writes_and_ramps() -> None:
    plant = make_plant()
    changes: list[str] = []
    remove = plant.add_setpoint_listener(changes.append)
    plant.write("heater", "flow_sp", 104.0, idempotency_key="k")
    plant.step(1.0, at=START)  # ramping: 102
    plant.step(1.0, at=START)  # 104, done
    plant.step(1.0, at=START)  # nothing moves
    assert changes == ["heater", "heater", "heater"]
    snapshot = plant.snapshot("heater")
    assert snapshot.applied == {"temp_sp": 60.0, "flow_sp": 104.0, "valve_sp": 50.0}
    assert snapshot.commanded["flow_sp"] == 104.0
    remove()
    plant.write("heater", "flow_sp", 90.0, idempotency_key="k2")
    assert changes == ["heater", "heater", "heater"]


def test_step_rejects_bad_durations() -> None:
    plant = make_plant(cell_twin())
    with pytest.raises(ValueError, match="dt_s"):
        plant.step(-1.0)
    assert plant.step(0.0, at=START) == []
