"""The manifest validates, every link resolves, every schema is served and valid."""

from __future__ import annotations

import httpx
from jsonschema import Draft202012Validator

from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.aiw.helpers import append, ext_event
from tests.conftest import Keys

MANIFEST = "/.well-known/aiw-manifest.json"


async def test_manifest_validates_against_manifest_v1(client: httpx.AsyncClient) -> None:
    manifest = (await client.get(MANIFEST)).json()
    schema = (await client.get("/schemas/manifest.v1")).json()
    Draft202012Validator(schema).validate(manifest)
    assert manifest["aiw"] == "1.0"
    assert manifest["auth"]["roles"]["admin"]["extends"] == ["executor", "supervisor"]


async def test_manifest_has_an_etag_and_answers_304(client: httpx.AsyncClient) -> None:
    first = await client.get(MANIFEST)
    etag = first.headers["etag"]
    again = await client.get(MANIFEST, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert (await client.get(MANIFEST, headers={"If-None-Match": '"other"'})).status_code == 200


async def test_every_link_resolves(client: httpx.AsyncClient, keys: Keys) -> None:
    manifest = (await client.get(MANIFEST)).json()
    headers = keys.headers(Role.admin)
    for name, link in manifest["links"].items():
        if name == "subscribe":
            # A stream never ends; an invalid cursor proves the route exists without opening one.
            response = await client.get(link, params={"since": "x"}, headers=headers)
            assert response.status_code == 400, name
        else:
            response = await client.get(link, headers=headers)
            assert response.status_code == 200, (name, link, response.status_code)
    for schema in manifest["schemas"]:
        assert (await client.get(schema["url"])).status_code == 200
    for resource in manifest["resources"]:
        if resource["collection"]:
            assert (await client.get(resource["collection"], headers=headers)).status_code == 200


async def test_every_schema_is_served_as_a_valid_2020_12_schema(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/schemas")).json()
    names = {s["name"] for s in listed}
    assert {"event.v1", "manifest.v1"} <= names
    for item in listed:
        response = await client.get(item["url"])
        assert response.headers["content-type"] == "application/schema+json"
        document = response.json()
        Draft202012Validator.check_schema(document)
        assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert document["$id"] == item["id"] == f"urn:opstwin:schema:{item['name']}"
        cached = await client.get(item["url"], headers={"If-None-Match": response.headers["etag"]})
        assert cached.status_code == 304


async def test_unknown_schema_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/schemas/nope.v9")
    assert response.status_code == 404
    assert response.json()["type"] == "urn:opstwin:problem:not-found"


async def test_real_feed_output_validates_against_event_v1(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    await append(services, [ext_event(1), ext_event(2, twin=None)])
    await client.post(
        "/events",
        json={
            "specversion": "1.0",
            "id": "x1",
            "source": "/t",
            "type": "ext.t",
            "traceparent": "00-abc",
            "data": [1],
        },
        headers=keys.headers(Role.agent),
    )
    schema = (await client.get("/schemas/event.v1")).json()
    validator = Draft202012Validator(schema)
    events = (await client.get("/diff", headers=keys.headers(Role.viewer))).json()["events"]
    assert len(events) == 3
    for event in events:
        validator.validate(event)
    assert events[2]["traceparent"] == "00-abc"
