"""POST /sim/run with ``model_ref``: a twin's process model, inputs from its state."""

from __future__ import annotations

from typing import Any

import httpx

from opstwin.kit.clock import to_micros
from opstwin.policy.rbac import Role
from opstwin.services import Services
from opstwin.twins.state import Baseline, LatestSample, record_baselines, record_latest
from tests.conftest import Keys

TWIN = "line1"


def twin_document() -> dict[str, Any]:
    return {
        "twins": [
            {
                "id": TWIN,
                "assets": [
                    {
                        "id": "etch_tool_7",
                        "metrics": {"temp_c": {"unit": "degC"}},
                        "setpoints": {
                            "esc_temp_sp": {
                                "unit": "degC",
                                "metric": "temp_c",
                                "bounds": {"low": 40.0, "high": 80.0},
                                "max_step": 5.0,
                                "actuator": "simulated_plant",
                                "default": 60.0,
                            }
                        },
                    }
                ],
                "process_models": [
                    {
                        "id": "etch_yield",
                        "inputs": {
                            "temp_c": {"asset": "etch_tool_7", "metric": "temp_c"},
                            "sp": {"asset": "etch_tool_7", "setpoint": "esc_temp_sp"},
                            "noise": {"dist": "normal", "mean": 0.0, "std": 0.01},
                        },
                        "outputs": {
                            "yield_frac": {
                                "expression": "0.92 - 0.004*abs(temp_c - sp) + noise",
                                "goal": "maximize",
                            }
                        },
                    }
                ],
            }
        ]
    }


def ref_body(process_model: str = "etch_yield") -> dict[str, Any]:
    return {
        "model_ref": {"twin_id": TWIN, "process_model": process_model},
        "samples": 1000,
        "seed": 3,
    }


async def test_a_twins_process_model_runs_from_its_reported_state(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    agent = keys.headers(Role.agent)
    missing = await client.post("/sim/run", json=ref_body(), headers=agent)
    assert missing.status_code == 404  # no such twin yet

    async with services.db.write() as tx:
        await services.twins.put(tx, "default", twin_document())

    unknown = await client.post("/sim/run", json=ref_body("nope"), headers=agent)
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["pointer"] == "/model_ref/process_model"

    # The metric input declares no distribution and nothing was reported yet: 422 saying so.
    no_state = await client.post("/sim/run", json=ref_body(), headers=agent)
    assert no_state.status_code == 422
    detail = no_state.json()["errors"][0]["detail"]
    assert "'temp_c' has no distribution yet" in detail

    now_us = to_micros(services.clock.now())
    async with services.db.write() as tx:
        await record_latest(
            tx,
            "default",
            [LatestSample(TWIN, "etch_tool_7", "temp_c", 61.0, now_us, 1.0, "evt_1")],
        )
        await record_baselines(
            tx, "default", [Baseline(TWIN, "etch_tool_7", "temp_c", 62.0, 0.5, 0.1, now_us)]
        )

    response = await client.post("/sim/run", json=ref_body(), headers=agent)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["model_ref"] == {"twin_id": TWIN, "process_model": "etch_yield"}
    assert body["request"]["model"]["inputs"] == {
        "temp_c": {"dist": "normal", "mean": 62.0, "std": 0.5},
        "sp": {"dist": "constant", "value": 60.0},
        "noise": {"dist": "normal", "mean": 0.0, "std": 0.01},
    }
    # yield ≈ 0.92 − 0.004·|62 − 60| = 0.912
    assert abs(body["outputs"]["yield_frac"]["mean"] - 0.912) < 0.005
    services.schemas.validate("sim.v1", body)

    events = (
        await client.get(
            "/diff", params={"types": "opstwin.sim.completed"}, headers=keys.headers("viewer")
        )
    ).json()["events"]
    (event,) = events
    assert event["subject"] == f"twin/{TWIN}/sim/{body['sim_id']}"
    # The twin filter of the feed finds it.
    by_twin = (
        await client.get(
            "/diff",
            params={"types": "opstwin.sim.*", "twin_id": TWIN},
            headers=keys.headers("viewer"),
        )
    ).json()["events"]
    assert [e["id"] for e in by_twin] == [event["id"]]
