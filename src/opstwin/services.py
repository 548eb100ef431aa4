"""The components of one running OpsTwin, built by the app factory and handed to endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from opstwin.aiw.changelog import ChangeLog
from opstwin.aiw.feed import LogFeed
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.config import Settings
from opstwin.kit.clock import Clock
from opstwin.kit.db import Database
from opstwin.kit.idempotency import IdempotencyStore
from opstwin.kit.ids import IdSource
from opstwin.ops.metrics import Metrics
from opstwin.policy.principals import ApiKeyService

if TYPE_CHECKING:
    from opstwin.aiw.manifest import ManifestBuilder


@dataclass(slots=True)
class Services:
    """Everything an endpoint may need; one instance per app."""

    settings: Settings
    clock: Clock
    ids: IdSource
    db: Database
    metrics: Metrics
    schemas: SchemaRegistry
    changelog: ChangeLog
    feed: LogFeed
    keys: ApiKeyService
    idempotency: IdempotencyStore
    manifest: ManifestBuilder


def build_services(settings: Settings, clock: Clock, ids: IdSource) -> Services:
    """Construct (but do not start) every component for ``settings``."""
    from opstwin.aiw.manifest import ManifestBuilder

    db = Database(
        settings.database_url,
        pool_size=settings.database.pool_size,
        busy_timeout_s=settings.database.busy_timeout_s,
        echo=settings.database.echo,
        schema_name=settings.database.schema_name,
    )
    metrics = Metrics()
    schemas = SchemaRegistry.from_package()
    changelog = ChangeLog(db, schemas, clock, ids)
    return Services(
        settings=settings,
        clock=clock,
        ids=ids,
        db=db,
        metrics=metrics,
        schemas=schemas,
        changelog=changelog,
        feed=LogFeed(db, changelog, settings.feed, metrics),
        keys=ApiKeyService(db, clock),
        idempotency=IdempotencyStore(clock),
        manifest=ManifestBuilder(settings, schemas),
    )
