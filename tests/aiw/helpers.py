"""Helpers for AIW tests: appending events and paging the feed."""

from __future__ import annotations

from typing import Any

import httpx

from opstwin.aiw.changelog import Appended, NewEvent
from opstwin.services import Services


def ext_event(
    n: int,
    *,
    type_: str = "ext.test.tick",
    twin: str | None = "line1",
    tenant: str = "default",
    pad: str = "",
) -> NewEvent:
    return NewEvent(
        tenant_id=tenant,
        type=type_,
        source="/tests",
        subject=f"twin/{twin}/asset/a1" if twin else "misc/thing",
        data={"n": n, "pad": pad} if pad else {"n": n},
    )


async def append(services: Services, events: list[NewEvent]) -> list[Appended]:
    async with services.db.write() as tx:
        return await services.changelog.append(tx, events)


async def page_all(
    client: httpx.AsyncClient, headers: dict[str, str], since: str | None = None, **params: Any
) -> tuple[list[dict[str, Any]], str]:
    """Follow /diff until has_more is false; returns every event and the final cursor."""
    events: list[dict[str, Any]] = []
    cursor = since
    while True:
        query = {k: v for k, v in {"since": cursor, **params}.items() if v is not None}
        response = await client.get("/diff", params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        events.extend(body["events"])
        assert body["next_cursor"], "next_cursor is always present"
        cursor = body["next_cursor"]
        if not body["has_more"]:
            return events, cursor
