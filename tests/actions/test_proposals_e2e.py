"""Proposals end to end against the simulated plant, on SQLite and PostgreSQL.

Decide → approve (or auto-approve) → execute on the plant → verify → succeed; a change that
verification refutes is rolled back to the before-value read back from the plant; a supervisor
rolls back a success by hand. Every transition is in /diff (in order) and in the audit chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from opstwin.config import Settings
from opstwin.plant.faults import FaultSpec
from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.actions.plant_fixtures import (
    ETCH,
    TWIN,
    RunningPlant,
    fast_actions,
    plant_fixture,
    wait_until,
)
from tests.conftest import Keys


@pytest.fixture
async def settings(db_settings: Settings) -> Settings:
    return fast_actions(db_settings)


@pytest.fixture
async def plant(services: Services) -> AsyncIterator[RunningPlant]:
    async for running in plant_fixture(services):
        yield running


async def put_policy(client: httpx.AsyncClient, keys: Keys, **fields: Any) -> None:
    document = {"verification_window_s": 1.5, **fields}
    response = await client.put("/policy", json=document, headers=keys.headers(Role.admin))
    assert response.status_code == 200, response.text


async def propose(
    client: httpx.AsyncClient, keys: Keys, value: float, role: Role = Role.agent, **extra: Any
) -> dict[str, Any]:
    body = {
        "twin_id": TWIN,
        "asset_id": ETCH,
        "setpoint": "esc_temp_sp",
        "value": value,
        "rationale": "re-centre the chuck temperature",
        **extra,
    }
    response = await client.post("/proposals", json=body, headers=keys.headers(role))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def reported(client: httpx.AsyncClient, keys: Keys, metric: str) -> Any:
    response = await client.get(f"/twins/{TWIN}/assets/{ETCH}", headers=keys.headers(Role.viewer))
    return response.json()["reported"].get(metric)


async def settle(client: httpx.AsyncClient, keys: Keys, services: Services) -> None:
    """Until the chuck has reported for the evidence window (data quality is complete)."""

    async def enough() -> bool:
        state = await reported(client, keys, "temp_c")
        return state is not None and (await services_window(services)) >= 20

    await wait_until(enough, what="two seconds of chuck telemetry")


async def services_window(services: Services) -> int:
    from opstwin.actions import repository as repo
    from opstwin.kit.clock import to_micros

    async with services.db.read() as conn:
        since = to_micros(services.clock.now()) - 2_000_000
        return len(await repo.quality_window(conn, "default", TWIN, ETCH, "temp_c", since))


async def wait_state(services: Services, proposal_id: str, *states: str) -> dict[str, Any]:
    proposal = await services.proposals.wait_for_state("default", proposal_id, states, 30.0)
    return proposal.to_dict()


async def proposal_events(client: httpx.AsyncClient, keys: Keys, proposal_id: str) -> list[str]:
    response = await client.get(
        "/diff",
        params={"types": "opstwin.proposal.*", "limit": 1000},
        headers=keys.headers(Role.viewer),
    )
    assert response.status_code == 200, response.text
    return [
        e["type"].removeprefix("opstwin.proposal.")
        for e in response.json()["events"]
        if e["data"].get("proposal_id") == proposal_id
    ]


async def audit_outcomes(client: httpx.AsyncClient, keys: Keys, proposal_id: str) -> list[str]:
    response = await client.get(
        "/audit",
        params={"resource": f"proposal/{proposal_id}", "limit": 1000},
        headers=keys.headers(Role.supervisor),
    )
    assert response.status_code == 200, response.text
    verify = await client.get("/audit/verify", headers=keys.headers(Role.supervisor))
    assert verify.json()["ok"] is True, verify.text
    return [r["outcome"] for r in response.json()["items"]]


async def test_a_hot_chuck_is_corrected_after_a_supervisor_approves(
    client: httpx.AsyncClient, keys: Keys, services: Services, plant: RunningPlant
) -> None:
    # The chuck runs 3 °C hot (a heater fault the setpoint can compensate).
    plant.plant.inject(FaultSpec(kind="offset", asset=ETCH, metric="temp_c", magnitude=3.0))
    await settle(client, keys, services)
    await put_policy(client, keys)  # default weights: no votes → at most approval

    created = await propose(client, keys, 57.0)
    assert created["state"] == "awaiting_approval", __import__("json").dumps(
        [created["confidence"], created["evidence"]]
    )
    assert created["decision"]["outcome"] == "require_approval"
    sim = created["evidence"]["simulation"]
    assert sim["p_improvement"] > 0.9, sim
    assert created["confidence"]["components"]["simulation_consistency"]["missing"] is False
    assert [g["guard"] for g in created["decision"]["guards"]]  # every guard recorded

    # The content hash binds the approval: a stale hash is refused, the agent cannot approve.
    stale = "sha256:" + "0" * 64
    refused = await client.post(
        f"/proposals/{created['proposal_id']}/approve",
        json={"content_hash": stale},
        headers=keys.headers(Role.supervisor),
    )
    assert refused.status_code == 409, refused.text
    forbidden = await client.post(
        f"/proposals/{created['proposal_id']}/approve",
        json={"content_hash": created["content_hash"]},
        headers=keys.headers(Role.agent),
    )
    assert forbidden.status_code == 403
    approved = await client.post(
        f"/proposals/{created['proposal_id']}/approve",
        json={"content_hash": created["content_hash"]},
        headers=keys.headers(Role.supervisor),
    )
    assert approved.status_code == 200, approved.text

    done = await wait_state(services, created["proposal_id"], "succeeded", "rolled_back", "failed")
    assert done["state"] == "succeeded", done
    assert plant.plant.applied(ETCH, "esc_temp_sp") == pytest.approx(57.0)

    detail = (
        await client.get(f"/proposals/{created['proposal_id']}", headers=keys.headers(Role.viewer))
    ).json()
    execution = detail["action"]["execution"]
    assert execution["before_value"] == pytest.approx(60.0)
    assert execution["before_source"] == "read_back"
    assert [w["value"] for w in execution["writes"]][-1] == pytest.approx(57.0)
    assert len(execution["writes"]) >= 2  # ramped: 3 °C at 20 °C/s, 0.1 s apart is 2 writes
    checks = execution["verification"]["checks"]
    assert checks[0]["check"] == "controlled_metric"
    assert checks[0]["ok"] is True
    assert 57.0 <= checks[0]["mean"] <= 63.0

    expected = [
        "proposed",
        "scored",
        "awaiting_approval",
        "approved",
        "executing",
        "verifying",
        "succeeded",
    ]
    assert await proposal_events(client, keys, created["proposal_id"]) == expected
    assert await audit_outcomes(client, keys, created["proposal_id"]) == expected

    # Desired state follows the action.
    twin = (await client.get(f"/twins/{TWIN}", headers=keys.headers(Role.viewer))).json()
    etch = next(a for a in twin["assets"] if a["asset_id"] == ETCH)
    assert etch["desired"]["esc_temp_sp"]["value"] == pytest.approx(57.0)
    actions = (await client.get("/actions", headers=keys.headers(Role.viewer))).json()
    assert [a["state"] for a in actions["actions"]] == ["succeeded"]

    # A supervisor rolls it back within the window: the plant returns to the before-value.
    rolled = await client.post(
        f"/proposals/{created['proposal_id']}/rollback",
        json={"reason": "chuck heater repaired"},
        headers=keys.headers(Role.supervisor),
    )
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["state"] == "rolled_back"
    assert plant.plant.applied(ETCH, "esc_temp_sp") == pytest.approx(60.0)
    again = await client.post(
        f"/proposals/{created['proposal_id']}/rollback",
        json={"reason": "twice"},
        headers=keys.headers(Role.supervisor),
    )
    assert again.status_code == 409
    assert again.json()["state"] == "rolled_back"


async def test_auto_execution_under_a_policy_that_trusts_the_simulation(
    client: httpx.AsyncClient, keys: Keys, services: Services, plant: RunningPlant
) -> None:
    plant.plant.inject(FaultSpec(kind="offset", asset=ETCH, metric="temp_c", magnitude=3.0))
    await settle(client, keys, services)
    weights = {
        "historical_success": 0.15,
        "data_quality": 0.25,
        "simulation_consistency": 0.6,
        "ai_consensus": 0.0,
    }
    await put_policy(client, keys, weights=weights)
    created = await propose(client, keys, 57.0)
    assert created["decision"]["outcome"] == "auto_execute", created["confidence"]
    assert created["state"] == "approved"
    assert created["approval"]["kind"] == "auto"
    done = await wait_state(services, created["proposal_id"], "succeeded", "rolled_back", "failed")
    assert done["state"] == "succeeded", done
    events = await proposal_events(client, keys, created["proposal_id"])
    assert events == ["proposed", "scored", "approved", "executing", "verifying", "succeeded"]
    # The platform started it, and the audit says so.
    response = await client.get(
        "/audit",
        params={"resource": f"proposal/{created['proposal_id']}"},
        headers=keys.headers(Role.supervisor),
    )
    starts = [r for r in response.json()["items"] if r["outcome"] == "executing"]
    assert starts[0]["actor"]["role"] == "system"


async def test_a_change_verification_refutes_is_rolled_back(
    client: httpx.AsyncClient, keys: Keys, services: Services, plant: RunningPlant
) -> None:
    # A commissioning policy that lets everything through: verification is the safety net.
    await settle(client, keys, services)
    await put_policy(
        client,
        keys,
        bands={"auto_execute": 0.0, "require_approval": 0.0, "analyze": 0.0},
    )
    created = await propose(client, keys, 65.0)  # 5 °C hot: outside the normal 57–63 °C
    assert created["state"] == "approved", created
    done = await wait_state(services, created["proposal_id"], "succeeded", "rolled_back", "failed")
    assert done["state"] == "rolled_back", done
    assert plant.plant.applied(ETCH, "esc_temp_sp") == pytest.approx(60.0)
    detail = (
        await client.get(f"/proposals/{created['proposal_id']}", headers=keys.headers(Role.viewer))
    ).json()
    execution = detail["action"]["execution"]
    assert execution["verification"]["ok"] is False
    assert "outside its normal range" in execution["rollback_reason"]
    assert execution["rollback_read_back"] == pytest.approx(60.0)
    assert detail["transitions"][-1]["reason"].startswith("verification failed")
    events = await proposal_events(client, keys, created["proposal_id"])
    assert events == ["proposed", "scored", "approved", "executing", "verifying", "rolled_back"]
    # The desired state is the restored value; the failure counts against the history.
    twin = (await client.get(f"/twins/{TWIN}", headers=keys.headers(Role.viewer))).json()
    etch = next(a for a in twin["assets"] if a["asset_id"] == ETCH)
    assert etch["desired"]["esc_temp_sp"]["value"] == pytest.approx(60.0)
    second = await propose(client, keys, 59.0)
    history = second["confidence"]["components"]["historical_success"]["provenance"]
    assert "n" in str(history)
    assert second["evidence"]["history"]["asset"] == {"successes": 0, "failures": 1}
