"""A small twin for the plant tests, and helpers to read a plant's samples."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opstwin.kit.clock import ManualClock
from opstwin.kit.ids import SequentialIds
from opstwin.plant import SimulatedPlant
from opstwin.twins import TwinSpec, load_twin_file, parse_twin_document

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

CELL: dict[str, Any] = {
    "id": "cell",
    "assets": [
        {
            "id": "heater",
            "metrics": {
                "temp_c": {
                    "unit": "degC",
                    "normal_range": {"low": 57.0, "high": 63.0},
                    "sampling_period_s": 1.0,
                },
                "flow_sccm": {
                    "unit": "sccm",
                    "normal_range": {"low": 90.0, "high": 110.0},
                    "sampling_period_s": 0.5,
                },
                "level_m": {"unit": "m", "sampling_period_s": 2.0},
            },
            "setpoints": {
                "temp_sp": {
                    "unit": "degC",
                    "metric": "temp_c",
                    "bounds": {"low": 40.0, "high": 80.0},
                    "max_step": 5.0,
                    "actuator": "simulated_plant",
                    "default": 60.0,
                },
                "flow_sp": {
                    "unit": "sccm",
                    "metric": "flow_sccm",
                    "bounds": {"low": 50.0, "high": 150.0},
                    "max_step": 10.0,
                    "ramp_rate_per_s": 2.0,
                    "actuator": "simulated_plant",
                    "default": 90.0,
                    "current": 100.0,
                },
                "valve_sp": {
                    "unit": "%",
                    "bounds": {"low": 0.0, "high": 100.0},
                    "max_step": 10.0,
                    "actuator": "simulated_plant",
                    "default": 50.0,
                },
            },
        },
        {
            "id": "metrology",
            "metrics": {
                "cd_nm": {
                    "unit": "nm",
                    "normal_range": {"low": 29.0, "high": 31.0},
                    "sampling_period_s": 10.0,
                }
            },
        },
    ],
    "process_models": [
        {
            "id": "cd_model",
            "inputs": {
                "temp": {"asset": "heater", "setpoint": "temp_sp"},
                "valve": {"asset": "heater", "setpoint": "valve_sp"},
                "wobble": {"dist": "normal", "mean": 0.0, "std": 0.1},
            },
            "outputs": {
                "cd_nm": {
                    "expression": "30.0 - 0.12 * (temp - 60.0) + 0.01 * (valve - 50.0) + wobble"
                },
                "unbound_kpi": {"expression": "temp * 2"},
            },
        }
    ],
}


def cell_twin() -> TwinSpec:
    return parse_twin_document({"twins": [CELL]}).twins[0]


def fab_twin() -> TwinSpec:
    return load_twin_file(ROOT / "examples" / "fab-line.yaml").twins[0]


def make_plant(twin: TwinSpec | None = None, seed: int = 7, **options: Any) -> SimulatedPlant:
    """A plant with a pinned clock and sequential ids, so whole payloads can be compared."""
    return SimulatedPlant(
        twin or cell_twin(),
        seed=seed,
        clock=ManualClock(START),
        ids=SequentialIds(),
        **options,
    )


def readings(events: list[dict[str, Any]], asset: str, metric: str) -> list[float]:
    """The values of ``asset``'s ``metric`` in ``events``, in order."""
    return [
        e["metrics"][metric] for e in events if e["asset_id"] == asset and metric in e["metrics"]
    ]


def run(plant: SimulatedPlant, seconds: float, dt: float = 1.0) -> list[dict[str, Any]]:
    """Step ``plant`` for ``seconds`` in steps of ``dt``; every event produced."""
    events: list[dict[str, Any]] = []
    steps = round(seconds / dt)
    for _ in range(steps):
        events += plant.step(dt, at=START)
    return events
