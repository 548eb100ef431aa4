"""POST /sim/run, GET /sim/runs[/{id}] end to end, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import pytest

from opstwin.config import Settings, SimulationSettings
from opstwin.kit import jsonutil
from opstwin.kit.clock import to_micros
from opstwin.policy.rbac import Role
from opstwin.services import Services
from opstwin.simulation.repository import SimRunRepository
from opstwin.simulation.service import RUNS_PATH
from tests.conftest import Keys

SYNC_MAX = 5_000
MAX_SAMPLES = 200_000

CONTRACT_MODEL: dict[str, Any] = {
    "inputs": {
        "x": {"dist": "normal", "mean": 100, "std": 10},
        "y": {"dist": "triangular", "low": 1, "mode": 2, "high": 4},
    },
    "outputs": {"z": "x + y"},
}
STATS = {"mean", "std", "min", "max", "p5", "p25", "p50", "p75", "p95", "p99", "rse", "ci"}


@pytest.fixture
async def settings(db_settings: Settings) -> Settings:
    simulation = SimulationSettings(
        max_samples=MAX_SAMPLES,
        sync_max_samples=SYNC_MAX,
        max_request_bytes=4096,
        progress_interval_s=0.05,
        lease_s=1.0,
        page_size_default=2,
        page_size_max=5,
    )
    return db_settings.model_copy(update={"simulation": simulation})


def run_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": CONTRACT_MODEL,
        "samples": 2000,
        "seed": 42,
        "method": "mc",
        "target_rse": 0.01,
        "engine": "auto",
    }
    body.update(overrides)
    return body


async def post_run(
    client: httpx.AsyncClient, keys: Keys, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post("/sim/run", json=body, headers={**keys.headers(Role.agent), **headers})


async def wait_for_status(
    client: httpx.AsyncClient, keys: Keys, sim_id: str, statuses: set[str]
) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            record: dict[str, Any] = (
                await client.get(f"{RUNS_PATH}/{sim_id}", headers=keys.headers(Role.viewer))
            ).json()
            if record["status"] in statuses:
                return record
            await asyncio.sleep(0.02)


async def sim_events(client: httpx.AsyncClient, keys: Keys) -> list[dict[str, Any]]:
    page = (
        await client.get(
            "/diff", params={"types": "opstwin.sim.*"}, headers=keys.headers(Role.viewer)
        )
    ).json()
    events: list[dict[str, Any]] = page["events"]
    return events


def problem_pointers(response: httpx.Response) -> list[str]:
    assert response.headers["content-type"] == "application/problem+json"
    return [e.get("pointer", "") for e in response.json().get("errors", [])]


async def test_inline_contract_end_to_end(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    response = await post_run(client, keys, run_body())
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"{RUNS_PATH}/{body['sim_id']}"
    contract = {
        "sim_id",
        "engine_used",
        "engine_reason",
        "samples_used",
        "converged",
        "outputs",
        "duration_ms",
    }
    assert contract <= set(body)
    assert body["sim_id"].startswith("sim_")
    assert body["status"] == "succeeded"
    assert body["progress"] == 1
    assert body["engine_used"] == "classical"
    assert "no scalar query" in body["engine_reason"]
    assert body["samples_used"] == 2000
    assert set(body["outputs"]) == {"z"}
    z = body["outputs"]["z"]
    assert set(z) == STATS
    # mean of x + y is 100 + 7/3; 2000 samples: standard error ≈ 10/√2000 ≈ 0.22.
    assert abs(z["mean"] - (100 + 7 / 3)) < 5 * 10 / 2000**0.5
    assert z["p5"] < z["p25"] < z["p50"] < z["p75"] < z["p95"] < z["p99"]
    assert z["rse"] == pytest.approx(z["std"] / 2000**0.5 / z["mean"], rel=0.05)
    assert body["converged"] is (z["rse"] < 0.01)
    assert body["request"]["seed"] == 42
    assert body["request"]["model"] == CONTRACT_MODEL
    services.schemas.validate("sim.v1", body)

    stored = await client.get(f"{RUNS_PATH}/{body['sim_id']}", headers=keys.headers(Role.viewer))
    assert stored.status_code == 200
    assert stored.json() == body

    # Same seed, same request: the same numbers (bit for bit).
    again = (await post_run(client, keys, run_body())).json()
    assert again["sim_id"] != body["sim_id"]
    assert again["outputs"] == body["outputs"]


async def test_every_run_appends_a_valid_sim_event(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    body = (await post_run(client, keys, run_body(method="sobol", samples=1024))).json()
    (event,) = await sim_events(client, keys)
    assert event["type"] == "opstwin.sim.completed"
    assert event["source"] == "/opstwin/sim"
    assert event["subject"] == f"sim/{body['sim_id']}"
    assert event["dataschema"] == "urn:opstwin:schema:sim.v1"
    assert event["dataschema"] == services.schemas.id_of("sim.v1")
    services.schemas.validate("event.v1", {k: v for k, v in event.items() if k != "cursor"})
    services.schemas.validate("sim.v1", event["data"])
    assert event["data"] == body


async def test_a_query_is_answered_with_its_estimate(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    query = {"kind": "tail_probability", "output": "z", "threshold": 120, "epsilon": 0.02}
    response = await post_run(client, keys, run_body(engine="classical", query=query))
    assert response.status_code == 201, response.text
    body = response.json()
    estimate = body["estimate"]
    assert estimate["kind"] == "tail_probability"
    low, high = estimate["ci"]["interval"]
    assert low <= estimate["value"] <= high
    # P(x + y > 120) with x ~ N(100, 10), y ≈ 2.33: about P(N > 1.77) ≈ 0.04.
    assert 0.0 < estimate["value"] < 0.1
    services.schemas.validate("sim.v1", body)


async def test_bad_input_is_a_422_with_pointers_and_nothing_is_stored(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    bad_std = {
        "inputs": {"x": {"dist": "normal", "mean": 1, "std": -1}},
        "outputs": {"z": "x"},
    }
    response = await post_run(client, keys, run_body(model=bad_std))
    assert response.status_code == 422
    assert "/model/inputs/x/std" in problem_pointers(response)

    for unsafe in ("__import__('os').system('true')", "x.__class__", "(lambda: 1)()"):
        model = {
            "inputs": {"x": {"dist": "uniform", "low": 0, "high": 1}},
            "outputs": {"z": unsafe},
        }
        response = await post_run(client, keys, run_body(model=model))
        assert response.status_code == 422, unsafe
        assert problem_pointers(response) == ["/model/outputs/z"]

    response = await post_run(client, keys, run_body(method="bogus"))
    assert response.status_code == 422
    assert problem_pointers(response) == ["/method"]
    response = await post_run(client, keys, run_body(model=None))
    assert problem_pointers(response) == ["/model"]
    response = await post_run(client, keys, run_body(engine="quantum"))
    assert problem_pointers(response) == ["/engine"]

    listed = (await client.get(RUNS_PATH, headers=keys.headers(Role.viewer))).json()
    assert listed == {"runs": [], "next_before": None, "has_more": False}
    assert await sim_events(client, keys) == []


async def test_hard_limits_name_the_limit(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await post_run(client, keys, run_body(samples=MAX_SAMPLES + 1))
    assert response.status_code == 422
    assert response.json()["limit_samples"] == MAX_SAMPLES
    assert problem_pointers(response) == ["/samples"]

    response = await post_run(client, keys, run_body(adaptive=True, max_samples=MAX_SAMPLES * 2))
    assert response.status_code == 422
    assert problem_pointers(response) == ["/max_samples"]

    long_expression = " + ".join(["x"] * 1100)  # 4,397 characters
    model = {
        "inputs": {"x": {"dist": "normal", "mean": 0, "std": 1}},
        "outputs": {"z": long_expression},
    }
    response = await client.post(
        "/sim/run", json=run_body(model=model), headers=keys.headers(Role.agent)
    )
    assert response.status_code == 413  # the body limit of this module (4096 bytes) comes first
    assert response.json()["limit_bytes"] == 4096

    model["outputs"] = {"z": " + ".join(["x"] * 300)}  # 1,197 characters, body < 4096 bytes
    response = await post_run(client, keys, run_body(model=model))
    assert response.status_code == 422
    assert response.json()["limit_chars"] == 1000
    assert problem_pointers(response) == ["/model/outputs/z"]


async def test_a_run_past_its_time_limit_fails_with_the_limit(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    simulation = services.simulation
    simulation.settings = simulation.settings.model_copy(
        update={"timeout_s": 1e-4, "sync_max_samples": MAX_SAMPLES}
    )
    response = await post_run(client, keys, run_body(samples=MAX_SAMPLES))
    assert response.status_code == 422
    problem = response.json()
    assert problem["reason"] == "timeout"
    assert problem["limit_s"] == 1e-4
    record = (await client.get(response.headers["location"], headers=keys.headers("viewer"))).json()
    assert record["status"] == "failed"
    assert record["error"]["reason"] == "timeout"
    services.schemas.validate("sim.v1", record)
    (event,) = await sim_events(client, keys)
    assert event["type"] == "opstwin.sim.failed"
    await simulation.wait_idle()


async def test_large_runs_go_to_the_background_and_finish(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    response = await post_run(client, keys, run_body(samples=SYNC_MAX * 4))
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["progress"] == 0
    assert accepted["mode"] == "background"
    assert response.headers["location"] == f"{RUNS_PATH}/{accepted['sim_id']}"
    services.schemas.validate("sim.v1", accepted)

    done = await wait_for_status(client, keys, accepted["sim_id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1
    assert done["samples_used"] == SYNC_MAX * 4
    assert set(done["outputs"]["z"]) == STATS
    assert "started_at" in done
    assert "finished_at" in done
    services.schemas.validate("sim.v1", done)
    events = await sim_events(client, keys)
    assert [e["type"] for e in events] == ["opstwin.sim.queued", "opstwin.sim.completed"]
    assert events[1]["data"] == done


async def test_runs_are_tenant_scoped(client: httpx.AsyncClient, keys: Keys) -> None:
    sim_id = (await post_run(client, keys, run_body())).json()["sim_id"]
    other = await client.get(f"{RUNS_PATH}/{sim_id}", headers=keys.auth(keys.other_viewer))
    assert other.status_code == 404
    assert other.headers["content-type"] == "application/problem+json"
    assert (await client.get(RUNS_PATH, headers=keys.auth(keys.other_admin))).json()["runs"] == []
    missing = await client.get(f"{RUNS_PATH}/sim_nope", headers=keys.headers(Role.viewer))
    assert missing.status_code == 404


async def test_listing_pages_newest_first(client: httpx.AsyncClient, keys: Keys) -> None:
    ids = [(await post_run(client, keys, run_body(seed=s))).json()["sim_id"] for s in range(3)]
    viewer = keys.headers(Role.viewer)
    first = (await client.get(RUNS_PATH, headers=viewer)).json()
    assert [r["sim_id"] for r in first["runs"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    second = (
        await client.get(RUNS_PATH, params={"before": first["next_before"]}, headers=viewer)
    ).json()
    assert [r["sim_id"] for r in second["runs"]] == [ids[0]]
    assert second == {"runs": second["runs"], "next_before": None, "has_more": False}
    too_many = await client.get(RUNS_PATH, params={"limit": 6}, headers=viewer)
    assert too_many.status_code == 422
    assert too_many.json()["errors"] == [{"detail": "at most 5", "parameter": "limit"}]
    unknown = await client.get(RUNS_PATH, params={"page": 2}, headers=viewer)
    assert unknown.status_code == 400


async def test_idempotency_key_replays_the_first_response(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    first = await post_run(client, keys, run_body(), **{"Idempotency-Key": "run-1"})
    replay = await post_run(client, keys, run_body(), **{"Idempotency-Key": "run-1"})
    assert replay.status_code == first.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    listed = (await client.get(RUNS_PATH, headers=keys.headers(Role.viewer))).json()
    assert len(listed["runs"]) == 1

    other_body = await post_run(client, keys, run_body(seed=7), **{"Idempotency-Key": "run-1"})
    assert other_body.status_code == 422
    assert other_body.json()["errors"][0]["header"] == "Idempotency-Key"

    queued = await post_run(
        client, keys, run_body(samples=SYNC_MAX * 2), **{"Idempotency-Key": "run-2"}
    )
    queued_again = await post_run(
        client, keys, run_body(samples=SYNC_MAX * 2), **{"Idempotency-Key": "run-2"}
    )
    assert queued.status_code == queued_again.status_code == 202
    assert queued_again.json()["sim_id"] == queued.json()["sim_id"]
    await wait_for_status(client, keys, queued.json()["sim_id"], {"succeeded"})


async def test_quantum_without_qiskit_is_a_422_saying_how_to_install(
    client: httpx.AsyncClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "qiskit_algorithms", None)  # import fails as if absent
    query = {"kind": "tail_probability", "output": "z", "threshold": 120}
    response = await post_run(client, keys, run_body(engine="quantum", query=query))
    assert response.status_code == 422
    assert problem_pointers(response) == ["/engine"]
    assert "pip install 'opstwin[quantum]'" in response.json()["errors"][0]["detail"]


async def test_abandoned_runs_are_recovered(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    """A run whose process died: running → failed (interrupted) + event; queued → run here."""
    simulation = services.simulation
    prepared = simulation.compile(
        {
            **run_body(),
            "adaptive": False,
            "max_samples": None,
            "converge_on": "mean",
            "query": None,
            "sobol_scrambles": 16,
        }
    )
    past = to_micros(services.clock.now()) - 60_000_000
    repo = SimRunRepository()
    request = jsonutil.dumps_str(prepared.request)
    async with services.db.write() as tx:
        for sim_id, status in (("sim_deadrunning", "running"), ("sim_deadqueued", "queued")):
            await repo.insert(
                tx.conn,
                sim_id=sim_id,
                tenant_id="default",
                principal_id="k",
                status=status,
                mode="background",
                progress=0.3 if status == "running" else 0.0,
                twin_id=None,
                process_model=None,
                created_at_us=past,
                started_at_us=past if status == "running" else None,
                finished_at_us=None,
                request=request,
                result=None,
                error=None,
                owner="simw_dead",
                lease_until_us=past,
            )
    await simulation.recover()
    failed = await wait_for_status(client, keys, "sim_deadrunning", {"failed"})
    assert failed["error"]["reason"] == "interrupted"
    services.schemas.validate("sim.v1", failed)
    finished = await wait_for_status(client, keys, "sim_deadqueued", {"succeeded", "failed"})
    assert finished["status"] == "succeeded"
    types = sorted(e["type"] for e in await sim_events(client, keys))
    assert types == ["opstwin.sim.completed", "opstwin.sim.failed"]
