"""Principals: API keys bound to a tenant and a role, stored hashed, shown once.

A key reads ``otk_<key_id>_<secret>``: ``key_id`` finds the row, the secret (256 random bits)
is compared by its SHA-256 in constant time. A fast hash is right here — the secret is random,
not a password, so there is nothing for a slow hash to protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.kit.clock import Clock, from_micros, to_micros
from opstwin.kit.db import Database
from opstwin.kit.errors import NotFound, Unauthenticated, ValidationFailed
from opstwin.policy.rbac import Permission, Role, permissions_of
from opstwin.policy.tables import api_keys

KEY_PREFIX = "otk"
_TOKEN = re.compile(r"otk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)
DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's identity, tenant and role."""

    key_id: str
    name: str
    tenant_id: str
    role: Role
    expires_at: datetime | None = None

    @property
    def permissions(self) -> frozenset[Permission]:
        return permissions_of(self.role)

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored key as listed (never with its secret)."""

    key_id: str
    name: str
    tenant_id: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A newly created key: the only time its token exists outside the caller's hands."""

    record: ApiKeyRecord
    token: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyService:
    """Creates, lists, revokes and verifies API keys."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def create(
        self,
        conn: AsyncConnection,
        *,
        name: str,
        role: Role,
        tenant_id: str = DEFAULT_TENANT,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        if not _TENANT.match(tenant_id):
            raise ValidationFailed(
                f"tenant {tenant_id!r} must match {TENANT_PATTERN}",
            )
        if not name.strip() or len(name) > 200:
            raise ValidationFailed("name must be 1–200 characters")
        now = self._clock.now()
        if expires_at is not None and expires_at <= now:
            raise ValidationFailed("expires_at must be in the future")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        await conn.execute(
            insert(api_keys).values(
                key_id=key_id,
                name=name,
                tenant_id=tenant_id,
                role=role.value,
                secret_hash=_hash(secret),
                created_at_us=to_micros(now),
                expires_at_us=None if expires_at is None else to_micros(expires_at),
                revoked_at_us=None,
            )
        )
        record = ApiKeyRecord(key_id, name, tenant_id, role, now, expires_at, None)
        return IssuedKey(record=record, token=f"{KEY_PREFIX}_{key_id}_{secret}")

    async def list(self, conn: AsyncConnection, tenant_id: str | None = None) -> list[ApiKeyRecord]:
        query = select(api_keys).order_by(api_keys.c.created_at_us, api_keys.c.key_id)
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        rows = (await conn.execute(query)).mappings().all()
        return [
            ApiKeyRecord(
                key_id=r["key_id"],
                name=r["name"],
                tenant_id=r["tenant_id"],
                role=Role(r["role"]),
                created_at=from_micros(r["created_at_us"]),
                expires_at=None if r["expires_at_us"] is None else from_micros(r["expires_at_us"]),
                revoked_at=None if r["revoked_at_us"] is None else from_micros(r["revoked_at_us"]),
            )
            for r in rows
        ]

    async def revoke(
        self, conn: AsyncConnection, key_id: str, tenant_id: str | None = None
    ) -> None:
        query = update(api_keys).where(
            api_keys.c.key_id == key_id, api_keys.c.revoked_at_us.is_(None)
        )
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        result = await conn.execute(query.values(revoked_at_us=to_micros(self._clock.now())))
        if result.rowcount == 0:
            raise NotFound(f"no active key {key_id!r}")

    async def authenticate(self, token: str) -> Principal:
        """The principal a bearer token names; Unauthenticated (401) for anything else."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise Unauthenticated("the bearer token is not an OpsTwin API key")
        key_id, secret = match.groups()
        async with self._db.read() as conn:
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)))
                .mappings()
                .first()
            )
        if row is None or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
            raise Unauthenticated("unknown API key")
        now_us = to_micros(self._clock.now())
        if row["revoked_at_us"] is not None:
            raise Unauthenticated("this API key was revoked")
        if row["expires_at_us"] is not None and row["expires_at_us"] <= now_us:
            raise Unauthenticated("this API key has expired")
        return Principal(
            key_id=key_id,
            name=row["name"],
            tenant_id=row["tenant_id"],
            role=Role(row["role"]),
            expires_at=None if row["expires_at_us"] is None else from_micros(row["expires_at_us"]),
        )
