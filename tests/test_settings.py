"""Settings come from OPSTWIN_* variables; unsafe defaults are refused in prod."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from opstwin.config import Settings


def test_environment_variables_fill_nested_groups(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPSTWIN_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    monkeypatch.setenv("OPSTWIN_DATABASE_SCHEMA_NAME", "plant_a")
    monkeypatch.setenv("OPSTWIN_FEED_HEARTBEAT_S", "3")
    monkeypatch.setenv("OPSTWIN_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.database.url == "postgresql+asyncpg://u@h/db"
    assert settings.database.schema_name == "plant_a"
    assert settings.feed.heartbeat_s == 3
    assert settings.data_dir == tmp_path


def test_default_is_embedded_sqlite_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OPSTWIN_DATABASE_URL", raising=False)
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/opstwin.db"


def test_prod_refuses_the_development_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSTWIN_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="OPSTWIN_DATABASE_URL must be set"):
        Settings(env="prod")


def test_inconsistent_page_sizes_are_refused() -> None:
    with pytest.raises(ValidationError, match="page_size_default"):
        Settings.model_validate({"feed": {"page_size_default": 50, "page_size_max": 10}})
