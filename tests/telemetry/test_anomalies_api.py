"""GET /anomalies through the whole pipeline: model → HTTP ingest → detector → API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from opstwin.kit.clock import rfc3339
from opstwin.policy.rbac import Role
from tests.conftest import Keys

ROOT = Path(__file__).resolve().parents[2]
TWIN, ASSET, METRIC = "fab_line_3", "etch_tool_7", "temp_c"  # hard limits 15–90 °C


def points(start: datetime, values: list[float]) -> list[dict[str, Any]]:
    return [
        {
            "twin_id": TWIN,
            "asset_id": ASSET,
            "ts": rfc3339(start + timedelta(seconds=i)),
            "metrics": {METRIC: v},
        }
        for i, v in enumerate(values)
    ]


async def _anomalies(
    client: httpx.AsyncClient, headers: dict[str, str], **params: str
) -> dict[str, Any]:
    response = await client.get("/anomalies", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_hard_limit_breach_becomes_an_open_then_resolved_anomaly(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    admin, agent, viewer = (
        keys.headers(Role.admin),
        keys.headers(Role.agent),
        keys.headers(Role.viewer),
    )
    model = (ROOT / "examples" / "fab-line.yaml").read_bytes()
    loaded = await client.put(
        f"/twins/{TWIN}", content=model, headers={**admin, "content-type": "application/yaml"}
    )
    assert loaded.status_code in {200, 201}, loaded.text
    start = datetime.now(UTC) - timedelta(minutes=5)
    normal = [60.0 + 0.1 * (i % 5) for i in range(20)]
    breach = [95.0, 96.0, 97.0]  # above the 90 °C hard limit
    back = [60.0 + 0.1 * (i % 5) for i in range(30)]
    ingest = await client.post(
        "/telemetry/ingest", json=points(start, normal + breach + back), headers=agent
    )
    assert ingest.status_code == 200, ingest.text
    assert ingest.json()["accepted"] == len(normal + breach + back)

    async with asyncio.timeout(20):
        while not (page := await _anomalies(client, viewer, twin_id=TWIN))["items"]:
            await asyncio.sleep(0.05)
    (item,) = page["items"]
    assert item["record"]["kind"] == "out_of_range"
    assert item["record"]["asset_id"] == ASSET
    assert item["record"]["severity"] == "critical"
    async with asyncio.timeout(20):
        while (await _anomalies(client, viewer, twin_id=TWIN))["items"][0]["status"] != "resolved":
            await asyncio.sleep(0.05)
    resolved = await _anomalies(client, viewer, twin_id=TWIN, asset_id=ASSET, status="resolved")
    assert [i["anomaly_id"] for i in resolved["items"]] == [item["anomaly_id"]]
    assert resolved["items"][0]["resolution"]["resolves"] == item["anomaly_id"]
    assert (await _anomalies(client, viewer, twin_id=TWIN, status="open"))["items"] == []
    # Another tenant sees nothing; an asset filter needs its twin.
    assert (await _anomalies(client, keys.auth(keys.other_viewer)))["items"] == []
    bad = await client.get("/anomalies", params={"asset_id": ASSET}, headers=viewer)
    assert bad.status_code == 400
