"""TwinRegistry: the twin models of each tenant, versioned, with a change-log entry per update.

A twin model enters through :meth:`TwinRegistry.put` only (``PUT /twins/{id}``, ``opstwin twins
load``): the document is validated by the twin loader, each twin in it is stored as a new
version when it differs from the current one, and an ``opstwin.twin.updated`` event is appended
in the same transaction. Its ``data`` is the twin as a ``twin.v1`` document (``{"twins": [..]}``,
valid against ``dataschema``); the RFC 6902 JSON Patch from the previous version's ``data`` is
the CloudEvents extension ``patch`` (JSON text — extensions are primitive values, and a key
inside ``data`` would make it invalid against ``twin.v1``), with ``version`` and
``previousversion`` beside it.

Reads (:meth:`get`, :meth:`list`) run on any connection the caller holds, so a snapshot read
sees the model and the state of the same moment. Parsed models are cached per (tenant, twin,
version): a version never changes once written, so the cache needs no invalidation.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jsonpatch
from sqlalchemy import and_, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import ChangeLog, NewEvent
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, from_micros, to_micros
from opstwin.kit.db import Transaction
from opstwin.kit.errors import NotFound
from opstwin.twins.loader import parse_twin_document
from opstwin.twins.model import TwinDocument, TwinSpec
from opstwin.twins.tables import twins

EVENT_TYPE = "opstwin.twin.updated"
EVENT_SOURCE = "/opstwin/twins"
#: Parsed models kept in memory; a model is a few kB, versions are immutable.
_CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class Twin:
    """One version of a tenant's twin model."""

    tenant_id: str
    id: str
    version: int
    spec: TwinSpec
    updated_at: datetime

    def document(self) -> dict[str, Any]:
        """This twin as a ``twin.v1`` document (what ``opstwin.twin.updated`` carries)."""
        return {"twins": [twin_json(self.spec)]}


def twin_json(spec: TwinSpec) -> dict[str, Any]:
    """The JSON form of one twin as it was written (defaults the author left out stay out)."""
    dumped: dict[str, Any] = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return dumped


class TwinRegistry:
    """Stores, versions and serves the twin models of every tenant."""

    def __init__(self, changelog: ChangeLog, schemas: SchemaRegistry, clock: Clock) -> None:
        self._changelog = changelog
        self._schemas = schemas
        self._clock = clock
        self._cache: dict[tuple[str, str, int], Twin] = {}

    # -- reading ---------------------------------------------------------------------------

    async def get(self, conn: AsyncConnection, tenant_id: str, twin_id: str) -> Twin:
        """The current version of ``twin_id`` (404 ``NotFound`` when the tenant has none)."""
        found = await self.find(conn, tenant_id, twin_id)
        if found is None:
            raise NotFound(
                f"no twin {twin_id!r} in this tenant; GET /twins lists them, PUT /twins/{twin_id} creates it"
            )
        return found

    async def find(self, conn: AsyncConnection, tenant_id: str, twin_id: str) -> Twin | None:
        """Like :meth:`get`, but ``None`` when there is no such twin."""
        version = (
            await conn.execute(
                select(func.max(twins.c.version)).where(
                    twins.c.tenant_id == tenant_id, twins.c.twin_id == twin_id
                )
            )
        ).scalar_one_or_none()
        if version is None:
            return None
        cached = self._cache.get((tenant_id, twin_id, int(version)))
        if cached is not None:
            return cached
        row = (
            await conn.execute(
                select(twins.c.document, twins.c.created_at_us).where(
                    twins.c.tenant_id == tenant_id,
                    twins.c.twin_id == twin_id,
                    twins.c.version == version,
                )
            )
        ).one()
        return self._remember(
            tenant_id, twin_id, int(version), row.document, int(row.created_at_us)
        )

    async def list(self, conn: AsyncConnection, tenant_id: str) -> list[Twin]:
        """The current version of every twin of the tenant, by id."""
        latest = (
            select(twins.c.twin_id, func.max(twins.c.version).label("version"))
            .where(twins.c.tenant_id == tenant_id)
            .group_by(twins.c.twin_id)
            .subquery()
        )
        rows = (
            await conn.execute(
                select(twins.c.twin_id, twins.c.version, twins.c.document, twins.c.created_at_us)
                .join(
                    latest,
                    and_(twins.c.twin_id == latest.c.twin_id, twins.c.version == latest.c.version),
                )
                .where(twins.c.tenant_id == tenant_id)
                .order_by(twins.c.twin_id)
            )
        ).all()
        out: list[Twin] = []
        for row in rows:
            cached = self._cache.get((tenant_id, row.twin_id, int(row.version)))
            out.append(
                cached
                or self._remember(
                    tenant_id,
                    row.twin_id,
                    int(row.version),
                    row.document,
                    int(row.created_at_us),
                )
            )
        return out

    def _remember(
        self, tenant_id: str, twin_id: str, version: int, document: str, created_at_us: int
    ) -> Twin:
        twin = Twin(
            tenant_id=tenant_id,
            id=twin_id,
            version=version,
            # Stored documents passed the loader when written; JSON mode keeps strictness sane.
            spec=TwinSpec.model_validate_json(document),
            updated_at=from_micros(created_at_us),
        )
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[(tenant_id, twin_id, version)] = twin
        return twin

    # -- writing ---------------------------------------------------------------------------

    async def put(
        self, tx: Transaction, tenant_id: str, document: TwinDocument | Mapping[str, Any]
    ) -> builtins.list[Twin]:
        """Validate ``document`` (a ``twin.v1`` document) and store each twin in it.

        A twin identical to its current version is left alone (no new version, no event), so
        loading the same file twice is harmless. Returns the current version of each twin, in
        document order. Raises ``ValidationFailed`` with pointers when the document is invalid.
        """
        parsed = document if isinstance(document, TwinDocument) else parse_twin_document(document)
        now = self._clock.now()
        results: builtins.list[Twin] = []
        events: builtins.list[NewEvent] = []
        dataschema = self._schemas.id_of("twin.v1")
        for spec in parsed.twins:
            previous = await self.find(tx.conn, tenant_id, spec.id)
            new_json = twin_json(spec)
            old_json = twin_json(previous.spec) if previous is not None else None
            if previous is not None and old_json == new_json:
                results.append(previous)
                continue
            version = 1 if previous is None else previous.version + 1
            text = jsonutil.dumps_str(new_json)
            await tx.conn.execute(
                insert(twins).values(
                    tenant_id=tenant_id,
                    twin_id=spec.id,
                    version=version,
                    document=text,
                    created_at_us=to_micros(now),
                )
            )
            twin = self._remember(tenant_id, spec.id, version, text, to_micros(now))
            results.append(twin)
            data = {"twins": [new_json]}
            extensions: dict[str, str | int | bool] = {"version": version}
            if old_json is not None and previous is not None:
                patch = jsonpatch.make_patch({"twins": [old_json]}, data).patch
                extensions["patch"] = jsonutil.dumps_str(patch)
                extensions["previousversion"] = previous.version
            events.append(
                NewEvent(
                    tenant_id=tenant_id,
                    type=EVENT_TYPE,
                    source=EVENT_SOURCE,
                    subject=f"twin/{spec.id}",
                    dataschema=dataschema,
                    data=data,
                    extensions=extensions,
                )
            )
        # Appended last: the change log's ordering lock is held from here until commit.
        await self._changelog.append(tx, events)
        return results
