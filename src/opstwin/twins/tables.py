"""Tables of the twin registry: versioned twin models and the reported state of each asset."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from opstwin.kit.db import metadata

#: One row per (tenant, twin, version); the current model is the highest version. ``document``
#: is the twin's ``twin.v1`` object (one element of ``twins``) as JSON text.
twins = Table(
    "twins",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("twin_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("document", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "twin_id", "version"),
)

#: Reported state: the latest sample of every (asset, metric), written by ingest in the same
#: transaction as the telemetry. The baseline columns belong to the anomaly detector (NULL
#: until it has learnt one); ingest never touches them.
asset_state = Table(
    "asset_state",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("twin_id", String(64), nullable=False),
    Column("asset_id", String(64), nullable=False),
    Column("metric", String(128), nullable=False),
    Column("value", Double, nullable=True),
    Column("ts_us", BigInteger, nullable=False),
    Column("quality", Double, nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("baseline_mean", Double, nullable=True),
    Column("baseline_std", Double, nullable=True),
    Column("z_score", Double, nullable=True),
    Column("baseline_at_us", BigInteger, nullable=True),
    PrimaryKeyConstraint("tenant_id", "twin_id", "asset_id", "metric"),
)

#: Desired state: the value each setpoint was last written to by an action (the twin model's
#: ``current``/``default`` until then).
setpoint_state = Table(
    "setpoint_state",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("twin_id", String(64), nullable=False),
    Column("asset_id", String(64), nullable=False),
    Column("setpoint", String(64), nullable=False),
    Column("value", Double, nullable=False),
    Column("action_id", String(40), nullable=True),
    Column("updated_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant_id", "twin_id", "asset_id", "setpoint"),
)
