"""TelemetryIngestor: a batch of decoded events → normalised, deduplicated, stored, logged.

The one entry point for telemetry, whatever carried it (``POST /telemetry/ingest``, the MQTT
source). :meth:`TelemetryIngestor.ingest` works in the caller's transaction and, in it:

1. normalises every event (:class:`~opstwin.telemetry.normalizer.EventNormalizer`), keeping
   per-index errors for the ones it rejects;
2. drops repeats of an ``event_id`` within the batch (the first wins) and events already
   stored (``event_id`` is unique per tenant) — both are counted as duplicates, not errors;
3. stores the new events and one point per (event, metric) with a value;
4. moves each asset's reported state forward (latest value, ts, quality per metric);
5. appends one ``opstwin.telemetry.appended`` entry per (twin, asset) of the batch, whose
   ``data`` is ``{"twin_id", "asset_id", "points": [<telemetry.v1 events>]}`` — last, because
   the change log's ordering lock is held from the append until commit.

Everything commits together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import Appended, ChangeLog, NewEvent
from opstwin.config import TelemetrySettings
from opstwin.kit.clock import Clock, to_micros
from opstwin.kit.db import Transaction
from opstwin.kit.errors import FieldError, PayloadTooLarge
from opstwin.kit.ids import IdSource
from opstwin.telemetry.normalizer import EventNormalizer, NormalizedEvent, TwinCatalog
from opstwin.telemetry.repository import TelemetryStore
from opstwin.twins.registry import TwinRegistry
from opstwin.twins.state import LatestSample, record_latest

EVENT_TYPE = "opstwin.telemetry.appended"
EVENT_SOURCE = "/opstwin/telemetry"
#: ``dataschema`` of the appended entries: the batch shape defined inside telemetry.v1.
APPENDED_SCHEMA = "urn:opstwin:schema:telemetry.v1#/$defs/appended"
_CATALOG_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the event at ``index`` of the batch was not stored."""

    index: int
    errors: list[FieldError]

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "errors": [e.as_dict() for e in self.errors]}


@dataclass(slots=True)
class IngestResult:
    """What a batch came to. ``events`` are the normalised events stored by this call."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    appended: list[Appended] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The response body of ``POST /telemetry/ingest``."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.as_json() for r in self.rejected],
        }


class TelemetryIngestor:
    """Normalises and stores telemetry batches (no HTTP, no commit: the caller owns ``tx``)."""

    def __init__(
        self,
        registry: TwinRegistry,
        changelog: ChangeLog,
        clock: Clock,
        ids: IdSource,
        settings: TelemetrySettings,
    ) -> None:
        self._registry = registry
        self._changelog = changelog
        self._clock = clock
        self._ids = ids
        self._settings = settings
        self._normalizer = EventNormalizer(settings)
        self._store = TelemetryStore()
        self._catalogs: dict[tuple[str, str, int], TwinCatalog] = {}

    @property
    def store(self) -> TelemetryStore:
        return self._store

    def check_batch_length(self, count: int) -> None:
        """413 when a batch holds more events than ``telemetry.max_batch_events``."""
        limit = self._settings.max_batch_events
        if count > limit:
            raise PayloadTooLarge(
                f"the batch holds {count} events; the limit is {limit} per request",
                extensions={"limit_events": limit},
            )

    async def _catalog(
        self, conn: AsyncConnection, tenant_id: str, twin_id: str
    ) -> TwinCatalog | None:
        twin = await self._registry.find(conn, tenant_id, twin_id)
        if twin is None:
            return None
        key = (tenant_id, twin_id, twin.version)
        catalog = self._catalogs.get(key)
        if catalog is None:
            if len(self._catalogs) >= _CATALOG_CACHE_SIZE:
                self._catalogs.clear()
            catalog = self._catalogs[key] = TwinCatalog.of(twin)
        return catalog

    async def ingest(self, tx: Transaction, tenant_id: str, events: list[Any]) -> IngestResult:
        """Normalise, deduplicate and store ``events`` (decoded JSON values, telemetry.v1
        shape) in ``tx``; see the module docstring. Raises ``PayloadTooLarge`` past the
        batch-length limit; every other problem is a per-index rejection."""
        self.check_batch_length(len(events))
        result = IngestResult()
        if not events:
            return result
        now = self._clock.now()
        now_us = to_micros(now)

        twin_ids = {
            e["twin_id"]
            for e in events
            if isinstance(e, dict) and isinstance(e.get("twin_id"), str)
        }
        catalogs = {t: await self._catalog(tx.conn, tenant_id, t) for t in twin_ids}
        without_id = [i for i, e in enumerate(events) if _needs_id(e)]
        new_ids = dict(zip(without_id, self._ids.batch("tel", len(without_id)), strict=True))

        normalize = self._normalizer.normalize
        accepted: list[NormalizedEvent] = []
        seen: set[str] = set()
        for index, raw in enumerate(events):
            outcome = normalize(raw, catalogs, now_us, new_ids.get(index, "") if new_ids else "")
            if isinstance(outcome, list):
                result.rejected.append(Rejection(index, outcome))
            elif outcome.event_id in seen:
                result.duplicates += 1
            else:
                seen.add(outcome.event_id)
                accepted.append(outcome)

        stored_nos = await self._store.insert_events(
            tx,
            tenant_id,
            accepted,
            now_us,
        )
        result.duplicates += len(accepted) - len(stored_nos)
        stored = (
            [e for e in accepted if e.event_id in stored_nos]
            if len(stored_nos) < len(accepted)
            else accepted
        )
        result.accepted = len(stored)
        if not stored:
            return result

        # Per asset, then per metric name: the per-point work is one tuple each.
        by_asset: dict[tuple[str, str], list[NormalizedEvent]] = {}
        for e in stored:
            group = by_asset.get((e.twin_id, e.asset_id))
            if group is None:
                group = by_asset[(e.twin_id, e.asset_id)] = []
            group.append(e)
        names: dict[tuple[str, str], set[str]] = {}
        for asset, group in by_asset.items():
            metric_names: set[str] = set()
            for e in group:
                metric_names.update(e.document["metrics"])
            names[asset] = metric_names
        series = await self._store.series_ids(
            tx, tenant_id, {(t, a, m) for (t, a), ms in names.items() for m in ms}
        )
        points: list[tuple[int, int, int, float]] = []
        samples: list[LatestSample] = []
        for (twin_id, asset_id), group in by_asset.items():
            ids = {m: series[(twin_id, asset_id, m)] for m in names[(twin_id, asset_id)]}
            for e in group:
                ts_us, event_no = e.ts_us, stored_nos[e.event_id]
                points += [
                    (ids[m], ts_us, event_no, v)
                    for m, v in e.document["metrics"].items()
                    if v is not None
                ]
            # Latest sample per metric: the newest ts, and the later event of the batch on a tie.
            remaining = set(names[(twin_id, asset_id)])
            for _, e in sorted(enumerate(group), key=_ts_then_index, reverse=True):
                for m, v in e.document["metrics"].items():
                    if m in remaining:
                        remaining.discard(m)
                        samples.append(
                            LatestSample(twin_id, asset_id, m, v, e.ts_us, e.quality, e.event_id)
                        )
                if not remaining:
                    break
        await self._store.insert_points(tx, points)
        await record_latest(tx, tenant_id, samples)
        result.events = [e.document for e in stored]
        result.appended = await self._changelog.append(
            tx,
            [
                NewEvent(
                    tenant_id=tenant_id,
                    type=EVENT_TYPE,
                    source=EVENT_SOURCE,
                    subject=f"twin/{twin_id}/asset/{asset_id}",
                    dataschema=APPENDED_SCHEMA,
                    data={
                        "twin_id": twin_id,
                        "asset_id": asset_id,
                        "points": [e.document for e in group],
                    },
                )
                for (twin_id, asset_id), group in by_asset.items()
            ],
        )
        return result


def _ts_then_index(item: tuple[int, NormalizedEvent]) -> tuple[int, int]:
    return item[1].ts_us, item[0]


def _needs_id(raw: Any) -> bool:
    return not isinstance(raw, dict) or raw.get("event_id") is None
