"""The `opstwin` CLI: keys create/list/revoke, migrate, rotate-epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opstwin.cli import app

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("OPSTWIN_DATABASE_URL", "OPSTWIN_DATABASE_SCHEMA_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPSTWIN_DATA_DIR", str(tmp_path))
    return tmp_path


def test_keys_lifecycle(env: Path) -> None:
    created = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--role",
            "supervisor",
            "--name",
            "shift-lead",
            "--tenant",
            "fab2",
            "--json",
        ],
    )
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)
    assert key["role"] == "supervisor"
    assert key["tenant_id"] == "fab2"
    assert key["token"].startswith("otk_")

    listed = runner.invoke(app, ["keys", "list", "--json"])
    rows = json.loads(listed.stdout)
    assert [(r["key_id"], r["revoked_at"]) for r in rows] == [(key["key_id"], None)]
    assert "token" not in rows[0]

    revoked = runner.invoke(app, ["keys", "revoke", key["key_id"]])
    assert revoked.exit_code == 0
    rows = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    assert rows[0]["revoked_at"] is not None

    again = runner.invoke(app, ["keys", "revoke", key["key_id"]])
    assert again.exit_code == 2
    assert "no active key" in again.output


def test_bad_input_is_a_clear_error(env: Path) -> None:
    bad_role = runner.invoke(app, ["keys", "create", "--role", "god", "--name", "x"])
    assert bad_role.exit_code != 0
    bad_tenant = runner.invoke(
        app, ["keys", "create", "--role", "viewer", "--name", "x", "--tenant", "Bad Tenant"]
    )
    assert bad_tenant.exit_code == 2
    assert "tenant" in bad_tenant.output


def test_migrate_and_rotate_epoch(env: Path) -> None:
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    rotated = runner.invoke(app, ["changelog", "rotate-epoch"])
    assert rotated.exit_code == 0
    assert "new epoch" in rotated.output


def test_demo_outside_a_clone_says_what_is_missing(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no examples/ here
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 2
    assert "examples/fab-line.yaml not found" in result.output
    assert "make demo" in result.output
