"""Idempotency-Key support for mutating POSTs (DESIGN §2).

Same key + same body → the stored response is replayed; same key + another body → 422.
The key is reserved with ``INSERT … ON CONFLICT DO NOTHING`` at the start of the request's
transaction: a concurrent request with the same key waits on the unique index until the first
commits and then replays its response, so the work is never done twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Transaction
from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.kit.tables import idempotency_keys

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    body: str


def request_hash(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


class IdempotencyStore:
    """Reserves keys and stores the responses given under them."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @staticmethod
    def check_key(key: str) -> None:
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise ValidationFailed(
                f"{HEADER} must be 1–{MAX_KEY_LENGTH} printable characters",
                errors=[FieldError(detail="invalid idempotency key", header=HEADER)],
            )

    async def reserve(
        self, tx: Transaction, *, tenant_id: str, principal_id: str, key: str, req_hash: str
    ) -> StoredResponse | None:
        """Reserve ``key`` in ``tx``; if it was used before, the response to replay."""
        self.check_key(key)
        values = {
            "tenant_id": tenant_id,
            "principal_id": principal_id,
            "key": key,
            "request_hash": req_hash,
            "status_code": 0,
            "response_body": "",
            "created_at_us": to_micros(self._clock.now()),
        }
        stmt = (pg_insert if tx.backend == "postgresql" else sqlite_insert)(
            idempotency_keys
        ).values(values)
        inserted = await tx.conn.execute(stmt.on_conflict_do_nothing())
        if inserted.rowcount == 1:
            return None
        row = (
            await tx.conn.execute(
                select(
                    idempotency_keys.c.request_hash,
                    idempotency_keys.c.status_code,
                    idempotency_keys.c.response_body,
                ).where(
                    idempotency_keys.c.tenant_id == tenant_id,
                    idempotency_keys.c.principal_id == principal_id,
                    idempotency_keys.c.key == key,
                )
            )
        ).one()
        if row.request_hash != req_hash:
            raise ValidationFailed(
                f"this {HEADER} was already used with a different request body",
                errors=[FieldError(detail="key reused with another body", header=HEADER)],
            )
        return StoredResponse(status_code=int(row.status_code), body=row.response_body)

    async def record(
        self,
        tx: Transaction,
        *,
        tenant_id: str,
        principal_id: str,
        key: str,
        status_code: int,
        body: str,
    ) -> None:
        await tx.conn.execute(
            update(idempotency_keys)
            .where(
                idempotency_keys.c.tenant_id == tenant_id,
                idempotency_keys.c.principal_id == principal_id,
                idempotency_keys.c.key == key,
            )
            .values(status_code=status_code, response_body=body)
        )

    async def expire(self, tx: Transaction, older_than: datetime) -> int:
        result = await tx.conn.execute(
            delete(idempotency_keys).where(idempotency_keys.c.created_at_us < to_micros(older_than))
        )
        return int(result.rowcount)
