"""examples/agent.py against a running server with the simulated plant: it finds its endpoints
in the manifest, follows /subscribe, and gets a proposal decided when a fault appears."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from opstwin.plant.faults import FaultSpec
from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.actions.plant_fixtures import ETCH, TWIN, RunningPlant, plant_fixture, wait_until
from tests.conftest import Keys, LiveServer

AGENT = Path(__file__).resolve().parents[2] / "examples" / "agent.py"


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the agent only talks HTTP; the backends are covered elsewhere


@pytest.fixture
async def plant(services: Services) -> AsyncIterator[RunningPlant]:
    async for running in plant_fixture(services):
        yield running


async def test_the_example_agent_proposes_a_fix_and_sees_it_decided(
    live_server: LiveServer,
    client: httpx.AsyncClient,
    keys: Keys,
    services: Services,
    plant: RunningPlant,
) -> None:
    async def baseline() -> bool:
        response = await client.get(
            f"/twins/{TWIN}/assets/{ETCH}", headers=keys.headers(Role.viewer)
        )
        state = response.json()["reported"].get("temp_c")
        return state is not None and state.get("baseline_std") is not None

    await wait_until(baseline, 30.0, "the chuck's baseline")
    token = keys.by_role[Role.agent].token
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        str(AGENT),
        "--url",
        live_server.url,
        "--key",
        token,
        "--once",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert agent.stdout is not None
        first = await asyncio.wait_for(agent.stdout.readline(), 30.0)
        assert first.decode().startswith("connected to opstwin"), first
        following = await asyncio.wait_for(agent.stdout.readline(), 30.0)
        assert following.decode().startswith("following /subscribe after now"), following
        plant.plant.inject(
            FaultSpec(kind="drift", asset=ETCH, metric="temp_c", rate_per_s=1.5, max_offset=3.0)
        )
        lines: list[str] = []
        try:
            async with asyncio.timeout(60.0):
                while line := await agent.stdout.readline():
                    lines.append(line.decode())
                await agent.wait()
        except TimeoutError:
            found = (await client.get("/anomalies", headers=keys.headers(Role.viewer))).json()
            kinds = [(a["record"]["metric"], a["record"]["kind"]) for a in found["items"]]
            raise AssertionError(f"the agent did not finish: {lines}; anomalies {kinds}") from None
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
    output = "".join(lines).encode()
    text = output.decode()
    assert agent.returncode == 0, text
    assert "proposed prp_" in text, text
    page = (await client.get("/proposals", headers=keys.headers(Role.viewer))).json()
    (proposal,) = page["proposals"]
    assert proposal["proposer"]["principal_id"] == keys.by_role[Role.agent].record.key_id
    assert proposal["state"] in {"awaiting_approval", "needs_analysis", "approved", "rejected"}
    assert proposal["anomaly_id"] is not None
    assert proposal["sim_id"] is not None
    assert f"state {proposal['state']}" in text or proposal["state"] == "approved"
