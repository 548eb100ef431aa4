"""HTTP for telemetry: `POST /telemetry/ingest`, `GET /telemetry/query`, `GET /telemetry/aggregate`."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field

from opstwin.kit import jsonutil
from opstwin.kit.clock import to_micros
from opstwin.kit.errors import BadRequest, FieldError, PayloadTooLarge, ValidationFailed
from opstwin.policy.deps import RequirePermission, Viewer
from opstwin.policy.principals import Principal
from opstwin.policy.rbac import Permission
from opstwin.telemetry.ingest import IngestResult, Rejection
from opstwin.telemetry.query import AggregateFunction, FillMode, parse_bucket
from opstwin.web import ServicesDep, StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute)

Ingester = Annotated[Principal, Depends(RequirePermission(Permission.ingest))]

JSON_TYPES = frozenset({"application/json", ""})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


class IngestRejection(BaseModel):
    index: int = Field(
        description="Position of the event in the batch (NDJSON: line, blank lines skipped)."
    )
    errors: list[dict[str, str]] = Field(
        description="`detail` and a JSON `pointer` into the event."
    )


class IngestResponse(BaseModel):
    accepted: int = Field(description="Events stored by this request.")
    duplicates: int = Field(
        description="Events whose event_id was already stored (or repeated in the batch)."
    )
    rejected: list[IngestRejection]


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) past ``limit`` bytes without reading all of it."""
    too_large = PayloadTooLarge(
        f"the body is larger than the limit of {limit} bytes", extensions={"limit_bytes": limit}
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(media: str, raw: bytes) -> tuple[list[Any], list[int], list[Rejection]]:
    """(decoded events, their batch indexes, rejections of lines that are not JSON)."""
    if media in NDJSON_TYPES:
        events: list[Any] = []
        indexes: list[int] = []
        broken: list[Rejection] = []
        lines = [line for line in raw.split(b"\n") if line.strip()]
        for index, line in enumerate(lines):
            try:
                events.append(orjson.loads(line))
                indexes.append(index)
            except orjson.JSONDecodeError as exc:
                broken.append(Rejection(index, [FieldError(f"not valid JSON: {exc}", pointer="")]))
        return events, indexes, broken
    if media not in JSON_TYPES and not media.endswith("+json"):
        raise BadRequest(
            f"unsupported content type {media!r}: send application/json (an event or an array) "
            "or application/x-ndjson (one event per line)",
            errors=[FieldError("unsupported media type", header="content-type")],
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(
            f"the body is not valid JSON: {exc}", errors=[FieldError(str(exc), pointer="")]
        ) from None
    if isinstance(body, dict):
        return [body], [0], []
    if isinstance(body, list):
        return body, list(range(len(body))), []
    raise ValidationFailed(
        "the body must be an event object or an array of events",
        errors=[FieldError("expected an object or an array", pointer="")],
    )


@router.post(
    "/telemetry/ingest",
    summary="Ingest telemetry: one event, a JSON array, or NDJSON",
    tags=["telemetry"],
    response_model=None,
    responses={200: {"model": IngestResponse}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "urn:opstwin:schema:telemetry.v1"}},
                "application/x-ndjson": {},
            },
        }
    },
)
async def ingest(request: Request, services: ServicesDep, principal: Ingester) -> Response:
    settings = services.settings.telemetry
    raw = await _read_body(request, settings.max_body_bytes)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    events, indexes, broken = _decode(media, raw)
    ingestor = services.ingestor
    ingestor.check_batch_length(len(events) + len(broken))
    async with services.db.write() as tx:
        result = await ingestor.ingest(tx, principal.tenant_id, events)
    if broken or indexes != list(range(len(events))):
        result = IngestResult(
            accepted=result.accepted,
            duplicates=result.duplicates,
            rejected=sorted(
                [Rejection(indexes[r.index], r.errors) for r in result.rejected] + broken,
                key=lambda r: r.index,
            ),
        )
    return Response(jsonutil.dumps(result.as_json()), media_type="application/json")


# -- queries -------------------------------------------------------------------------------

TwinParam = Annotated[str, Query(description="The twin.")]
AssetParam = Annotated[str, Query(description="The asset of the twin.")]
MetricsParam = Annotated[
    str | None,
    Query(description="Comma-separated metric ids or aliases; absent: every metric with data."),
]


def _metrics(metrics: str | None) -> list[str] | None:
    names = [m.strip() for m in (metrics or "").split(",") if m.strip()]
    return names or None


def _micros(value: AwareDatetime | None) -> int | None:
    return None if value is None else to_micros(value)


class QueryPoint(BaseModel):
    metric: str
    ts: str
    value: float
    event_id: str
    quality: float


class QueryPage(BaseModel):
    twin_id: str
    asset_id: str
    points: list[QueryPoint] = Field(description="By metric (name order), then time, then arrival.")
    next_page_token: str | None = Field(
        description="Pass as `page_token` with the same parameters; null on the last page."
    )


@router.get(
    "/telemetry/query",
    summary="Telemetry points of an asset in a time range (keyset paging)",
    tags=["telemetry"],
    response_model=None,
    responses={200: {"model": QueryPage}},
)
async def query_telemetry(
    services: ServicesDep,
    principal: Viewer,
    twin_id: TwinParam,
    asset_id: AssetParam,
    metrics: MetricsParam = None,
    from_: Annotated[
        AwareDatetime | None, Query(alias="from", description="Inclusive start (RFC 3339).")
    ] = None,
    to: Annotated[AwareDatetime | None, Query(description="Exclusive end (RFC 3339).")] = None,
    limit: Annotated[
        int | None, Query(ge=1, description="Page size (default and maximum: settings).")
    ] = None,
    page_token: Annotated[
        str | None, Query(description="`next_page_token` of the previous page.")
    ] = None,
) -> Response:
    async with services.db.read() as conn:
        body = await services.telemetry_queries.points(
            conn,
            principal.tenant_id,
            twin_id=twin_id,
            asset_id=asset_id,
            metrics=_metrics(metrics),
            from_us=_micros(from_),
            to_us=_micros(to),
            limit=limit,
            page_token=page_token,
        )
    return Response(jsonutil.dumps(body), media_type="application/json")


class AggregateBucket(BaseModel):
    start: str
    value: float | None
    count: int


class AggregateSeries(BaseModel):
    metric: str
    buckets: list[AggregateBucket]


class AggregateResult(BaseModel):
    twin_id: str
    asset_id: str
    fn: str
    bucket_s: float
    fill: str
    series: list[AggregateSeries]


@router.get(
    "/telemetry/aggregate",
    summary="Bucketed aggregates of an asset's metrics (avg, min, max, sum, count, stddev, p50, p95, p99)",
    tags=["telemetry"],
    response_model=None,
    responses={200: {"model": AggregateResult}},
)
async def aggregate_telemetry(
    services: ServicesDep,
    principal: Viewer,
    twin_id: TwinParam,
    asset_id: AssetParam,
    from_: Annotated[AwareDatetime, Query(alias="from", description="Inclusive start (RFC 3339).")],
    bucket: Annotated[
        str,
        Query(
            description="Bucket width: 500ms, 30s, 5m, 1h, 1d (a bare number: seconds); buckets are aligned to the Unix epoch."
        ),
    ],
    metrics: MetricsParam = None,
    to: Annotated[
        AwareDatetime | None, Query(description="Exclusive end (RFC 3339); absent: now.")
    ] = None,
    fn: Annotated[AggregateFunction, Query(description="Aggregate function.")] = "avg",
    fill: Annotated[
        FillMode, Query(description="Empty buckets: none (left out), null, previous, zero.")
    ] = "none",
) -> Response:
    width = parse_bucket(bucket)
    end = to_micros(to) if to is not None else to_micros(services.clock.now())
    async with services.db.read() as conn:
        body = await services.telemetry_queries.aggregate(
            conn,
            principal.tenant_id,
            twin_id=twin_id,
            asset_id=asset_id,
            metrics=_metrics(metrics),
            from_us=to_micros(from_),
            to_us=end,
            width_us=width,
            fn=fn,
            fill=fill,
        )
    return Response(jsonutil.dumps(body), media_type="application/json")
