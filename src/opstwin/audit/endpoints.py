"""HTTP for the audit chain: read it (`GET /audit`) and verify it (`GET /audit/verify`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from opstwin.audit.chain import SealedRecord
from opstwin.audit.store import SCAN_WINDOW, AuditFilter
from opstwin.kit.errors import OpsTwinError
from opstwin.policy.deps import AuditReader
from opstwin.web import ServicesDep, StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute)

PAGE_DEFAULT = 100
PAGE_MAX = 1000
MAX_SEQ = 2**63 - 1  # seq is a 64-bit integer
ACTION_PATTERN = r"^[a-z_]+(\.[a-z_]+)+$"


class HeadOut(BaseModel):
    """A chain's head: its last record (`seq` 0 and 64 zeros before the first)."""

    seq: int = Field(ge=0)
    hash: str = Field(description="Hash of the record at `seq` (lowercase hex SHA-256).")


class AuditPageOut(BaseModel):
    items: list[dict[str, Any]] = Field(
        description="audit.v1 records in `seq` order (schema `urn:opstwin:schema:audit.v1`)."
    )
    next_after: int = Field(
        description="Pass as `after` for the next page. It advances past every record examined, "
        "matching or not, and is the head's `seq` on the last page (poll from there)."
    )
    has_more: bool = Field(
        description="More records to examine. A filtered page examines at most "
        f"{SCAN_WINDOW:,} records, so it may be short (even empty) while this is true."
    )
    head: HeadOut = Field(description="The anchored head of the tenant's chain.")


class ChainBreakOut(BaseModel):
    kind: Literal["altered", "removed", "reordered", "truncated", "unanchored"] = Field(
        description="altered: content or link changed; removed: a record is missing; "
        "reordered: a record is out of its place; truncated: the chain ends before its "
        "anchored head; unanchored: records beyond the anchored head."
    )
    seq: int = Field(description="The first bad record.")
    position: int = Field(description="Where it was met, counting records read from 0.")
    detail: str


class VerificationOut(BaseModel):
    ok: bool = Field(description="True when the chain is intact up to its anchored head.")
    checked: int = Field(description="Records verified good, from the first.")
    head: HeadOut = Field(description="The last record verified good.")
    first_break: ChainBreakOut | None = Field(description="The first problem; null when ok.")


def _record_json(record: SealedRecord) -> dict[str, Any]:
    try:
        return record.to_dict()
    except ValueError as exc:  # orjson.JSONDecodeError: a body edited into something else
        raise OpsTwinError(
            f"audit record {record.seq} is unreadable; GET /audit/verify reports on the chain"
        ) from exc


@router.get(
    "/audit",
    summary="The tenant's audit chain (audit.v1), in order, paged by seq",
    tags=["audit"],
)
async def get_audit(
    services: ServicesDep,
    principal: AuditReader,
    after: Annotated[
        int,
        Query(ge=0, le=MAX_SEQ, description="Only records with a greater `seq` (`next_after`)."),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
    resource: Annotated[
        str | None,
        Query(min_length=1, max_length=300, description="Exact resource, e.g. policy/default."),
    ] = None,
    action: Annotated[
        str | None,
        Query(
            pattern=ACTION_PATTERN, max_length=100, description="Exact action, e.g. policy.update."
        ),
    ] = None,
    actor: Annotated[
        str | None,
        Query(
            min_length=1, max_length=128, description="The acting principal's key id (or system)."
        ),
    ] = None,
) -> AuditPageOut:
    flt = AuditFilter(resource=resource, action=action, actor=actor)
    async with services.db.read() as conn:
        page = await services.audit.page(
            conn, principal.tenant_id, after=after, limit=limit, flt=flt
        )
    return AuditPageOut(
        items=[_record_json(r) for r in page.records],
        next_after=page.next_after,
        has_more=page.has_more,
        head=HeadOut(**page.head.to_dict()),
    )


@router.get(
    "/audit/verify",
    summary="Verify the tenant's audit chain and name the first bad record",
    tags=["audit"],
    description="Recomputes every record's hash and link, in order, up to the anchored head. "
    "Answers 200 either way: `ok` says whether the chain is intact.",
)
async def verify_audit(services: ServicesDep, principal: AuditReader) -> VerificationOut:
    async with services.db.snapshot() as conn:
        result = await services.audit.verify(conn, principal.tenant_id)
    return VerificationOut.model_validate(result.to_dict())
