"""GET /audit (paging, filters, tenancy), GET /audit/verify on an intact and a tampered chain, and
`opstwin audit verify` (exit codes, the first bad record printed)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import delete, func, update
from typer.testing import CliRunner

from opstwin.audit.chain import AuditEntry
from opstwin.audit.tables import audit_records
from opstwin.cli import app as cli
from opstwin.config import Settings
from opstwin.kit.db import Database
from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.conftest import Keys

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "src/opstwin/aiw/schemas/audit.v1.json").read_text()
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def entry(i: int, tenant_id: str = "default") -> AuditEntry:
    return AuditEntry(
        record_id=f"aud_{i:06d}",
        tenant_id=tenant_id,
        at=T0 + timedelta(seconds=i),
        actor_id="key_sup" if i % 2 else "system",
        role="supervisor" if i % 2 else "system",
        action="proposal.approve" if i % 2 else "proposal.score",
        resource=f"proposal/prp_{i // 4}",
        inputs={"content_hash": "sha256:" + f"{i:064x}"},
        policy={"policy_id": "default", "version": 1},
        decision="require_approval",
        outcome="approved" if i % 2 else "scored",
    )


async def seed(services: Services, n: int, tenant_id: str = "default") -> None:
    async with services.db.write() as tx:
        await services.audit.append(tx, [entry(i, tenant_id) for i in range(1, n + 1)])


async def get(client: httpx.AsyncClient, keys: Keys, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params, headers=keys.headers(Role.supervisor))
    assert response.status_code == 200, response.text
    return response.json()


async def test_pages_are_audit_v1_records_in_seq_order(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    await seed(services, 12)
    validator = Draft202012Validator(SCHEMA)
    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await get(client, keys, "/audit", after=after, limit=5)
        seen += page["items"]
        after = page["next_after"]
        if not page["has_more"]:
            break
    assert [r["seq"] for r in seen] == list(range(1, 13))
    assert page["head"] == {"seq": 12, "hash": seen[-1]["hash"]}
    assert after == 12
    for record in seen:
        assert list(validator.iter_errors(record)) == []
    assert seen[0]["actor"] == {
        "principal_id": "key_sup",
        "role": "supervisor",
        "on_behalf_of": None,
    }
    assert seen[1]["prev_hash"] == seen[0]["hash"]
    # Nothing new: an empty page that stays where it is.
    tail = await get(client, keys, "/audit", after=12)
    assert (tail["items"], tail["next_after"], tail["has_more"]) == ([], 12, False)


async def test_filters(client: httpx.AsyncClient, keys: Keys, services: Services) -> None:
    await seed(services, 12)

    async def seqs(**params: Any) -> list[int]:
        page = await get(client, keys, "/audit", **params)
        return [r["seq"] for r in page["items"]]

    assert await seqs(resource="proposal/prp_1") == [4, 5, 6, 7]
    assert await seqs(action="proposal.score") == [2, 4, 6, 8, 10, 12]
    assert await seqs(actor="system", resource="proposal/prp_1") == [4, 6]
    assert await seqs(action="proposal.score", after=6, limit=2) == [8, 10]
    assert await seqs(resource="proposal/none") == []


async def test_bad_parameters_are_problems(client: httpx.AsyncClient, keys: Keys) -> None:
    headers = keys.headers(Role.admin)
    unknown = await client.get("/audit", params={"afer": 3}, headers=headers)
    assert unknown.status_code == 400
    assert unknown.json()["errors"] == [
        {"detail": "not a parameter of this endpoint", "parameter": "afer"}
    ]
    for params in (
        {"after": -1},
        {"after": 2**63},
        {"limit": 0},
        {"limit": 1001},
        {"action": "Bad Action"},
    ):
        response = await client.get("/audit", params=params, headers=headers)
        assert response.status_code == 422, params
        assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/audit/verify", params={"x": 1}, headers=headers)).status_code == 400


@pytest.mark.parametrize("role", list(Role))
async def test_only_supervisors_and_admins_read_the_audit(
    client: httpx.AsyncClient, keys: Keys, role: Role
) -> None:
    allowed = role in {Role.supervisor, Role.admin}
    for path in ("/audit", "/audit/verify"):
        response = await client.get(path, headers=keys.headers(role))
        assert response.status_code == (200 if allowed else 403), (path, role)
        if not allowed:
            assert "audit:read" in response.json()["detail"]


async def test_tenants_see_only_their_own_chain(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    await seed(services, 3)
    await seed(services, 2, "other")
    other = keys.auth(keys.other_admin)
    page = (await client.get("/audit", headers=other)).json()
    assert [(r["tenant_id"], r["seq"]) for r in page["items"]] == [("other", 1), ("other", 2)]
    verified = (await client.get("/audit/verify", headers=other)).json()
    assert (verified["ok"], verified["checked"]) == (True, 2)


async def test_verify_reports_an_intact_and_a_tampered_chain(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    empty = await get(client, keys, "/audit/verify")
    assert empty == {
        "ok": True,
        "checked": 0,
        "head": {"seq": 0, "hash": "0" * 64},
        "first_break": None,
    }
    await seed(services, 9)
    intact = await get(client, keys, "/audit/verify")
    head = (await get(client, keys, "/audit"))["head"]
    assert intact == {"ok": True, "checked": 9, "head": head, "first_break": None}

    async with services.db.write() as tx:
        await tx.conn.execute(
            update(audit_records)
            .where(audit_records.c.tenant_id == "default", audit_records.c.seq == 6)
            .values(body=audit_records.c.body + " ")
        )
    broken = await get(client, keys, "/audit/verify")
    assert broken["ok"] is False
    assert broken["checked"] == 5
    assert broken["first_break"] == {
        "kind": "altered",
        "seq": 6,
        "position": 5,
        "detail": "record 6: its content no longer matches its hash",
    }
    assert broken["head"]["seq"] == 5


async def test_an_unparseable_record_is_a_problem_not_a_crash(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    await seed(services, 3)
    async with services.db.write() as tx:
        await tx.conn.execute(
            update(audit_records).where(audit_records.c.seq == 2).values(body="{broken")
        )
    response = await client.get("/audit", headers=keys.headers(Role.admin))
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "audit record 2 is unreadable" in response.json()["detail"]
    verified = await get(client, keys, "/audit/verify")
    assert verified["first_break"]["seq"] == 2


# --- the CLI --------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("OPSTWIN_DATABASE_URL", "OPSTWIN_DATABASE_SCHEMA_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPSTWIN_DATA_DIR", str(tmp_path))
    return Settings()


def _prepare(settings: Settings, n: int, tamper: int | None = None) -> None:
    """Append ``n`` records for tenant fab2 (and delete record ``tamper``) in the CLI's database."""
    from opstwin.aiw.schema_registry import SchemaRegistry
    from opstwin.audit.store import AuditLog
    from opstwin.kit.clock import SystemClock

    async def main() -> None:
        db = Database(settings.database_url)
        try:
            await db.migrate()
            audit = AuditLog(SchemaRegistry.from_package(), SystemClock())
            async with db.write() as tx:
                await audit.append(tx, [entry(i, "fab2") for i in range(1, n + 1)])
                if tamper is not None:
                    await tx.conn.execute(
                        delete(audit_records).where(
                            audit_records.c.tenant_id == "fab2", audit_records.c.seq == tamper
                        )
                    )
        finally:
            await db.dispose()

    asyncio.run(main())


def test_cli_verify_exit_codes_and_the_first_bad_record(cli_env: Settings) -> None:
    _prepare(cli_env, 20)
    intact = runner.invoke(cli, ["audit", "verify", "--tenant", "fab2"])
    assert intact.exit_code == 0, intact.output
    assert "audit chain of tenant fab2 intact: 20 records" in intact.stdout

    as_json = runner.invoke(cli, ["audit", "verify", "--tenant", "fab2", "--json"])
    assert as_json.exit_code == 0
    body = json.loads(as_json.stdout)
    assert (body["ok"], body["checked"], body["first_break"], body["record"]) == (
        True,
        20,
        None,
        None,
    )

    empty = runner.invoke(cli, ["audit", "verify"])  # tenant default: no records yet
    assert empty.exit_code == 0
    assert "0 records" in empty.stdout


def test_cli_verify_names_a_removed_record(cli_env: Settings) -> None:
    _prepare(cli_env, 20, tamper=13)
    broken = runner.invoke(cli, ["audit", "verify", "--tenant", "fab2", "--json"])
    assert broken.exit_code == 1
    body = json.loads(broken.stdout)
    assert body["first_break"]["kind"] == "removed"
    assert body["first_break"]["seq"] == 13
    assert body["record"] is None
    text = runner.invoke(cli, ["audit", "verify", "--tenant", "fab2"])
    assert text.exit_code == 1
    assert "is broken" in text.stdout
    assert "record 13" in text.stdout


def test_cli_verify_prints_an_altered_record(cli_env: Settings) -> None:
    _prepare(cli_env, 5)

    async def alter() -> None:
        db = Database(cli_env.database_url)
        try:
            async with db.write() as tx:
                await tx.conn.execute(
                    update(audit_records)
                    .where(audit_records.c.seq == 4)
                    .values(body=func.replace(audit_records.c.body, "scored", "rejected"))
                )
        finally:
            await db.dispose()

    asyncio.run(alter())
    broken = runner.invoke(cli, ["audit", "verify", "--tenant", "fab2", "--json"])
    assert broken.exit_code == 1
    body = json.loads(broken.stdout)
    assert body["first_break"]["seq"] == 4
    assert body["record"]["seq"] == 4
    assert '"outcome":"rejected"' in body["record"]["body"]
    text = runner.invoke(cli, ["audit", "verify", "--tenant", "fab2"])
    assert "record 4 as stored:" in text.stdout
