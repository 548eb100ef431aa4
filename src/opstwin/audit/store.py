"""AuditLog: each tenant's audit chain, stored in ``audit_records`` and anchored in ``audit_heads``.

Appending
---------
:meth:`AuditLog.append` seals entries after the tenant's head **inside the caller's
transaction**: a rolled-back transaction leaves neither records nor a moved head. The head row
is read with ``INSERT … ON CONFLICT (tenant_id) DO UPDATE … RETURNING seq, hash``: one statement
that creates the row for a tenant's first record and otherwise locks it, returning the newest
committed head. That row lock is held until the transaction ends, so a second appender of the
same tenant (another task, connection or process on PostgreSQL) waits and then chains onto the
first one's records — the chain cannot fork. On SQLite the write lock serialises appenders anyway.
Tenants' chains are independent: appenders of different tenants never wait for each other here.

**Lock order.** A transaction that appends both audit records and change-log events must call
``audit.append`` *before* ``changelog.append`` (the change log's lock is global and should be
held for the shortest time; always taking the two in this order cannot deadlock).

Verifying
---------
:meth:`AuditLog.verify` streams the records in ``seq`` order in chunks and hashes the stored
bytes (no JSON parsing) with :func:`opstwin.audit.chain.verify_chain`, in a worker thread so a
long chain does not stall the event loop, reading the next chunk while the current one is being
hashed. The anchor is the ``audit_heads`` row (genesis when a tenant has none, so records without
a head are reported as ``unanchored``). Pass a snapshot connection (``Database.snapshot()``) so
the head and the records are of the same moment while others append.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.audit.chain import (
    GENESIS_HASH,
    AuditEntry,
    ChainBreak,
    ChainHead,
    SealedRecord,
    Verification,
    record_hash,
    verify_chain,
)
from opstwin.audit.tables import audit_heads, audit_records
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Backend, Transaction
from opstwin.kit.errors import OpsTwinError, ValidationFailed

#: Records read per query while verifying (about 5 MB of rows): large enough that round trips
#: don't matter, small enough that a million-record chain is never held in memory at once.
VERIFY_CHUNK = 10_000
#: At most this many records are examined for one filtered page (``seq`` has no gaps, so this is
#: a range of ``seq``): a filter that matches rarely cannot turn one request into a full scan.
SCAN_WINDOW = 10_000

#: ``progress(verified, total)``: records verified so far and the anchored head's ``seq``.
Progress = Callable[[int, int], None]

_RECORD_ID_LENGTH = 40  # the audit_records.record_id column
# A valid placeholder for the fields sealing adds, to check an entry before it is sealed.
_UNSEALED = {"seq": 1, "prev_hash": GENESIS_HASH, "hash": GENESIS_HASH}


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records a reader wants: every given field must match exactly."""

    resource: str | None = None
    action: str | None = None
    actor: str | None = None  # the actor's principal_id

    @property
    def is_empty(self) -> bool:
        return self.resource is None and self.action is None and self.actor is None

    def needles(self) -> list[str]:
        """Substrings of the canonical body that select exactly the matching records.

        The body is canonical JSON (sorted keys, no whitespace), so ``"resource":"<v>"`` is
        followed by ``,"tenant_id":``, ``"action"`` is the first key and ``principal_id`` is
        followed by ``role`` inside ``actor``. Values are encoded the way the body encodes them,
        and a quote inside any string value is escaped (``\\"``), so a needle can only match the
        field itself. Substring search needs no JSON parsing, works the same on both backends and
        does not fail on a record whose body was corrupted.
        """
        out: list[str] = []
        if self.action is not None:
            out.append('{"action":' + jsonutil.dumps_str(self.action) + ',"actor":')
        if self.actor is not None:
            out.append('"principal_id":' + jsonutil.dumps_str(self.actor) + ',"role":')
        if self.resource is not None:
            out.append('"resource":' + jsonutil.dumps_str(self.resource) + ',"tenant_id":')
        return out


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of one tenant's chain.

    ``next_after`` is where the next page starts (exclusive); it advances past every record
    examined, matching or not, so a filtered reader never examines a record twice.
    """

    records: list[SealedRecord]
    next_after: int
    has_more: bool
    head: ChainHead


class AuditLog:
    """Appends to, pages through and verifies every tenant's audit chain."""

    def __init__(
        self, schemas: SchemaRegistry, clock: Clock, *, verify_chunk: int = VERIFY_CHUNK
    ) -> None:
        if verify_chunk < 1:
            raise ValueError("verify_chunk must be at least 1")
        self._schemas = schemas
        self._clock = clock
        self._verify_chunk = verify_chunk
        self._check = _compiled_check(schemas)

    # -- writing ---------------------------------------------------------------------------

    async def append(self, tx: Transaction, entries: Sequence[AuditEntry]) -> list[SealedRecord]:
        """Seal ``entries`` after their tenants' heads in the caller's transaction.

        Returns the sealed records in the order given. Each entry is checked against
        ``audit.v1`` first: the chain is append-only, so an invalid record would stay forever
        (an invalid entry is a programming error and raises :class:`OpsTwinError`).
        Entries of several tenants may be mixed; their heads are locked in tenant order.
        """
        if not entries:
            return []
        bodies = [self._serialise(entry) for entry in entries]
        by_tenant: dict[str, list[int]] = defaultdict(list)
        for index, entry in enumerate(entries):
            by_tenant[entry.tenant_id].append(index)
        now_us = to_micros(self._clock.now())
        sealed: list[SealedRecord | None] = [None] * len(entries)
        for tenant_id in sorted(by_tenant):
            indexes = by_tenant[tenant_id]
            # ---- the tenant's head is locked here until the caller's transaction ends ----
            head = await self._lock_head(tx, tenant_id, now_us)
            seq, prev = head.seq, head.hash
            rows: list[dict[str, Any]] = []
            for index in indexes:
                seq += 1
                body = bodies[index]
                digest = record_hash(seq, prev, body)
                sealed[index] = SealedRecord(seq, prev, digest, body)
                entry = entries[index]
                rows.append(
                    {
                        "tenant_id": tenant_id,
                        "seq": seq,
                        "record_id": entry.record_id,
                        "prev_hash": prev,
                        "hash": digest,
                        "body": body.decode("utf-8"),
                        "at_us": to_micros(entry.at),
                    }
                )
                prev = digest
            await tx.conn.execute(insert(audit_records), rows)
            await tx.conn.execute(
                update(audit_heads)
                .where(audit_heads.c.tenant_id == tenant_id)
                .values(seq=seq, hash=prev, updated_at_us=now_us)
            )
        return [record for record in sealed if record is not None]

    def _serialise(self, entry: AuditEntry) -> bytes:
        if len(entry.record_id) > _RECORD_ID_LENGTH:
            raise OpsTwinError(
                f"audit entry {entry.record_id!r}: a record_id has at most "
                f"{_RECORD_ID_LENGTH} characters"
            )
        content = entry.content()
        if not self._check({**content, **_UNSEALED}):
            try:
                self._schemas.validate("audit.v1", {**content, **_UNSEALED})
            except ValidationFailed as exc:
                where = ", ".join(f"{e.pointer}: {e.detail}" for e in exc.errors)
                raise OpsTwinError(
                    f"audit entry {entry.record_id!r} does not match audit.v1 ({where})"
                ) from exc
        return jsonutil.canonical(content)

    async def _lock_head(self, tx: Transaction, tenant_id: str, now_us: int) -> ChainHead:
        """Create (seq 0, genesis) or lock the tenant's head row; the newest committed head."""
        values = {"tenant_id": tenant_id, "seq": 0, "hash": GENESIS_HASH, "updated_at_us": now_us}
        stmt = _upsert(tx.backend)(audit_heads).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[audit_heads.c.tenant_id],
            set_={"updated_at_us": stmt.excluded.updated_at_us},
        ).returning(audit_heads.c.seq, audit_heads.c.hash)
        row = (await tx.conn.execute(stmt)).one()
        return ChainHead(int(row.seq), row.hash)

    # -- reading ---------------------------------------------------------------------------

    async def head(self, conn: AsyncConnection, tenant_id: str) -> ChainHead:
        """The tenant's anchored head (``seq`` 0 and the genesis hash before its first record)."""
        row = (
            await conn.execute(
                select(audit_heads.c.seq, audit_heads.c.hash).where(
                    audit_heads.c.tenant_id == tenant_id
                )
            )
        ).one_or_none()
        return ChainHead.genesis() if row is None else ChainHead(int(row.seq), row.hash)

    async def record(self, conn: AsyncConnection, tenant_id: str, seq: int) -> SealedRecord | None:
        """The record stored at ``seq``, as stored (``None`` when there is none)."""
        rows = await self._read(
            conn, [audit_records.c.tenant_id == tenant_id, audit_records.c.seq == seq], 1
        )
        return rows[0] if rows else None

    async def page(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        *,
        after: int = 0,
        limit: int = 100,
        flt: AuditFilter | None = None,
    ) -> AuditPage:
        """Records with ``seq > after`` in order, at most ``limit``, matching ``flt``.

        Only records up to the head read first are returned (they are all committed: the head
        moves in the same transaction as its records). A filtered page examines at most
        :data:`SCAN_WINDOW` records, so it may hold fewer than ``limit`` (even none) while
        ``has_more`` is true: keep following ``next_after``.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        head = await self.head(conn, tenant_id)
        after = max(after, 0)
        upto = head.seq if flt is None or flt.is_empty else min(head.seq, after + SCAN_WINDOW)
        if after >= upto:
            return AuditPage(records=[], next_after=after, has_more=False, head=head)
        clauses: list[ColumnElement[bool]] = [
            audit_records.c.tenant_id == tenant_id,
            audit_records.c.seq > after,
            audit_records.c.seq <= upto,
        ]
        if flt is not None:
            clauses.extend(
                _contains(conn.dialect.name, audit_records.c.body, needle)
                for needle in flt.needles()
            )
        rows = await self._read(conn, clauses, limit + 1)
        if len(rows) > limit:
            rows = rows[:limit]
            return AuditPage(records=rows, next_after=rows[-1].seq, has_more=True, head=head)
        return AuditPage(records=rows, next_after=upto, has_more=upto < head.seq, head=head)

    async def _read(
        self, conn: AsyncConnection, clauses: list[ColumnElement[bool]], limit: int
    ) -> list[SealedRecord]:
        query = (
            select(
                audit_records.c.seq,
                audit_records.c.prev_hash,
                audit_records.c.hash,
                audit_records.c.body,
            )
            .where(and_(*clauses))
            .order_by(audit_records.c.seq)
            .limit(limit)
        )
        result = await conn.execute(query)
        return [
            SealedRecord(int(seq), prev_hash, digest, body.encode("utf-8"))
            for seq, prev_hash, digest, body in result
        ]

    async def verify(
        self, conn: AsyncConnection, tenant_id: str, *, progress: Progress | None = None
    ) -> Verification:
        """Verify the tenant's whole chain against its anchored head; name the first bad record.

        ``conn`` should be a snapshot (``Database.snapshot()``). ``progress`` is called on the
        event loop after each chunk with the records verified so far and the head's ``seq``.
        """
        anchor = await self.head(conn, tenant_id)
        size = self._verify_chunk
        start = ChainHead.genesis()
        carried: SealedRecord | None = None
        verified = 0
        chunk = await self._chunk(conn, tenant_id, 0)
        pending: asyncio.Task[list[SealedRecord]] | None = None
        try:
            while True:
                full = len(chunk) == size
                if full:  # read the next chunk while this one is hashed
                    pending = asyncio.create_task(self._chunk(conn, tenant_id, chunk[-1].seq))
                # The last record of the previous chunk is checked again with this one: a record
                # edited and re-hashed is only seen from the link of the record after it.
                records = chunk if carried is None else [carried, *chunk]
                offset = verified - (0 if carried is None else 1)
                result = await asyncio.to_thread(
                    verify_chain, records, start=start, anchor=None if full else anchor
                )
                if not result.ok:
                    if pending is not None:
                        await pending
                        pending = None
                    return await self._diagnose(conn, tenant_id, _shifted(result, offset))
                verified += len(chunk)
                if progress is not None:
                    progress(min(verified, anchor.seq), anchor.seq)
                if pending is None:
                    return Verification(
                        ok=True, checked=result.head.seq, head=result.head, first_break=None
                    )
                carried = chunk[-1]
                start = ChainHead(carried.seq - 1, carried.prev_hash)
                chunk = await pending
                pending = None
        finally:
            if pending is not None:  # never leave a read running on the caller's connection
                await pending

    async def _chunk(self, conn: AsyncConnection, tenant_id: str, after: int) -> list[SealedRecord]:
        clauses = [audit_records.c.tenant_id == tenant_id, audit_records.c.seq > after]
        return await self._read(conn, clauses, self._verify_chunk)

    async def _diagnose(
        self, conn: AsyncConnection, tenant_id: str, result: Verification
    ) -> Verification:
        """Tell a record moved to another ``seq`` from an edited one.

        A record whose ``seq`` was changed (two records swapped, say) no longer matches its hash
        at its new place, which the verifier reports as ``altered``. Where it was sealed is one
        before the record linking to it, or one after the record it links to; if its hash checks
        out at such a place, it was moved there from.
        """
        found = result.first_break
        if found is None or found.kind != "altered":
            return result
        record = await self.record(conn, tenant_id, found.seq)
        if record is None or record_hash(record.seq, record.prev_hash, record.body) == record.hash:
            return result
        candidates: list[int] = []
        for column, value, step in (
            (audit_records.c.prev_hash, record.hash, -1),  # the record after it
            (audit_records.c.hash, record.prev_hash, 1),  # the record before it
        ):
            rows = await conn.execute(
                select(audit_records.c.seq)
                .where(audit_records.c.tenant_id == tenant_id, column == value)
                .limit(2)
            )
            candidates += [int(seq) + step for seq in rows.scalars()]
        if record.prev_hash == GENESIS_HASH:
            candidates.append(1)
        for sealed_at in candidates:
            if sealed_at == record.seq or sealed_at < 1:
                continue
            if record_hash(sealed_at, record.prev_hash, record.body) == record.hash:
                detail = f"record {found.seq}: out of place: it holds the record sealed as seq {sealed_at}"
                moved = ChainBreak("reordered", found.seq, found.position, detail)
                return Verification(
                    ok=False, checked=result.checked, head=result.head, first_break=moved
                )
        return result


def _compiled_check(schemas: SchemaRegistry) -> Callable[[Any], bool]:
    """A fast yes/no check of ``audit.v1``.

    The registry compiles only schemas without ``$ref`` (fastjsonschema, ~5 µs a record);
    ``audit.v1`` refers to its own ``$defs``, which cost ~250 µs a record in the reference
    validator. With those references inlined the schema means the same and compiles.
    """
    document = schemas.get("audit.v1").document
    definitions: dict[str, Any] = document.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: inline(value) for key, value in node.items() if key not in ("$ref", "$defs")}
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith("#/$defs/"):
                raise ValueError(f"audit.v1: cannot inline $ref {ref!r}")
            out = {**inline(definitions[ref.removeprefix("#/$defs/")]), **out}
        return out

    return SchemaRegistry({"audit.v1": inline(document)}).fast_check("audit.v1")


def _shifted(result: Verification, offset: int) -> Verification:
    """A chunk's (failed) verification in terms of the whole chain (verified from genesis)."""
    found = result.first_break
    moved = (
        None
        if found is None
        else ChainBreak(found.kind, found.seq, found.position + offset, found.detail)
    )
    return Verification(ok=result.ok, checked=result.head.seq, head=result.head, first_break=moved)


def _upsert(backend: Backend) -> Any:
    return pg_insert if backend == "postgresql" else sqlite_insert


def _contains(dialect: str, column: Any, needle: str) -> ColumnElement[bool]:
    """``needle`` occurs in ``column`` (exact, case-sensitive substring; no LIKE wildcards)."""
    if dialect == "postgresql":
        return func.strpos(column, needle) > 0
    return func.instr(column, needle) > 0
