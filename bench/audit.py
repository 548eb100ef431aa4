"""Audit hash chain: append and full-chain verification rates, in memory and in the database.

Run with ``.venv/bin/python -m bench audit``. Goal: verifying 1,000,000 records in < 10 s.

In memory (no I/O), 1,000,000 records:

* append — build an ``AuditEntry`` (a proposal transition), serialise it canonically, hash it
  onto the chain: the work the audit service does per record before the INSERT;
* verify — :func:`opstwin.audit.chain.verify_chain` over the stored records (pre-serialised
  bytes, as storage hands them back), with the anchored head.

In the database (SQLite, and PostgreSQL when it is reachable), through :class:`AuditLog`:

* append — ``AuditLog.append`` in its own transaction (validate against audit.v1, serialise,
  lock the tenant's head, insert, move the head, commit), one record per transaction (a decision)
  and 100 per transaction;
* verify — the same 1,000,000-record chain bulk-loaded into ``audit_records`` with its head,
  then ``AuditLog.verify`` on a snapshot: streamed in chunks, hashed in a worker thread.

Best of ``REPEATS`` runs for verification (appending is measured once: it builds the chain).
"""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from bench.common import database_url, pg_available
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.audit.chain import AuditChain, AuditEntry, ChainHead, SealedRecord, verify_chain
from opstwin.audit.store import AuditLog
from opstwin.audit.tables import audit_heads, audit_records
from opstwin.kit.clock import SystemClock
from opstwin.kit.db import Database

RECORDS = 1_000_000
REPEATS = 3
DB_REPEATS = 2
APPEND_SINGLE = 2_000  # transactions of one record
APPEND_BATCHES = 100  # transactions of BATCH records
BATCH = 100
LOAD_BATCH = 20_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONTENT_HASH = "sha256:" + "ab" * 32
POLICY = {"policy_id": "default", "version": 3}


def _entry(i: int, tenant_id: str = "default") -> AuditEntry:
    return AuditEntry(
        record_id=f"aud_{i:026d}",
        tenant_id=tenant_id,
        at=T0 + timedelta(microseconds=i * 1000),
        actor_id="key_01JB7Y2Q0ZKX4M5N6P7R8S9T0V",
        role="supervisor",
        action="proposal.approve",
        resource=f"proposal/prp_{i // 8:026d}",
        inputs={"content_hash": CONTENT_HASH},
        policy=POLICY,
        decision="require_approval",
        outcome="approved",
        reason=None,
    )


def in_memory() -> tuple[list[SealedRecord], ChainHead]:
    chain = AuditChain()
    records: list[SealedRecord] = []
    append = records.append
    gc.disable()  # a million long-lived objects: cyclic GC passes would dominate the timing
    try:
        started = time.perf_counter()
        for i in range(1, RECORDS + 1):
            append(chain.append(_entry(i)))
        append_s = time.perf_counter() - started
        print(
            f"   memory     append: {RECORDS:,} records in {append_s:.2f} s = "
            f"{RECORDS / append_s:,.0f} records/s (body ~{len(records[0].body)} bytes)"
        )
        best = float("inf")
        for _ in range(REPEATS):
            started = time.perf_counter()
            result = verify_chain(records, anchor=chain.head)
            best = min(best, time.perf_counter() - started)
            if not result.ok:
                raise RuntimeError(f"the benchmark chain does not verify: {result.to_dict()}")
    finally:
        gc.enable()
    verdict = "OK" if best < 10.0 else "MISSED"
    print(
        f"   memory     verify: {RECORDS:,} records in {best:.2f} s = {RECORDS / best:,.0f} "
        f"records/s (goal < 10 s: {verdict})"
    )
    return records, chain.head


async def in_database(backend: str, records: list[SealedRecord], head: ChainHead) -> None:
    async with database_url(backend) as (url, schema):
        db = Database(url, schema_name=schema)
        await db.migrate()
        audit = AuditLog(SchemaRegistry.from_package(), SystemClock())
        try:
            await _append_rate(db, audit, backend)
            await _load(db, records, head)
            best = float("inf")
            for _ in range(DB_REPEATS):
                started = time.perf_counter()
                async with db.snapshot() as conn:
                    result = await audit.verify(conn, "default")
                best = min(best, time.perf_counter() - started)
                if not result.ok or result.checked != RECORDS:
                    raise RuntimeError(f"the stored chain does not verify: {result.to_dict()}")
        finally:
            await db.dispose()
    verdict = "OK" if best < 10.0 else "MISSED"
    print(
        f"   {backend:<10} verify: {RECORDS:,} stored records in {best:.2f} s = "
        f"{RECORDS / best:,.0f} records/s (goal < 10 s: {verdict})"
    )


async def _append_rate(db: Database, audit: AuditLog, backend: str) -> None:
    """Append to a tenant of its own (the verified chain is bulk-loaded into another)."""
    i = 0
    started = time.perf_counter()
    for _ in range(APPEND_SINGLE):
        i += 1
        async with db.write() as tx:
            await audit.append(tx, [_entry(i, "appends")])
    single = APPEND_SINGLE / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(APPEND_BATCHES):
        async with db.write() as tx:
            await audit.append(tx, [_entry(i + k, "appends") for k in range(1, BATCH + 1)])
        i += BATCH
    batched = APPEND_BATCHES * BATCH / (time.perf_counter() - started)
    print(
        f"   {backend:<10} append: {single:,.0f} records/s one per transaction, "
        f"{batched:,.0f} records/s {BATCH} per transaction"
    )


async def _load(db: Database, records: list[SealedRecord], head: ChainHead) -> None:
    """The in-memory chain into ``audit_records`` with its anchor (a bulk load, not appends)."""
    for start in range(0, len(records), LOAD_BATCH):
        rows = [
            {
                "tenant_id": "default",
                "seq": r.seq,
                "record_id": f"aud_{r.seq:026d}",
                "prev_hash": r.prev_hash,
                "hash": r.hash,
                "body": r.body.decode(),
                "at_us": 0,
            }
            for r in records[start : start + LOAD_BATCH]
        ]
        async with db.write() as tx:
            await tx.conn.execute(insert(audit_records), rows)
    async with db.write() as tx:
        await tx.conn.execute(
            insert(audit_heads).values(
                tenant_id="default", seq=head.seq, hash=head.hash, updated_at_us=0
            )
        )


def run() -> None:
    records, head = in_memory()
    backends = ["sqlite", *(["postgresql"] if pg_available() else [])]
    if len(backends) == 1:
        print("   PostgreSQL not reachable on 127.0.0.1:5432: its figures are skipped")
    for backend in backends:
        asyncio.run(in_database(backend, records, head))


if __name__ == "__main__":
    run()
