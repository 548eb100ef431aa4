"""PolicyStore: every version of each tenant's action policy (``policy.v1``), and the active one.

Versions
--------
A tenant that never stored a policy runs on the built-in defaults (``Policy()``), which are
**version 1**; the first stored policy is version 2, and each change adds one. Versions are
immutable once written: decisions and audit records name ``{"policy_id", "version"}`` and that
pair always means the same document.

Writing
-------
:meth:`PolicyStore.put` validates a ``policy.v1`` document (422 with a JSON pointer per problem),
assigns the next version — a ``version`` sent with the document must be exactly that (409
otherwise: optimistic concurrency, the client was looking at an older policy) — and stores it
with an ``opstwin.policy.updated`` change-log event and a ``policy.update`` audit record, all in
the caller's transaction.

Reading
-------
:meth:`PolicyStore.active` is on the hot path (scoring every proposal). It asks the database for
the current version number only (one primary-key lookup, on the caller's connection, so it is
right inside a transaction and across processes) and keeps parsed versions in memory: a version's
document is parsed once per process. A version enters that cache from a read, or from a put once
its transaction has committed (``tx.after_commit``), so a rolled-back put can never be served.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import ChangeLog, NewEvent
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.audit.chain import AuditEntry
from opstwin.audit.store import AuditLog
from opstwin.audit.tables import policies
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, from_micros, to_micros
from opstwin.kit.db import Transaction
from opstwin.kit.errors import Conflict, FieldError, NotFound, ValidationFailed
from opstwin.kit.ids import IdSource
from opstwin.policy.policy import Policy
from opstwin.policy.principals import Principal

POLICY_ID = "default"
BUILTIN_VERSION = 1
EVENT_TYPE = "opstwin.policy.updated"
EVENT_SOURCE = "/opstwin/policy"
AUDIT_ACTION = "policy.update"
RESOURCE = f"policy/{POLICY_ID}"
#: Parsed versions kept in memory (a policy is a few kB; versions never change).
_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """One version of a tenant's policy with who stored it and when (``None``: built in)."""

    tenant_id: str
    policy: Policy
    created_by: str | None
    created_at: datetime | None

    @property
    def version(self) -> int:
        return self.policy.version

    @property
    def builtin(self) -> bool:
        """True for the built-in defaults (version 1, never stored)."""
        return self.created_by is None

    def document(self) -> dict[str, Any]:
        """The ``policy.v1`` document, as stored and as ``opstwin.policy.updated`` carries it."""
        return policy_document(self.policy)


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """A version as listed: its number, author, time and the digest of its document."""

    version: int
    created_by: str | None
    created_at: datetime | None
    digest: str

    @property
    def builtin(self) -> bool:
        return self.created_by is None


def policy_document(policy: Policy) -> dict[str, Any]:
    """The complete ``policy.v1`` JSON of ``policy`` (defaults spelt out, no editor ``$schema``)."""
    dumped: dict[str, Any] = policy.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"schema_uri"}
    )
    return dumped


def digest_of(document: bytes) -> str:
    """``sha256:<hex>`` of a canonical document (how audit records name their inputs)."""
    return "sha256:" + hashlib.sha256(document).hexdigest()


def parse_policy(document: object) -> Policy:
    """Validate a decoded ``policy.v1`` document; 422 with a JSON pointer per problem."""
    if not isinstance(document, Mapping):
        raise ValidationFailed(
            "a policy must be a JSON object (policy.v1)",
            errors=[FieldError("expected an object", pointer="")],
        )
    try:
        return Policy.model_validate(dict(document))
    except PydanticValidationError as exc:
        errors = [
            FieldError(
                str(err["msg"]).removeprefix("Value error, "),
                pointer="".join(f"/{_escape(part)}" for part in err["loc"]),
            )
            for err in exc.errors(include_url=False)
        ]
        count = len(errors)
        first = errors[0]
        raise ValidationFailed(
            f"policy is invalid ({count} error{'s' if count != 1 else ''}): "
            f"{first.pointer or '/'}: {first.detail}",
            errors=errors,
        ) from None


def _escape(part: object) -> str:
    """RFC 6901 escaping of one JSON-pointer reference token."""
    return str(part).replace("~", "~0").replace("/", "~1")


class PolicyStore:
    """Stores, versions and serves every tenant's action policy."""

    def __init__(
        self,
        changelog: ChangeLog,
        audit: AuditLog,
        schemas: SchemaRegistry,
        clock: Clock,
        ids: IdSource,
    ) -> None:
        self._changelog = changelog
        self._audit = audit
        self._schemas = schemas
        self._clock = clock
        self._ids = ids
        self._cache: dict[tuple[str, int], StoredPolicy] = {}
        self._builtin_digest = digest_of(jsonutil.canonical(policy_document(Policy())))

    # -- reading ---------------------------------------------------------------------------

    async def active(self, conn: AsyncConnection, tenant_id: str) -> Policy:
        """The policy in force for ``tenant_id``: its highest stored version, or the built-in
        defaults (``Policy()``, version 1) when the tenant has none stored."""
        return (await self.current(conn, tenant_id)).policy

    async def current(self, conn: AsyncConnection, tenant_id: str) -> StoredPolicy:
        """Like :meth:`active`, with who stored it and when."""
        version = await self._latest(conn, tenant_id)
        if version is None:
            return self._builtin(tenant_id)
        return await self._load(conn, tenant_id, version)

    async def get(self, conn: AsyncConnection, tenant_id: str, version: int) -> StoredPolicy:
        """One version (404 ``NotFound`` when there is no such version)."""
        cached = self._cache.get((tenant_id, version))
        if cached is not None:
            return cached
        found = await self._find(conn, tenant_id, version)
        if found is not None:
            return found
        if version == BUILTIN_VERSION:
            return self._builtin(tenant_id)
        raise NotFound(f"the policy has no version {version}; GET /policy/versions lists them")

    async def versions(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        *,
        before: int | None = None,
        limit: int = 100,
    ) -> tuple[builtins.list[PolicyVersion], bool]:
        """Versions newest first (the built-in version 1 last), below ``before`` if given; and
        whether there are more."""
        clauses = [policies.c.tenant_id == tenant_id, policies.c.policy_id == POLICY_ID]
        if before is not None:
            clauses.append(policies.c.version < before)
        rows = (
            await conn.execute(
                select(
                    policies.c.version,
                    policies.c.created_by,
                    policies.c.created_at_us,
                    policies.c.document,
                )
                .where(*clauses)
                .order_by(policies.c.version.desc())
                .limit(limit + 1)
            )
        ).all()
        listed = [
            PolicyVersion(
                version=int(row.version),
                created_by=row.created_by,
                created_at=from_micros(int(row.created_at_us)),
                digest=digest_of(row.document.encode("utf-8")),
            )
            for row in rows
        ]
        has_builtin = any(v.version == BUILTIN_VERSION for v in listed)
        if len(listed) <= limit and not has_builtin and (before is None or before > 1):
            listed.append(PolicyVersion(BUILTIN_VERSION, None, None, self._builtin_digest))
        if len(listed) > limit:
            return listed[:limit], True
        return listed, False

    async def _latest(self, conn: AsyncConnection, tenant_id: str) -> int | None:
        version = (
            await conn.execute(
                select(func.max(policies.c.version)).where(
                    policies.c.tenant_id == tenant_id, policies.c.policy_id == POLICY_ID
                )
            )
        ).scalar_one_or_none()
        return None if version is None else int(version)

    async def _load(self, conn: AsyncConnection, tenant_id: str, version: int) -> StoredPolicy:
        cached = self._cache.get((tenant_id, version))
        if cached is not None:
            return cached
        found = await self._find(conn, tenant_id, version)
        if found is None:  # pragma: no cover - versions are never deleted
            raise NotFound(f"the policy has no version {version}")
        return found

    async def _find(
        self, conn: AsyncConnection, tenant_id: str, version: int
    ) -> StoredPolicy | None:
        row = (
            await conn.execute(
                select(policies.c.document, policies.c.created_by, policies.c.created_at_us).where(
                    policies.c.tenant_id == tenant_id,
                    policies.c.policy_id == POLICY_ID,
                    policies.c.version == version,
                )
            )
        ).one_or_none()
        if row is None:
            return None
        stored = StoredPolicy(
            tenant_id=tenant_id,
            # Stored documents passed validation when written; JSON mode keeps strictness sane.
            policy=Policy.model_validate_json(row.document),
            created_by=row.created_by,
            created_at=from_micros(int(row.created_at_us)),
        )
        self._remember(stored)
        return stored

    def _builtin(self, tenant_id: str) -> StoredPolicy:
        return StoredPolicy(tenant_id=tenant_id, policy=Policy(), created_by=None, created_at=None)

    def _remember(self, stored: StoredPolicy) -> None:
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[(stored.tenant_id, stored.version)] = stored

    # -- writing ---------------------------------------------------------------------------

    async def put(
        self, tx: Transaction, tenant_id: str, document: Mapping[str, Any], actor: Principal
    ) -> StoredPolicy:
        """Validate and store ``document`` as the tenant's next policy version.

        422 (``ValidationFailed``, pointers into the document) when it is not a valid
        ``policy.v1`` or names another ``policy_id``; 409 (``Conflict``) when it carries a
        ``version`` other than the next one. Appends an ``opstwin.policy.updated`` event and a
        ``policy.update`` audit record in ``tx``.
        """
        parsed = parse_policy(document)
        if parsed.policy_id != POLICY_ID:
            raise ValidationFailed(
                f"a tenant has one policy, {POLICY_ID!r}; policy_id {parsed.policy_id!r} is not it",
                errors=[FieldError(f"must be {POLICY_ID!r} (or absent)", pointer="/policy_id")],
            )
        previous = await self._latest(tx.conn, tenant_id) or BUILTIN_VERSION
        version = previous + 1
        if "version" in document and document["version"] != version:
            raise _stale(previous, version)
        policy = parsed.model_copy(update={"version": version, "schema_uri": None})
        data = policy_document(policy)
        text = jsonutil.canonical(data)
        now = self._clock.now()
        try:
            await tx.conn.execute(
                insert(policies).values(
                    tenant_id=tenant_id,
                    policy_id=POLICY_ID,
                    version=version,
                    document=text.decode("utf-8"),
                    created_by=actor.key_id,
                    created_at_us=to_micros(now),
                )
            )
        except IntegrityError as exc:  # another put of the same version committed first
            raise _stale(version, version + 1) from exc
        stored = StoredPolicy(tenant_id, policy, created_by=actor.key_id, created_at=now)
        await self._audit.append(
            tx,
            [
                AuditEntry(
                    record_id=self._ids.new("aud"),
                    tenant_id=tenant_id,
                    at=now,
                    actor_id=actor.key_id,
                    role=actor.role.value,
                    action=AUDIT_ACTION,
                    resource=RESOURCE,
                    inputs={"document": digest_of(text)},
                    policy=policy.ref(),
                    outcome="stored",
                )
            ],
        )
        # Appended last: the change log's ordering lock is held from here until commit.
        await self._changelog.append(
            tx,
            [
                NewEvent(
                    tenant_id=tenant_id,
                    type=EVENT_TYPE,
                    source=EVENT_SOURCE,
                    subject=RESOURCE,
                    dataschema=self._schemas.id_of("policy.v1"),
                    data=data,
                    time=now,
                    extensions={"version": version, "previousversion": previous},
                )
            ],
        )
        tx.after_commit(lambda: self._remember(stored))
        return stored


def _stale(current: int, expected: int) -> Conflict:
    return Conflict(
        f"the policy is at version {current}: send version {expected} (or no version) to "
        "replace it; GET /policy returns the current one",
        extensions={"current_version": current},
    )
