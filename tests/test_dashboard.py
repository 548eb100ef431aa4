"""The dashboard page is served with a strict CSP and its assets; it holds no data itself."""

from __future__ import annotations

import httpx


async def test_dashboard_page_and_assets(client: httpx.AsyncClient) -> None:
    root = await client.get("/")
    assert root.status_code == 307
    assert root.headers["location"] == "/dashboard"
    page = await client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/dashboard/static/app.js">' in page.text
    script = await client.get("/dashboard/static/app.js")
    assert script.status_code == 200
    assert "Last-Event-ID" in script.text
    assert "innerHTML" not in script.text.replace("never innerHTML", "")
    assert (await client.get("/dashboard/static/app.css")).status_code == 200


async def test_dashboard_is_not_part_of_the_agent_api(client: httpx.AsyncClient) -> None:
    manifest = (await client.get("/.well-known/aiw-manifest.json")).json()
    assert not [
        e for e in manifest["endpoints"] if e["path"].startswith("/dashboard") or e["path"] == "/"
    ]
