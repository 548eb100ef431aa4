"""AuditLog on SQLite and PostgreSQL: appends commit or vanish with their transaction, concurrent
appenders build one chain, tenants are independent, and tampering done directly in the database
is detected with the first bad record named (whatever the verification chunk size)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import delete, func, insert, select, text, update

import opstwin.audit.store
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.audit.chain import (
    GENESIS_HASH,
    AuditEntry,
    ChainHead,
    SealedRecord,
    record_hash,
    verify_chain,
)
from opstwin.audit.store import AuditFilter, AuditLog
from opstwin.audit.tables import audit_heads, audit_records
from opstwin.config import Settings
from opstwin.kit.clock import ManualClock
from opstwin.kit.db import Database
from opstwin.kit.errors import OpsTwinError

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "src/opstwin/aiw/schemas/audit.v1.json").read_text()
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 7  # small, so tampering lands on chunk boundaries too
N = 25


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


@pytest.fixture(scope="module")
def schemas() -> SchemaRegistry:
    return SchemaRegistry.from_package()


@pytest.fixture
async def db(db_settings: Settings) -> AsyncIterator[Database]:
    database = Database(db_settings.database_url, schema_name=db_settings.database.schema_name)
    await database.migrate()
    yield database
    await database.dispose()


@pytest.fixture
def audit(schemas: SchemaRegistry) -> AuditLog:
    return AuditLog(schemas, ManualClock(T0), verify_chunk=CHUNK)


def entry(i: int, tenant_id: str = "default", **changes: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "record_id": f"aud_{tenant_id}_{i:06d}",
        "tenant_id": tenant_id,
        "at": T0 + timedelta(seconds=i),
        "actor_id": "key_sup" if i % 2 else "system",
        "role": "supervisor" if i % 2 else "system",
        "action": "proposal.approve" if i % 2 else "proposal.score",
        "resource": f"proposal/prp_{i // 3}",
        "inputs": {"content_hash": "sha256:" + f"{i:064x}"},
        "policy": {"policy_id": "default", "version": 1},
        "decision": "require_approval",
        "outcome": "approved" if i % 2 else "scored",
        "reason": "ok" if i % 5 == 0 else None,
    }
    fields.update(changes)
    return AuditEntry(**fields)


async def seed(db: Database, audit: AuditLog, n: int = N, tenant_id: str = "default") -> None:
    async with db.write() as tx:
        await audit.append(tx, [entry(i, tenant_id) for i in range(1, n + 1)])


async def append(db: Database, audit: AuditLog, entries: list[AuditEntry]) -> None:
    async with db.write() as tx:
        await audit.append(tx, entries)


async def append_then_roll_back(db: Database, audit: AuditLog, entries: list[AuditEntry]) -> None:
    async with db.write() as tx:
        await audit.append(tx, entries)
        raise Rollback


async def stored(db: Database, tenant_id: str = "default") -> list[SealedRecord]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(
                audit_records.c.seq,
                audit_records.c.prev_hash,
                audit_records.c.hash,
                audit_records.c.body,
            )
            .where(audit_records.c.tenant_id == tenant_id)
            .order_by(audit_records.c.seq)
        )
        return [SealedRecord(int(r[0]), r[1], r[2], r[3].encode()) for r in rows]


async def verify(db: Database, audit: AuditLog, tenant_id: str = "default") -> Any:
    async with db.snapshot() as conn:
        return await audit.verify(conn, tenant_id)


# --- appending ------------------------------------------------------------------------------


async def test_append_seals_stores_and_verifies(db: Database, audit: AuditLog) -> None:
    async with db.write() as tx:
        first = await audit.append(tx, [entry(1), entry(2)])
        second = await audit.append(tx, [entry(3)])
    assert [r.seq for r in first + second] == [1, 2, 3]
    assert first[0].prev_hash == GENESIS_HASH
    assert second[0].prev_hash == first[1].hash
    assert await stored(db) == first + second
    async with db.read() as conn:
        assert await audit.head(conn, "default") == ChainHead(3, second[0].hash)
        assert await audit.record(conn, "default", 2) == first[1]
        assert await audit.record(conn, "default", 4) is None
    result = await verify(db, audit)
    assert result.to_dict() == {
        "ok": True,
        "checked": 3,
        "head": {"seq": 3, "hash": second[0].hash},
        "first_break": None,
    }
    validator = Draft202012Validator(SCHEMA)
    for record in first + second:
        assert list(validator.iter_errors(record.to_dict())) == []


async def test_empty_chain_verifies(db: Database, audit: AuditLog) -> None:
    result = await verify(db, audit)
    assert result.ok
    assert result.checked == 0
    assert result.head == ChainHead.genesis()
    async with db.write() as tx:
        assert await audit.append(tx, []) == []


async def test_a_rolled_back_append_leaves_nothing(db: Database, audit: AuditLog) -> None:
    with pytest.raises(Rollback):
        await append_then_roll_back(db, audit, [entry(1), entry(2)])
    async with db.read() as conn:
        assert await audit.head(conn, "default") == ChainHead.genesis()
        count = await conn.execute(select(func.count()).select_from(audit_records))
        assert count.scalar_one() == 0
    await seed(db, audit, 3)
    await seed(db, audit, 2)  # a second transaction continues the chain
    with pytest.raises(Rollback):
        await append_then_roll_back(db, audit, [entry(99)])
    records = await stored(db)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert (await verify(db, audit)).ok


async def test_an_invalid_entry_is_refused_before_anything_is_stored(
    db: Database, audit: AuditLog
) -> None:
    with pytest.raises(OpsTwinError, match=r"does not match audit\.v1") as caught:
        await append(db, audit, [entry(1), entry(2, action="Not An Action")])
    assert "/action" in caught.value.detail
    with pytest.raises(OpsTwinError, match="/inputs/content_hash"):
        await append(db, audit, [entry(1, inputs={"content_hash": "md5:abc"})])
    with pytest.raises(OpsTwinError, match="at most 40 characters"):
        await append(db, audit, [entry(1, record_id="aud_" + "x" * 40)])
    assert await stored(db) == []


async def test_concurrent_appenders_build_one_unbroken_chain(
    db: Database, audit: AuditLog, backend: str
) -> None:
    writers, per_writer = 8, 6
    # On PostgreSQL every writer opens its transaction first (a connection each), then all
    # append at once — the first appends race to create the tenant's head row.
    barrier = asyncio.Barrier(writers) if backend == "postgresql" else None
    connections: set[int] = set()

    async def writer(w: int) -> None:
        for k in range(per_writer):
            async with db.write() as tx:
                if backend == "postgresql":
                    pid = await tx.conn.execute(text("SELECT pg_backend_pid()"))
                    connections.add(int(pid.scalar_one()))
                if barrier is not None and k == 0:
                    await barrier.wait()
                i = w * 100 + k
                await audit.append(tx, [entry(i), entry(i + 50)])

    async with asyncio.timeout(60):
        await asyncio.gather(*(writer(w) for w in range(writers)))
    records = await stored(db)
    total = writers * per_writer * 2
    assert [r.seq for r in records] == list(range(1, total + 1))
    ids = {json.loads(r.body)["record_id"] for r in records}
    assert len(ids) == total
    result = await verify(db, audit)
    assert result.ok, result.to_dict()
    assert result.checked == total
    if backend == "postgresql":
        assert len(connections) == writers


async def test_tenants_have_independent_chains(db: Database, audit: AuditLog) -> None:
    async with db.write() as tx:
        mixed = await audit.append(
            tx, [entry(1, "tenant-b"), entry(1, "tenant-a"), entry(2, "tenant-b")]
        )
    assert [(json.loads(r.body)["tenant_id"], r.seq) for r in mixed] == [
        ("tenant-b", 1),
        ("tenant-a", 1),
        ("tenant-b", 2),
    ]
    await seed(db, audit, 9, "tenant-a")
    assert [r.seq for r in await stored(db, "tenant-a")] == list(range(1, 11))
    assert [r.seq for r in await stored(db, "tenant-b")] == [1, 2]
    async with db.write() as tx:  # tamper with tenant a only
        await tx.conn.execute(
            update(audit_records)
            .where(audit_records.c.tenant_id == "tenant-a", audit_records.c.seq == 4)
            .values(body=func.replace(audit_records.c.body, '"outcome":"', '"outcome":"re'))
        )
    broken = await verify(db, audit, "tenant-a")
    assert broken.first_break is not None
    assert broken.first_break.seq == 4
    assert (await verify(db, audit, "tenant-b")).ok
    assert (await verify(db, audit, "nobody")).ok


# --- tampering ------------------------------------------------------------------------------


async def _edit_body(db: Database, seq: int, rehash: bool = False) -> None:
    async with db.write() as tx:
        row = (
            await tx.conn.execute(
                select(audit_records.c.body, audit_records.c.prev_hash).where(
                    audit_records.c.tenant_id == "default", audit_records.c.seq == seq
                )
            )
        ).one()
        content = json.loads(row.body)
        content["outcome"] = "rejected"
        body = json.dumps(content, sort_keys=True, separators=(",", ":"))
        values: dict[str, Any] = {"body": body}
        if rehash:
            values["hash"] = record_hash(seq, row.prev_hash, body.encode())
        await tx.conn.execute(
            update(audit_records)
            .where(audit_records.c.tenant_id == "default", audit_records.c.seq == seq)
            .values(**values)
        )


async def _delete(db: Database, *seqs: int) -> None:
    async with db.write() as tx:
        await tx.conn.execute(
            delete(audit_records).where(
                audit_records.c.tenant_id == "default", audit_records.c.seq.in_(seqs)
            )
        )


async def _swap(db: Database, a: int, b: int) -> None:
    async with db.write() as tx:
        for old, new in ((a, -1), (b, a), (-1, b)):
            await tx.conn.execute(
                update(audit_records)
                .where(audit_records.c.tenant_id == "default", audit_records.c.seq == old)
                .values(seq=new)
            )


async def _append_unanchored(db: Database) -> None:
    """A well-chained record after the last one, without moving the anchor."""
    last = (await stored(db))[-1]
    body = json.dumps({"forged": True}).encode()
    async with db.write() as tx:
        await tx.conn.execute(
            insert(audit_records).values(
                tenant_id="default",
                seq=last.seq + 1,
                record_id="aud_forged",
                prev_hash=last.hash,
                hash=record_hash(last.seq + 1, last.hash, body),
                body=body.decode(),
                at_us=0,
            )
        )


async def _drop_head(db: Database) -> None:
    async with db.write() as tx:
        await tx.conn.execute(delete(audit_heads).where(audit_heads.c.tenant_id == "default"))


TAMPERING = {
    # name: (tampering, expected (kind, first bad seq))
    "edited body": (lambda db: _edit_body(db, 5), ("altered", 5)),
    "edited body, first of a chunk": (lambda db: _edit_body(db, CHUNK + 1), ("altered", 8)),
    "edited first record": (lambda db: _edit_body(db, 1), ("altered", 1)),
    "edited and re-hashed": (lambda db: _edit_body(db, 10, rehash=True), ("altered", 10)),
    "edited and re-hashed, last of a chunk": (
        lambda db: _edit_body(db, CHUNK, rehash=True),
        ("altered", CHUNK),
    ),
    "edited and re-hashed, last record": (
        lambda db: _edit_body(db, N, rehash=True),
        ("altered", N),
    ),
    "removed in the middle": (lambda db: _delete(db, 12), ("removed", 12)),
    "removed across a chunk boundary": (lambda db: _delete(db, 7, 8, 9), ("removed", 7)),
    "swapped seq of two records": (lambda db: _swap(db, 9, 16), ("reordered", 9)),
    "swapped neighbours": (lambda db: _swap(db, 3, 4), ("reordered", 3)),
    "truncated tail": (lambda db: _delete(db, 23, 24, 25), ("truncated", 23)),
    "truncated at a chunk boundary": (
        lambda db: _delete(db, *range(CHUNK * 3 + 1, N + 1)),
        ("truncated", CHUNK * 3 + 1),
    ),
    "record beyond the anchor": (_append_unanchored, ("unanchored", N + 1)),
    "anchor removed": (_drop_head, ("unanchored", 1)),
}


@pytest.mark.parametrize("case", list(TAMPERING), ids=str)
@pytest.mark.parametrize("chunk", [1, CHUNK, 10_000], ids=lambda c: f"chunk{c}")
async def test_tampering_is_detected_and_the_first_bad_record_named(
    db: Database, schemas: SchemaRegistry, case: str, chunk: int
) -> None:
    audit = AuditLog(schemas, ManualClock(T0), verify_chunk=chunk)
    await seed(db, audit)
    assert (await verify(db, audit)).ok
    tamper, (kind, seq) = TAMPERING[case]
    await tamper(db)

    result = await verify(db, audit)
    assert result.first_break is not None, case
    assert (result.ok, result.first_break.kind, result.first_break.seq) == (False, kind, seq)
    assert f"record {seq}" in result.first_break.detail
    # Streaming in chunks finds exactly what the verifier finds over the whole stored chain
    # (which calls a moved record "altered": only the store looks up where it came from).
    async with db.read() as conn:
        anchor = await audit.head(conn, "default")
    whole = verify_chain(await stored(db), anchor=anchor)
    assert whole.first_break is not None
    assert (result.checked, result.head, result.first_break.position) == (
        whole.checked,
        whole.head,
        whole.first_break.position,
    )
    if kind != "reordered":
        assert result.first_break == whole.first_break


async def test_a_swapped_record_is_named_with_its_sealed_place(
    db: Database, audit: AuditLog
) -> None:
    await seed(db, audit)
    await _swap(db, 9, 16)
    result = await verify(db, audit)
    assert result.first_break is not None
    assert result.first_break.detail == (
        "record 9: out of place: it holds the record sealed as seq 16"
    )
    assert result.checked == 8


async def test_an_unreadable_body_is_reported_not_raised(db: Database, audit: AuditLog) -> None:
    await seed(db, audit, 3)
    async with db.write() as tx:
        await tx.conn.execute(
            update(audit_records).where(audit_records.c.seq == 2).values(body="{not json")
        )
    result = await verify(db, audit)
    assert result.first_break is not None
    assert (result.first_break.kind, result.first_break.seq) == ("altered", 2)


async def test_progress_is_reported_per_chunk(db: Database, audit: AuditLog) -> None:
    await seed(db, audit)
    seen: list[tuple[int, int]] = []
    async with db.snapshot() as conn:
        result = await audit.verify(conn, "default", progress=lambda d, t: seen.append((d, t)))
    assert result.ok
    assert seen == [(7, N), (14, N), (21, N), (25, N)]


# --- paging ---------------------------------------------------------------------------------


async def test_pages_follow_seq_and_stop_at_the_head(db: Database, audit: AuditLog) -> None:
    await seed(db, audit, 10)
    seqs: list[int] = []
    after = 0
    async with db.read() as conn:
        while True:
            page = await audit.page(conn, "default", after=after, limit=4)
            seqs += [r.seq for r in page.records]
            after = page.next_after
            if not page.has_more:
                break
        assert page.head.seq == 10
        assert after == 10
        empty = await audit.page(conn, "default", after=10, limit=4)
    assert seqs == list(range(1, 11))
    assert (empty.records, empty.next_after, empty.has_more) == ([], 10, False)


async def test_filters_select_exact_matches(db: Database, audit: AuditLog) -> None:
    tricky = entry(
        11,
        resource="proposal/prp_1x",
        reason='"resource":"proposal/prp_1","tenant_id": looks like a field',
    )
    await seed(db, audit, 10)
    async with db.write() as tx:
        await audit.append(tx, [tricky])
    contents = [json.loads(r.body) for r in await stored(db)]

    async def matching(flt: AuditFilter) -> list[int]:
        async with db.read() as conn:
            page = await audit.page(conn, "default", limit=100, flt=flt)
        assert not page.has_more
        assert page.next_after == 11
        return [r.seq for r in page.records]

    expected = [i for i, c in enumerate(contents, 1) if c["resource"] == "proposal/prp_1"]
    assert expected == [3, 4, 5]
    assert await matching(AuditFilter(resource="proposal/prp_1")) == expected
    assert await matching(AuditFilter(action="proposal.score")) == [2, 4, 6, 8, 10]
    assert await matching(AuditFilter(actor="key_sup")) == [1, 3, 5, 7, 9, 11]
    both = AuditFilter(resource="proposal/prp_1", action="proposal.approve", actor="key_sup")
    assert await matching(both) == [3, 5]
    assert await matching(AuditFilter(resource="PROPOSAL/PRP_1")) == []
    assert await matching(AuditFilter(action="proposal_score")) == []


async def test_a_filtered_page_examines_a_bounded_window(
    db: Database, audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opstwin.audit.store, "SCAN_WINDOW", 4)
    await seed(db, audit, 10)
    flt = AuditFilter(action="proposal.approve")
    pages = []
    after = 0
    async with db.read() as conn:
        while True:
            page = await audit.page(conn, "default", after=after, limit=100, flt=flt)
            pages.append(([r.seq for r in page.records], page.next_after, page.has_more))
            after = page.next_after
            if not page.has_more:
                break
    assert pages == [([1, 3], 4, True), ([5, 7], 8, True), ([9], 10, False)]


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"action": "Proposal.Approve"},
        {"action": "approve"},
        {"role": "root"},
        {"inputs": {"content_hash": "sha256:" + "A" * 64}},
        {"inputs": {"content_hash": 3}},
        {"policy": {"policy_id": "default"}},
        {"policy": {"policy_id": "default", "version": 0}},
        {"policy": {"policy_id": "default", "version": 1, "extra": True}},
        {"decision": "maybe"},
        {"outcome": ""},
        {"actor": {"principal_id": "key", "role": "viewer"}},
        {"actor": {"principal_id": "", "role": "viewer", "on_behalf_of": None}},
        {"at": "2026-01-01T00:00:00+01:00"},
        {"surprise": 1},
    ],
    ids=str,
)
def test_the_compiled_audit_check_agrees_with_the_schema(
    schemas: SchemaRegistry, audit: AuditLog, change: dict[str, Any]
) -> None:
    content = {**entry(1).content(), "seq": 1, "prev_hash": GENESIS_HASH, "hash": GENESIS_HASH}
    content.update(change)
    expected = schemas.is_valid("audit.v1", content)
    assert expected is (change == {})
    assert audit._check(content) is expected
