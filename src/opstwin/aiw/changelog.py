"""ChangeLog: the one ordered, durable sequence of every state change (transactional outbox).

Gap-free for readers
--------------------
Sequence numbers are allocated by ``UPDATE log_meta SET head = head + n … RETURNING head``
inside the appending transaction. That row lock is held until the transaction ends, so a
second appender waits until the first has committed (or rolled back, which also undoes its
allocation). Numbers therefore become visible in exactly the order they were allocated, and
``head`` never names a sequence number that is not committed: a reader that reads ``head``
first and then ``seq <= head`` can never move past an entry that commits later. The same
statement works on SQLite (one writer anyway) and PostgreSQL (row lock). Appenders should
call :meth:`ChangeLog.append` late in their transaction — everything expensive (building,
validating and serialising envelopes) happens before the lock is taken.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Select, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.cursor import CursorCodec
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.aiw.tables import change_log, log_meta
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, rfc3339, to_micros
from opstwin.kit.db import Database, Transaction
from opstwin.kit.errors import BadRequest, CursorExpired, OpsTwinError
from opstwin.kit.ids import IdSource

log = structlog.get_logger(__name__)

_SEQ_PLACEHOLDER = "0" * 20
# Bound on remembered envelope verdicts (see ChangeLog._validate); cleared when reached.
_VERDICT_CACHE_SIZE = 4096
_SEQ_PLACEHOLDER_JSON = f'"sequence":"{_SEQ_PLACEHOLDER}"'


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A change to append. ``id`` and ``time`` default to a fresh ULID and the clock's now."""

    tenant_id: str
    type: str
    source: str
    data: Any
    subject: str | None = None
    id: str | None = None
    time: datetime | None = None
    dataschema: str | None = None
    extensions: Mapping[str, str | int | bool] = field(default_factory=dict)

    @property
    def twin_id(self) -> str | None:
        """The twin a change belongs to, from a ``twin/<id>/…`` subject."""
        if self.subject and self.subject.startswith("twin/"):
            return self.subject.split("/", 2)[1] or None
        return None


@dataclass(frozen=True, slots=True)
class Appended:
    """What an append returns per event (``ChangeLog.cursor(seq)`` gives its cursor)."""

    seq: int
    id: str
    type: str


@dataclass(frozen=True, slots=True)
class LogRow:
    """One stored entry; ``envelope`` is JSON text without the cursor."""

    seq: int
    tenant_id: str
    type: str
    twin_id: str | None
    envelope: str


@dataclass(frozen=True, slots=True)
class Marks:
    """The log's bounds: entries ``(compacted_through, head]`` are retained."""

    head: int
    compacted_through: int


@dataclass(frozen=True, slots=True)
class Page:
    """A slice of the log as one reader may see it."""

    rows: list[LogRow]
    next_seq: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which entries a reader wants: types (exact, or ``prefix.*``) and one twin."""

    types: frozenset[str] = frozenset()
    type_prefixes: tuple[str, ...] = ()
    twin_id: str | None = None

    @classmethod
    def parse(cls, types: str | None, twin_id: str | None) -> EventFilter:
        exact: set[str] = set()
        prefixes: list[str] = []
        for raw in (types or "").split(","):
            item = raw.strip()
            if not item:
                continue
            if item.endswith(".*"):
                prefixes.append(item[:-1])  # keep the dot: "opstwin.proposal."
            elif "*" in item:
                raise BadRequest(
                    f"types: {item!r} — a wildcard is only allowed as a final '.*' (e.g. opstwin.proposal.*)"
                )
            else:
                exact.add(item)
        return cls(types=frozenset(exact), type_prefixes=tuple(prefixes), twin_id=twin_id or None)

    @property
    def is_empty(self) -> bool:
        return not self.types and not self.type_prefixes and self.twin_id is None

    def matches(self, type_: str, twin_id: str | None) -> bool:
        if self.twin_id is not None and twin_id != self.twin_id:
            return False
        if not self.types and not self.type_prefixes:
            return True
        return type_ in self.types or type_.startswith(self.type_prefixes)

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.twin_id is not None:
            clauses.append(change_log.c.twin_id == self.twin_id)
        type_clauses: list[Any] = []
        if self.types:
            type_clauses.append(change_log.c.type.in_(sorted(self.types)))
        for prefix in self.type_prefixes:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            type_clauses.append(change_log.c.type.like(escaped + "%", escape="\\"))
        if type_clauses:
            clauses.append(or_(*type_clauses))
        return clauses


class ChangeLog:
    """Appends to and reads the change log; owns the cursor codec of this database."""

    def __init__(self, db: Database, schemas: SchemaRegistry, clock: Clock, ids: IdSource) -> None:
        self._db = db
        self._schemas = schemas
        self._clock = clock
        self._ids = ids
        self._listeners: list[Callable[[], None]] = []
        self._codec: CursorCodec | None = None
        self._check_envelope = schemas.fast_check("event.v1")
        self._valid_shapes: set[tuple[Any, ...]] = set()

    async def load(self) -> None:
        """Read the epoch and cursor secret (after migrations)."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(log_meta.c.epoch, log_meta.c.secret).where(log_meta.c.id == 1)
                )
            ).one()
        self._codec = CursorCodec(row.epoch, row.secret)

    @property
    def codec(self) -> CursorCodec:
        if self._codec is None:
            raise RuntimeError("ChangeLog.load() has not run")
        return self._codec

    @property
    def epoch(self) -> str:
        return self.codec.epoch

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (synchronously) after every commit that appended entries."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    # -- writing ---------------------------------------------------------------------------

    def cursor(self, seq: int) -> str:
        """The cursor that resumes right after entry ``seq``."""
        return self.codec.encode(seq)

    def envelope(
        self, event: NewEvent, now: str | None = None, new_id: str | None = None
    ) -> dict[str, Any]:
        """The CloudEvents envelope of ``event`` (``sequence`` still a placeholder).

        ``now`` is the RFC 3339 time and ``new_id`` the id for events without their own
        (appends prepare both once per batch).
        """
        env: dict[str, Any] = {
            "specversion": "1.0",
            "id": event.id if event.id is not None else (new_id or self._ids.new("evt")),
            "source": event.source,
            "type": event.type,
        }
        if event.subject is not None:
            env["subject"] = event.subject
        if event.time is not None:
            env["time"] = rfc3339(event.time)
        else:
            env["time"] = now or rfc3339(self._clock.now())
        env["datacontenttype"] = "application/json"
        if event.dataschema is not None:
            env["dataschema"] = event.dataschema
        env["sequence"] = _SEQ_PLACEHOLDER
        for key, value in event.extensions.items():
            if key in env or key in {"cursor", "data"}:
                raise ValueError(f"extension {key!r} collides with a CloudEvents attribute")
            env[key] = value
        env["data"] = event.data
        return env

    def _validate(self, event: NewEvent, env: dict[str, Any]) -> None:
        """Check ``env`` against event.v1 (422 with pointers when it fails).

        An envelope's validity depends only on the attributes its producer chose: ``data`` is
        unconstrained by event.v1, and an ``id``/``time`` we generated, ``specversion``,
        ``datacontenttype`` and the ``sequence`` placeholder are valid by construction. So the
        verdict is remembered per tuple of those attributes — a batch of a thousand telemetry
        entries is checked once per distinct (source, type, subject, …), not a thousand times.
        """
        extensions = tuple(event.extensions.items())
        if all(isinstance(v, str | int | bool) for _, v in extensions):
            shape: tuple[Any, ...] | None = (
                event.source,
                event.type,
                event.subject,
                event.dataschema,
                extensions,
                event.id,
                None if event.time is None else env["time"],
            )
            if shape in self._valid_shapes:
                return
        else:
            shape = None  # unhashable extension values: invalid anyway, never remembered
        if not self._check_envelope(env):
            self._schemas.validate("event.v1", env)  # raises with pointers
            raise OpsTwinError("event.v1 validators disagree on an envelope")  # pragma: no cover
        if shape is not None:
            if len(self._valid_shapes) >= _VERDICT_CACHE_SIZE:
                self._valid_shapes.clear()
            self._valid_shapes.add(shape)

    async def append(self, tx: Transaction, events: Sequence[NewEvent]) -> list[Appended]:
        """Append ``events`` in the caller's transaction; returns their sequence and cursors."""
        if not events:
            return []
        now = self._clock.now()
        recorded_us = to_micros(now)
        now_text = rfc3339(now)
        prepared: list[tuple[NewEvent, dict[str, Any], str]] = []
        fresh_ids = self._ids.batch("evt", len(events))
        for event, fresh_id in zip(events, fresh_ids, strict=True):
            env = self.envelope(event, now_text, fresh_id)
            self._validate(event, env)
            prepared.append((event, env, jsonutil.dumps_str(env)))

        # ---- the ordering lock is taken here and held until the caller commits ----
        result = await tx.conn.execute(
            update(log_meta)
            .where(log_meta.c.id == 1)
            .values(head=log_meta.c.head + len(events))
            .returning(log_meta.c.head)
        )
        last = int(result.scalar_one())
        first = last - len(events) + 1
        rows = []
        appended = []
        for offset, (event, env, body) in enumerate(prepared):
            seq = first + offset
            rows.append(
                {
                    "seq": seq,
                    "tenant_id": event.tenant_id,
                    "event_id": env["id"],
                    "source": event.source,
                    "type": event.type,
                    "twin_id": event.twin_id,
                    "recorded_at_us": recorded_us,
                    # The placeholder is the first `"sequence":"…"` in the text: attributes
                    # before it are JSON strings, inside which a bare `"` cannot appear.
                    "envelope": body.replace(_SEQ_PLACEHOLDER_JSON, f'"sequence":"{seq:020d}"', 1),
                }
            )
            appended.append(Appended(seq=seq, id=env["id"], type=event.type))
        await tx.conn.execute(insert(change_log), rows)
        if tx.backend == "postgresql":
            await tx.conn.execute(
                text("SELECT pg_notify(:channel, :head)"),
                {"channel": self._db.notify_channel, "head": str(last)},
            )
        tx.after_commit(self._notify)
        return appended

    async def find(
        self, conn: AsyncConnection, tenant_id: str, source: str, event_id: str
    ) -> int | None:
        """Sequence of an already-appended event (CloudEvents dedupe: same source and id)."""
        row = await conn.execute(
            select(change_log.c.seq).where(
                change_log.c.tenant_id == tenant_id,
                change_log.c.source == source,
                change_log.c.event_id == event_id,
            )
        )
        seq = row.scalar_one_or_none()
        return None if seq is None else int(seq)

    # -- reading ---------------------------------------------------------------------------

    async def marks(self, conn: AsyncConnection) -> Marks:
        row = (
            await conn.execute(
                select(log_meta.c.head, log_meta.c.compacted_through).where(log_meta.c.id == 1)
            )
        ).one()
        return Marks(head=int(row.head), compacted_through=int(row.compacted_through))

    def resolve_since(self, since: str | None, marks: Marks) -> int:
        """The exclusive lower bound a ``since`` parameter names (400/410 when it can't)."""
        if since is None or since == "":
            return marks.compacted_through
        if since == "now":
            return marks.head
        position = self.codec.decode(since)
        if position.seq < marks.compacted_through:
            raise CursorExpired(
                f"the changes after this cursor were compacted (retention); the oldest retained change follows sequence {marks.compacted_through}",
                extensions={"reason": "compacted"},
            )
        if position.seq > marks.head:
            raise CursorExpired(
                "the cursor is ahead of this log: the database was restored from an older backup",
                extensions={"reason": "ahead"},
            )
        return position.seq

    async def read(
        self,
        conn: AsyncConnection,
        *,
        after: int,
        upto: int,
        limit: int,
        tenant_id: str | None,
        flt: EventFilter | None = None,
    ) -> Page:
        """Entries with ``after < seq <= upto`` (``upto`` read as a head beforehand), in order."""
        query: Select[Any] = select(
            change_log.c.seq,
            change_log.c.tenant_id,
            change_log.c.type,
            change_log.c.twin_id,
            change_log.c.envelope,
        )
        clauses = [change_log.c.seq > after, change_log.c.seq <= upto]
        if tenant_id is not None:
            clauses.append(change_log.c.tenant_id == tenant_id)
        if flt is not None:
            clauses.extend(flt.where())
        query = query.where(and_(*clauses)).order_by(change_log.c.seq).limit(limit + 1)
        fetched = [
            LogRow(int(r[0]), r[1], r[2], r[3], r[4]) for r in (await conn.execute(query)).all()
        ]
        if len(fetched) > limit:
            rows = fetched[:limit]
            return Page(rows=rows, next_seq=rows[-1].seq, has_more=True)
        return Page(rows=fetched, next_seq=upto, has_more=False)

    def with_cursor(self, row: LogRow) -> str:
        """The stored envelope with its ``cursor`` extension spliced in (no re-parsing)."""
        return f'{row.envelope[:-1]},"cursor":"{self.codec.encode(row.seq)}"}}'

    # -- maintenance -----------------------------------------------------------------------

    async def compact(self, older_than: datetime, *, batch: int = 10_000) -> int:
        """Delete entries recorded before ``older_than``, in batches; returns how many."""
        cutoff = to_micros(older_than)
        removed = 0
        while True:
            async with self._db.write() as tx:
                oldest = (
                    select(change_log.c.seq)
                    .where(change_log.c.recorded_at_us < cutoff)
                    .order_by(change_log.c.seq)
                    .limit(batch)
                    .subquery()
                )
                boundary_q = select(func.max(oldest.c.seq))
                boundary = (await tx.conn.execute(boundary_q)).scalar_one_or_none()
                if boundary is None:
                    return removed
                result = await tx.conn.execute(
                    delete(change_log).where(change_log.c.seq <= boundary)
                )
                await tx.conn.execute(
                    update(log_meta)
                    .where(log_meta.c.id == 1, log_meta.c.compacted_through < boundary)
                    .values(compacted_through=boundary)
                )
                removed += int(result.rowcount)
            log.info("changelog.compacted", through=int(boundary), removed=removed)

    async def rotate_epoch(self) -> str:
        """Give the log a new epoch: every cursor issued before becomes 410 (after a restore)."""
        epoch = secrets.token_hex(8)
        async with self._db.write() as tx:
            await tx.conn.execute(update(log_meta).where(log_meta.c.id == 1).values(epoch=epoch))
        await self.load()
        log.warning("changelog.epoch_rotated", epoch=epoch)
        return epoch
