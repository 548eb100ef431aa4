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


class SimulationSettings(BaseModel):
    """`POST /sim/run`: hard limits, the sync/background split and the background workers."""

    max_samples: int = Field(
        default=1_000_000,
        ge=100,
        le=10_000_000,
        description="Most samples a run may ask for (`samples`, and `max_samples` of adaptive or query runs); above: 422.",
    )
    max_expression_chars: int = Field(
        default=1000,
        ge=1,
        le=1000,
        description="Longest output expression accepted (the engine's own ceiling is 1000).",
    )
    max_request_bytes: int = Field(
        default=262_144, ge=1024, description="Largest `POST /sim/run` body; above: 413."
    )
    sync_max_samples: int = Field(
        default=200_000,
        ge=100,
        description="A run that may draw more samples than this runs in the background (202 + status URL); it is also the default `max_samples` of adaptive and query runs.",
    )
    timeout_s: float = Field(
        default=30.0, gt=0, description="Wall-time limit of a run answered in the request."
    )
    background_timeout_s: float = Field(
        default=600.0, gt=0, description="Wall-time limit of a background run."
    )
    background_concurrency: int = Field(
        default=2, ge=1, description="Background runs computed at the same time (worker threads)."
    )
    max_queued: int = Field(
        default=100,
        ge=1,
        description="Background runs waiting in this process at most; beyond: 503 with Retry-After.",
    )
    progress_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often progress and the ownership lease of in-flight runs are written.",
    )
    lease_s: float = Field(
        default=30.0,
        gt=0,
        description="An in-flight run whose process stopped renewing its lease this long is recovered: queued runs re-queued, running ones failed as `interrupted`.",
    )
    page_size_default: int = Field(
        default=50, ge=1, description="`GET /sim/runs` page size when `limit` is absent."
    )
    page_size_max: int = Field(
        default=200, ge=1, description="Largest `limit` `GET /sim/runs` accepts."
    )
    empirical_window_s: float = Field(
        default=3600.0,
        gt=0,
        description="`inputs_from_telemetry` without a window or count: the asset's points of the last this many seconds.",
    )
    empirical_min_points: int = Field(
        default=30,
        ge=1,
        description="Fewest stored points an `empirical` input from telemetry needs; fewer: 422 saying how many were found.",
    )
    empirical_max_points: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Most recent points an `empirical` input from telemetry reads (and stores in the run's request).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SimulationSettings:
        if self.sync_max_samples > self.max_samples:
            raise ValueError("simulation.sync_max_samples must not exceed simulation.max_samples")
        if self.lease_s < 3 * self.progress_interval_s:
            raise ValueError(
                "simulation.lease_s must be at least 3 × simulation.progress_interval_s "
                "(a lease is renewed every progress interval)"
            )
        if self.page_size_default > self.page_size_max:
            raise ValueError("simulation.page_size_default must not exceed page_size_max")
        return self


class DetectionSettings(BaseModel):
    """The anomaly detector, a consumer of the change log."""

    enabled: bool = Field(
        default=True,
        description="Run the anomaly detector over ingested telemetry (in this process).",
    )
    page_size: int = Field(
        default=500,
        ge=1,
        description="Change-log entries the detector handles per transaction (anomalies, state and its cursor commit together).",
    )
    batch_window_s: float = Field(
        default=0.1,
        ge=0,
        le=5,
        description="After a page, telemetry gathers this long before the detector reads the next (one page per window under sustained ingest instead of one per request); adds at most this to detection latency, 0 reads at once.",
    )


class MqttSettings(BaseModel):
    """The MQTT telemetry source (started only when `url` is set)."""

    url: str | None = Field(
        default=None,
        pattern=r"^mqtt://",
        description="Broker to subscribe to, `mqtt://[user:password@]host[:port]`; unset: no MQTT source.",
    )
    topic_filter: str = Field(
        default="opstwin/+/+/telemetry",
        min_length=1,
        description="Subscription; topics are read as `<prefix>/<twin_id>/<asset_id>/<suffix>` (levels 2 and 3).",
    )
    tenant_id: str = Field(
        default="default", min_length=1, description="Tenant that MQTT telemetry belongs to."
    )
    client_id: str = Field(
        default="opstwin-ingest",
        min_length=1,
        max_length=64,
        description="MQTT client id; the session is persistent, so the broker keeps QoS 1 messages for it while the server is down.",
    )
    batch_size: int = Field(
        default=1000,
        ge=1,
        description="Messages committed (then acknowledged) together at most; the broker's in-flight window (Mosquitto `max_inflight_messages`) must be at least this large for batches to fill.",
    )
    batch_max_delay_s: float = Field(
        default=0.1, gt=0, description="Longest a received message waits for its batch to fill."
    )
    batch_idle_s: float = Field(
        default=0.005,
        gt=0,
        description="A batch is committed early when no message arrived for this long (the broker stops sending at its in-flight window until we acknowledge).",
    )
    reconnect_min_s: float = Field(
        default=0.5, gt=0, description="First pause before reconnecting after the broker went away."
    )
    reconnect_max_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest pause between reconnection attempts (doubling from the minimum).",
    )

    @model_validator(mode="after")
    def _ordered_backoff(self) -> MqttSettings:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("mqtt.reconnect_min_s must not exceed mqtt.reconnect_max_s")
        return self


class TelemetrySettings(BaseModel):
    """Telemetry ingest (`POST /telemetry/ingest`, the EventNormalizer) and time-series queries."""

    max_body_bytes: int = Field(
        default=16_777_216,
        ge=1024,
        description="Largest `POST /telemetry/ingest` body; above: 413.",
    )
    max_batch_events: int = Field(
        default=10_000, ge=1, description="Most events one ingest request may carry; above: 413."
    )
    max_clock_skew_s: float = Field(
        default=60.0,
        ge=0,
        description="An event stamped further than this in the future lowers its quality score (clock skew).",
    )
    stale_after_s: float = Field(
        default=3600.0,
        gt=0,
        description="An event older than this when received lowers its quality score (stale data).",
    )
    query_limit_default: int = Field(
        default=1000, ge=1, description="`GET /telemetry/query` page size when `limit` is absent."
    )
    query_limit_max: int = Field(
        default=10_000, ge=1, description="Largest `limit` `GET /telemetry/query` accepts."
    )
    aggregate_max_buckets: int = Field(
        default=10_000, ge=1, description="Most buckets one `GET /telemetry/aggregate` may span."
    )
    aggregate_max_points: int = Field(
        default=5_000_000,
        ge=1,
        description="Most points `stddev` and percentile aggregates read into memory; above: 422.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TelemetrySettings:
        if self.query_limit_default > self.query_limit_max:
            raise ValueError("telemetry.query_limit_default must not exceed query_limit_max")
        return self


class ActionSettings(BaseModel):
    """Proposals, their execution on the assets, verification and rollback."""

    enabled: bool = Field(
        default=True,
        description="Run the executor (executes approved proposals, verifies, rolls back, "
        "expires stale approvals) in this process.",
    )
    evidence_window_s: float = Field(
        default=300.0,
        gt=0,
        description="Telemetry window before a proposal whose quality scores the "
        "data-quality component.",
    )
    sim_samples: int = Field(
        default=4000,
        ge=100,
        description="Samples per candidate when a proposal without `sim_id` runs its own "
        "simulation.",
    )
    page_size_default: int = Field(default=50, ge=1, description="`GET /proposals` page size.")
    page_size_max: int = Field(default=500, ge=1, description="Largest `limit` accepted.")
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often the executor looks for work it was not told of."
    )
    write_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for an actuator's write and read-back."
    )
    reconcile_attempts: int = Field(
        default=3,
        ge=1,
        description="Read-backs (and same-key rewrites) before an undetermined write fails.",
    )
    ramp_write_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Spacing of the intermediate absolute writes that keep a setpoint change "
        "within its ramp rate.",
    )
    readback_tolerance: float = Field(
        default=1e-6,
        ge=0,
        description="Relative tolerance (of the setpoint's bounds width) between a value "
        "written and the value read back.",
    )
    settle_fraction: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Share of the verification window left for the asset to settle; only "
        "telemetry after it is judged.",
    )


class AutomationSettings(BaseModel):
    """The automation loop: anomaly → simulation → proposal, by the twin's playbooks."""

    enabled: bool = Field(
        default=True,
        description="Run the loop in this process (it needs detection; one process per "
        "database should run it).",
    )
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often the loop looks for anomalies and tasks."
    )
    recheck_s: float = Field(
        default=5.0,
        gt=0,
        description="Look at an open anomaly again after this long when a simulation finds no "
        "convincing improvement yet, while another proposal holds the asset, or after a change "
        "left it open (at most 12 looks).",
    )
    min_p_improvement: float = Field(
        default=0.95,
        ge=0.5,
        le=1.0,
        description="Propose only a candidate that improves on doing nothing with at least this "
        "probability (else look again).",
    )


class PlantSettings(BaseModel):
    """The simulated plant (the demo's, and end-to-end tests'): a twin of the registry run as
    physics, its telemetry ingested and its setpoints written by the executor."""

    enabled: bool = Field(default=False, description="Run a simulated plant in this process.")
    twin_id: str = Field(default="fab_line_3", description="Twin (of the registry) to simulate.")
    tenant_id: str = Field(default="default", description="Tenant the twin belongs to.")
    transport: Literal["in_process", "mqtt"] = Field(
        default="in_process",
        description="in_process: telemetry goes straight to ingest and writes to the plant; "
        "mqtt: through the broker at OPSTWIN_MQTT_URL (telemetry topics, command topics with "
        "read-back), exactly as a real device.",
    )
    tick_s: float = Field(default=0.5, gt=0, description="Physics step and publishing period.")
    time_constant_s: float = Field(
        default=5.0, gt=0, description="First-order time constant of every process value."
    )
    max_sampling_period_s: float | None = Field(
        default=0.25,
        gt=0,
        description="Sample every metric at least this often (4 Hz by default, so the "
        "detector's baselines mature within a minute); unset: as the twin declares.",
    )
    seed: int | None = Field(default=None, description="Noise seed (unset: random).")
    first_fault_after_s: float = Field(
        default=60.0,
        ge=0,
        description="Seconds before the first fault (the detector needs a mature baseline).",
    )
    fault_interval_s: float | None = Field(
        default=30.0,
        gt=0,
        description="Inject the next drift fault of the rotation this often; unset: no faults.",
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
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    simulation: SimulationSettings = Field(default_factory=SimulationSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    actions: ActionSettings = Field(default_factory=ActionSettings)
    automation: AutomationSettings = Field(default_factory=AutomationSettings)
    plant: PlantSettings = Field(default_factory=PlantSettings)

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
