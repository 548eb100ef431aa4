"""The versioned action policy: GET /policy and its versions, PUT /policy (admins) with optimistic
concurrency, its change-log event and audit record, and the store's cache of parsed versions."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import text

from opstwin.kit import jsonutil
from opstwin.kit.errors import Conflict
from opstwin.policy.policy import Policy
from opstwin.policy.principals import Principal
from opstwin.policy.rbac import Role
from opstwin.policy.store import StoredPolicy
from opstwin.services import Services
from tests.conftest import Keys

ADMIN = Role.admin
STRICTER = {
    "description": "stricter bands after the March incident",
    "bands": {"auto_execute": 0.95, "require_approval": 0.8, "analyze": 0.6},
    "overrides": [
        {
            "match": {"asset_class": "lithography"},
            "cap": "require_approval",
            "reason": "never auto-execute on lithography",
        }
    ],
}


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


def builtin_document() -> dict[str, Any]:
    return Policy().model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"schema_uri"}
    )


async def put(
    client: httpx.AsyncClient, keys: Keys, document: Any, role: Role = ADMIN
) -> httpx.Response:
    return await client.put("/policy", json=document, headers=keys.headers(role))


async def get(client: httpx.AsyncClient, keys: Keys, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params, headers=keys.headers(Role.viewer))
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_tenant_without_a_policy_runs_on_the_builtin_defaults(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    current = await get(client, keys, "/policy")
    assert current == {
        "policy_id": "default",
        "version": 1,
        "builtin": True,
        "created_by": None,
        "created_at": None,
        "policy": builtin_document(),
    }
    assert await get(client, keys, "/policy/versions/1") == current
    listed = await get(client, keys, "/policy/versions")
    assert listed["active"] == 1
    assert [(v["version"], v["builtin"]) for v in listed["items"]] == [(1, True)]
    assert listed["next_before"] is None
    missing = await client.get("/policy/versions/2", headers=keys.headers(Role.viewer))
    assert missing.status_code == 404
    assert "GET /policy/versions" in missing.json()["detail"]
    for path in ("/policy/versions/0", f"/policy/versions/{2**31}", "/policy/versions/x"):
        response = await client.get(path, headers=keys.headers(Role.viewer))
        assert response.status_code == 422, path


async def test_put_stores_the_next_version_with_an_event_and_an_audit_record(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    response = await put(client, keys, STRICTER)
    assert response.status_code == 200, response.text
    stored = response.json()
    admin_key = keys.by_role[ADMIN].record.key_id
    assert (stored["version"], stored["builtin"], stored["created_by"]) == (2, False, admin_key)
    document = stored["policy"]
    assert document["version"] == 2
    assert document["bands"] == STRICTER["bands"]
    assert document["weights"] == builtin_document()["weights"]  # defaults spelt out
    assert (
        list(Draft202012Validator(services.schemas.get("policy.v1").document).iter_errors(document))
        == []
    )
    assert await get(client, keys, "/policy") == stored
    assert await get(client, keys, "/policy/versions/2") == stored
    assert (await get(client, keys, "/policy/versions/1"))["builtin"] is True

    # The change log: opstwin.policy.updated with the document as data.
    diff = await get(client, keys, "/diff", types="opstwin.policy.updated")
    [event] = diff["events"]
    assert event["subject"] == "policy/default"
    assert event["source"] == "/opstwin/policy"
    assert event["dataschema"] == "urn:opstwin:schema:policy.v1"
    assert (event["version"], event["previousversion"]) == (2, 1)
    assert event["data"] == document
    assert event["time"] == stored["created_at"]
    services.schemas.validate("event.v1", {k: v for k, v in event.items() if k != "cursor"})
    services.schemas.validate("policy.v1", event["data"])

    # The audit chain: policy.update naming the stored document by its hash.
    audit = (
        await client.get(
            "/audit", params={"action": "policy.update"}, headers=keys.headers(Role.supervisor)
        )
    ).json()
    [record] = audit["items"]
    canonical = jsonutil.canonical(document)
    assert record["inputs"] == {"document": "sha256:" + hashlib.sha256(canonical).hexdigest()}
    assert record["resource"] == "policy/default"
    assert record["policy"] == {"policy_id": "default", "version": 2}
    assert record["actor"] == {"principal_id": admin_key, "role": "admin", "on_behalf_of": None}
    assert record["outcome"] == "stored"
    assert record["at"] == stored["created_at"]
    listed = await get(client, keys, "/policy/versions")
    assert [v["version"] for v in listed["items"]] == [2, 1]
    assert listed["items"][0]["digest"] == record["inputs"]["document"]


async def test_versions_increment_and_page_newest_first(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    for k in range(4):
        body = {"version": k + 2, "approval_expiry_s": 600.0 + k}
        assert (await put(client, keys, body)).status_code == 200
    assert (await get(client, keys, "/policy"))["policy"]["approval_expiry_s"] == 603.0
    first = await get(client, keys, "/policy/versions", limit=2)
    assert first["active"] == 5
    assert [v["version"] for v in first["items"]] == [5, 4]
    second = await get(client, keys, "/policy/versions", limit=2, before=first["next_before"])
    assert [v["version"] for v in second["items"]] == [3, 2]
    assert second["next_before"] == 2
    last = await get(client, keys, "/policy/versions", limit=2, before=2)
    assert [(v["version"], v["builtin"]) for v in last["items"]] == [(1, True)]
    assert last["next_before"] is None


async def test_a_stale_version_is_409_naming_the_current_one(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    stale = await put(client, keys, {"version": 1})
    assert stale.status_code == 409
    assert stale.json()["current_version"] == 1
    assert "send version 2" in stale.json()["detail"]
    assert (await put(client, keys, {"version": 2})).status_code == 200
    again = await put(client, keys, {"version": 2})  # someone else got there first
    assert again.status_code == 409
    problem = again.json()
    assert problem["type"] == "urn:opstwin:problem:conflict"
    assert problem["current_version"] == 2
    assert "at version 2" in problem["detail"]
    assert (await put(client, keys, {"version": 4})).status_code == 409
    assert (await put(client, keys, {})).json()["version"] == 3


@pytest.mark.parametrize(
    ("document", "pointers"),
    [
        ({"bands": {"auto_execute": 1.5}}, ["/bands/auto_execute"]),
        ({"bands": {"auto_execute": 0.6, "require_approval": 0.8}}, ["/bands"]),
        ({"weights": {"historical_success": "0.5"}}, ["/weights/historical_success"]),
        ({"surprise": True}, ["/surprise"]),
        ({"overrides": [{"match": {}, "reason": "x"}]}, ["/overrides/0/match"]),
        ({"version": 0}, ["/version"]),
        ({"policy_id": "fab"}, ["/policy_id"]),
        ([1, 2], [""]),
    ],
    ids=str,
)
async def test_an_invalid_policy_is_422_with_pointers_and_changes_nothing(
    client: httpx.AsyncClient, keys: Keys, document: Any, pointers: list[str]
) -> None:
    response = await put(client, keys, document)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert [e["pointer"] for e in problem["errors"]] == pointers
    assert (await get(client, keys, "/policy"))["version"] == 1
    diff = await get(client, keys, "/diff", types="opstwin.policy.updated")
    assert diff["events"] == []


async def test_a_body_that_is_not_json_is_422(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await client.put(
        "/policy",
        content=b"{bands: 1",
        headers={**keys.headers(ADMIN), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [{"detail": "invalid JSON", "pointer": ""}]


@pytest.mark.parametrize("role", [Role.viewer, Role.agent, Role.executor, Role.supervisor])
async def test_only_admins_change_the_policy(
    client: httpx.AsyncClient, keys: Keys, role: Role
) -> None:
    response = await put(client, keys, STRICTER, role)
    assert response.status_code == 403
    assert "policies:write" in response.json()["detail"]
    assert (await get(client, keys, "/policy"))["version"] == 1


async def test_tenants_have_their_own_policies(client: httpx.AsyncClient, keys: Keys) -> None:
    other = keys.auth(keys.other_admin)
    response = await client.put("/policy", json=STRICTER, headers=other)
    assert response.json()["version"] == 2
    assert (await get(client, keys, "/policy"))["version"] == 1
    theirs = (await client.get("/policy", headers=keys.auth(keys.other_viewer))).json()
    assert theirs["policy"]["bands"] == STRICTER["bands"]


# --- the store: active policy and its cache -------------------------------------------------


def _admin(keys: Keys) -> Principal:
    record = keys.by_role[ADMIN].record
    return Principal(key_id=record.key_id, name=record.name, tenant_id="default", role=ADMIN)


async def _put_then_roll_back(services: Services, keys: Keys, document: dict[str, Any]) -> None:
    async with services.db.write() as tx:
        await services.policies.put(tx, "default", document, _admin(keys))
        raise Rollback


async def test_the_active_policy_follows_commits_and_is_parsed_once(
    services: Services, keys: Keys
) -> None:
    policies = services.policies
    async with services.db.read() as conn:
        before = await policies.active(conn, "default")
    assert before == Policy()

    # A rolled-back put is never served, and its version number is used again.
    with pytest.raises(Rollback):
        await _put_then_roll_back(services, keys, {"allow_ramp_split": True})
    async with services.db.read() as conn:
        assert (await policies.active(conn, "default")).version == 1

    async with services.db.write() as tx:
        stored = await policies.put(tx, "default", STRICTER, _admin(keys))
        # Inside the writing transaction the new version is already the active one.
        assert (await policies.active(tx.conn, "default")).version == 2
    assert stored.version == 2
    async with services.db.read() as conn:
        first = await policies.active(conn, "default")
        second = await policies.active(conn, "default")
    assert first.version == 2
    assert first.allow_ramp_split is False
    assert first.bands.auto_execute == 0.95
    assert first is second  # cached: the document is not parsed again
    assert first is stored.policy  # the committed put filled the cache


async def test_another_process_sees_a_new_version(services: Services, keys: Keys) -> None:
    """The active version is read from the database, so a put made elsewhere (another app
    process, the CLI) is in force at once; only parsing is cached."""
    from opstwin.aiw.changelog import ChangeLog
    from opstwin.audit.store import AuditLog
    from opstwin.kit.clock import SystemClock
    from opstwin.kit.ids import UlidSource
    from opstwin.policy.store import PolicyStore

    clock = SystemClock()
    ids = UlidSource(clock)
    elsewhere = PolicyStore(
        ChangeLog(services.db, services.schemas, clock, ids),
        AuditLog(services.schemas, clock),
        services.schemas,
        clock,
        ids,
    )
    async with services.db.read() as conn:
        assert (await services.policies.active(conn, "default")).version == 1
    async with services.db.write() as tx:
        await elsewhere.put(tx, "default", STRICTER, _admin(keys))
    async with services.db.read() as conn:
        assert (await services.policies.active(conn, "default")).version == 2


# SQLite runs one write transaction at a time: only PostgreSQL can put two at once.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_concurrent_puts_of_the_same_version_conflict(services: Services, keys: Keys) -> None:
    """Two admins store "the next version" at once (two connections): one wins, the other gets
    409 instead of a second version 2 or a server error."""
    admin = _admin(keys)
    results: list[StoredPolicy | Conflict] = []
    second_pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def second_writer() -> None:
        try:
            async with services.db.write() as tx:
                pid = await tx.conn.execute(text("SELECT pg_backend_pid()"))
                second_pid.set_result(int(pid.scalar_one()))
                results.append(await services.policies.put(tx, "default", {}, admin))
        except Conflict as exc:
            results.append(exc)

    async with services.db.write() as tx:
        results.append(await services.policies.put(tx, "default", STRICTER, admin))
        task = asyncio.create_task(second_writer())
        # Commit only once the second writer waits on our uncommitted version 2.
        async with asyncio.timeout(10):
            pid = await second_pid
            while not await _waits_on_a_lock(services, pid):
                await asyncio.sleep(0.01)
    async with asyncio.timeout(10):
        await task
    first, second = results
    assert isinstance(first, StoredPolicy)
    assert first.version == 2
    assert isinstance(second, Conflict)
    assert second.extensions == {"current_version": 2}
    async with services.db.read() as conn:
        versions, _ = await services.policies.versions(conn, "default")
    assert [v.version for v in versions] == [2, 1]


async def _waits_on_a_lock(services: Services, pid: int) -> bool:
    async with services.db.read() as conn:
        waiting = await conn.execute(
            text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        )
        return waiting.scalar_one_or_none() == "Lock"


def test_stored_documents_round_trip_through_json() -> None:
    policy = Policy.model_validate({**STRICTER, "version": 7})
    document = StoredPolicy("t", policy, created_by="k", created_at=None).document()
    assert "$schema" not in document
    assert Policy.model_validate_json(json.dumps(document)) == policy


def test_cli_policy_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from opstwin.cli import app as cli

    for name in ("OPSTWIN_DATABASE_URL", "OPSTWIN_DATABASE_SCHEMA_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPSTWIN_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    shown = runner.invoke(cli, ["policy", "show", "--tenant", "fab2"])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert (body["tenant_id"], body["version"], body["builtin"]) == ("fab2", 1, True)
    assert body["policy"] == builtin_document()
    missing = runner.invoke(cli, ["policy", "show", "--version", "3"])
    assert missing.exit_code == 2
    assert "no version 3" in missing.output
