"""POST /proposals and the human side of the workflow, without a plant (both backends).

The twin has no process model and no telemetry: the simulation and data-quality components are
missing (neutral), so the confidence total is 0.5 and the default policy says ``analyze``. A
policy override of the asset's bands makes the same proposals ``require_approval`` where a test
needs a human decision.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.conftest import Keys

TWIN = "press_line"
_counter = itertools.count()


@pytest.fixture
async def twin(services: Services) -> str:
    setpoint = {
        "unit": "bar",
        "bounds": {"low": 0.0, "high": 10.0},
        "max_step": 2.0,
        "actuator": "simulated_plant",
        "default": 5.0,
    }
    document = {
        "twins": [
            {
                "id": TWIN,
                "assets": [
                    {"id": "press_1", "type": "hydraulic_press", "setpoints": {"p_sp": setpoint}},
                    {"id": "press_2", "type": "hydraulic_press", "setpoints": {"p_sp": setpoint}},
                ],
            }
        ]
    }
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", document)
    return TWIN


async def approval_policy(client: httpx.AsyncClient, keys: Keys, **extra: Any) -> None:
    policy = {
        "overrides": [
            {
                "match": {"asset_class": "hydraulic_press"},
                "bands": {"auto_execute": 0.95, "require_approval": 0.4, "analyze": 0.3},
                "reason": "presses: a human decides",
            }
        ],
        **extra,
    }
    response = await client.put("/policy", json=policy, headers=keys.headers(Role.admin))
    assert response.status_code == 200, response.text


def body(**overrides: Any) -> dict[str, Any]:
    return {
        "twin_id": TWIN,
        "asset_id": "press_1",
        "setpoint": "p_sp",
        "value": 6.0,
        "rationale": "more pressure for the thicker blanks",
        **overrides,
    }


async def propose(
    client: httpx.AsyncClient, headers: dict[str, str], **overrides: Any
) -> httpx.Response:
    return await client.post("/proposals", json=body(**overrides), headers=headers)


async def test_a_proposal_is_scored_and_decided_with_its_evidence(
    client: httpx.AsyncClient, keys: Keys, services: Services, twin: str
) -> None:
    response = await propose(client, keys.headers(Role.agent))
    assert response.status_code == 201, response.text
    created = response.json()
    services.schemas.validate("proposal.v1", created)
    assert created["state"] == "needs_analysis"
    components = created["confidence"]["components"]
    assert components["simulation_consistency"]["missing"] is True
    assert "no process model" in created["evidence"]["simulation"]["missing"]
    assert components["ai_consensus"]["value"] == 0.5  # no votes: neutral, never 1.0
    assert created["confidence"]["total"] == pytest.approx(0.5)
    assert created["decision"]["bands"]["edges"].startswith("lower edge inclusive")
    guards = {g["guard"]: g["verdict"] for g in created["decision"]["guards"]}
    assert guards["RejectSetpointOutsideBounds"] == "pass"
    assert [t["to"] for t in created["transitions"]] == ["proposed", "scored", "needs_analysis"]
    assert created["content_hash"].startswith("sha256:")

    fetched = await client.get(
        f"/proposals/{created['proposal_id']}", headers=keys.headers(Role.viewer)
    )
    assert fetched.status_code == 200
    assert fetched.json()["votes"] == []
    assert fetched.json()["action"] is None
    events = (
        await client.get(
            "/diff", params={"types": "opstwin.proposal.*"}, headers=keys.headers(Role.viewer)
        )
    ).json()["events"]
    assert [e["type"] for e in events] == [
        "opstwin.proposal.proposed",
        "opstwin.proposal.scored",
        "opstwin.proposal.needs_analysis",
    ]
    for event in events:
        services.schemas.validate("proposal.v1", event["data"])
        assert event["subject"] == f"twin/{TWIN}/proposal/{created['proposal_id']}"
    # Another tenant sees nothing of it.
    other = await client.get(
        f"/proposals/{created['proposal_id']}", headers=keys.auth(keys.other_admin)
    )
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("overrides", "pointer"),
    [
        ({"twin_id": "nope"}, "/twin_id"),
        ({"asset_id": "nope"}, "/asset_id"),
        ({"setpoint": "nope"}, "/setpoint"),
        ({"anomaly_id": "anm_missing"}, "/anomaly_id"),
        ({"sim_id": "sim_missing"}, "/sim_id"),
        ({"rationale": ""}, "/rationale"),
    ],
)
async def test_bad_proposals_are_422_with_a_pointer(
    client: httpx.AsyncClient, keys: Keys, twin: str, overrides: dict[str, Any], pointer: str
) -> None:
    response = await propose(client, keys.headers(Role.agent), **overrides)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert pointer in [e.get("pointer") for e in response.json()["errors"]]


async def test_guards_reject_out_of_bounds_and_oversized_steps_and_conflicts(
    client: httpx.AsyncClient, keys: Keys, twin: str
) -> None:
    agent = keys.headers(Role.agent)
    out = (await propose(client, agent, value=10.5)).json()
    assert out["state"] == "rejected"
    verdicts = {g["guard"]: g["verdict"] for g in out["decision"]["guards"]}
    assert verdicts["RejectSetpointOutsideBounds"] == "reject"
    step = (await propose(client, agent, value=8.0)).json()  # 3 bar > max_step 2
    assert step["state"] == "rejected"
    assert {g["guard"]: g["verdict"] for g in step["decision"]["guards"]}[
        "RejectStepAboveMaxStep"
    ] == "reject"

    # An approved proposal holds the asset: a second one on it is rejected, the other press not.
    await approval_policy(client, keys)
    first = (await propose(client, agent)).json()
    approved = await client.post(
        f"/proposals/{first['proposal_id']}/approve",
        json={"content_hash": first["content_hash"], "execute": False},
        headers=keys.headers(Role.supervisor),
    )
    assert approved.json()["state"] == "approved"
    second = (await propose(client, agent, value=4.0)).json()
    assert second["state"] == "rejected"
    conflict = next(
        g for g in second["decision"]["guards"] if g["guard"] == "RejectConflictingActionInFlight"
    )
    assert conflict["verdict"] == "reject"
    elsewhere = (await propose(client, agent, asset_id="press_2")).json()
    assert elsewhere["state"] == "awaiting_approval"


async def test_a_locked_asset_needs_approval_even_when_the_score_would_auto_execute(
    client: httpx.AsyncClient, keys: Keys, twin: str
) -> None:
    auto = {"auto_execute": 0.0, "require_approval": 0.0, "analyze": 0.0}
    put = await client.put("/policy", json={"bands": auto}, headers=keys.headers(Role.admin))
    assert put.status_code == 200, put.text
    locked = await client.put(
        f"/twins/{TWIN}/assets/press_1/control",
        json={"locked": True, "reason": "die change"},
        headers=keys.headers(Role.supervisor),
    )
    assert locked.status_code == 200, locked.text
    created = (await propose(client, keys.headers(Role.agent))).json()
    assert created["decision"]["band_outcome"] == "auto_execute"
    assert created["decision"]["outcome"] == "require_approval"
    assert created["state"] == "awaiting_approval"


async def test_idempotency_key_replays_the_first_answer(
    client: httpx.AsyncClient, keys: Keys, services: Services, twin: str
) -> None:
    headers = {**keys.headers(Role.agent), "Idempotency-Key": "p-1"}
    first = await propose(client, headers)
    again = await propose(client, headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    other = await propose(client, headers, value=4.5)
    assert other.status_code == 422
    assert other.json()["errors"][0]["header"] == "Idempotency-Key"
    listed = (await client.get("/proposals", headers=keys.headers(Role.viewer))).json()
    assert len(listed["proposals"]) == 1


async def test_approval_separation_of_duties_reject_and_invalid_transitions(
    client: httpx.AsyncClient, keys: Keys, twin: str
) -> None:
    await approval_policy(client, keys)
    supervisor = keys.headers(Role.supervisor)
    own = (await propose(client, supervisor)).json()
    assert own["state"] == "awaiting_approval"
    self_approval = await client.post(
        f"/proposals/{own['proposal_id']}/approve",
        json={"content_hash": own["content_hash"]},
        headers=supervisor,
    )
    assert self_approval.status_code == 403
    assert "proposer" in self_approval.json()["detail"]

    no_reason = await client.post(
        f"/proposals/{own['proposal_id']}/reject", json={}, headers=keys.headers(Role.admin)
    )
    assert no_reason.status_code == 422
    rejected = await client.post(
        f"/proposals/{own['proposal_id']}/reject",
        json={"reason": "wrong die"},
        headers=keys.headers(Role.admin),
    )
    assert rejected.status_code == 200
    assert rejected.json()["state"] == "rejected"
    late = await client.post(
        f"/proposals/{own['proposal_id']}/approve",
        json={"content_hash": own["content_hash"]},
        headers=keys.headers(Role.admin),
    )
    assert late.status_code == 409
    assert late.json()["state"] == "rejected"
    execute = await client.post(
        f"/proposals/{own['proposal_id']}/execute", headers=keys.headers(Role.executor)
    )
    assert execute.status_code == 409


async def test_votes_one_per_principal_and_a_vote_rescores_a_needs_analysis_proposal(
    client: httpx.AsyncClient, keys: Keys, services: Services, twin: str
) -> None:
    created = (await propose(client, keys.headers(Role.agent))).json()
    assert created["state"] == "needs_analysis"
    pid = created["proposal_id"]
    own = await client.post(
        f"/proposals/{pid}/votes",
        json={"approve": True, "confidence": 1.0, "rationale": "mine"},
        headers=keys.headers(Role.agent),
    )
    assert own.status_code == 409  # the proposer does not vote on its own proposal
    vote = await client.post(
        f"/proposals/{pid}/votes",
        json={"approve": True, "confidence": 0.9, "rationale": "pressure trend agrees"},
        headers=keys.headers(Role.executor),
    )
    assert vote.status_code == 201, vote.text
    rescored = vote.json()
    consensus = rescored["confidence"]["components"]["ai_consensus"]
    assert consensus["value"] > 0.5
    assert consensus["provenance"]["votes"] == 1
    assert [t["to"] for t in rescored["transitions"]][-2:] == ["scored", rescored["state"]]
    assert rescored["content_hash"] != created["content_hash"]  # new content, new hash
    twice = await client.post(
        f"/proposals/{pid}/votes",
        json={"approve": False, "confidence": 0.9, "rationale": "changed my mind"},
        headers=keys.headers(Role.executor),
    )
    assert twice.status_code == 409
    types = [
        e["type"]
        for e in (
            await client.get(
                "/diff",
                params={"types": "opstwin.proposal.vote"},
                headers=keys.headers(Role.viewer),
            )
        ).json()["events"]
    ]
    assert types == ["opstwin.proposal.vote"]


async def test_an_approval_not_given_in_time_expires(
    client: httpx.AsyncClient, keys: Keys, services: Services, twin: str
) -> None:
    await approval_policy(client, keys, approval_expiry_s=0.3)
    created = (await propose(client, keys.headers(Role.agent))).json()
    assert created["state"] == "awaiting_approval"
    expired = await services.proposals.wait_for_state(
        "default", created["proposal_id"], ("expired",), 10.0
    )
    assert expired.transitions[-1].actor.role == "system"
    late = await client.post(
        f"/proposals/{created['proposal_id']}/approve",
        json={"content_hash": created["content_hash"]},
        headers=keys.headers(Role.supervisor),
    )
    assert late.status_code == 409


async def test_listing_filters_and_pages(client: httpx.AsyncClient, keys: Keys, twin: str) -> None:
    agent = keys.headers(Role.agent)
    for value in (5.5, 6.0, 6.5):
        assert (await propose(client, agent, value=value)).status_code == 201
    assert (await propose(client, agent, value=10.5)).status_code == 201  # rejected
    viewer = keys.headers(Role.viewer)
    page = (await client.get("/proposals", params={"limit": 2}, headers=viewer)).json()
    assert len(page["proposals"]) == 2
    assert page["has_more"] is True
    rest = (
        await client.get(
            "/proposals", params={"limit": 2, "before": page["next_before"]}, headers=viewer
        )
    ).json()
    assert len(rest["proposals"]) == 2
    assert rest["has_more"] is False
    values = [p["value"] for p in page["proposals"] + rest["proposals"]]
    assert values == [10.5, 6.5, 6.0, 5.5]
    rejected = (await client.get("/proposals", params={"state": "rejected"}, headers=viewer)).json()
    assert [p["value"] for p in rejected["proposals"]] == [10.5]
    bad = await client.get("/proposals", params={"state": "nonsense"}, headers=viewer)
    assert bad.status_code == 422
    unknown = await client.get("/proposals", params={"colour": "red"}, headers=viewer)
    assert unknown.status_code == 400
