"""Calls for the role matrix (tests/policy/test_role_matrix.py) on proposal endpoints.

Each call makes the proposal it needs with a key of its own, so every role gets a fresh one in
the right state. The twin has no process model (the simulation component is missing) and no
telemetry, so the confidence total is 0.5; a policy override of its asset's bands turns that
into ``require_approval``.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.conftest import Keys

_counter = itertools.count()
TWIN = "rbac_prop"


async def _twin(services: Services, twin_id: str = TWIN) -> str:
    setpoint = {
        "unit": "degC",
        "bounds": {"low": 0.0, "high": 10.0},
        "max_step": 5.0,
        "actuator": "simulated_plant",
        "default": 5.0,
    }
    twin = {"id": twin_id, "assets": [{"id": "a1", "setpoints": {"sp": setpoint}}]}
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", {"twins": [twin]})
    return twin_id


async def _proposal(
    client: httpx.AsyncClient, services: Services, keys: Keys, *, approval: bool
) -> dict[str, Any]:
    # A twin of its own: an approved proposal elsewhere is not "in flight" on this asset.
    twin_id = await _twin(services, f"{TWIN}_{next(_counter)}")
    if approval:
        policy = {
            "overrides": [
                {
                    "match": {"asset_id": "a1"},
                    "bands": {"auto_execute": 0.95, "require_approval": 0.4, "analyze": 0.3},
                    "reason": "role matrix: decide by approval",
                }
            ]
        }
        put = await client.put("/policy", json=policy, headers=keys.headers(Role.admin))
        assert put.status_code == 200, put.text
    async with services.db.write() as tx:
        proposer = await services.keys.create(
            tx.conn, name=f"proposer-{next(_counter)}", role=Role.agent
        )
    body = {
        "twin_id": twin_id,
        "asset_id": "a1",
        "setpoint": "sp",
        "value": 6.0,
        "rationale": "role matrix",
    }
    response = await client.post("/proposals", json=body, headers=keys.auth(proposer))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    if approval:
        assert created["state"] == "awaiting_approval", created
        reset = await client.put("/policy", json={}, headers=keys.headers(Role.admin))
        assert reset.status_code == 200, reset.text
    else:
        assert created["state"] == "needs_analysis", created
    return created


async def create(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, _keys: Keys
) -> httpx.Response:
    await _twin(services)
    body = {"twin_id": TWIN, "asset_id": "a1", "setpoint": "sp", "value": 6.0, "rationale": "r"}
    return await client.post("/proposals", json=body, headers=headers)


async def get_one(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, keys: Keys
) -> httpx.Response:
    created = await _proposal(client, services, keys, approval=False)
    return await client.get(f"/proposals/{created['proposal_id']}", headers=headers)


async def vote(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, keys: Keys
) -> httpx.Response:
    created = await _proposal(client, services, keys, approval=True)
    body = {"approve": True, "confidence": 0.8, "rationale": "looks right"}
    return await client.post(
        f"/proposals/{created['proposal_id']}/votes", json=body, headers=headers
    )


async def rescore(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, keys: Keys
) -> httpx.Response:
    created = await _proposal(client, services, keys, approval=False)
    return await client.post(f"/proposals/{created['proposal_id']}/rescore", headers=headers)


async def approve(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, keys: Keys
) -> httpx.Response:
    created = await _proposal(client, services, keys, approval=True)
    body = {"content_hash": created["content_hash"], "execute": False}
    return await client.post(
        f"/proposals/{created['proposal_id']}/approve", json=body, headers=headers
    )


async def reject(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, keys: Keys
) -> httpx.Response:
    created = await _proposal(client, services, keys, approval=True)
    return await client.post(
        f"/proposals/{created['proposal_id']}/reject", json={"reason": "no"}, headers=headers
    )


async def execute(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, keys: Keys
) -> httpx.Response:
    created = await _proposal(client, services, keys, approval=True)
    approved = await client.post(
        f"/proposals/{created['proposal_id']}/approve",
        json={"content_hash": created["content_hash"], "execute": False},
        headers=keys.headers(Role.supervisor),
    )
    assert approved.status_code == 200, approved.text
    return await client.post(f"/proposals/{created['proposal_id']}/execute", headers=headers)


async def rollback(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, keys: Keys
) -> httpx.Response:
    created = await _proposal(client, services, keys, approval=False)
    return await client.post(
        f"/proposals/{created['proposal_id']}/rollback", json={"reason": "r"}, headers=headers
    )


async def control(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, _keys: Keys
) -> httpx.Response:
    await _twin(services)
    return await client.put(
        f"/twins/{TWIN}/assets/a1/control",
        json={"locked": True, "reason": "maintenance"},
        headers=headers,
    )
