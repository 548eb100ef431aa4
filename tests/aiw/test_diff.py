"""GET /diff: the delta feed's contract (DESIGN §3), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.aiw.helpers import append, ext_event, page_all
from tests.conftest import Keys


async def test_absent_since_reads_from_the_oldest_and_since_is_exclusive(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    appended = await append(services, [ext_event(i) for i in range(5)])
    events, _ = await page_all(client, keys.headers(Role.viewer))
    assert [e["data"]["n"] for e in events] == [0, 1, 2, 3, 4]
    assert [e["cursor"] for e in events] == [services.changelog.cursor(a.seq) for a in appended]
    assert [int(e["sequence"]) for e in events] == [a.seq for a in appended]

    after_second, _ = await page_all(
        client, keys.headers(Role.viewer), since=services.changelog.cursor(appended[1].seq)
    )
    assert [e["data"]["n"] for e in after_second] == [2, 3, 4]


async def test_since_now_starts_at_the_head(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    await append(services, [ext_event(i) for i in range(3)])
    response = await client.get("/diff", params={"since": "now"}, headers=keys.headers(Role.viewer))
    body = response.json()
    assert body["events"] == []
    assert body["has_more"] is False
    await append(services, [ext_event(99)])
    events, _ = await page_all(client, keys.headers(Role.viewer), since=body["next_cursor"])
    assert [e["data"]["n"] for e in events] == [99]


async def test_limit_pages_with_has_more(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    await append(services, [ext_event(i) for i in range(7)])
    first = (
        await client.get("/diff", params={"limit": 3}, headers=keys.headers(Role.viewer))
    ).json()
    assert [e["data"]["n"] for e in first["events"]] == [0, 1, 2]
    assert first["has_more"] is True
    assert first["next_cursor"] == first["events"][-1]["cursor"]
    rest, _ = await page_all(client, keys.headers(Role.viewer), since=first["next_cursor"], limit=3)
    assert [e["data"]["n"] for e in rest] == [3, 4, 5, 6]


async def test_limit_and_wait_are_bounded_by_settings(
    client: httpx.AsyncClient, keys: Keys, services: Services
) -> None:
    too_many = services.settings.feed.page_size_max + 1
    response = await client.get(
        "/diff", params={"limit": too_many}, headers=keys.headers(Role.viewer)
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"detail": f"at most {too_many - 1}", "parameter": "limit"}
    ]
    response = await client.get("/diff", params={"wait": 10_000}, headers=keys.headers(Role.viewer))
    assert response.status_code == 422
    response = await client.get("/diff", params={"limit": 0}, headers=keys.headers(Role.viewer))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_unknown_parameter_is_rejected(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await client.get("/diff", params={"sinse": "now"}, headers=keys.headers(Role.viewer))
    assert response.status_code == 400
    problem = response.json()
    assert problem["type"] == "urn:opstwin:problem:unknown-parameter"
    assert problem["errors"] == [
        {"detail": "not a parameter of this endpoint", "parameter": "sinse"}
    ]


async def test_filters_select_and_next_cursor_advances_past_filtered_entries(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    await append(
        services,
        [
            ext_event(0, type_="ext.a.one"),
            ext_event(1, type_="ext.b.two", twin="line2"),
            ext_event(2, type_="ext.a.three", twin="line2"),
            ext_event(3, type_="ext.c"),
        ],
    )
    headers = keys.headers(Role.viewer)
    by_prefix, _ = await page_all(client, headers, types="ext.a.*")
    assert [e["data"]["n"] for e in by_prefix] == [0, 2]
    exact, _ = await page_all(client, headers, types="ext.c,ext.b.two")
    assert [e["data"]["n"] for e in exact] == [1, 3]
    by_twin, _ = await page_all(client, headers, twin_id="line2")
    assert [e["data"]["n"] for e in by_twin] == [1, 2]

    # Nothing matches: the page is empty but the cursor moved to the head, so the next read
    # only sees what comes after — never rescans the filtered entries.
    none = (await client.get("/diff", params={"types": "ext.zzz"}, headers=headers)).json()
    assert none["events"] == []
    assert none["has_more"] is False
    head = (await client.get("/diff", params={"since": "now"}, headers=headers)).json()[
        "next_cursor"
    ]
    assert none["next_cursor"] == head
    await append(services, [ext_event(4, type_="ext.zzz")])
    later, _ = await page_all(client, headers, since=none["next_cursor"], types="ext.zzz")
    assert [e["data"]["n"] for e in later] == [4]


async def test_bad_type_wildcard_is_rejected(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await client.get(
        "/diff", params={"types": "ext.*.x"}, headers=keys.headers(Role.viewer)
    )
    assert response.status_code == 400


async def test_tampered_cursor_is_400_compacted_is_410_rotated_epoch_is_410(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    headers = keys.headers(Role.viewer)
    appended = await append(services, [ext_event(i) for i in range(4)])
    cursor = services.changelog.cursor(appended[0].seq)
    tampered = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    response = await client.get("/diff", params={"since": tampered}, headers=headers)
    assert response.status_code == 400
    assert response.json()["type"] == "urn:opstwin:problem:invalid-cursor"

    removed = await services.changelog.compact(services.clock.now() + timedelta(seconds=1))
    assert removed == 4
    response = await client.get("/diff", params={"since": cursor}, headers=headers)
    assert response.status_code == 410
    problem = response.json()
    assert problem["type"] == "urn:opstwin:problem:cursor-expired"
    assert problem["reason"] == "compacted"
    assert problem["resync"]["diff"] == "/diff"
    # The last compacted cursor is still valid (nothing after it was lost) and reads new entries.
    await append(services, [ext_event(10)])
    last_compacted = services.changelog.cursor(appended[-1].seq)
    events, _ = await page_all(client, headers, since=last_compacted)
    assert [e["data"]["n"] for e in events] == [10]
    oldest, _ = await page_all(client, headers)
    assert [e["data"]["n"] for e in oldest] == [10]

    await services.changelog.rotate_epoch()
    response = await client.get("/diff", params={"since": last_compacted}, headers=headers)
    assert response.status_code == 410
    assert response.json()["reason"] == "epoch"


async def test_tenants_never_see_each_other(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    await append(services, [ext_event(1), ext_event(2, tenant="other"), ext_event(3)])
    mine, _ = await page_all(client, keys.headers(Role.viewer))
    theirs, _ = await page_all(client, keys.auth(keys.other_viewer))
    assert [e["data"]["n"] for e in mine] == [1, 3]
    assert [e["data"]["n"] for e in theirs] == [2]


async def test_wait_long_polls_until_a_change(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    headers = keys.headers(Role.viewer)
    head = (await client.get("/diff", params={"since": "now"}, headers=headers)).json()[
        "next_cursor"
    ]
    request = asyncio.create_task(
        client.get("/diff", params={"since": head, "wait": 10}, headers=headers)
    )
    await asyncio.sleep(0.2)
    assert not request.done(), "the long-poll returned before any change"
    await append(services, [ext_event(7)])
    async with asyncio.timeout(5):
        response = await request
    assert [e["data"]["n"] for e in response.json()["events"]] == [7]


async def test_wait_times_out_with_an_empty_page(client: httpx.AsyncClient, keys: Keys) -> None:
    headers = keys.headers(Role.viewer)
    response = await client.get("/diff", params={"since": "now", "wait": 0.3}, headers=headers)
    assert response.status_code == 200
    assert response.json()["events"] == []


kinds = st.sampled_from(["ext.a.x", "ext.a.y", "ext.b.x", "ext.c"])
twins = st.sampled_from(["line1", "line2", None])


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    entries=st.lists(st.tuples(kinds, twins), min_size=0, max_size=25),
    filter_types=st.sampled_from([None, "ext.a.*", "ext.c", "ext.a.x,ext.b.x", "ext.none"]),
    filter_twin=st.sampled_from([None, "line1", "line2"]),
    limit=st.integers(min_value=1, max_value=6),
)
async def test_paging_any_filter_sees_exactly_the_matching_entries_in_order(
    client: httpx.AsyncClient,
    services: Services,
    keys: Keys,
    entries: list[tuple[str, str | None]],
    filter_types: str | None,
    filter_twin: str | None,
    limit: int,
) -> None:
    headers = keys.headers(Role.viewer)
    start = (await client.get("/diff", params={"since": "now"}, headers=headers)).json()[
        "next_cursor"
    ]
    appended = await append(
        services, [ext_event(i, type_=t, twin=w) for i, (t, w) in enumerate(entries)]
    )

    def wanted(type_: str, twin: str | None) -> bool:
        if filter_twin is not None and twin != filter_twin:
            return False
        if filter_types is None:
            return True
        return any(
            type_.startswith(f[:-1]) if f.endswith(".*") else type_ == f
            for f in filter_types.split(",")
        )

    expected = [i for i, (t, w) in enumerate(entries) if wanted(t, w)]
    seen: list[int] = []
    cursor = start
    previous_seq = services.changelog.codec.decode(start).seq
    while True:
        params = {"since": cursor, "limit": limit}
        if filter_types:
            params["types"] = filter_types
        if filter_twin:
            params["twin_id"] = filter_twin
        body = (await client.get("/diff", params=params, headers=headers)).json()
        seen.extend(e["data"]["n"] for e in body["events"])
        seq = services.changelog.codec.decode(body["next_cursor"]).seq
        assert seq >= previous_seq
        previous_seq, cursor = seq, body["next_cursor"]
        if not body["has_more"]:
            break
    assert seen == expected
    # Fully read: the cursor reached the head even when the last entries were filtered out.
    assert previous_seq == (
        appended[-1].seq if appended else services.changelog.codec.decode(start).seq
    )
