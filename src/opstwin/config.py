"""Settings: one root object read from ``OPSTWIN_*`` environment variables (and ``.env``).

Nested groups use a single underscore after the group name: ``OPSTWIN_DATABASE_URL`` sets
``database.url``, ``OPSTWIN_FEED_HEARTBEAT_S`` sets ``feed.heartbeat_s``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY_S = 86_400.0


class DatabaseSettings(BaseModel):
    """Where state lives."""

    url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy async URL. Unset: embedded SQLite at <data_dir>/opstwin.db. "
            "Production: postgresql+asyncpg://user@host/db"
        ),
    )
    schema_name: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL: keep OpsTwin's tables in this schema (created if missing). Unset: the default search_path.",
    )
    auto_migrate: bool = Field(
        default=True, description="Apply pending migrations when the server starts."
    )
    pool_size: int = Field(
        default=10, ge=1, description="Connections kept per process (PostgreSQL)."
    )
    busy_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="SQLite: how long a writer waits for another process's lock.",
    )
    echo: bool = Field(default=False, description="Log every SQL statement (debugging only).")


class FeedSettings(BaseModel):
    """The change log and the AIW feed (`/diff`, `/subscribe`)."""

    page_size_default: int = Field(
        default=100, ge=1, description="`/diff` page size when `limit` is absent."
    )
    page_size_max: int = Field(default=1000, ge=1, description="Largest `limit` `/diff` accepts.")
    max_wait_s: float = Field(
        default=30.0, ge=0, description="Longest `wait` a `/diff` long-poll may ask for."
    )
    heartbeat_s: float = Field(default=15.0, gt=0, description="SSE comment heartbeat period.")
    bookmark_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="Filtered SSE streams get a bookmark at most this often when the log moved.",
    )
    subscriber_buffer: int = Field(
        default=2000,
        ge=1,
        description="A subscriber still holding more than this many unsent entries when the next fan-out comes is disconnected as too slow (it resumes by cursor).",
    )
    poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="How often the log reader looks for entries written by other processes (SQLite; PostgreSQL uses LISTEN/NOTIFY too).",
    )
    fanout_interval_s: float = Field(
        default=0.05,
        ge=0,
        description=(
            "Least time between two fan-outs to subscribers. Idle: a change goes out at once; "
            "under load, every wake carries all changes since the last (adaptive batching)."
        ),
    )
    retention_s: float = Field(
        default=7 * DAY_S, gt=0, description="Change-log entries older than this are compacted."
    )
    compaction_interval_s: float = Field(
        default=300.0, gt=0, description="How often compaction runs."
    )
    max_event_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest event accepted by `POST /events`."
    )


class ServerSettings(BaseModel):
    """The HTTP server."""

    host: str = Field(default="127.0.0.1", description="Interface `opstwin serve` binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `opstwin serve` listens on.")
    public_url: str | None = Field(
        default=None,
        description="Base URL for absolute links in the manifest; unset: links are root-relative (resolve them against the manifest URL).",
    )


class Settings(BaseSettings):
    """Root settings object; built once by the CLI or a test and passed into ``create_app``."""

    model_config = SettingsConfigDict(
        env_prefix="OPSTWIN_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_file=".env",
        extra="ignore",
    )

    env: Literal["dev", "test", "prod"] = Field(
        default="dev", description="dev: local defaults allowed; prod: unsafe defaults refused."
    )
    service_name: str = Field(default="opstwin", description="Name in the manifest and logs.")
    data_dir: Path = Field(
        default=Path("var"), description="Where the embedded database and local files live."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log threshold."
    )
    log_json: bool = Field(
        default=False, description="Logs as JSON lines (else human-readable key=value)."
    )
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    feed: FeedSettings = Field(default_factory=FeedSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.env == "prod" and self.database.url is None:
            raise ValueError(
                "OPSTWIN_DATABASE_URL must be set explicitly when OPSTWIN_ENV=prod "
                "(the embedded SQLite file under ./var is a development default)"
            )
        if self.feed.page_size_default > self.feed.page_size_max:
            raise ValueError("feed.page_size_default must not exceed feed.page_size_max")
        return self

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'opstwin.db').resolve()}"
