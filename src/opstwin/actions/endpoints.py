"""HTTP for proposals and actions (``proposal.v1``, ``action.v1``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from opstwin.actions.repository import ProposalFilter
from opstwin.actions.service import ProposalRequest
from opstwin.actions.workflow import STATES, Actor
from opstwin.kit import jsonutil
from opstwin.kit.errors import ServiceUnavailable
from opstwin.kit.idempotency import HEADER as IDEMPOTENCY_HEADER
from opstwin.kit.idempotency import request_hash
from opstwin.policy.deps import RequirePermission, Viewer
from opstwin.policy.principals import Principal
from opstwin.policy.rbac import Permission
from opstwin.web import ServicesDep, StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute, tags=["proposals"])

Proposer = Annotated[Principal, Depends(RequirePermission(Permission.propose))]
Voter = Annotated[Principal, Depends(RequirePermission(Permission.vote))]
Approver = Annotated[Principal, Depends(RequirePermission(Permission.approve))]
Executor = Annotated[Principal, Depends(RequirePermission(Permission.execute))]
RollbackRole = Annotated[Principal, Depends(RequirePermission(Permission.rollback))]

_ID = r"^[a-z0-9][a-z0-9_\-]{0,63}$"


def actor_of(principal: Principal) -> Actor:
    return Actor(principal.key_id, principal.tenant_id, principal.role.value)


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(
        jsonutil.dumps(body),
        status_code=status_code,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class ProposalIn(BaseModel):
    """A proposed setpoint change."""

    model_config = ConfigDict(extra="forbid")

    twin_id: str = Field(min_length=1, max_length=64)
    asset_id: str = Field(min_length=1, max_length=64)
    setpoint: str = Field(min_length=1, max_length=64)
    value: float = Field(allow_inf_nan=False, description="Absolute target value.")
    rationale: str = Field(min_length=1, max_length=4000, description="Why, in your words.")
    action_type: str = Field(default="setpoint_change", pattern=_ID)
    anomaly_id: str | None = Field(default=None, min_length=1, max_length=128)
    sim_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="A recommendation run that ranks this value; absent: the service runs one.",
    )


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approve: bool
    confidence: float = Field(ge=0, le=1, allow_inf_nan=False)
    rationale: str = Field(min_length=1, max_length=4000)


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content_hash: str = Field(
        pattern=r"^sha256:[0-9a-f]{64}$", description="The content hash you reviewed."
    )
    execute: bool = Field(
        default=True,
        description="Let the platform execute it now; false: an executor must ask for it.",
    )


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=4000)


class ControlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    locked: bool = False
    mode: Literal["automatic", "manual"] = "automatic"
    reason: str | None = Field(default=None, max_length=4000)


@router.post(
    "/proposals",
    summary="Propose a setpoint change: evidence, confidence, decision (proposal.v1)",
    status_code=201,
    response_model=None,
)
async def create_proposal(
    request: Request,
    body: ProposalIn,
    services: ServicesDep,
    principal: Proposer,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> Response:
    raw = await request.body()
    created = await services.proposals.create(
        actor_of(principal),
        ProposalRequest(**body.model_dump()),
        idempotency_key=idempotency_key,
        req_hash=request_hash("POST", "/proposals", raw),
    )
    return _json(created.body, created.status_code)


@router.get(
    "/proposals", summary="Proposals of the caller's tenant, newest first", response_model=None
)
async def list_proposals(
    services: ServicesDep,
    principal: Viewer,
    state: Annotated[
        str | None,
        Query(description=f"Comma-separated states ({', '.join(STATES)})."),
    ] = None,
    twin_id: Annotated[str | None, Query()] = None,
    asset_id: Annotated[str | None, Query()] = None,
    before: Annotated[str | None, Query(description="`next_before` of the previous page.")] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    states = None if state is None else [s.strip() for s in state.split(",") if s.strip()]
    if states is not None:
        from opstwin.kit.errors import FieldError, ValidationFailed

        unknown = [s for s in states if s not in STATES]
        if unknown:
            raise ValidationFailed(
                f"unknown state {unknown[0]!r} (states: {', '.join(STATES)})",
                errors=[FieldError(detail="unknown state", parameter="state")],
            )
    async with services.db.read() as conn:
        page = await services.proposals.page(
            conn,
            principal.tenant_id,
            ProposalFilter(twin_id=twin_id, asset_id=asset_id, states=states),
            before=before,
            limit=limit,
        )
    return _json(page)


@router.get(
    "/proposals/{proposal_id}",
    summary="One proposal with its evidence, scores, guards, decision, transitions, votes, action",
    response_model=None,
)
async def get_proposal(proposal_id: str, services: ServicesDep, principal: Viewer) -> Response:
    async with services.db.read() as conn:
        return _json(await services.proposals.view(conn, principal.tenant_id, proposal_id))


@router.post(
    "/proposals/{proposal_id}/votes",
    summary="Vote on a proposal (one vote per principal; re-scores a needs_analysis one)",
    status_code=201,
    response_model=None,
)
async def vote(proposal_id: str, body: VoteIn, services: ServicesDep, principal: Voter) -> Response:
    result = await services.proposals.vote(
        actor_of(principal), proposal_id, body.approve, body.confidence, body.rationale
    )
    return _json(result, 201)


@router.post(
    "/proposals/{proposal_id}/rescore",
    summary="Re-score a needs_analysis proposal with fresh evidence",
    response_model=None,
)
async def rescore(proposal_id: str, services: ServicesDep, principal: Voter) -> Response:
    return _json(await services.proposals.rescore(actor_of(principal), proposal_id))


@router.post(
    "/proposals/{proposal_id}/approve",
    summary="Approve the content you reviewed (bound to its content hash)",
    response_model=None,
)
async def approve(
    proposal_id: str, body: ApproveIn, services: ServicesDep, principal: Approver
) -> Response:
    result = await services.proposals.approve(
        actor_of(principal), proposal_id, body.content_hash, execute=body.execute
    )
    return _json(result)


@router.post(
    "/proposals/{proposal_id}/reject",
    summary="Reject (or veto an approved) proposal; a reason is required",
    response_model=None,
)
async def reject(
    proposal_id: str, body: ReasonIn, services: ServicesDep, principal: Approver
) -> Response:
    return _json(await services.proposals.reject(actor_of(principal), proposal_id, body.reason))


@router.post(
    "/proposals/{proposal_id}/execute",
    summary="Start executing an approved proposal (the executor carries it out)",
    status_code=202,
    response_model=None,
)
async def execute(proposal_id: str, services: ServicesDep, principal: Executor) -> Response:
    return _json(await services.proposals.start_execution(actor_of(principal), proposal_id), 202)


@router.post(
    "/proposals/{proposal_id}/rollback",
    summary="Roll a succeeded proposal back to its before-value (within the rollback window)",
    response_model=None,
)
async def rollback(
    proposal_id: str, body: ReasonIn, services: ServicesDep, principal: RollbackRole
) -> Response:
    if services.executor is None:
        raise ServiceUnavailable("actions are disabled on this server (OPSTWIN_ACTIONS_ENABLED)")
    return _json(
        await services.executor.manual_rollback(actor_of(principal), proposal_id, body.reason)
    )


@router.get(
    "/actions", summary="Executions of approved proposals, newest first", response_model=None
)
async def list_actions(
    services: ServicesDep,
    principal: Viewer,
    twin_id: Annotated[str | None, Query()] = None,
    asset_id: Annotated[str | None, Query()] = None,
    state: Annotated[
        Literal["executing", "verifying", "succeeded", "rolled_back", "failed"] | None, Query()
    ] = None,
    before: Annotated[str | None, Query(description="`next_before` of the previous page.")] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    async with services.db.read() as conn:
        page = await services.proposals.actions_page(
            conn,
            principal.tenant_id,
            twin_id=twin_id,
            asset_id=asset_id,
            state=state,
            before=before,
            limit=limit,
        )
    return _json(page)


@router.put(
    "/twins/{twin_id}/assets/{asset_id}/control",
    summary="Lock an asset or switch it to manual (proposals on it then need approval)",
    response_model=None,
)
async def set_control(
    twin_id: str, asset_id: str, body: ControlIn, services: ServicesDep, principal: Approver
) -> Response:
    result = await services.proposals.set_control(
        actor_of(principal),
        twin_id,
        asset_id,
        locked=body.locked,
        mode=body.mode,
        reason=body.reason,
    )
    return _json(result)
