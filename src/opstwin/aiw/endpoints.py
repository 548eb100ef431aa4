"""HTTP for the AIW contract: manifest, schemas, `/diff`, `/subscribe`, `POST /events`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from opstwin.aiw.changelog import EventFilter, Marks, NewEvent
from opstwin.aiw.manifest import MANIFEST_PATH
from opstwin.aiw.sse import EventStream, EventStreamResponse
from opstwin.kit import jsonutil
from opstwin.kit.errors import CursorExpired, FieldError, PayloadTooLarge, ValidationFailed
from opstwin.kit.idempotency import HEADER as IDEMPOTENCY_HEADER
from opstwin.kit.idempotency import request_hash
from opstwin.policy.deps import EventWriter, Subscriber, Viewer
from opstwin.services import Services
from opstwin.web import ServicesDep, StrictQueryRoute, etag_matches

router = APIRouter(route_class=StrictQueryRoute)

SCHEMA_JSON = "application/schema+json"


# -- manifest and schemas ------------------------------------------------------------------


@router.get(MANIFEST_PATH, summary="AIW manifest (self-description)", tags=["aiw"])
async def get_manifest(
    request: Request,
    services: ServicesDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    manifest = services.manifest.build(request.app)
    headers = {"ETag": manifest.etag, "Cache-Control": "public, max-age=60"}
    if etag_matches(if_none_match, manifest.etag):
        return Response(status_code=304, headers=headers)
    return Response(manifest.body, media_type="application/json", headers=headers)


class SchemaListItem(BaseModel):
    name: str
    version: int
    id: str
    title: str
    url: str


@router.get("/schemas", summary="List published JSON Schemas", tags=["aiw"])
async def list_schemas(services: ServicesDep) -> list[SchemaListItem]:
    return [
        SchemaListItem(
            name=s.name, version=s.version, id=s.id, title=s.title, url=f"/schemas/{s.name}"
        )
        for s in services.schemas.all()
    ]


@router.get(
    "/schemas/{name}",
    summary="One JSON Schema (2020-12)",
    tags=["aiw"],
    responses={200: {"content": {SCHEMA_JSON: {}}}},
)
async def get_schema(
    name: str,
    services: ServicesDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    info = services.schemas.get(name)
    headers = {"ETag": info.etag, "Cache-Control": "public, max-age=300"}
    if etag_matches(if_none_match, info.etag):
        return Response(status_code=304, headers=headers)
    return Response(jsonutil.dumps(info.document), media_type=SCHEMA_JSON, headers=headers)


# -- /diff ---------------------------------------------------------------------------------

# Parameters shared by /diff and /subscribe (one cursor space, one filter language).
SinceParam = Annotated[
    str | None, Query(description="Exclusive cursor; absent: oldest retained; `now`: head.")
]
TypesParam = Annotated[
    str | None, Query(description="Comma-separated event types; `prefix.*` allowed.")
]
TwinParam = Annotated[str | None, Query(description="Only changes of this twin.")]


class DiffPage(BaseModel):
    """A page of the change feed (documentation model; the body is streamed as JSON)."""

    events: list[dict[str, Any]] = Field(
        description="CloudEvents envelopes (event.v1), oldest first."
    )
    next_cursor: str = Field(description="Pass as `since` for the next page. Always present.")
    has_more: bool = Field(
        description="More entries were already available when this page was read."
    )


def _start(services: Services, since: str | None, marks: Marks) -> int:
    """Resolve ``since``; a 410 tells the client how to resync (snapshots, then the feed)."""
    try:
        return services.changelog.resolve_since(since, marks)
    except CursorExpired as exc:
        exc.extensions["resync"] = {
            "how": "re-read the snapshots (each returns state plus a consistent cursor), then follow the feed from that cursor; or restart from the oldest retained change",
            "snapshots": services.manifest.snapshot_collections(),
            "diff": "/diff",
        }
        raise


def _bounded(name: str, value: float | None, maximum: float) -> None:
    if value is not None and value > maximum:
        raise ValidationFailed(
            f"{name} must be at most {maximum:g}",
            errors=[FieldError(detail=f"at most {maximum:g}", parameter=name)],
        )


@router.get(
    "/diff",
    summary="Changes after a cursor (delta feed)",
    tags=["aiw"],
    response_model=None,
    responses={200: {"model": DiffPage}},
)
async def get_diff(
    services: ServicesDep,
    principal: Viewer,
    since: SinceParam = None,
    limit: Annotated[
        int | None, Query(ge=1, description="Page size (default and maximum in the manifest).")
    ] = None,
    types: TypesParam = None,
    twin_id: TwinParam = None,
    wait: Annotated[
        float, Query(ge=0, description="Long-poll: seconds to wait for a change.")
    ] = 0.0,
) -> Response:
    feed_settings = services.settings.feed
    _bounded("limit", limit, feed_settings.page_size_max)
    _bounded("wait", wait, feed_settings.max_wait_s)
    page_size = limit or feed_settings.page_size_default
    flt = EventFilter.parse(types, twin_id)
    changelog = services.changelog
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with services.db.read() as conn:
        marks = await changelog.marks(conn)
        after = _start(services, since, marks)
        page = await changelog.read(
            conn,
            after=after,
            upto=marks.head,
            limit=page_size,
            tenant_id=principal.tenant_id,
            flt=flt,
        )
    while not page.rows and (remaining := deadline - loop.time()) > 0:
        if not await services.feed.wait_beyond(page.next_seq, remaining):
            break
        async with services.db.read() as conn:
            marks = await changelog.marks(conn)
            page = await changelog.read(
                conn,
                after=page.next_seq,
                upto=marks.head,
                limit=page_size,
                tenant_id=principal.tenant_id,
                flt=flt,
            )
    events = ",".join(changelog.with_cursor(row) for row in page.rows)
    body = (
        f'{{"events":[{events}],"next_cursor":"{changelog.codec.encode(page.next_seq)}",'
        f'"has_more":{"true" if page.has_more else "false"}}}'
    )
    return Response(
        body.encode(), media_type="application/json", headers={"Cache-Control": "no-store"}
    )


# -- /subscribe ----------------------------------------------------------------------------


@router.get(
    "/subscribe",
    summary="Live change stream (Server-Sent Events)",
    tags=["aiw"],
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def subscribe(
    services: ServicesDep,
    principal: Subscriber,
    since: SinceParam = None,
    types: TypesParam = None,
    twin_id: TwinParam = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume point; overrides `since`.")
    ] = None,
) -> EventStreamResponse:
    flt = EventFilter.parse(types, twin_id)
    async with services.db.read() as conn:
        marks = await services.changelog.marks(conn)
        start = _start(services, last_event_id or since, marks)
    stream = EventStream(
        db=services.db,
        changelog=services.changelog,
        feed=services.feed,
        settings=services.settings.feed,
        metrics=services.metrics,
        tenant_id=principal.tenant_id,
        flt=flt,
        start_seq=start,
    )
    return EventStreamResponse(stream)


# -- POST /events --------------------------------------------------------------------------


class ExtEventIn(BaseModel):
    """A caller-defined CloudEvent (structured JSON). Extra attributes are CloudEvents extensions."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=255)
    source: str = Field(min_length=1, max_length=512)
    type: str = Field(
        pattern=r"^ext\.[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        max_length=255,
        description="Must start with `ext.`; `opstwin.*` types are the service's own.",
    )
    subject: str | None = Field(default=None, min_length=1, max_length=512)
    time: AwareDatetime | None = None
    datacontenttype: Literal["application/json"] | None = None
    dataschema: str | None = Field(default=None, min_length=1)
    data: Any = None


class EventAccepted(BaseModel):
    id: str
    sequence: str
    cursor: str
    duplicate: bool


async def _limit_body(request: Request, services: ServicesDep) -> None:
    limit = services.settings.feed.max_event_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the event is larger than the limit of {limit} bytes",
            extensions={"limit_bytes": limit},
        )


@router.post(
    "/events",
    summary="Append a caller-defined event (type ext.*)",
    tags=["aiw"],
    status_code=201,
    responses={
        200: {"model": EventAccepted, "description": "Already appended (same source and id)."}
    },
    dependencies=[Depends(_limit_body)],
)
async def post_event(
    request: Request,
    event: ExtEventIn,
    services: ServicesDep,
    principal: EventWriter,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> Response:
    raw = await request.body()
    limit = services.settings.feed.max_event_bytes
    if len(raw) > limit:
        raise PayloadTooLarge(
            f"the event is larger than the limit of {limit} bytes",
            extensions={"limit_bytes": limit},
        )
    extensions: dict[str, Any] = dict(event.model_extra or {})
    new = NewEvent(
        tenant_id=principal.tenant_id,
        type=event.type,
        source=event.source,
        subject=event.subject,
        id=event.id,
        time=event.time,
        dataschema=event.dataschema,
        data=event.data,
        extensions=extensions,
    )
    changelog = services.changelog
    async with services.db.write() as tx:
        if idempotency_key is not None:
            replay = await services.idempotency.reserve(
                tx,
                tenant_id=principal.tenant_id,
                principal_id=principal.key_id,
                key=idempotency_key,
                req_hash=request_hash("POST", "/events", raw),
            )
            if replay is not None:
                return Response(
                    replay.body,
                    status_code=replay.status_code,
                    media_type="application/json",
                    headers={"Idempotent-Replayed": "true"},
                )
        existing = await changelog.find(tx.conn, principal.tenant_id, event.source, event.id)
        if existing is not None:
            status, seq, duplicate = 200, existing, True
        else:
            try:
                (appended,) = await changelog.append(tx, [new])
            except ValueError as exc:  # an extension colliding with a reserved attribute
                raise ValidationFailed(str(exc)) from exc
            status, seq, duplicate = 201, appended.seq, False
        body = EventAccepted(
            id=event.id,
            sequence=f"{seq:020d}",
            cursor=changelog.codec.encode(seq),
            duplicate=duplicate,
        ).model_dump_json()
        if idempotency_key is not None:
            await services.idempotency.record(
                tx,
                tenant_id=principal.tenant_id,
                principal_id=principal.key_id,
                key=idempotency_key,
                status_code=status,
                body=body,
            )
    return Response(body, status_code=status, media_type="application/json")
