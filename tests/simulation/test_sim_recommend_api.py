"""POST /sim/recommend and empirical inputs from stored telemetry, on SQLite and PostgreSQL.

The example fab twin (examples/fab-line.yaml) is loaded with the etch chuck setpoint moved off
its optimum (66 °C; the etch yield model is best at 60 °C), and chamber pressure is ingested
through POST /telemetry/ingest so the model's metric input can be sampled from it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from opstwin.config import Settings
from opstwin.kit.clock import to_micros
from opstwin.policy.rbac import Role
from opstwin.services import Services
from opstwin.twins.tables import setpoint_state
from tests.conftest import Keys

FAB = Path(__file__).resolve().parents[2] / "examples" / "fab-line.yaml"
TWIN = "fab_line_3"
ETCH = "etch_tool_7"
OFF_OPTIMUM = 66.0


def fab_document(esc_temp_current: float = OFF_OPTIMUM) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(FAB.read_text())
    (twin,) = document["twins"]
    etch = next(a for a in twin["assets"] if a["id"] == ETCH)
    etch["setpoints"]["esc_temp_sp"]["current"] = esc_temp_current
    return document


async def ingest(
    client: httpx.AsyncClient,
    keys: Keys,
    services: Services,
    asset: str,
    metric: str,
    values: list[float],
    *,
    twin: str = TWIN,
    age_s: float = 0.0,
) -> None:
    """One event per value, a second apart, the newest ``age_s`` seconds ago."""
    now = services.clock.now()
    events = [
        {
            "twin_id": twin,
            "asset_id": asset,
            "ts": (now - timedelta(seconds=age_s + len(values) - i)).isoformat(),
            "metrics": {metric: value},
        }
        for i, value in enumerate(values)
    ]
    response = await client.post("/telemetry/ingest", json=events, headers=keys.headers(Role.agent))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(values), response.text


SYNC_MAX = 60_000


@pytest.fixture
async def settings(db_settings: Settings) -> Settings:
    simulation = db_settings.simulation.model_copy(update={"sync_max_samples": SYNC_MAX})
    return db_settings.model_copy(update={"simulation": simulation})


@pytest.fixture
async def fab(client: httpx.AsyncClient, keys: Keys, services: Services) -> None:
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", fab_document())
    await ingest(
        client, keys, services, ETCH, "pressure_mtorr", [10.0 + 0.1 * (i % 5) for i in range(40)]
    )
    # The chuck sits at its setpoint (no tracking error): the known answers below assume it.
    await ingest(client, keys, services, ETCH, "temp_c", [OFF_OPTIMUM] * 40)


def recommend_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "twin_id": TWIN,
        "process_model": "etch_yield_model",
        "asset_id": ETCH,
        "setpoint": "esc_temp_sp",
        "candidates": [56.0, 60.0, 63.0, 70.0],
        "objective": {"output": "yield_pct", "goal": "maximize", "statistic": "p50"},
        "inputs_from_telemetry": {"window_s": 3600},
        "samples": 4000,
        "seed": 7,
    }
    body.update(overrides)
    return body


async def post_recommend(
    client: httpx.AsyncClient, keys: Keys, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(
        "/sim/recommend", json=body, headers={**keys.headers(Role.agent), **headers}
    )


async def test_ranks_candidates_with_a_known_answer_and_logs_the_run(
    client: httpx.AsyncClient, keys: Keys, services: Services, fab: None
) -> None:
    response = await post_recommend(client, keys, recommend_body())
    assert response.status_code == 201, response.text
    record = response.json()
    services.schemas.validate("sim.v1", record)
    rec = record["recommendation"]
    # Yield falls with (esc_temp − 60)²: 60 is best, then by distance from 60; 66 is do-nothing.
    assert [c["value"] for c in rec["ranking"]] == [60.0, 63.0, 56.0, 66.0, 70.0]
    assert rec["current"] == OFF_OPTIMUM
    assert rec["recommended"] == 60.0
    assert rec["do_nothing"] is False
    assert rec["source"] == "request"
    improvement = rec["expected_improvement"]
    assert improvement["value"] > 0
    low, high = improvement["ci"]["interval"]
    assert 0 < low <= improvement["value"] <= high
    assert improvement["standard_error"] > 0
    # Under common random numbers 60 beats 66 in every scenario.
    assert rec["p_improvement"] > 0.99
    assert rec["p_improvement"] == improvement["p_improvement"]
    # The stored request repeats it; outputs are the recommended value's.
    assert record["request"]["recommend"]["candidates"] == [56.0, 60.0, 63.0, 70.0]
    assert record["request"]["model"]["inputs"]["pressure"]["dist"] == "empirical"
    assert record["outputs"]["yield_pct"]["p50"] == pytest.approx(
        next(c["objective"] for c in rec["ranking"] if c["value"] == 60.0)
    )
    assert record["model_ref"] == {"twin_id": TWIN, "process_model": "etch_yield_model"}

    fetched = await client.get(f"/sim/runs/{record['sim_id']}", headers=keys.headers(Role.viewer))
    assert fetched.json() == record
    events = (
        await client.get(
            "/diff", params={"types": "opstwin.sim.completed"}, headers=keys.headers(Role.viewer)
        )
    ).json()["events"]
    (event,) = events
    assert event["subject"] == f"twin/{TWIN}/sim/{record['sim_id']}"
    assert event["dataschema"] == services.schemas.id_of("sim.v1")
    services.schemas.validate("sim.v1", event["data"])
    assert event["data"]["recommendation"]["recommended"] == 60.0


async def test_p_improvement_is_a_half_for_do_nothing_against_itself(
    client: httpx.AsyncClient, keys: Keys, services: Services, fab: None
) -> None:
    # Only the current value: nothing to compare but do-nothing with itself.
    itself = await post_recommend(client, keys, recommend_body(candidates=[OFF_OPTIMUM]))
    assert itself.status_code == 201, itself.text
    rec = itself.json()["recommendation"]
    assert rec["recommended"] == OFF_OPTIMUM
    assert rec["do_nothing"] is True
    assert rec["p_improvement"] == 0.5
    assert rec["expected_improvement"]["value"] == 0.0
    assert rec["expected_improvement"]["standard_error"] == 0.0
    services.schemas.validate("sim.v1", itself.json())

    # 54 °C is exactly as far from the optimum as 66 °C: every scenario ties, so do nothing.
    mirror = await post_recommend(client, keys, recommend_body(candidates=[54.0]))
    rec = mirror.json()["recommendation"]
    assert rec["do_nothing"] is True
    assert rec["p_improvement"] == 0.5
    (candidate,) = [c for c in rec["ranking"] if not c["is_current"]]
    assert candidate["improvement"]["value"] == pytest.approx(0.0, abs=1e-9)


async def test_a_risk_constraint_nobody_meets_recommends_nothing(
    client: httpx.AsyncClient, keys: Keys, services: Services, fab: None
) -> None:
    body = recommend_body(constraint={"output": "yield_pct", "statistic": "p5", ">=": 99.9})
    response = await post_recommend(client, keys, body)
    assert response.status_code == 201, response.text
    rec = response.json()["recommendation"]
    assert rec["recommended"] is None
    assert rec["p_improvement"] is None
    assert rec["constraint"] == {"output": "yield_pct", "statistic": "p5", ">=": 99.9}
    assert not any(c["feasible"] for c in rec["ranking"])
    services.schemas.validate("sim.v1", response.json())


async def test_candidates_outside_the_setpoint_bounds_are_422_with_a_pointer(
    client: httpx.AsyncClient, keys: Keys, fab: None
) -> None:
    listed = await post_recommend(client, keys, recommend_body(candidates=[60.0, 85.0]))
    assert listed.status_code == 422
    (error,) = listed.json()["errors"]
    assert error["pointer"] == "/candidates/1"
    assert "[40, 80]" in error["detail"]

    ranged = await post_recommend(
        client, keys, recommend_body(candidates={"low": 30.0, "high": 60.0, "steps": 4})
    )
    assert ranged.status_code == 422
    assert ranged.json()["errors"][0]["pointer"] == "/candidates/low"

    not_an_input = await post_recommend(client, keys, recommend_body(setpoint="pressure_sp"))
    assert not_an_input.status_code == 422
    assert not_an_input.json()["errors"][0]["pointer"] == "/setpoint"

    bad_output = await post_recommend(client, keys, recommend_body(objective={"output": "nope"}))
    assert bad_output.json()["errors"][0]["pointer"] == "/objective/output"
    # Nothing was stored.
    runs = (await client.get("/sim/runs", headers=keys.headers(Role.viewer))).json()["runs"]
    assert runs == []


async def test_a_range_of_candidates_and_the_idempotency_key(
    client: httpx.AsyncClient, keys: Keys, fab: None
) -> None:
    body = recommend_body(candidates={"low": 58.0, "high": 62.0, "steps": 5})
    first = await post_recommend(client, keys, body, **{"Idempotency-Key": "rec-1"})
    assert first.status_code == 201, first.text
    rec = first.json()["recommendation"]
    assert sorted(c["value"] for c in rec["ranking"]) == [58.0, 59.0, 60.0, 61.0, 62.0, 66.0]
    assert rec["recommended"] == 60.0
    again = await post_recommend(client, keys, body, **{"Idempotency-Key": "rec-1"})
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["sim_id"] == first.json()["sim_id"]


async def test_a_large_recommendation_runs_in_the_background(
    client: httpx.AsyncClient, keys: Keys, services: Services, fab: None
) -> None:
    # 5 values (4 candidates and do-nothing) × 20,000 samples, plus the summary run: > SYNC_MAX.
    response = await post_recommend(client, keys, recommend_body(samples=20_000))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    location = response.headers["Location"]
    async with asyncio.timeout(60):
        while True:
            record = (await client.get(location, headers=keys.headers(Role.viewer))).json()
            if record["status"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
    assert record["status"] == "succeeded", record
    services.schemas.validate("sim.v1", record)
    assert record["mode"] == "background"
    assert record["recommendation"]["recommended"] == 60.0
    assert record["recommendation"]["samples_per_candidate"] == 20_000


async def test_playbook_candidates_for_an_anomaly(
    client: httpx.AsyncClient, keys: Keys, services: Services, fab: None
) -> None:
    # etch_temp_excursion: a drift of temp_c (here by its alias) scans esc_temp_sp 55..65 in 11
    # steps, judged by the yield of etch_yield_model — model and objective come from it too.
    body = recommend_body(anomaly={"kind": "drift", "metric": "esc_temp"})
    for key in ("candidates", "process_model", "objective"):
        del body[key]
    response = await post_recommend(client, keys, body)
    assert response.status_code == 201, response.text
    rec = response.json()["recommendation"]
    assert rec["source"] == "playbook:etch_temp_excursion"
    assert rec["objective"] == {"output": "yield_pct", "goal": "maximize", "statistic": "p50"}
    assert len(rec["ranking"]) == 12  # 11 candidates and do-nothing
    assert rec["recommended"] == 60.0
    services.schemas.validate("sim.v1", response.json())

    flatline = await post_recommend(
        client, keys, {**body, "anomaly": {"kind": "flatline", "metric": "temp_c"}}
    )
    assert flatline.status_code == 422
    assert flatline.json()["errors"][0]["pointer"] == "/anomaly"


# --- empirical inputs from stored telemetry (POST /sim/run with model_ref) ------------------------

SMALL = "line1"


def small_twin() -> dict[str, Any]:
    return {
        "twins": [
            {
                "id": SMALL,
                "assets": [{"id": "a1", "metrics": {"temp_c": {"unit": "degC"}}}],
                "process_models": [
                    {
                        "id": "echo",
                        "inputs": {
                            "t": {"asset": "a1", "metric": "temp_c"},
                            "noise": {"dist": "normal", "mean": 0.0, "std": 1.0},
                        },
                        "outputs": {
                            "out": {"expression": "t"},
                            "noisy": {"expression": "t + noise"},
                        },
                    }
                ],
            }
        ]
    }


def ref_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_ref": {"twin_id": SMALL, "process_model": "echo"},
        "samples": 2000,
        "seed": 5,
    }
    body.update(overrides)
    return body


@pytest.fixture
async def small(services: Services) -> None:
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", small_twin())


async def post_run(client: httpx.AsyncClient, keys: Keys, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/sim/run", json=body, headers=keys.headers(Role.agent))


async def test_empirical_inputs_resample_the_stored_points_of_the_window(
    client: httpx.AsyncClient, keys: Keys, services: Services, small: None
) -> None:
    # Two hours ago the metric sat at 100; the last 40 s it is constant at 61.5.
    await ingest(client, keys, services, "a1", "temp_c", [100.0] * 40, twin=SMALL, age_s=7200)
    await ingest(client, keys, services, "a1", "temp_c", [61.5] * 40, twin=SMALL)

    response = await post_run(client, keys, ref_body(inputs_from_telemetry={"window_s": 3600}))
    assert response.status_code == 201, response.text
    record = response.json()
    services.schemas.validate("sim.v1", record)
    assert record["request"]["model"]["inputs"]["t"] == {
        "dist": "empirical",
        "observations": [61.5] * 40,
    }
    out = record["outputs"]["out"]
    assert out["mean"] == 61.5
    assert out["std"] == 0.0

    # Per input, the newest `count` points (no window): all 40 recent ones and 10 old ones.
    counted = await post_run(
        client, keys, ref_body(inputs_from_telemetry={"inputs": {"t": {"count": 50}}})
    )
    assert counted.status_code == 201, counted.text
    observations = counted.json()["request"]["model"]["inputs"]["t"]["observations"]
    assert observations == [100.0] * 10 + [61.5] * 40
    mean = counted.json()["outputs"]["out"]["mean"]
    assert mean == pytest.approx((10 * 100.0 + 40 * 61.5) / 50, abs=1.0)


async def test_too_few_points_is_422_saying_how_many(
    client: httpx.AsyncClient, keys: Keys, services: Services, small: None
) -> None:
    await ingest(client, keys, services, "a1", "temp_c", [60.0] * 12, twin=SMALL)
    response = await post_run(client, keys, ref_body(inputs_from_telemetry={"window_s": 600}))
    assert response.status_code == 422
    problem = response.json()
    assert problem["found_points"] == 12
    assert problem["min_points"] == services.settings.simulation.empirical_min_points == 30
    (error,) = problem["errors"]
    assert error["pointer"] == "/inputs_from_telemetry"
    assert "12 stored point(s) in the last 600 s" in error["detail"]

    not_a_metric = await post_run(
        client, keys, ref_body(inputs_from_telemetry={"inputs": {"noise": {}}})
    )
    assert not_a_metric.status_code == 422
    assert not_a_metric.json()["errors"][0]["pointer"] == "/inputs_from_telemetry/inputs/noise"

    inline = await post_run(
        client,
        keys,
        {
            "model": {"inputs": {"x": {"dist": "constant", "value": 1}}, "outputs": {"y": "x"}},
            "inputs_from_telemetry": {"window_s": 60},
        },
    )
    assert inline.status_code == 422
    assert inline.json()["errors"][0]["pointer"] == "/inputs_from_telemetry"


async def test_metric_inputs_default_to_the_baseline_not_the_points(
    client: httpx.AsyncClient, keys: Keys, services: Services, small: None
) -> None:
    await ingest(client, keys, services, "a1", "temp_c", [61.5] * 40, twin=SMALL)
    response = await post_run(client, keys, ref_body())
    if response.status_code == 201:  # the detector has learnt a baseline by now
        assert response.json()["request"]["model"]["inputs"]["t"]["dist"] == "normal"
    else:  # not yet: the unchanged 422 of a metric input without a learnt spread
        assert response.status_code == 422
        assert "has no distribution yet" in response.json()["errors"][0]["detail"]


async def test_a_tracking_error_moves_the_recommendation_by_the_offset(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    # The chuck reads 3 °C above its setpoint (a heater drift): esc_error = temp_c − esc_temp_sp,
    # so the yield-best setpoint is 3 °C below the nominal 60 — where the chuck really reaches 60.
    document = fab_document(60.0)
    (twin,) = document["twins"]
    model = next(m for m in twin["process_models"] if m["id"] == "etch_yield_model")
    model["inputs"]["pressure"]["std"] = 0.3  # no learnt baseline needed
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", document)
    await ingest(client, keys, services, ETCH, "pressure_mtorr", [10.0] * 5)
    await ingest(client, keys, services, ETCH, "temp_c", [63.0] * 40)
    body = recommend_body(
        candidates=[55.0 + i for i in range(11)], inputs_from_telemetry=None, samples=2000
    )
    response = await post_recommend(client, keys, body)
    assert response.status_code == 201, response.text
    record = response.json()
    error = record["request"]["model"]["inputs"]["esc_error"]
    assert error["dist"] == "normal"
    assert error["mean"] == pytest.approx(3.0)
    assert record["recommendation"]["current"] == 60.0
    assert record["recommendation"]["recommended"] == 57.0


async def _first_anomaly(
    client: httpx.AsyncClient, keys: Keys, metric: str, deadline_s: float = 15.0
) -> dict[str, Any]:
    """The first anomaly the detector opens on the etch tool's ``metric`` (waits for it)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        response = await client.get(
            "/anomalies",
            params={"twin_id": TWIN, "asset_id": ETCH},
            headers=keys.headers(Role.viewer),
        )
        assert response.status_code == 200, response.text
        found = [a for a in response.json()["items"] if a["record"]["metric"] == metric]
        if found:
            return {"anomaly_id": found[-1]["anomaly_id"], **found[-1]["record"]}
        assert loop.time() < end, f"no anomaly on {ETCH}/{metric} within {deadline_s} s"
        await asyncio.sleep(0.05)


async def test_a_named_anomaly_takes_the_tracking_error_from_the_readings_since_it_opened(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    # 80 s of the chuck at its 60 °C setpoint, then a +3 °C heater bias for 3 s: the newest 5
    # readings hold 2 from before the fault (mean error 1.8 °C), the readings since the anomaly
    # opened only the fault's (3 °C). Then the setpoint is moved to 57 °C and the chuck reads 60.
    document = fab_document(60.0)
    (twin,) = document["twins"]
    model = next(m for m in twin["process_models"] if m["id"] == "etch_yield_model")
    model["inputs"]["pressure"]["std"] = 0.3
    async with services.db.write() as tx:
        await services.twins.put(tx, "default", document)
    await ingest(client, keys, services, ETCH, "pressure_mtorr", [10.0] * 5)
    noise = [0.1 * ((i * 7) % 5 - 2) for i in range(90)]
    await ingest(client, keys, services, ETCH, "temp_c", [60.0 + n for n in noise[:80]], age_s=20)
    await ingest(client, keys, services, ETCH, "temp_c", [63.0 + n for n in noise[80:83]], age_s=10)
    anomaly = await _first_anomaly(client, keys, "temp_c")
    assert anomaly["kind"] in ("drift", "spike")
    body = recommend_body(
        candidates=[55.0 + i for i in range(11)], inputs_from_telemetry=None, samples=2000
    )

    unnamed = await post_recommend(client, keys, body)
    assert unnamed.status_code == 201, unnamed.text
    diluted = unnamed.json()["request"]["model"]["inputs"]["esc_error"]["mean"]
    assert diluted == pytest.approx(1.8, abs=0.1)

    ref = {"kind": anomaly["kind"], "metric": "temp_c", "anomaly_id": anomaly["anomaly_id"]}
    named = await post_recommend(client, keys, {**body, "anomaly": ref})
    assert named.status_code == 201, named.text
    record = named.json()
    assert record["request"]["model"]["inputs"]["esc_error"]["mean"] == pytest.approx(3.0, abs=0.1)
    assert record["recommendation"]["recommended"] == 57.0
    by_alias = await post_recommend(
        client, keys, {**body, "anomaly": {**ref, "metric": "esc_temp"}}
    )
    assert by_alias.status_code == 201, by_alias.text

    unknown = await post_recommend(client, keys, {**body, "anomaly": {**ref, "anomaly_id": "x"}})
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["pointer"] == "/anomaly/anomaly_id"
    other_kind = "spike" if anomaly["kind"] == "drift" else "drift"
    wrong = await post_recommend(client, keys, {**body, "anomaly": {**ref, "kind": other_kind}})
    assert wrong.status_code == 422
    assert wrong.json()["errors"][0]["pointer"] == "/anomaly/anomaly_id"
    assert "not the anomaly this reference describes" in wrong.json()["errors"][0]["detail"]

    # The setpoint moves to 57 °C (as an action would record it) and the chuck reads 60 again:
    # only the 3 readings since the change count — not the 63s under the old setpoint (with
    # them the newest 5 would say 4.2 °C).
    async with services.db.write() as tx:
        await tx.conn.execute(
            setpoint_state.insert().values(
                tenant_id="default",
                twin_id=TWIN,
                asset_id=ETCH,
                setpoint="esc_temp_sp",
                value=57.0,
                action_id=None,
                updated_at_us=to_micros(services.clock.now() - timedelta(seconds=8)),
            )
        )
    await ingest(client, keys, services, ETCH, "temp_c", [60.0 + n for n in noise[:3]])
    after = await post_recommend(client, keys, body)
    assert after.status_code == 201, after.text
    record = after.json()
    assert record["request"]["model"]["inputs"]["esc_error"]["mean"] == pytest.approx(3.0, abs=0.1)
    assert record["recommendation"]["current"] == 57.0
