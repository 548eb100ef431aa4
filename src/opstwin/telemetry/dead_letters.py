"""Dead letters: telemetry input that could not be stored, kept with the reason — never dropped.

An MQTT message that is not JSON, has no usable shape, arrives on a topic that names no twin
and asset, or whose events the ingestor rejected is recorded here in the same transaction as
the rest of its batch; only then is the batch acknowledged to the broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.kit.clock import from_micros, rfc3339, to_micros
from opstwin.kit.db import Transaction, metadata

#: The first bytes of a payload that are kept (a dead letter shows what arrived, not all of it).
PAYLOAD_EXCERPT_BYTES = 1024

dead_letters = Table(
    "dead_letters",
    metadata,
    Column(
        "id",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("tenant_id", String(64), nullable=False),
    Column("source", String(32), nullable=False),
    Column("topic", String(1024), nullable=False),
    Column("payload_excerpt", Text, nullable=False),
    Column("payload_bytes", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    Index("ix_dead_letters_tenant_id", "tenant_id", "id"),
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One input that could not be stored."""

    topic: str
    payload: bytes
    reason: str
    received_at: datetime
    source: str = "mqtt"


def excerpt(payload: bytes) -> str:
    """The start of a payload as text (undecodable bytes shown as U+FFFD)."""
    text = payload[:PAYLOAD_EXCERPT_BYTES].decode("utf-8", errors="replace")
    return text + ("…" if len(payload) > PAYLOAD_EXCERPT_BYTES else "")


async def record_dead_letters(tx: Transaction, tenant_id: str, letters: list[DeadLetter]) -> None:
    """Store ``letters`` in the caller's transaction."""
    if not letters:
        return
    await tx.conn.execute(
        insert(dead_letters),
        [
            {
                "tenant_id": tenant_id,
                "source": letter.source,
                "topic": letter.topic,
                "payload_excerpt": excerpt(letter.payload),
                "payload_bytes": len(letter.payload),
                "reason": letter.reason,
                "received_at_us": to_micros(letter.received_at),
            }
            for letter in letters
        ],
    )


async def list_dead_letters(
    conn: AsyncConnection, tenant_id: str, *, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; returns the page and the ``before`` of the next page (None: last page)."""
    query = select(dead_letters).where(dead_letters.c.tenant_id == tenant_id)
    if before is not None:
        query = query.where(dead_letters.c.id < before)
    rows = (
        (await conn.execute(query.order_by(dead_letters.c.id.desc()).limit(limit + 1)))
        .mappings()
        .all()
    )
    page = [
        {
            "id": int(r["id"]),
            "source": r["source"],
            "topic": r["topic"],
            "payload_excerpt": r["payload_excerpt"],
            "payload_bytes": int(r["payload_bytes"]),
            "reason": r["reason"],
            "received_at": rfc3339(from_micros(int(r["received_at_us"]))),
        }
        for r in rows[:limit]
    ]
    return page, (page[-1]["id"] if len(rows) > limit else None)
