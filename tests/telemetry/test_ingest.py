"""POST /telemetry/ingest and the TelemetryIngestor on both backends: partial batches, duplicates,
NDJSON, unknown twins/assets, change-log entries per batch per asset, reported state, tenants."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sqlalchemy import func, select

from opstwin.policy.rbac import Role
from opstwin.services import Services
from opstwin.telemetry.ingest import APPENDED_SCHEMA
from opstwin.telemetry.tables import telemetry_events, telemetry_points
from tests.conftest import Keys


def twin_model(twin_id: str = "line1", *, auto: bool = False) -> dict[str, Any]:
    """A small twin: one etch tool (temp_c with aliases and hard limits, pressure, power) and a
    chamber with one metric."""
    return {
        "id": twin_id,
        "auto_register_assets": auto,
        "assets": [
            {
                "id": "etch_tool_7",
                "metrics": {
                    "temp_c": {
                        "unit": "degC",
                        "aliases": ["temp", "esc_temp"],
                        "hard_limits": {"low": 15.0, "high": 90.0},
                    },
                    "pressure_mtorr": {
                        "unit": "mTorr",
                        "aliases": ["pressure"],
                        "hard_limits": {"low": 1.0, "high": 100.0},
                    },
                    "rf_w": {"unit": "W"},
                    "flow_sccm": {"unit": "sccm"},
                    "counter": {"unit": "1"},
                },
                "setpoints": {
                    "esc_temp_sp": {
                        "unit": "degC",
                        "metric": "temp_c",
                        "bounds": {"low": 40.0, "high": 80.0},
                        "max_step": 5.0,
                        "actuator": "simulated_plant",
                        "default": 60.0,
                    }
                },
            },
            {"id": "cvd_chamber_2", "metrics": {"temp_c": {"unit": "degC"}}},
        ],
    }


def now_ts(offset_s: float = 0.0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=offset_s)
    return moment.isoformat().replace("+00:00", "Z")


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "twin_id": "line1",
        "asset_id": "etch_tool_7",
        "ts": now_ts(),
        "metrics": {"temp_c": 60.0, "pressure_mtorr": 10.0},
    }
    base.update(overrides)
    return base


async def load_twin(
    client: httpx.AsyncClient, keys: Keys, model: dict[str, Any] | None = None
) -> None:
    model = model or twin_model()
    response = await client.put(
        f"/twins/{model['id']}", json=model, headers=keys.headers(Role.admin)
    )
    assert response.status_code in (200, 201), response.text


async def ingest(client: httpx.AsyncClient, headers: dict[str, str], body: Any) -> dict[str, Any]:
    response = await client.post("/telemetry/ingest", json=body, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def appended(
    client: httpx.AsyncClient, headers: dict[str, str], since: str | None = None
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"types": "opstwin.telemetry.appended", "limit": 1000}
    if since is not None:
        params["since"] = since
    response = await client.get("/diff", params=params, headers=headers)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def appended_validator(services: Services) -> Draft202012Validator:
    document = services.schemas.get("telemetry.v1").document
    registry: Registry[Any] = Registry().with_resource(
        document["$id"], Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return Draft202012Validator({"$ref": APPENDED_SCHEMA}, registry=registry)


async def count_rows(services: Services) -> tuple[int, int]:
    async with services.db.read() as conn:
        events = (
            await conn.execute(select(func.count()).select_from(telemetry_events))
        ).scalar_one()
        points = (
            await conn.execute(select(func.count()).select_from(telemetry_points))
        ).scalar_one()
    return int(events), int(points)


async def test_partial_batch_stores_the_valid_events_and_reports_each_error(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    await load_twin(client, keys)
    agent = keys.headers(Role.agent)
    batch = [
        event(event_id="ok-1"),
        event(event_id="bad-string", metrics={"temp_c": "62.1"}),
        event(
            event_id="ok-alias-units",
            metrics={"temp": 140.0, "pressure": 1.0},
            units={"temp": "degF", "pressure": "Pa"},
        ),
        event(event_id="bad-naive-ts", ts="2026-01-04T12:34:56"),
        event(event_id="bad-asset", asset_id="nope"),
        event(event_id="bad-twin", twin_id="ghost"),
        event(event_id="ok-nan", metrics={"temp_c": "NaN", "pressure_mtorr": 10.0}),
        event(event_id="bad-key", colour="red"),
        "not an object",
        event(event_id="bad-unit", units={"temp_c": "furlongs"}),
        event(event_id="bad-twice", metrics={"temp": 60.0, "temp_c": 61.0}),
        event(event_id="bad-unknown-only", metrics={"humidity": 40.0}),
        event(event_id="ok-offset", ts="2026-01-04T14:34:56.5+02:00"),
    ]
    result = await ingest(client, agent, batch)
    assert result["accepted"] == 4
    assert result["duplicates"] == 0
    by_index = {r["index"]: r["errors"] for r in result["rejected"]}
    assert sorted(by_index) == [1, 3, 4, 5, 7, 8, 9, 10, 11]
    assert by_index[1][0]["pointer"] == "/metrics/temp_c"
    assert "not str" in by_index[1][0]["detail"]
    assert by_index[3] == [
        {"detail": "the timestamp has no timezone offset; add Z (UTC) or ±hh:mm", "pointer": "/ts"}
    ]
    assert by_index[4][0]["pointer"] == "/asset_id"
    assert "auto_register_assets" in by_index[4][0]["detail"]
    assert by_index[5][0]["pointer"] == "/twin_id"
    assert "unknown twin 'ghost'" in by_index[5][0]["detail"]
    assert by_index[7][0]["pointer"] == "/colour"
    assert by_index[8][0]["detail"] == "an event must be a JSON object"
    assert by_index[9][0]["pointer"] == "/units/temp_c"
    assert by_index[10][0]["pointer"] in {"/metrics/temp", "/metrics/temp_c"}
    assert by_index[11][0]["pointer"] == "/metrics"

    entries = await appended(client, agent)
    assert len(entries) == 1
    points = {p["event_id"]: p for p in entries[0]["data"]["points"]}
    assert list(points) == ["ok-1", "ok-alias-units", "ok-nan", "ok-offset"]
    converted = points["ok-alias-units"]
    assert converted["metrics"]["temp_c"] == pytest.approx(60.0)
    assert converted["metrics"]["pressure_mtorr"] == pytest.approx(7.50061683)
    assert points["ok-nan"]["metrics"] == {"temp_c": None, "pressure_mtorr": 10.0}
    assert points["ok-nan"]["quality"] == {
        "data_quality_score": 0.5,
        "missing_rate": 0.5,
        "issues": ["missing:temp_c"],
    }
    assert points["ok-offset"]["ts"] == "2026-01-04T12:34:56.500000Z"
    assert "stale_ts" in points["ok-offset"]["quality"]["issues"]
    # Stored: 4 events; points only for present values (ok-nan has one).
    assert await count_rows(services) == (4, 7)


async def test_duplicates_within_and_across_batches_are_stored_once(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    await load_twin(client, keys)
    agent = keys.headers(Role.agent)
    first = await ingest(
        client, agent, [event(event_id="a"), event(event_id="b"), event(event_id="a")]
    )
    assert first == {"accepted": 2, "duplicates": 1, "rejected": []}
    second = await ingest(client, agent, [event(event_id="b"), event(event_id="c")])
    assert second == {"accepted": 1, "duplicates": 1, "rejected": []}
    only_dupes = await ingest(client, agent, event(event_id="c"))
    assert only_dupes == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert await count_rows(services) == (3, 6)
    entries = await appended(client, agent)
    assert [[p["event_id"] for p in e["data"]["points"]] for e in entries] == [["a", "b"], ["c"]]


async def test_generated_event_ids_are_ulids(client: httpx.AsyncClient, keys: Keys) -> None:
    await load_twin(client, keys)
    agent = keys.headers(Role.agent)
    assert (await ingest(client, agent, [event(), event(event_id=None)]))["accepted"] == 2
    (entry,) = await appended(client, agent)
    ids = [p["event_id"] for p in entry["data"]["points"]]
    assert all(i.startswith("tel_") and len(i) == 30 for i in ids)
    assert len(set(ids)) == 2


async def test_ndjson_with_a_broken_line(client: httpx.AsyncClient, keys: Keys) -> None:
    await load_twin(client, keys)
    agent = keys.headers(Role.agent)
    lines = [
        orjson.dumps(event(event_id="n1")),
        b"",
        b'{"twin_id": "line1", broken',
        orjson.dumps(event(event_id="n2", metrics={"temp_c": 95.0})),
        orjson.dumps(event(event_id="n3", metrics={"temp_c": None})),
    ]
    response = await client.post(
        "/telemetry/ingest",
        content=b"\n".join(lines) + b"\n",
        headers={**agent, "content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 3
    assert [r["index"] for r in body["rejected"]] == [1]
    assert body["rejected"][0]["errors"][0]["detail"].startswith("not valid JSON")
    (entry,) = await appended(client, agent)
    quality = {p["event_id"]: p["quality"] for p in entry["data"]["points"]}
    assert quality["n2"] == {
        "data_quality_score": 0.0,
        "missing_rate": 0.0,
        "issues": ["out_of_limits:temp_c"],
    }
    assert quality["n3"]["missing_rate"] == 1.0


async def test_bad_bodies(client: httpx.AsyncClient, keys: Keys) -> None:
    agent = keys.headers(Role.agent)
    not_json = await client.post(
        "/telemetry/ingest", content=b"{", headers={**agent, "content-type": "application/json"}
    )
    assert not_json.status_code == 422
    scalar = await client.post("/telemetry/ingest", json=42, headers=agent)
    assert scalar.status_code == 422
    xml = await client.post(
        "/telemetry/ingest", content=b"<x/>", headers={**agent, "content-type": "text/xml"}
    )
    assert xml.status_code == 400
    assert xml.json()["errors"] == [{"detail": "unsupported media type", "header": "content-type"}]


async def test_one_change_log_entry_per_batch_per_asset_valid_against_the_schema(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    await load_twin(client, keys)
    agent = keys.headers(Role.agent)
    batch = [
        event(event_id=f"e{i}", asset_id=asset, metrics={"temp_c": 60.0 + i}, tags={"lot": "L1"})
        for i, asset in enumerate(["etch_tool_7", "cvd_chamber_2"] * 5)
    ]
    assert (await ingest(client, agent, batch))["accepted"] == 10
    entries = await appended(client, agent)
    assert [e["subject"] for e in entries] == [
        "twin/line1/asset/etch_tool_7",
        "twin/line1/asset/cvd_chamber_2",
    ]
    validator = appended_validator(services)
    for entry in entries:
        services.schemas.validate("event.v1", entry)
        assert entry["dataschema"] == APPENDED_SCHEMA
        errors = [e.message for e in validator.iter_errors(entry["data"])]
        assert errors == []
        for point in entry["data"]["points"]:
            services.schemas.validate("telemetry.v1", point)
            assert point["tags"] == {"lot": "L1"}
        assert len(entry["data"]["points"]) == 5
    assert [p["event_id"] for p in entries[0]["data"]["points"]] == ["e0", "e2", "e4", "e6", "e8"]


async def test_ingestor_is_callable_without_http(
    services: Services, client: httpx.AsyncClient, keys: Keys
) -> None:
    await load_twin(client, keys)
    async with services.db.write() as tx:
        result = await services.ingestor.ingest(
            tx, "default", [event(event_id="direct"), {"twin_id": "line1"}]
        )
    assert (result.accepted, result.duplicates) == (1, 0)
    assert [r.index for r in result.rejected] == [1]
    assert result.events[0]["event_id"] == "direct"
    assert len(result.appended) == 1


async def test_auto_registered_assets(client: httpx.AsyncClient, keys: Keys) -> None:
    await load_twin(client, keys, twin_model("open_line", auto=True))
    agent, viewer = keys.headers(Role.agent), keys.headers(Role.viewer)
    result = await ingest(
        client,
        agent,
        [
            event(twin_id="open_line", asset_id="new_sensor_1", metrics={"humidity_pct": 41.5}),
            event(twin_id="open_line", asset_id="Bad Id!", metrics={"x": 1.0}),
            event(twin_id="open_line", metrics={"temp_c": 60.0, "mystery": 1.0}),
        ],
    )
    assert result["accepted"] == 2
    assert [r["index"] for r in result["rejected"]] == [1]
    snapshot = (await client.get("/twins/open_line", headers=viewer)).json()
    assets = {a["asset_id"]: a for a in snapshot["assets"]}
    assert assets["new_sensor_1"]["declared"] is False
    assert assets["new_sensor_1"]["reported"]["humidity_pct"]["value"] == 41.5
    # A declared asset still drops metrics its model lacks, and says so in the quality.
    assert set(assets["etch_tool_7"]["reported"]) == {"temp_c"}
    assert assets["etch_tool_7"]["reported"]["temp_c"]["quality"] == 0.5


async def test_reported_state_moves_forward_only(client: httpx.AsyncClient, keys: Keys) -> None:
    await load_twin(client, keys)
    agent, viewer = keys.headers(Role.agent), keys.headers(Role.viewer)
    await ingest(client, agent, [event(event_id="new", ts=now_ts(-1), metrics={"temp_c": 61.0})])
    await ingest(
        client,
        agent,
        [event(event_id="old", ts=now_ts(-100), metrics={"temp_c": 50.0, "rf_w": 5.0})],
    )
    asset = (await client.get("/twins/line1/assets/etch_tool_7", headers=viewer)).json()
    assert asset["reported"]["temp_c"]["value"] == 61.0
    assert asset["reported"]["temp_c"]["event_id"] == "new"
    assert asset["reported"]["rf_w"]["value"] == 5.0
    assert {"baseline_mean", "baseline_std", "z_score"} <= set(asset["reported"]["temp_c"])


async def test_tenants_are_isolated(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    await load_twin(client, keys)
    theirs = await client.post(
        "/telemetry/ingest", json=event(event_id="x"), headers=keys.auth(keys.other_admin)
    )
    assert theirs.json()["rejected"][0]["errors"][0]["pointer"] == "/twin_id"
    # The same twin and event id in the other tenant are that tenant's own.
    other_model = twin_model()
    response = await client.put(
        "/twins/line1", json=other_model, headers=keys.auth(keys.other_admin)
    )
    assert response.status_code == 201
    mine = await ingest(client, keys.headers(Role.agent), event(event_id="x"))
    other = await ingest(
        client, keys.auth(keys.other_admin), event(event_id="x", metrics={"temp_c": 1.0})
    )
    assert mine["accepted"] == other["accepted"] == 1
    ours = await appended(client, keys.headers(Role.viewer))
    assert [p["metrics"]["temp_c"] for e in ours for p in e["data"]["points"]] == [60.0]
    snapshot = (await client.get("/twins/line1", headers=keys.auth(keys.other_viewer))).json()
    assert snapshot["assets"][0]["reported"]["temp_c"]["value"] == 1.0


async def test_snapshot_and_cursor_agree_under_concurrent_ingest(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """Every snapshot's state is exactly the log up to its cursor: the next change after the
    cursor carries the next counter value, never one already in the snapshot or a later one."""
    await load_twin(client, keys)
    agent, viewer = keys.headers(Role.agent), keys.headers(Role.viewer)
    rounds = 40

    async def writer() -> None:
        for n in range(1, rounds + 1):
            await ingest(
                client,
                agent,
                event(event_id=f"c{n}", ts=now_ts(n / 1000), metrics={"counter": float(n)}),
            )

    task = asyncio.create_task(writer())
    checked = 0
    async with asyncio.timeout(60):
        while not task.done() or checked == 0:
            snapshot = (await client.get("/twins/line1", headers=viewer)).json()
            reported = snapshot["assets"][0]["reported"].get("counter")
            seen = 0 if reported is None else int(reported["value"])
            following = await appended(client, viewer, since=snapshot["cursor"])
            values = [int(p["metrics"]["counter"]) for e in following for p in e["data"]["points"]]
            assert values == list(range(seen + 1, seen + 1 + len(values)))
            checked += 1
            await asyncio.sleep(0)
    await task
    assert checked > 1
    assert math.isfinite(checked)
