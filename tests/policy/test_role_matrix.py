"""Every endpoint × every role (and no key): the status each gets, and tenant isolation."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest

from opstwin.policy.principals import IssuedKey
from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.actions import role_cases as proposal_cases
from tests.conftest import Keys

ROLES = [None, *Role]
counter = itertools.count()


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # the route template
    minimum: Role | None  # None: public
    ok: int  # status for an allowed caller
    call: Callable[[httpx.AsyncClient, dict[str, str], Services, Keys], Awaitable[httpx.Response]]
    roles: frozenset[Role] | None = None  # allowed roles when not "minimum and above"


async def _revoke_fresh(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, _keys: Keys
) -> httpx.Response:
    async with services.db.write() as tx:
        victim = await services.keys.create(tx.conn, name="victim", role=Role.viewer)
    return await client.delete(f"/keys/{victim.record.key_id}", headers=headers)


def _event() -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"rbac-{next(counter)}",
        "source": "/rbac",
        "type": "ext.rbac",
        "data": {},
    }


def _sim_run() -> dict[str, object]:
    return {
        "model": {"inputs": {"x": {"dist": "uniform", "low": 0, "high": 1}}, "outputs": {"y": "x"}},
        "samples": 100,
        "seed": next(counter),
    }


async def _get_fresh_sim_run(
    client: httpx.AsyncClient, headers: dict[str, str], _services: Services, keys: Keys
) -> httpx.Response:
    created = await client.post("/sim/run", json=_sim_run(), headers=keys.headers(Role.agent))
    return await client.get(f"/sim/runs/{created.json()['sim_id']}", headers=headers)


CASES = [
    Case(
        "GET",
        "/.well-known/aiw-manifest.json",
        None,
        200,
        lambda c, h, s, k: c.get("/.well-known/aiw-manifest.json", headers=h),
    ),
    Case("GET", "/schemas", None, 200, lambda c, h, s, k: c.get("/schemas", headers=h)),
    Case(
        "GET",
        "/schemas/{name}",
        None,
        200,
        lambda c, h, s, k: c.get("/schemas/event.v1", headers=h),
    ),
    Case("GET", "/health", None, 200, lambda c, h, s, k: c.get("/health", headers=h)),
    Case("GET", "/ready", None, 200, lambda c, h, s, k: c.get("/ready", headers=h)),
    Case("GET", "/metrics", Role.viewer, 200, lambda c, h, s, k: c.get("/metrics", headers=h)),
    Case("GET", "/diff", Role.viewer, 200, lambda c, h, s, k: c.get("/diff", headers=h)),
    # An authorised caller gets past authentication to the cursor check (400) without
    # opening a stream; the streaming itself is tested against a live server.
    Case(
        "GET",
        "/subscribe",
        Role.viewer,
        400,
        lambda c, h, s, k: c.get("/subscribe", params={"since": "x"}, headers=h),
    ),
    Case(
        "POST",
        "/events",
        Role.agent,
        201,
        lambda c, h, s, k: c.post("/events", json=_event(), headers=h),
    ),
    Case("GET", "/whoami", Role.viewer, 200, lambda c, h, s, k: c.get("/whoami", headers=h)),
    Case(
        "POST",
        "/keys",
        Role.admin,
        201,
        lambda c, h, s, k: c.post("/keys", json={"name": "n", "role": "viewer"}, headers=h),
    ),
    Case("GET", "/keys", Role.admin, 200, lambda c, h, s, k: c.get("/keys", headers=h)),
    Case("DELETE", "/keys/{key_id}", Role.admin, 204, _revoke_fresh),
    Case(
        "POST",
        "/sim/run",
        Role.agent,
        201,
        lambda c, h, s, k: c.post("/sim/run", json=_sim_run(), headers=h),
    ),
    Case("GET", "/sim/runs", Role.viewer, 200, lambda c, h, s, k: c.get("/sim/runs", headers=h)),
    Case("GET", "/sim/runs/{sim_id}", Role.viewer, 200, _get_fresh_sim_run),
    Case(
        "GET",
        "/telemetry/dead-letters",
        Role.viewer,
        200,
        lambda c, h, s, k: c.get("/telemetry/dead-letters", headers=h),
    ),
    Case("GET", "/anomalies", Role.viewer, 200, lambda c, h, s, k: c.get("/anomalies", headers=h)),
]


def _twin(twin_id: str) -> dict[str, object]:
    return {
        "id": twin_id,
        "assets": [{"id": "a1", "metrics": {"temp_c": {"unit": "degC"}}}],
    }


async def _with_twin(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, path: str
) -> httpx.Response:
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", {"twins": [_twin("rbac_twin")]})
    return await client.get(path, headers=headers)


# Twins and telemetry (issue 3).
CASES += [
    Case(
        "PUT",
        "/twins/{twin_id}",
        Role.admin,
        201,
        # A fresh id per call (a bare twin takes the path's id): allowed calls create (201).
        lambda c, h, s, k: c.put(
            f"/twins/t{next(counter)}", json={"assets": _twin("x")["assets"]}, headers=h
        ),
    ),
    Case("GET", "/twins", Role.viewer, 200, lambda c, h, s, k: c.get("/twins", headers=h)),
    Case(
        "GET",
        "/twins/{twin_id}",
        Role.viewer,
        200,
        lambda c, h, s, k: _with_twin(c, h, s, "/twins/rbac_twin"),
    ),
    Case(
        "GET",
        "/twins/{twin_id}/assets/{asset_id}",
        Role.viewer,
        200,
        lambda c, h, s, k: _with_twin(c, h, s, "/twins/rbac_twin/assets/a1"),
    ),
    Case(
        "POST",
        "/telemetry/ingest",
        Role.agent,
        200,
        lambda c, h, s, k: c.post("/telemetry/ingest", json=[], headers=h),
    ),
    Case(
        "GET",
        "/telemetry/query",
        Role.viewer,
        200,
        lambda c, h, s, k: _with_twin(c, h, s, "/telemetry/query?twin_id=rbac_twin&asset_id=a1"),
    ),
    Case(
        "GET",
        "/telemetry/aggregate",
        Role.viewer,
        200,
        lambda c, h, s, k: _with_twin(
            c,
            h,
            s,
            "/telemetry/aggregate?twin_id=rbac_twin&asset_id=a1&bucket=1h"
            "&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
        ),
    ),
]


async def _recommend(
    client: httpx.AsyncClient, headers: dict[str, str], services: Services, _keys: Keys
) -> httpx.Response:
    setpoint = {
        "unit": "degC",
        "bounds": {"low": 0.0, "high": 10.0},
        "max_step": 1.0,
        "actuator": "simulated_plant",
        "default": 5.0,
    }
    twin = {
        "id": "rbac_rec",
        "assets": [{"id": "a1", "setpoints": {"sp": setpoint}}],
        "process_models": [
            {
                "id": "m",
                "inputs": {"s": {"asset": "a1", "setpoint": "sp"}},
                "outputs": {"y": {"expression": "s"}},
            }
        ],
    }
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", {"twins": [twin]})
    body = {
        "twin_id": "rbac_rec",
        "process_model": "m",
        "asset_id": "a1",
        "setpoint": "sp",
        "candidates": [4.0, 6.0],
        "objective": {"output": "y"},
        "samples": 100,
        "seed": next(counter),
    }
    return await client.post("/sim/recommend", json=body, headers=headers)


# Setpoint recommendations (issue 4).
CASES += [Case("POST", "/sim/recommend", Role.agent, 201, _recommend)]

# Proposals and actions (issue 5): every call works on a proposal of its own.
CASES += [
    Case("POST", "/proposals", Role.agent, 201, proposal_cases.create),
    Case("GET", "/proposals", Role.viewer, 200, lambda c, h, s, k: c.get("/proposals", headers=h)),
    Case("GET", "/proposals/{proposal_id}", Role.viewer, 200, proposal_cases.get_one),
    Case("POST", "/proposals/{proposal_id}/votes", Role.agent, 201, proposal_cases.vote),
    Case("POST", "/proposals/{proposal_id}/rescore", Role.agent, 200, proposal_cases.rescore),
    Case("POST", "/proposals/{proposal_id}/approve", Role.supervisor, 200, proposal_cases.approve),
    Case("POST", "/proposals/{proposal_id}/reject", Role.supervisor, 200, proposal_cases.reject),
    Case("POST", "/proposals/{proposal_id}/execute", Role.executor, 202, proposal_cases.execute),
    # Allowed callers reach the workflow, which refuses a proposal that has not succeeded.
    Case(
        "POST",
        "/proposals/{proposal_id}/rollback",
        Role.executor,
        409,
        proposal_cases.rollback,
        roles=frozenset({Role.executor, Role.supervisor, Role.admin}),
    ),
    Case("GET", "/actions", Role.viewer, 200, lambda c, h, s, k: c.get("/actions", headers=h)),
    Case(
        "PUT",
        "/twins/{twin_id}/assets/{asset_id}/control",
        Role.supervisor,
        200,
        proposal_cases.control,
    ),
]

# The audit chain and the versioned action policy (issue 5).
CASES += [
    Case("GET", "/audit", Role.supervisor, 200, lambda c, h, s, k: c.get("/audit", headers=h)),
    Case(
        "GET",
        "/audit/verify",
        Role.supervisor,
        200,
        lambda c, h, s, k: c.get("/audit/verify", headers=h),
    ),
    Case("GET", "/policy", Role.viewer, 200, lambda c, h, s, k: c.get("/policy", headers=h)),
    Case(
        "GET",
        "/policy/versions",
        Role.viewer,
        200,
        lambda c, h, s, k: c.get("/policy/versions", headers=h),
    ),
    Case(
        "GET",
        "/policy/versions/{version}",
        Role.viewer,
        200,
        lambda c, h, s, k: c.get("/policy/versions/1", headers=h),
    ),
    # No `version` in the body: each allowed call stores the next version.
    Case(
        "PUT", "/policy", Role.admin, 200, lambda c, h, s, k: c.put("/policy", json={}, headers=h)
    ),
]

ALLOWED: dict[Role, set[Role]] = {  # minimum role → roles that satisfy it
    Role.viewer: set(Role),
    Role.agent: {Role.agent, Role.executor, Role.supervisor, Role.admin},
    Role.executor: {Role.executor, Role.admin},
    Role.supervisor: {Role.supervisor, Role.admin},
    Role.admin: {Role.admin},
}


def allowed(case: Case) -> set[Role]:
    assert case.minimum is not None
    return set(case.roles) if case.roles is not None else ALLOWED[case.minimum]


def expected(case: Case, role: Role | None) -> int:
    if case.minimum is None:
        return case.ok
    if role is None:
        return 401
    return case.ok if role in allowed(case) else 403


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.path}")
async def test_each_role_gets_the_documented_status(
    client: httpx.AsyncClient, services: Services, keys: Keys, case: Case
) -> None:
    got = {}
    for role in ROLES:
        headers = {} if role is None else keys.headers(role)
        response = await case.call(client, headers, services, keys)
        got[role] = response.status_code
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
    assert got == {role: expected(case, role) for role in ROLES}


async def test_matrix_covers_every_endpoint_and_agrees_with_the_manifest(
    client: httpx.AsyncClient,
) -> None:
    manifest = (await client.get("/.well-known/aiw-manifest.json")).json()
    published = {(e["method"], e["path"]): e for e in manifest["endpoints"]}
    tested = {(c.method, c.path): c for c in CASES}
    assert set(published) == set(tested), "an endpoint was added without a row in the role matrix"
    for key, case in tested.items():
        entry = published[key]
        assert entry["public"] is (case.minimum is None)
        if case.minimum is not None:
            assert set(entry["roles"]) == {r.value for r in allowed(case)}


async def test_bad_and_revoked_and_expired_keys_are_401(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    assert (
        await client.get("/whoami", headers={"Authorization": "Bearer nonsense"})
    ).status_code == 401
    forged = keys.by_role[Role.admin].token[:-4] + "AAAA"
    assert (
        await client.get("/whoami", headers={"Authorization": f"Bearer {forged}"})
    ).status_code == 401
    victim: IssuedKey
    async with services.db.write() as tx:
        victim = await services.keys.create(tx.conn, name="short-lived", role=Role.viewer)
        await services.keys.revoke(tx.conn, victim.record.key_id)
    response = await client.get("/whoami", headers=keys.auth(victim))
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


async def test_whoami_reports_the_principal_and_permissions(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    body = (await client.get("/whoami", headers=keys.headers(Role.supervisor))).json()
    assert body["role"] == "supervisor"
    assert body["tenant_id"] == "default"
    assert "proposals:approve" in body["permissions"]
    assert "actions:execute" not in body["permissions"]
    assert body["key_id"] == keys.by_role[Role.supervisor].record.key_id


async def test_admins_manage_only_their_own_tenants_keys(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    other = keys.auth(keys.other_admin)
    listed = (await client.get("/keys", headers=other)).json()
    assert {k["tenant_id"] for k in listed} == {"other"}
    target = keys.by_role[Role.viewer].record.key_id
    response = await client.delete(f"/keys/{target}", headers=other)
    assert response.status_code == 404
    assert (await client.get("/whoami", headers=keys.headers(Role.viewer))).status_code == 200
    created = (
        await client.post("/keys", json={"name": "x", "role": "agent"}, headers=other)
    ).json()
    assert created["tenant_id"] == "other"
    assert created["token"].startswith("otk_")
