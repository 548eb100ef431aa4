"""Time-series reads: raw points with keyset paging, and bucketed aggregates.

Both answer the same on SQLite and PostgreSQL by construction:

* **Buckets** are aligned to the Unix epoch: a point at ``ts`` falls in the bucket starting at
  ``ts − ts mod width`` (integer microseconds, the same integer arithmetic on both backends).
* ``count``, ``sum``, ``avg``, ``min``, ``max`` are computed by the database (``GROUP BY``).
* ``stddev`` (sample standard deviation, ``ddof=1``; null for fewer than two points) and the
  percentiles ``p50``, ``p95``, ``p99`` (numpy's default ``linear`` method — Hyndman & Fan
  type 7, the same definition as PostgreSQL's ``percentile_cont``) are computed in Python
  from the bucket's values, which the database returns ordered; SQLite has neither function,
  so computing them in one place is what keeps the answers identical. They read at most
  ``telemetry.aggregate_max_points`` points (422 beyond).
* **Fill** for buckets without points: ``none`` leaves them out, ``null`` gives ``value: null``,
  ``zero`` gives ``0``, ``previous`` repeats the last non-empty bucket's value (null before the
  first). Filled buckets have ``count: 0``.

Points are returned by metric (name order), then time, then arrival; the page token is opaque
(base64 of the position) and bound to the query it came from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from sqlalchemy import Select, and_, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.config import TelemetrySettings
from opstwin.kit.clock import from_micros, rfc3339
from opstwin.kit.errors import BadRequest, FieldError, NotFound, ValidationFailed
from opstwin.telemetry.tables import telemetry_events, telemetry_points, telemetry_series
from opstwin.twins.registry import TwinRegistry

AggregateFunction = Literal["avg", "min", "max", "sum", "count", "stddev", "p50", "p95", "p99"]
FillMode = Literal["none", "null", "previous", "zero"]
AGGREGATE_FUNCTIONS: tuple[str, ...] = (
    "avg",
    "min",
    "max",
    "sum",
    "count",
    "stddev",
    "p50",
    "p95",
    "p99",
)
FILL_MODES: tuple[str, ...] = ("none", "null", "previous", "zero")
_SQL_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "avg": func.avg,
    "min": func.min,
    "max": func.max,
    "sum": func.sum,
}
_PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0}
_UNIT_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_BUCKET_RE = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
#: The narrowest bucket: finer than a millisecond is finer than any sampling period we store.
MIN_BUCKET_US = 1_000


def parse_bucket(text: str) -> int:
    """A bucket width (``500ms``, ``30s``, ``5m``, ``1h``, ``1d``; a bare number is seconds) in µs."""
    match = _BUCKET_RE.match(text.strip())
    width = int(match.group(1)) * _UNIT_US[match.group(2) or "s"] if match else 0
    if width < MIN_BUCKET_US:
        raise ValidationFailed(
            f"bucket: {text!r} is not a width such as 500ms, 30s, 5m, 1h or 1d (at least 1ms)",
            errors=[FieldError("invalid bucket width", parameter="bucket")],
        )
    return width


@dataclass(frozen=True, slots=True)
class SeriesRef:
    series_id: int
    metric: str


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: after (ts_us, event_no) of ``metric`` (None: before its first)."""

    metric: str
    ts_us: int | None
    event_no: int | None


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:16]


def encode_token(fingerprint: str, position: Position) -> str:
    raw = orjson.dumps([fingerprint, position.metric, position.ts_us, position.event_no])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, fingerprint: str) -> Position:
    """The position in ``token`` (400 when malformed or issued for another query)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fp, metric, ts_us, event_no = orjson.loads(raw)
        valid = (
            isinstance(fp, str)
            and isinstance(metric, str)
            and (ts_us is None) == (event_no is None)
            and (ts_us is None or (type(ts_us) is int and type(event_no) is int))
        )
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        valid = False
    if not valid:
        raise BadRequest(
            "page_token is malformed; pass the next_page_token of the previous page unchanged",
            errors=[FieldError("malformed page token", parameter="page_token")],
        )
    if fp != fingerprint:
        raise BadRequest(
            "page_token belongs to another query; repeat the same parameters with it",
            errors=[FieldError("token of another query", parameter="page_token")],
        )
    return Position(metric, ts_us, event_no)


class TelemetryQueries:
    """Reads telemetry of one tenant's twin asset."""

    def __init__(self, registry: TwinRegistry, settings: TelemetrySettings) -> None:
        self._registry = registry
        self._settings = settings

    async def _series(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        twin_id: str,
        asset_id: str,
        metrics: Sequence[str] | None,
    ) -> list[SeriesRef]:
        """The series of the asset (all, or those named — aliases resolved), by metric name."""
        twin = await self._registry.get(conn, tenant_id, twin_id)
        asset = twin.spec.asset(asset_id)
        if asset is None and not twin.spec.auto_register_assets:
            raise NotFound(f"twin {twin_id!r} has no asset {asset_id!r}")
        wanted: list[str] | None = None
        if metrics:
            wanted = sorted({(asset.canonical_metric(m) if asset else None) or m for m in metrics})
        query = select(telemetry_series.c.series_id, telemetry_series.c.metric).where(
            telemetry_series.c.tenant_id == tenant_id,
            telemetry_series.c.twin_id == twin_id,
            telemetry_series.c.asset_id == asset_id,
        )
        if wanted is not None:
            query = query.where(telemetry_series.c.metric.in_(wanted))
        rows = (await conn.execute(query.order_by(telemetry_series.c.metric))).all()
        return [SeriesRef(int(r.series_id), r.metric) for r in rows]

    def _limit(self, limit: int | None) -> int:
        maximum = self._settings.query_limit_max
        if limit is not None and limit > maximum:
            raise ValidationFailed(
                f"limit must be at most {maximum}",
                errors=[FieldError(f"at most {maximum}", parameter="limit")],
            )
        return limit or self._settings.query_limit_default

    async def points(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        *,
        twin_id: str,
        asset_id: str,
        metrics: Sequence[str] | None,
        from_us: int | None,
        to_us: int | None,
        limit: int | None,
        page_token: str | None,
    ) -> dict[str, Any]:
        """A page of points in ``[from, to)``; ``next_page_token`` is null on the last page."""
        page_size = self._limit(limit)
        series = await self._series(conn, tenant_id, twin_id, asset_id, metrics)
        fingerprint = _fingerprint(
            tenant_id, twin_id, asset_id, sorted(metrics or []), from_us, to_us
        )
        start = decode_token(page_token, fingerprint) if page_token else None
        out: list[dict[str, Any]] = []
        next_position: Position | None = None
        for ref in series:
            if start is not None and ref.metric < start.metric:
                continue
            after = start if start is not None and ref.metric == start.metric else None
            remaining = page_size - len(out)
            query = self._points_query(ref, from_us, to_us, after, remaining + 1)
            rows = (await conn.execute(query)).all()
            if remaining == 0:
                if rows:
                    next_position = Position(ref.metric, None, None)
                    break
                continue
            out.extend(
                {
                    "metric": ref.metric,
                    "ts": rfc3339(from_micros(row.ts_us)),
                    "value": row.value,
                    "event_id": row.event_id,
                    "quality": row.quality,
                }
                for row in rows[:remaining]
            )
            if len(rows) > remaining:
                last = rows[remaining - 1]
                next_position = Position(ref.metric, int(last.ts_us), int(last.event_no))
                break
        return {
            "twin_id": twin_id,
            "asset_id": asset_id,
            "points": out,
            "next_page_token": encode_token(fingerprint, next_position) if next_position else None,
        }

    async def recent_values(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        *,
        twin_id: str,
        asset_id: str,
        metric: str,
        since_us: int | None,
        limit: int,
    ) -> list[float]:
        """The newest ``limit`` stored values of one metric (at or after ``since_us``), newest first.

        For simulation inputs sampled from recent telemetry; the metric may be an alias.
        """
        series = await self._series(conn, tenant_id, twin_id, asset_id, [metric])
        if not series:
            return []
        p = telemetry_points
        clauses: list[Any] = [p.c.series_id == series[0].series_id]
        if since_us is not None:
            clauses.append(p.c.ts_us >= since_us)
        query = (
            select(p.c.value)
            .where(*clauses)
            .order_by(p.c.ts_us.desc(), p.c.event_no.desc())
            .limit(limit)
        )
        return [float(v) for v in (await conn.execute(query)).scalars()]

    @staticmethod
    def _points_query(
        ref: SeriesRef,
        from_us: int | None,
        to_us: int | None,
        after: Position | None,
        limit: int,
    ) -> Select[Any]:
        p, e = telemetry_points, telemetry_events
        clauses: list[Any] = [p.c.series_id == ref.series_id]
        if from_us is not None:
            clauses.append(p.c.ts_us >= from_us)
        if to_us is not None:
            clauses.append(p.c.ts_us < to_us)
        if after is not None and after.ts_us is not None:
            clauses.append(
                or_(
                    p.c.ts_us > after.ts_us,
                    and_(p.c.ts_us == after.ts_us, p.c.event_no > after.event_no),
                )
            )
        return (
            select(p.c.ts_us, p.c.event_no, p.c.value, e.c.event_id, e.c.quality)
            .join(e, e.c.event_no == p.c.event_no)
            .where(*clauses)
            .order_by(p.c.ts_us, p.c.event_no)
            .limit(limit)
        )

    async def aggregate(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        *,
        twin_id: str,
        asset_id: str,
        metrics: Sequence[str] | None,
        from_us: int,
        to_us: int,
        width_us: int,
        fn: AggregateFunction,
        fill: FillMode,
    ) -> dict[str, Any]:
        """Per metric, one value of ``fn`` per bucket of ``width_us`` in ``[from, to)``."""
        if to_us <= from_us:
            raise ValidationFailed(
                "to must be after from", errors=[FieldError("must be after from", parameter="to")]
            )
        first = from_us - from_us % width_us
        count = -(-(to_us - first) // width_us)
        if count > self._settings.aggregate_max_buckets:
            raise ValidationFailed(
                f"the range spans {count} buckets; the limit is {self._settings.aggregate_max_buckets} (widen the bucket or narrow the range)",
                errors=[FieldError("too many buckets", parameter="bucket")],
            )
        series = await self._series(conn, tenant_id, twin_id, asset_id, metrics)
        ids = [s.series_id for s in series]
        per_series: dict[int, dict[int, tuple[float | None, int]]] = {i: {} for i in ids}
        if ids:
            if fn in _PERCENTILES or fn == "stddev":
                await self._aggregate_in_python(conn, ids, from_us, to_us, width_us, fn, per_series)
            else:
                await self._aggregate_in_sql(conn, ids, from_us, to_us, width_us, fn, per_series)
        return {
            "twin_id": twin_id,
            "asset_id": asset_id,
            "fn": fn,
            "bucket_s": width_us / 1e6,
            "fill": fill,
            "from": rfc3339(from_micros(from_us)),
            "to": rfc3339(from_micros(to_us)),
            "series": [
                {
                    "metric": s.metric,
                    "buckets": _filled(per_series[s.series_id], first, count, width_us, fill),
                }
                for s in series
            ],
        }

    async def _aggregate_in_sql(
        self,
        conn: AsyncConnection,
        ids: list[int],
        from_us: int,
        to_us: int,
        width_us: int,
        fn: str,
        out: dict[int, dict[int, tuple[float | None, int]]],
    ) -> None:
        p = telemetry_points
        # The width is inlined (an int, so safe): PostgreSQL only matches a GROUP BY expression
        # with the selected one when they are textually equal, and two bind parameters are not.
        width: Any = literal_column(str(int(width_us)))
        bucket = (p.c.ts_us - p.c.ts_us % width).label("bucket")
        value = (func.count(p.c.value) if fn == "count" else _SQL_FUNCTIONS[fn](p.c.value)).label(
            "v"
        )
        query = (
            select(p.c.series_id, bucket, value, func.count(p.c.value).label("n"))
            .where(p.c.series_id.in_(ids), p.c.ts_us >= from_us, p.c.ts_us < to_us)
            .group_by(p.c.series_id, p.c.ts_us - p.c.ts_us % width)
        )
        for row in (await conn.execute(query)).all():
            v = row.v if fn == "count" else (None if row.v is None else float(row.v))
            out[int(row.series_id)][int(row.bucket)] = (v, int(row.n))

    async def _aggregate_in_python(
        self,
        conn: AsyncConnection,
        ids: list[int],
        from_us: int,
        to_us: int,
        width_us: int,
        fn: str,
        out: dict[int, dict[int, tuple[float | None, int]]],
    ) -> None:
        p = telemetry_points
        where = (p.c.series_id.in_(ids), p.c.ts_us >= from_us, p.c.ts_us < to_us)
        total = (await conn.execute(select(func.count()).where(*where))).scalar_one()
        if total > self._settings.aggregate_max_points:
            raise ValidationFailed(
                f"{fn} reads every point and the range holds {total}; the limit is "
                f"{self._settings.aggregate_max_points} (narrow the range)",
                errors=[FieldError("too many points", parameter="from")],
            )
        rows = (
            await conn.execute(
                select(p.c.series_id, p.c.ts_us, p.c.value)
                .where(*where)
                .order_by(p.c.series_id, p.c.ts_us, p.c.event_no)
            )
        ).all()
        if not rows:
            return
        sids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        ts = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        values = np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows))
        buckets = ts - ts % width_us
        # Rows are sorted by (series, ts), so each (series, bucket) group is one contiguous run.
        change = np.flatnonzero((np.diff(sids) != 0) | (np.diff(buckets) != 0)) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [len(rows)]))
        for begin, end in zip(starts.tolist(), ends.tolist(), strict=True):
            group = values[begin:end]
            result = _python_aggregate(fn, group)
            out[int(sids[begin])][int(buckets[begin])] = (result, int(end - begin))


def _python_aggregate(fn: str, values: np.ndarray[Any, np.dtype[np.float64]]) -> float | None:
    if fn == "stddev":
        return float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.percentile(values, _PERCENTILES[fn], method="linear"))


def _filled(
    found: dict[int, tuple[float | None, int]], first: int, count: int, width: int, fill: str
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    previous: float | None = None
    for k in range(count):
        start = first + k * width
        hit = found.get(start)
        if hit is not None:
            value, n = hit
            previous = value
        elif fill == "none":
            continue
        else:
            n = 0
            value = {"null": None, "zero": 0.0, "previous": previous}[fill]
        out.append({"start": rfc3339(from_micros(start)), "value": value, "count": n})
    return out
