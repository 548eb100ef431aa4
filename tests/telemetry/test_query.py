"""GET /telemetry/query (keyset paging) and GET /telemetry/aggregate (against numpy) on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest

from opstwin.policy.rbac import Role
from tests.conftest import Keys
from tests.telemetry.test_ingest import load_twin

START = datetime(2026, 1, 1, tzinfo=UTC)
METRICS = ["pressure_mtorr", "rf_w", "temp_c"]
N = 600
GAP = range(200, 260)  # events skipped: leaves empty one-minute buckets


def rfc(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def dataset() -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    events: list[dict[str, Any]] = []
    for i in range(N):
        if i in GAP:
            continue
        metrics: dict[str, float | None] = {
            "temp_c": float(np.round(rng.normal(60, 2), 6)),
            "pressure_mtorr": float(np.round(rng.normal(10, 0.5), 6)),
            "rf_w": float(np.round(rng.normal(1500, 20), 6)) if i % 3 else None,
        }
        events.append(
            {
                "event_id": f"q{i}",
                "twin_id": "line1",
                "asset_id": "etch_tool_7",
                "ts": rfc(START + timedelta(seconds=7 * i, microseconds=(i * 37) % 1000)),
                "metrics": metrics,
            }
        )
    return events


def reference(events: list[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric → (ts in µs, values), time order."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for metric in METRICS:
        pairs = [
            (
                int(
                    (datetime.fromisoformat(e["ts"]) - datetime(1970, 1, 1, tzinfo=UTC))
                    / timedelta(microseconds=1)
                ),
                e["metrics"][metric],
            )
            for e in events
            if e["metrics"][metric] is not None
        ]
        out[metric] = (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    return out


@pytest.fixture
async def loaded(client: httpx.AsyncClient, keys: Keys) -> list[dict[str, Any]]:
    await load_twin(client, keys)
    events = dataset()
    for start in range(0, len(events), 200):
        response = await client.post(
            "/telemetry/ingest", json=events[start : start + 200], headers=keys.headers(Role.agent)
        )
        assert response.json()["accepted"] == len(events[start : start + 200])
    return events


async def test_query_pages_through_every_point_once(
    client: httpx.AsyncClient, keys: Keys, loaded: list[dict[str, Any]]
) -> None:
    viewer = keys.headers(Role.viewer)
    params: dict[str, Any] = {"twin_id": "line1", "asset_id": "etch_tool_7", "limit": 137}
    collected: list[dict[str, Any]] = []
    token = None
    pages = 0
    while True:
        response = await client.get(
            "/telemetry/query",
            params={**params, **({"page_token": token} if token else {})},
            headers=viewer,
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["points"]) <= 137
        collected.extend(page["points"])
        pages += 1
        token = page["next_page_token"]
        if token is None:
            break
    ref = reference(loaded)
    expected = [(m, v) for m in METRICS for v in ref[m][1].tolist()]
    assert [(p["metric"], p["value"]) for p in collected] == expected
    assert pages == -(-len(expected) // 137)
    assert all(p["quality"] in (1.0, 0.6667) or p["quality"] < 1 for p in collected)

    # A time window and a metric subset, by alias.
    window = await client.get(
        "/telemetry/query",
        params={
            "twin_id": "line1",
            "asset_id": "etch_tool_7",
            "metrics": "temp",
            "from": rfc(START + timedelta(seconds=70)),
            "to": rfc(START + timedelta(seconds=140)),
        },
        headers=viewer,
    )
    points = window.json()["points"]
    assert [p["metric"] for p in points] == ["temp_c"] * 10
    assert points[0]["event_id"] == "q10"
    assert points[0]["ts"] == "2026-01-01T00:01:10.000370Z"


async def test_query_errors(
    client: httpx.AsyncClient, keys: Keys, loaded: list[dict[str, Any]]
) -> None:
    viewer = keys.headers(Role.viewer)
    base = {"twin_id": "line1", "asset_id": "etch_tool_7", "limit": 5}
    first = (await client.get("/telemetry/query", params=base, headers=viewer)).json()
    other = await client.get(
        "/telemetry/query",
        params={**base, "metrics": "temp_c", "page_token": first["next_page_token"]},
        headers=viewer,
    )
    assert other.status_code == 400
    assert other.json()["errors"][0]["parameter"] == "page_token"
    forged = await client.get(
        "/telemetry/query", params={**base, "page_token": "!!"}, headers=viewer
    )
    assert forged.status_code == 400
    too_many = await client.get("/telemetry/query", params={**base, "limit": 10**6}, headers=viewer)
    assert too_many.status_code == 422
    typo = await client.get("/telemetry/query", params={**base, "metric": "x"}, headers=viewer)
    assert typo.status_code == 400
    naive = await client.get(
        "/telemetry/query", params={**base, "from": "2026-01-01T00:00:00"}, headers=viewer
    )
    assert naive.status_code == 422
    assert (
        await client.get("/telemetry/query", params={**base, "asset_id": "nope"}, headers=viewer)
    ).status_code == 404
    # Another tenant has no such twin.
    theirs = await client.get("/telemetry/query", params=base, headers=keys.auth(keys.other_viewer))
    assert theirs.status_code == 404


def numpy_aggregate(fn: str, values: np.ndarray) -> float | None:
    match fn:
        case "avg":
            return float(np.mean(values))
        case "min":
            return float(np.min(values))
        case "max":
            return float(np.max(values))
        case "sum":
            return float(np.sum(values))
        case "count":
            return float(len(values))
        case "stddev":
            return float(np.std(values, ddof=1)) if len(values) > 1 else None
        case _:
            return float(np.percentile(values, float(fn[1:]), method="linear"))


@pytest.mark.parametrize("fn", ["avg", "min", "max", "sum", "count", "stddev", "p50", "p95", "p99"])
async def test_aggregates_equal_numpy(
    client: httpx.AsyncClient, keys: Keys, loaded: list[dict[str, Any]], fn: str
) -> None:
    start, end = START + timedelta(seconds=30), START + timedelta(seconds=7 * N)
    response = await client.get(
        "/telemetry/aggregate",
        params={
            "twin_id": "line1",
            "asset_id": "etch_tool_7",
            "from": rfc(start),
            "to": rfc(end),
            "bucket": "1m",
            "fn": fn,
        },
        headers=keys.headers(Role.viewer),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["metric"] for s in body["series"]] == METRICS
    width = 60_000_000
    start_us = int(start.timestamp() * 1_000_000)
    end_us = int(end.timestamp() * 1_000_000)
    for series in body["series"]:
        ts, values = reference(loaded)[series["metric"]]
        inside = (ts >= start_us) & (ts < end_us)
        ts, values = ts[inside], values[inside]
        buckets = ts - ts % width
        expected = {
            b: (numpy_aggregate(fn, values[buckets == b]), int((buckets == b).sum()))
            for b in np.unique(buckets).tolist()
        }
        got = {
            int(datetime.fromisoformat(b["start"]).timestamp() * 1_000_000): (
                b["value"],
                b["count"],
            )
            for b in series["buckets"]
        }
        assert sorted(got) == sorted(expected)
        for bucket, (value, count) in expected.items():
            assert got[bucket][1] == count
            if value is None:
                assert got[bucket][0] is None
            elif fn in {"min", "max", "count", "p50", "p95", "p99", "stddev"}:
                assert got[bucket][0] == value
            else:  # sums in another order: equal to the last few ulps
                assert got[bucket][0] == pytest.approx(value, rel=1e-12)


async def test_fill_modes(
    client: httpx.AsyncClient, keys: Keys, loaded: list[dict[str, Any]]
) -> None:
    async def buckets(fill: str) -> list[dict[str, Any]]:
        response = await client.get(
            "/telemetry/aggregate",
            params={
                "twin_id": "line1",
                "asset_id": "etch_tool_7",
                "metrics": "temp_c",
                "from": rfc(START + timedelta(minutes=22)),
                "to": rfc(START + timedelta(minutes=32)),
                "bucket": "2m",
                "fn": "max",
                "fill": fill,
            },
            headers=keys.headers(Role.viewer),
        )
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["series"][0]["buckets"]
        return found

    # Events 200–259 (23:20–30:13) are missing: buckets 24:00, 26:00, 28:00 are empty.
    none = await buckets("none")
    assert [b["start"][11:16] for b in none] == ["00:22", "00:30"]
    null = await buckets("null")
    assert [b["start"][11:16] for b in null] == ["00:22", "00:24", "00:26", "00:28", "00:30"]
    assert [b["value"] for b in null][1:4] == [None, None, None]
    assert [b["count"] for b in null][1:4] == [0, 0, 0]
    zero = await buckets("zero")
    assert [b["value"] for b in zero][1:4] == [0.0, 0.0, 0.0]
    previous = await buckets("previous")
    assert [b["value"] for b in previous][1:4] == [none[0]["value"]] * 3


async def test_aggregate_limits(
    client: httpx.AsyncClient, keys: Keys, loaded: list[dict[str, Any]]
) -> None:
    viewer = keys.headers(Role.viewer)
    base = {
        "twin_id": "line1",
        "asset_id": "etch_tool_7",
        "from": rfc(START),
        "to": rfc(START + timedelta(days=30)),
    }
    too_fine = await client.get(
        "/telemetry/aggregate", params={**base, "bucket": "1s"}, headers=viewer
    )
    assert too_fine.status_code == 422
    bad = await client.get(
        "/telemetry/aggregate", params={**base, "bucket": "fortnight"}, headers=viewer
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["parameter"] == "bucket"
    wrong_fn = await client.get(
        "/telemetry/aggregate", params={**base, "bucket": "1d", "fn": "median"}, headers=viewer
    )
    assert wrong_fn.status_code == 422
    backwards = await client.get(
        "/telemetry/aggregate",
        params={**base, "to": rfc(START - timedelta(days=1)), "bucket": "1d"},
        headers=viewer,
    )
    assert backwards.status_code == 422
