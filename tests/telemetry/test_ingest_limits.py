"""Ingest limits: body size and batch length answer 413 with the limit (both backends)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from opstwin.config import Settings, TelemetrySettings
from opstwin.policy.rbac import Role
from tests.conftest import Keys
from tests.telemetry.test_ingest import event, load_twin

MAX_BYTES = 4096
MAX_EVENTS = 5


@pytest.fixture
async def settings(db_settings: Settings) -> Settings:
    return db_settings.model_copy(
        update={
            "telemetry": TelemetrySettings(max_body_bytes=MAX_BYTES, max_batch_events=MAX_EVENTS)
        }
    )


async def test_body_and_batch_limits_are_413(client: httpx.AsyncClient, keys: Keys) -> None:
    await load_twin(client, keys)
    agent = keys.headers(Role.agent)
    within = await client.post(
        "/telemetry/ingest", json=[event() for _ in range(MAX_EVENTS)], headers=agent
    )
    assert within.status_code == 200
    assert within.json()["accepted"] == MAX_EVENTS

    too_many = await client.post(
        "/telemetry/ingest", json=[{} for _ in range(MAX_EVENTS + 1)], headers=agent
    )
    assert too_many.status_code == 413
    assert too_many.json()["limit_events"] == MAX_EVENTS
    assert too_many.headers["content-type"] == "application/problem+json"

    ndjson = b"\n".join(orjson.dumps({}) for _ in range(MAX_EVENTS + 1))
    lines = await client.post(
        "/telemetry/ingest",
        content=ndjson,
        headers={**agent, "content-type": "application/x-ndjson"},
    )
    assert lines.status_code == 413

    big = orjson.dumps(event(tags={"pad": "x" * MAX_BYTES}))
    too_big = await client.post(
        "/telemetry/ingest", content=big, headers={**agent, "content-type": "application/json"}
    )
    assert too_big.status_code == 413
    assert too_big.json()["limit_bytes"] == MAX_BYTES

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(3):
            yield b" " * (MAX_BYTES // 2)

    streamed = await client.post(
        "/telemetry/ingest", content=chunks(), headers={**agent, "content-type": "application/json"}
    )
    assert streamed.status_code == 413
