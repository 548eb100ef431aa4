"""Twin registry over HTTP and the CLI: load (JSON/YAML), versions with patches, snapshots."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest
import yaml
from typer.testing import CliRunner

from opstwin.cli import app as cli_app
from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.conftest import Keys

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fab-line.yaml"


def example_twin() -> dict[str, Any]:
    """The example fab line's twin (a bare twin object)."""
    document = yaml.safe_load(EXAMPLE.read_text())
    twin: dict[str, Any] = document["twins"][0]
    return twin


def small_twin(twin_id: str = "line1", *, auto: bool = False) -> dict[str, Any]:
    return {
        "id": twin_id,
        "auto_register_assets": auto,
        "assets": [
            {
                "id": "etch_tool_7",
                "metrics": {
                    "temp_c": {
                        "unit": "degC",
                        "aliases": ["temp"],
                        "hard_limits": {"low": 15.0, "high": 90.0},
                    },
                    "pressure_mtorr": {"unit": "mTorr", "aliases": ["pressure"]},
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
            }
        ],
    }


async def diff_events(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    response = await client.get("/diff", params={"limit": 1000, **params}, headers=headers)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def test_put_yaml_then_json_versions_and_patches(
    client: httpx.AsyncClient, services: Services, keys: Keys
) -> None:
    admin = keys.headers(Role.admin)
    created = await client.put(
        "/twins/fab_line_3",
        content=EXAMPLE.read_bytes(),
        headers={**admin, "content-type": "application/yaml"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    assert created.json()["changed"] is True

    # The same model again: nothing new (no version, no event).
    again = await client.put(
        "/twins/fab_line_3",
        content=EXAMPLE.read_bytes(),
        headers={**admin, "content-type": "application/yaml"},
    )
    assert again.status_code == 200
    assert again.json() == {**created.json(), "changed": False}

    changed = example_twin()
    changed["name"] = "Fab 3, renamed"
    changed["assets"][1]["setpoints"]["esc_temp_sp"]["current"] = 61.0
    updated = await client.put("/twins/fab_line_3", json=changed, headers=admin)
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2

    events = await diff_events(client, admin, types="opstwin.twin.updated")
    assert [e["version"] for e in events] == [1, 2]
    first, second = events
    for event in events:
        assert event["subject"] == "twin/fab_line_3"
        assert event["dataschema"] == "urn:opstwin:schema:twin.v1"
        services.schemas.validate("twin.v1", event["data"])
        services.schemas.validate("event.v1", event)
    assert "patch" not in first
    patch = json.loads(second["patch"])
    assert second["previousversion"] == 1
    assert jsonpatch.apply_patch(copy.deepcopy(first["data"]), patch) == second["data"]
    assert {op["path"] for op in patch} == {
        "/twins/0/name",
        "/twins/0/assets/1/setpoints/esc_temp_sp/current",
    }

    # The registry serves the current version to other services (e.g. /sim/run).
    async with services.db.read() as conn:
        twin = await services.twins.get(conn, "default", "fab_line_3")
        listed = await services.twins.list(conn, "default")
    assert twin.version == 2
    assert twin.spec.name == "Fab 3, renamed"
    assert [t.id for t in listed] == ["fab_line_3"]


async def test_invalid_models_are_422_with_pointers(client: httpx.AsyncClient, keys: Keys) -> None:
    admin = keys.headers(Role.admin)
    bad = small_twin()
    bad["assets"][0]["setpoints"]["esc_temp_sp"]["default"] = 500.0
    response = await client.put("/twins/line1", json=bad, headers=admin)
    assert response.status_code == 422
    pointers = [e["pointer"] for e in response.json()["errors"]]
    assert pointers == ["/twins/0/assets/0/setpoints/esc_temp_sp/default"]

    mismatch = await client.put("/twins/line1", json=small_twin("line2"), headers=admin)
    assert mismatch.status_code == 422
    assert mismatch.json()["errors"][0]["pointer"] == "/id"

    broken = await client.put(
        "/twins/line1",
        content=b"twins: [ {id: x",
        headers={**admin, "content-type": "application/yaml"},
    )
    assert broken.status_code == 422
    assert "not valid YAML" in broken.json()["detail"]

    not_json = await client.put(
        "/twins/line1", content=b"{", headers={**admin, "content-type": "application/json"}
    )
    assert not_json.status_code == 422


async def test_snapshot_has_desired_state_and_a_cursor_to_follow(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    admin, viewer = keys.headers(Role.admin), keys.headers(Role.viewer)
    assert (await client.put("/twins/line1", json=small_twin(), headers=admin)).status_code == 201
    listing = (await client.get("/twins", headers=viewer)).json()
    assert [t["twin_id"] for t in listing["twins"]] == ["line1"]
    assert listing["twins"][0]["assets"] == 1

    snapshot = (await client.get("/twins/line1", headers=viewer)).json()
    (asset,) = snapshot["assets"]
    assert asset["asset_id"] == "etch_tool_7"
    assert asset["declared"] is True
    assert asset["reported"] == {}
    assert asset["desired"]["esc_temp_sp"]["value"] == 60.0
    assert snapshot["model"]["id"] == "line1"

    # Nothing happened since the snapshot; the next change is exactly what the cursor yields.
    assert await diff_events(client, viewer, since=snapshot["cursor"]) == []
    changed = small_twin()
    changed["name"] = "Line one"
    assert (await client.put("/twins/line1", json=changed, headers=admin)).status_code == 200
    after = await diff_events(client, viewer, since=snapshot["cursor"])
    assert [(e["type"], e["version"]) for e in after] == [("opstwin.twin.updated", 2)]

    one = await client.get("/twins/line1/assets/etch_tool_7", headers=viewer)
    assert one.status_code == 200
    assert one.json()["desired"]["esc_temp_sp"]["bounds"] == {"low": 40.0, "high": 80.0}
    assert one.json()["cursor"] == after[-1]["cursor"]
    missing = await client.get("/twins/line1/assets/nope", headers=viewer)
    assert missing.status_code == 404
    assert (await client.get("/twins/nope", headers=viewer)).status_code == 404


async def test_tenants_never_see_each_others_twins(client: httpx.AsyncClient, keys: Keys) -> None:
    admin = keys.headers(Role.admin)
    other_admin, other_viewer = keys.auth(keys.other_admin), keys.auth(keys.other_viewer)
    assert (await client.put("/twins/line1", json=small_twin(), headers=admin)).status_code == 201
    assert (await client.get("/twins/line1", headers=other_viewer)).status_code == 404
    assert (await client.get("/twins", headers=other_viewer)).json()["twins"] == []
    # The other tenant's twin of the same id is its own, version 1.
    theirs = await client.put("/twins/line1", json=small_twin(), headers=other_admin)
    assert theirs.status_code == 201
    assert theirs.json()["version"] == 1
    events = await diff_events(client, other_viewer)
    assert [e["type"] for e in events] == ["opstwin.twin.updated"]


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("OPSTWIN_DATABASE_URL", "OPSTWIN_DATABASE_SCHEMA_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPSTWIN_DATA_DIR", str(tmp_path))
    return tmp_path


def test_cli_loads_a_twin_file(cli_env: Path) -> None:
    runner = CliRunner()
    loaded = runner.invoke(cli_app, ["twins", "load", str(EXAMPLE), "--tenant", "fab3", "--json"])
    assert loaded.exit_code == 0, loaded.output
    assert json.loads(loaded.stdout) == [{"twin_id": "fab_line_3", "version": 1, "changed": True}]
    again = runner.invoke(cli_app, ["twins", "load", str(EXAMPLE), "--tenant", "fab3"])
    assert again.exit_code == 0, again.output
    assert "version 1, unchanged" in again.stdout

    bad = cli_env / "bad.yaml"
    bad.write_text("twins: [{id: x, assets: [{id: a, metrics: {m: {unit: u, bogus: 1}}}]}]\n")
    failed = runner.invoke(cli_app, ["twins", "load", str(bad)])
    assert failed.exit_code == 2
    assert "/twins/0/assets/0/metrics/m/bogus" in failed.output
