"""Anomaly detection as a change-log consumer (DESIGN §1).

:class:`AnomalyDetection` reads ``opstwin.telemetry.appended`` entries of every tenant, in log
order, from its persisted cursor (:class:`~opstwin.aiw.consumers.LogConsumer`), feeds their
points to one :class:`~opstwin.telemetry.anomaly.AnomalyDetector` per tenant and, in one
transaction per page:

* appends ``opstwin.anomaly.detected`` / ``opstwin.anomaly.resolved`` (``anomaly.v1``, subject
  ``twin/<twin>/asset/<asset>``, CloudEvents id = the record's ``anomaly_id``);
* records each anomaly in ``anomalies`` (what ``GET /anomalies`` lists: open or resolved);
* stores the learnt state of every series the page touched (``detector_series``);
* updates the reported baseline (mean, std, z) of every touched series on the asset's reported
  state (``opstwin.twins.state.record_baselines``; rows that ingest has not created yet are
  left alone);
* advances its cursor.

Exactly once by construction: the anomalies, the state that produced them and the cursor past
their input commit together. After a crash the page is read again with the state as it was
before it, so the same records are produced once (with fresh ids, as nothing was committed).

The scoring itself happens before that transaction (``prepare``, on forks of the live
detectors): on SQLite the write transaction holds the database's one write lock, which ingest
requests wait for, so it holds only the writes. The forks become the live state only after
the commit (``tx.after_commit``); a lost race or a failed commit drops them.

Settings per series come from the tenant's twin models (``DetectorConfig.from_twins``); an
``opstwin.twin.*`` entry makes the tenant's detector reconfigure at that point of the stream
(learnt baselines are kept).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import ChangeLog, EventFilter, LogRow, NewEvent
from opstwin.aiw.consumers import ConsumerSettings, LogConsumer
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.kit import jsonutil
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Database, Transaction, metadata
from opstwin.kit.ids import IdSource
from opstwin.telemetry.anomaly import (
    STATE_VERSION,
    AnomalyDetector,
    BaselineSnapshot,
    DetectorConfig,
    SeriesKey,
)
from opstwin.twins.model import TwinDocument
from opstwin.twins.registry import TwinRegistry
from opstwin.twins.state import Baseline, record_baselines

log = structlog.get_logger(__name__)

CONSUMER_NAME = "anomaly-detection"
TELEMETRY_APPENDED = "opstwin.telemetry.appended"
TWIN_EVENTS_PREFIX = "opstwin.twin."
ANOMALY_DETECTED = "opstwin.anomaly.detected"
ANOMALY_RESOLVED = "opstwin.anomaly.resolved"
ANOMALY_SOURCE = "/opstwin/anomalies"

detector_series = Table(
    "detector_series",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("twin_id", String(128), nullable=False),
    Column("asset_id", String(128), nullable=False),
    Column("metric", String(128), nullable=False),
    # One entry of AnomalyDetector.to_dict()["series"], as JSON text.
    Column("state", Text, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "twin_id", "asset_id", "metric"),
)

anomalies = Table(
    "anomalies",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("anomaly_id", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),  # change-log sequence of the detected event
    Column("twin_id", String(128), nullable=False),
    Column("asset_id", String(128), nullable=False),
    Column("metric", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("opened_at_us", BigInteger, nullable=False),
    Column("resolved_at_us", BigInteger, nullable=True),
    Column("record", Text, nullable=False),
    Column("resolution_record", Text, nullable=True),
    PrimaryKeyConstraint("tenant_id", "anomaly_id"),
    Index("ix_anomalies_tenant_seq", "tenant_id", "seq"),
    Index("ix_anomalies_tenant_asset", "tenant_id", "twin_id", "asset_id", "seq"),
)


class TwinModels(Protocol):
    """Where a tenant's twin models come from (the twin registry)."""

    async def document(self, conn: AsyncConnection, tenant_id: str) -> TwinDocument | None:
        """Every twin of ``tenant_id`` as one document (None: the tenant has none)."""
        ...


class RegistryModels:
    """:class:`TwinModels` read from the twin registry (current version of every twin)."""

    def __init__(self, registry: TwinRegistry) -> None:
        self._registry = registry

    async def document(self, conn: AsyncConnection, tenant_id: str) -> TwinDocument | None:
        found = await self._registry.list(conn, tenant_id)
        return TwinDocument(twins=[twin.spec for twin in found]) if found else None


def reported_baseline(key: SeriesKey, snapshot: BaselineSnapshot, now_us: int) -> Baseline:
    """The reported-state form of what the detector knows about a series."""
    return Baseline(
        twin_id=key.twin_id,
        asset_id=key.asset_id,
        metric=key.metric,
        mean=snapshot.mean,
        std=snapshot.std,
        z_score=snapshot.z,
        at_us=now_us if snapshot.last_ts is None else to_micros(snapshot.last_ts),
    )


def _state_upsert(dialect: Any) -> Any:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` of one series' state, built once per dialect
    and executed for many rows (compiled once, not per page)."""
    stmt = dialect.insert(detector_series)
    return stmt.on_conflict_do_update(
        index_elements=[c.name for c in detector_series.primary_key.columns],
        set_={"state": stmt.excluded.state, "updated_at_us": stmt.excluded.updated_at_us},
    )


_STATE_UPSERT = {"sqlite": _state_upsert(sqlite), "postgresql": _state_upsert(postgresql)}


@dataclass(slots=True)
class PageDetection:
    """What the detector made of a page: computed before the page's transaction, written in
    it, and made the live state only once it committed (:meth:`AnomalyDetection.handle`).

    ``forks`` holds, per tenant, the live detector (or a new one, for a tenant's first
    telemetry) and the fork of it that was fed the page.
    """

    first_seq: int
    last_seq: int
    count: int
    generation: int
    forks: dict[str, tuple[AnomalyDetector, AnomalyDetector]]
    records: list[tuple[str, dict[str, Any]]]
    states: list[dict[str, Any]]
    baselines: dict[str, list[Baseline]]

    def covers(self, rows: Sequence[LogRow], generation: int) -> bool:
        """Whether this was computed for exactly ``rows``, from the current live state."""
        return (
            generation == self.generation
            and len(rows) == self.count
            and rows[0].seq == self.first_seq
            and rows[-1].seq == self.last_seq
        )


class AnomalyDetection:
    """The detector's :class:`~opstwin.aiw.consumers.PreparingLogHandler`: state per tenant.

    :meth:`prepare` scores a page on forks of the live detectors, outside the write
    transaction (on SQLite that transaction holds the one write lock every ingest request
    needs); :meth:`handle` writes the outcome and adopts the forks after the commit. A lost
    race or a failed commit therefore leaves the live detectors as they were committed.
    """

    def __init__(
        self,
        *,
        changelog: ChangeLog,
        schemas: SchemaRegistry,
        clock: Clock,
        ids: IdSource,
        models: TwinModels | None = None,
    ) -> None:
        self._changelog = changelog
        self._schemas = schemas
        self._clock = clock
        self._ids = ids
        self._models = models
        self._dataschema = schemas.id_of("anomaly.v1")
        self._detectors: dict[str, AnomalyDetector] = {}
        #: Bumped by every load: work prepared from older live state is not used.
        self._generation = 0
        self._prepared: PageDetection | None = None
        self.records_emitted = 0

    def detector(self, tenant_id: str) -> AnomalyDetector | None:
        """The live detector of a tenant (None until its first telemetry)."""
        return self._detectors.get(tenant_id)

    async def _config(self, conn: AsyncConnection, tenant_id: str) -> DetectorConfig:
        if self._models is None:
            return DetectorConfig()
        document = await self._models.document(conn, tenant_id)
        return DetectorConfig() if document is None else DetectorConfig.from_twins(document)

    async def load(self, conn: AsyncConnection) -> None:
        """Rebuild every tenant's detector from ``detector_series`` and the twin models."""
        by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        rows = await conn.execute(
            select(detector_series.c.tenant_id, detector_series.c.state).order_by(
                *detector_series.primary_key.columns
            )
        )
        for tenant_id, state in rows:
            by_tenant[tenant_id].append(jsonutil.loads(state))
        detectors: dict[str, AnomalyDetector] = {}
        for tenant_id, series in by_tenant.items():
            config = await self._config(conn, tenant_id)
            detectors[tenant_id] = AnomalyDetector.from_dict(
                {"version": STATE_VERSION, "series": series}, self._ids, config
            )
        self._detectors = detectors
        self._generation += 1
        self._prepared = None
        log.info("detection.loaded", tenants=len(self._detectors))

    async def prepare(self, conn: AsyncConnection, rows: list[LogRow]) -> None:
        """Score ``rows`` on forks of the live detectors (no write transaction needed)."""
        self._prepared = await self._detect(conn, rows)

    async def handle(self, tx: Transaction, rows: list[LogRow]) -> None:
        work, self._prepared = self._prepared, None
        if work is None or not work.covers(rows, self._generation):
            work = await self._detect(tx.conn, rows)
        if work.states:
            await tx.conn.execute(_STATE_UPSERT[tx.backend], work.states)
        for tenant_id, baselines in work.baselines.items():
            await record_baselines(tx, tenant_id, baselines)
        if work.records:
            await self._record_anomalies(tx, work.records)
        tx.after_commit(partial(self._adopt, work))

    def _adopt(self, work: PageDetection) -> None:
        """The page committed: what its forks learnt is the live state now."""
        for tenant_id, (live, fork) in work.forks.items():
            self._detectors.setdefault(tenant_id, live).adopt(fork)
        self.records_emitted += len(work.records)

    async def _detect(self, conn: AsyncConnection, rows: list[LogRow]) -> PageDetection:
        forks: dict[str, tuple[AnomalyDetector, AnomalyDetector]] = {}
        pending: dict[str, list[Any]] = defaultdict(list)  # tenant → points not yet fed
        records: list[tuple[str, dict[str, Any]]] = []

        async def fork_of(tenant_id: str) -> AnomalyDetector:
            pair = forks.get(tenant_id)
            if pair is None:
                live = self._detectors.get(tenant_id)
                if live is None:
                    live = AnomalyDetector(self._ids, await self._config(conn, tenant_id))
                pair = forks[tenant_id] = (live, live.fork())
            return pair[1]

        async def flush(tenant_id: str) -> None:
            points = pending.pop(tenant_id, None)
            if points:
                fork = await fork_of(tenant_id)
                records.extend((tenant_id, r) for r in fork.process_events(points))

        for row in rows:
            if row.type.startswith(TWIN_EVENTS_PREFIX):
                # Points before the model change are judged with the settings they came under.
                await flush(row.tenant_id)
                if row.tenant_id in forks or row.tenant_id in self._detectors:
                    config = await self._config(conn, row.tenant_id)
                    (await fork_of(row.tenant_id)).reconfigure(config)
                continue
            pending[row.tenant_id].extend(jsonutil.loads(row.envelope)["data"]["points"])
        for tenant_id in list(pending):
            await flush(tenant_id)

        # Every series the page fed: its learnt state, and the baseline its asset reports
        # (in key order, as record_baselines locks rows in).
        now_us = to_micros(self._clock.now())
        states: list[dict[str, Any]] = []
        baselines: dict[str, list[Baseline]] = {}
        for tenant_id, (_, fork) in forks.items():
            keys = sorted(fork.touched())
            if not keys:
                continue
            states.extend(
                {
                    "tenant_id": tenant_id,
                    "twin_id": s["twin_id"],
                    "asset_id": s["asset_id"],
                    "metric": s["metric"],
                    "state": jsonutil.dumps_str(s),
                    "updated_at_us": now_us,
                }
                for s in fork.to_dict(keys)["series"]
            )
            baselines[tenant_id] = [
                reported_baseline(key, snapshot, now_us)
                for key in keys
                if (snapshot := fork.baseline(key)) is not None
            ]
        return PageDetection(
            first_seq=rows[0].seq,
            last_seq=rows[-1].seq,
            count=len(rows),
            generation=self._generation,
            forks=forks,
            records=records,
            states=states,
            baselines=baselines,
        )

    async def _record_anomalies(
        self, tx: Transaction, records: list[tuple[str, dict[str, Any]]]
    ) -> None:
        events = [
            NewEvent(
                tenant_id=tenant_id,
                type=ANOMALY_DETECTED if record["status"] == "open" else ANOMALY_RESOLVED,
                source=ANOMALY_SOURCE,
                subject=f"twin/{record['twin_id']}/asset/{record['asset_id']}",
                id=record["anomaly_id"],
                dataschema=self._dataschema,
                data=record,
            )
            for tenant_id, record in records
        ]
        appended = await self._changelog.append(tx, events)
        opened: list[dict[str, Any]] = []
        for (tenant_id, record), entry in zip(records, appended, strict=True):
            ts_us = to_micros(datetime.fromisoformat(record["ts"]))
            if record["status"] == "open":
                opened.append(
                    {
                        "tenant_id": tenant_id,
                        "anomaly_id": record["anomaly_id"],
                        "seq": entry.seq,
                        "twin_id": record["twin_id"],
                        "asset_id": record["asset_id"],
                        "metric": record["metric"],
                        "kind": record["kind"],
                        "severity": record["severity"],
                        "status": "open",
                        "opened_at_us": ts_us,
                        "resolved_at_us": None,
                        "record": jsonutil.dumps_str(record),
                        "resolution_record": None,
                    }
                )
                continue
            if opened:  # the anomaly it resolves may have opened in this very page
                await tx.conn.execute(anomalies.insert(), opened)
                opened = []
            await tx.conn.execute(
                update(anomalies)
                .where(
                    anomalies.c.tenant_id == tenant_id,
                    anomalies.c.anomaly_id == record["resolves"],
                )
                .values(
                    status="resolved",
                    resolved_at_us=ts_us,
                    resolution_record=jsonutil.dumps_str(record),
                )
            )
        if opened:
            await tx.conn.execute(anomalies.insert(), opened)


def detection_consumer(
    *,
    db: Database,
    changelog: ChangeLog,
    schemas: SchemaRegistry,
    clock: Clock,
    ids: IdSource,
    models: TwinModels | None,
    settings: ConsumerSettings,
) -> tuple[LogConsumer, AnomalyDetection]:
    """The detection handler and the consumer that runs it (started by the app lifespan).

    ``settings.batch_window_s`` (``OPSTWIN_DETECTION_BATCH_WINDOW_S``, 100 ms by default): how
    long telemetry may gather after a page before the next is read. Much of a page's cost is per
    page and per series touched (the transaction, each series' state and baseline rows, a
    vectorised pass per series), so under sustained ingest one page per window costs the ingest
    path far less than one page per request; it adds at most the window to detection latency.
    """
    handler = AnomalyDetection(
        changelog=changelog, schemas=schemas, clock=clock, ids=ids, models=models
    )
    consumer = LogConsumer(
        CONSUMER_NAME,
        db=db,
        changelog=changelog,
        clock=clock,
        handler=handler,
        flt=EventFilter(types=frozenset({TELEMETRY_APPENDED}), type_prefixes=(TWIN_EVENTS_PREFIX,)),
        settings=settings,
    )
    return consumer, handler
