"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

import httpx

from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.aiw.helpers import append, ext_event
from tests.conftest import Keys


async def test_health_and_ready(client: httpx.AsyncClient, services: Services) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    await append(services, [ext_event(1)])
    await services.feed.catch_up()
    ready = (await client.get("/ready")).json()
    assert ready["status"] == "ready"
    _current, code_heads = await services.db.migration_status()
    assert ready["migration"] == code_heads
    assert ready["head"] == 1


async def test_metrics_count_requests_by_route_template(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    await client.get("/schemas/event.v1")
    await client.get("/diff", params={"since": "bad"}, headers=keys.headers(Role.viewer))
    text = (await client.get("/metrics", headers=keys.headers(Role.viewer))).text
    assert (
        'opstwin_http_requests_total{method="GET",route="/schemas/{name}",status="200"} 1.0' in text
    )
    assert 'opstwin_http_requests_total{method="GET",route="/diff",status="400"} 1.0' in text
    assert "opstwin_changelog_head" in text
    assert "opstwin_feed_subscribers" in text


async def test_snapshot_reads_agree_while_a_writer_commits(services: Services) -> None:
    async with services.db.snapshot() as conn:
        before = await services.changelog.marks(conn)
        await append(services, [ext_event(1)])  # commits in another connection meanwhile
        after = await services.changelog.marks(conn)
    assert before == after
    async with services.db.snapshot() as conn:
        assert (await services.changelog.marks(conn)).head == before.head + 1
