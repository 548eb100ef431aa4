"""Reported and desired state of assets (DESIGN §4).

*Reported* state is the latest sample of every (asset, metric): value, timestamp, quality and
the event that carried it, written by telemetry ingest in the ingest transaction (newer samples
only — a late, older sample never overwrites a newer one). The anomaly detector adds its
baseline (mean, std) and the current z-score to the same row through :func:`record_baselines`.
*Desired* state is what the twin model says each setpoint should be (``current``, else
``default``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.kit.clock import from_micros, rfc3339
from opstwin.kit.db import Transaction
from opstwin.twins.model import AssetSpec
from opstwin.twins.tables import asset_state


@dataclass(frozen=True, slots=True)
class LatestSample:
    """The newest sample of one (asset, metric) in an ingested batch."""

    twin_id: str
    asset_id: str
    metric: str
    value: float | None
    ts_us: int
    quality: float
    event_id: str


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the anomaly detector knows about one series right now."""

    twin_id: str
    asset_id: str
    metric: str
    mean: float | None
    std: float | None
    z_score: float | None
    at_us: int


@dataclass(frozen=True, slots=True)
class ReportedMetric:
    """Reported state of one metric."""

    value: float | None
    ts_us: int
    quality: float
    event_id: str
    baseline_mean: float | None
    baseline_std: float | None
    z_score: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ts": rfc3339(from_micros(self.ts_us)),
            "quality": self.quality,
            "event_id": self.event_id,
            "baseline_mean": self.baseline_mean,
            "baseline_std": self.baseline_std,
            "z_score": self.z_score,
        }


async def record_latest(tx: Transaction, tenant_id: str, samples: Sequence[LatestSample]) -> None:
    """Upsert reported state; a row only moves forward in time (``ts_us`` never decreases).

    Rows are written in key order, as :func:`record_baselines` does: writers that lock several
    rows of one asset in the same order cannot deadlock each other (PostgreSQL row locks).
    """
    if not samples:
        return
    samples = sorted(samples, key=lambda s: (s.twin_id, s.asset_id, s.metric))
    insert_ = pg_insert if tx.backend == "postgresql" else sqlite_insert
    stmt = insert_(asset_state)
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "twin_id", "asset_id", "metric"],
        set_={
            "value": stmt.excluded.value,
            "ts_us": stmt.excluded.ts_us,
            "quality": stmt.excluded.quality,
            "event_id": stmt.excluded.event_id,
        },
        where=stmt.excluded.ts_us >= asset_state.c.ts_us,
    )
    # executemany of one cached statement: no per-batch compilation of a multi-row VALUES.
    await tx.conn.execute(
        stmt,
        [
            {
                "tenant_id": tenant_id,
                "twin_id": s.twin_id,
                "asset_id": s.asset_id,
                "metric": s.metric,
                "value": s.value,
                "ts_us": s.ts_us,
                "quality": s.quality,
                "event_id": s.event_id,
            }
            for s in samples
        ],
    )


async def record_baselines(tx: Transaction, tenant_id: str, baselines: Sequence[Baseline]) -> None:
    """Store the detector's baseline and z-score on existing reported-state rows (in key
    order, like :func:`record_latest`, so the two never deadlock)."""
    if not baselines:
        return
    # executemany of one cached statement: a round trip per row cost ~0.6 ms each.
    await tx.conn.execute(
        _UPDATE_BASELINE,
        [
            {
                "b_tenant": tenant_id,
                "b_twin": b.twin_id,
                "b_asset": b.asset_id,
                "b_metric": b.metric,
                "b_mean": b.mean,
                "b_std": b.std,
                "b_z": b.z_score,
                "b_at": b.at_us,
            }
            for b in sorted(baselines, key=lambda b: (b.twin_id, b.asset_id, b.metric))
        ],
    )


_UPDATE_BASELINE = (
    update(asset_state)
    .where(
        asset_state.c.tenant_id == bindparam("b_tenant"),
        asset_state.c.twin_id == bindparam("b_twin"),
        asset_state.c.asset_id == bindparam("b_asset"),
        asset_state.c.metric == bindparam("b_metric"),
    )
    .values(
        baseline_mean=bindparam("b_mean"),
        baseline_std=bindparam("b_std"),
        z_score=bindparam("b_z"),
        baseline_at_us=bindparam("b_at"),
    )
)


async def reported_state(
    conn: AsyncConnection, tenant_id: str, twin_id: str, asset_id: str | None = None
) -> dict[str, dict[str, ReportedMetric]]:
    """asset id → metric → reported state, for one twin (or one of its assets)."""
    query = select(
        asset_state.c.asset_id,
        asset_state.c.metric,
        asset_state.c.value,
        asset_state.c.ts_us,
        asset_state.c.quality,
        asset_state.c.event_id,
        asset_state.c.baseline_mean,
        asset_state.c.baseline_std,
        asset_state.c.z_score,
    ).where(asset_state.c.tenant_id == tenant_id, asset_state.c.twin_id == twin_id)
    if asset_id is not None:
        query = query.where(asset_state.c.asset_id == asset_id)
    out: dict[str, dict[str, ReportedMetric]] = {}
    for row in (
        await conn.execute(query.order_by(asset_state.c.asset_id, asset_state.c.metric))
    ).all():
        out.setdefault(row.asset_id, {})[row.metric] = ReportedMetric(
            value=row.value,
            ts_us=int(row.ts_us),
            quality=float(row.quality),
            event_id=row.event_id,
            baseline_mean=row.baseline_mean,
            baseline_std=row.baseline_std,
            z_score=row.z_score,
        )
    return out


def desired_state(asset: AssetSpec) -> dict[str, dict[str, Any]]:
    """setpoint id → desired value (``current``, else ``default``) with its limits."""
    return {
        setpoint_id: {
            "value": sp.current if sp.current is not None else sp.default,
            "current": sp.current,
            "default": sp.default,
            "unit": sp.unit,
            "bounds": {"low": sp.bounds.low, "high": sp.bounds.high},
            "max_step": sp.max_step,
            "actuator": sp.actuator,
        }
        for setpoint_id, sp in asset.setpoints.items()
    }
