"""POST /events: caller-defined events, dedupe, Idempotency-Key, limits, error shapes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from opstwin.policy.rbac import Role
from tests.conftest import Keys


@pytest.fixture
def feed_overrides() -> dict[str, float | int]:
    return {"max_event_bytes": 4096}


def event(**overrides: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/plant/line1",
        "type": "ext.plant.note",
        "data": {"v": 1},
        **overrides,
    }


async def test_append_then_duplicate_is_acknowledged_not_stored_twice(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    headers = keys.headers(Role.agent)
    first = await client.post("/events", json=event(), headers=headers)
    assert first.status_code == 201
    again = await client.post("/events", json=event(data={"v": 2}), headers=headers)
    assert again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    events = (await client.get("/diff", headers=headers)).json()["events"]
    assert [e["data"] for e in events] == [{"v": 1}]


async def test_idempotency_key_replays_and_refuses_a_different_body(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    headers = {**keys.headers(Role.agent), "Idempotency-Key": "k-1"}
    first = await client.post("/events", json=event(id="a"), headers=headers)
    replay = await client.post("/events", json=event(id="a"), headers=headers)
    assert replay.status_code == first.status_code == 201
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    conflict = await client.post("/events", json=event(id="b"), headers=headers)
    assert conflict.status_code == 422
    assert conflict.json()["errors"][0]["header"] == "Idempotency-Key"


async def test_only_ext_types_are_accepted(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await client.post(
        "/events", json=event(type="opstwin.proposal.approved"), headers=keys.headers(Role.agent)
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:opstwin:problem:validation-failed"
    assert problem["errors"][0]["pointer"] == "/type"


async def test_bad_extension_attribute_points_at_it(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await client.post(
        "/events", json=event(**{"Bad-Name": "x"}), headers=keys.headers(Role.agent)
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"] == "/Bad-Name"
    nested = await client.post(
        "/events", json=event(traceinfo={"a": 1}), headers=keys.headers(Role.agent)
    )
    assert nested.status_code == 422
    assert nested.json()["errors"][0]["pointer"] == "/traceinfo"


async def test_missing_fields_and_bad_json_are_422_with_pointers(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    body = event()
    del body["source"]
    response = await client.post("/events", json=body, headers=keys.headers(Role.agent))
    assert response.status_code == 422
    assert {"detail": "Field required", "pointer": "/source"} in response.json()["errors"]
    broken = await client.post(
        "/events",
        content=b"{not json",
        headers={**keys.headers(Role.agent), "content-type": "application/json"},
    )
    assert broken.status_code == 422


async def test_too_large_is_413_with_the_limit(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await client.post(
        "/events", json=event(data="x" * 5000), headers=keys.headers(Role.agent)
    )
    assert response.status_code == 413
    assert response.json()["limit_bytes"] == 4096


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await client.post("/diff", headers=keys.headers(Role.admin))
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:opstwin:problem:method-not-allowed"
