"""The audit log as a hash chain (``audit.v1``) and its verifier.

Every decision and transition appends one record. A record is stored as

* ``seq`` — its position in the chain, 1, 2, 3, … with no gaps;
* ``body`` — the canonical JSON (sorted keys, UTF-8) of its content (:class:`AuditEntry`);
* ``prev_hash`` — the previous record's ``hash`` (:data:`GENESIS_HASH` for the first);
* ``hash`` — ``SHA-256(f"{seq}\\n{prev_hash}\\n" ‖ body)`` in lowercase hex.

``seq`` and ``prev_hash`` are inside the hashed bytes, so a record can be neither renumbered nor
relinked without its hash changing. The body is serialised once, when the record is sealed, and
stored as those bytes; verification hashes them as stored (no JSON parsing), which is what makes
a million records verify in about a second (``python -m bench.audit``).

:func:`verify_chain` walks the records in order and names the **first** bad one:

* ``altered`` — a record's bytes no longer give its hash; or a record's hash is consistent but
  the next record links to something else (the record was edited and re-hashed): the edited
  record is named;
* ``removed`` — a ``seq`` is missing (named) and does not turn up later;
* ``reordered`` — a record appears out of its place (named): the missing ``seq`` turns up later,
  or a ``seq`` appears twice or goes backwards;
* ``truncated`` — the chain ends before the known head (needs ``anchor``: the last ``seq`` and
  ``hash`` recorded elsewhere when appending);
* ``unanchored`` — records beyond the anchored head.

Without an anchor, removing records from the *end* cannot be told from a shorter chain, and
someone who rewrites every hash after an edit leaves a consistent chain; the anchor (the head
kept apart from the records) catches both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from opstwin.kit import jsonutil
from opstwin.kit.clock import rfc3339

SCHEMA_ID = "urn:opstwin:schema:audit.v1"

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record."""

BreakKind = Literal["altered", "removed", "reordered", "truncated", "unanchored"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What one audit record says: who did what to which resource, on which inputs, under
    which policy, with what decision and outcome."""

    record_id: str
    tenant_id: str
    at: datetime
    actor_id: str
    role: str
    action: str
    resource: str
    on_behalf_of: str | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)
    policy: Mapping[str, Any] | None = None
    decision: str | None = None
    outcome: str | None = None
    reason: str | None = None

    def content(self) -> dict[str, Any]:
        """The JSON content that is serialised, hashed and stored."""
        return {
            "record_id": self.record_id,
            "tenant_id": self.tenant_id,
            "at": rfc3339(self.at),
            "actor": {
                "principal_id": self.actor_id,
                "role": self.role,
                "on_behalf_of": self.on_behalf_of,
            },
            "action": self.action,
            "resource": self.resource,
            "inputs": dict(self.inputs),
            "policy": None if self.policy is None else dict(self.policy),
            "decision": self.decision,
            "outcome": self.outcome,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of a chain (``seq`` 0 and :data:`GENESIS_HASH` for an empty chain)."""

    seq: int
    hash: str

    @classmethod
    def genesis(cls) -> ChainHead:
        return cls(0, GENESIS_HASH)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """A record as stored: position, canonical body bytes, link and hash."""

    seq: int
    prev_hash: str
    hash: str
    body: bytes

    def to_dict(self) -> dict[str, Any]:
        """The ``audit.v1`` JSON form."""
        content: dict[str, Any] = jsonutil.loads(self.body)
        return {"seq": self.seq, **content, "prev_hash": self.prev_hash, "hash": self.hash}


def record_hash(seq: int, prev_hash: str, body: bytes) -> str:
    """The hash of a record: SHA-256 over ``seq``, ``prev_hash`` and the body bytes."""
    return hashlib.sha256(f"{seq}\n{prev_hash}\n".encode("ascii") + body).hexdigest()


def seal(entry: AuditEntry, head: ChainHead) -> SealedRecord:
    """The record that appends ``entry`` after ``head``."""
    seq = head.seq + 1
    body = jsonutil.canonical(entry.content())
    return SealedRecord(seq, head.hash, record_hash(seq, head.hash, body), body)


class AuditChain:
    """Appends entries to a chain whose current head is known (storage keeps the head under the
    same lock and transaction as the records)."""

    def __init__(self, head: ChainHead | None = None) -> None:
        self._head = head or ChainHead.genesis()

    @property
    def head(self) -> ChainHead:
        return self._head

    def append(self, entry: AuditEntry) -> SealedRecord:
        record = seal(entry, self._head)
        self._head = ChainHead(record.seq, record.hash)
        return record


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first problem found: its kind, the ``seq`` it names, where in the input it was seen."""

    kind: BreakKind
    seq: int
    position: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seq": self.seq,
            "position": self.position,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Verification:
    """The verifier's answer: ``head`` is the last record verified good."""

    ok: bool
    checked: int
    head: ChainHead
    first_break: ChainBreak | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head": self.head.to_dict(),
            "first_break": None if self.first_break is None else self.first_break.to_dict(),
        }


def verify_chain(
    records: Iterable[SealedRecord],
    *,
    start: ChainHead | None = None,
    anchor: ChainHead | None = None,
) -> Verification:
    """Recompute the chain over ``records`` (in stored order) and name the first bad record.

    ``start`` is the head just before the first record (genesis by default; a checkpoint to
    verify a suffix). ``anchor`` is the head as recorded apart from the records, to detect
    truncation and wholesale rewrites of the tail. The answer's ``head`` is the last record
    whose hash and link check out.
    """
    start = start or ChainHead.genesis()
    sha256 = hashlib.sha256
    expected = start.seq + 1
    prev = start.hash
    prev_link = ""  # prev_hash of the last good record: the hash of the one before it
    position = -1
    iterator: Iterator[SealedRecord] = iter(records)
    for position, record in enumerate(iterator):
        seq = record.seq
        preimage = f"{seq}\n{record.prev_hash}\n".encode("ascii") + record.body
        if sha256(preimage).hexdigest() != record.hash:
            # A record whose hash fails cannot vouch for its own seq: name the place it sits in.
            detail = "its content no longer matches its hash"
            if seq != expected:
                detail += f" (stored as seq {seq})"
            good = ChainHead(expected - 1, prev)
            return _broken(start, "altered", expected, position, detail, good)
        if seq != expected:
            return _out_of_place(start, record, position, ChainHead(expected - 1, prev), iterator)
        if record.prev_hash != prev:
            if position == 0:
                detail = "it does not link to the chain's start"
                return _broken(start, "altered", seq, 0, detail, start)
            detail = f"record {seq} links elsewhere: it was edited and re-hashed"
            good = ChainHead(seq - 2, prev_link)
            return _broken(start, "altered", seq - 1, position - 1, detail, good)
        prev_link = prev
        prev = record.hash
        expected = seq + 1
    head = ChainHead(expected - 1, prev)
    if anchor is not None:
        if head.seq < anchor.seq:
            detail = f"missing: the chain ends at {head.seq} but its anchored head is {anchor.seq}"
            return _broken(start, "truncated", head.seq + 1, position + 1, detail, head)
        if head.seq > anchor.seq:
            detail = f"beyond the anchored head {anchor.seq}"
            return _broken(
                start, "unanchored", anchor.seq + 1, anchor.seq - start.seq, detail, head
            )
        if head.hash != anchor.hash:
            detail = "its hash differs from the anchored head (the chain was rewritten)"
            return _broken(start, "altered", head.seq, position, detail, head)
    return Verification(ok=True, checked=head.seq - start.seq, head=head, first_break=None)


def _broken(
    start: ChainHead, kind: BreakKind, seq: int, position: int, detail: str, good: ChainHead
) -> Verification:
    """A failed verification; ``good`` is the last record that checked out."""
    return Verification(
        ok=False,
        checked=good.seq - start.seq,
        head=good,
        first_break=ChainBreak(kind, seq, position, f"record {seq}: {detail}"),
    )


def _out_of_place(
    start: ChainHead,
    record: SealedRecord,
    position: int,
    good: ChainHead,
    rest: Iterator[SealedRecord],
) -> Verification:
    expected = good.seq + 1
    if record.seq > expected and all(later.seq != expected for later in rest):
        gone = f"{expected}" if record.seq == expected + 1 else f"{expected}…{record.seq - 1}"
        detail = f"removed (records {gone} are gone; the next present is {record.seq})"
        return _broken(start, "removed", expected, position, detail, good)
    detail = f"out of place (record {expected} was expected here)"
    return _broken(start, "reordered", record.seq, position, detail, good)
