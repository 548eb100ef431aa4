"""I/O models of ``POST /sim/run`` and ``GET /sim/runs``.

The request is checked here for shape only (types, known members); the model itself, the
sampling settings and the query are checked by the domain (:func:`parse_model`,
:class:`RunSettings`, :func:`parse_query`), which point at the offending field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from opstwin.simulation.monte_carlo import DEFAULT_SAMPLES, DEFAULT_TARGET_RSE, SOBOL_SCRAMBLES


class ModelRef(BaseModel):
    """A process model of a registered twin, instead of an inline model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    twin_id: str = Field(min_length=1, max_length=64, description="Id of the twin.")
    process_model: str = Field(
        min_length=1, max_length=64, description="Id of one of the twin's `process_models`."
    )


class TelemetryWindowIn(BaseModel):
    """Which recent stored points of a metric to resample."""

    model_config = ConfigDict(extra="forbid", strict=True)

    window_s: float | None = Field(
        default=None, gt=0, description="Points of the last this many seconds."
    )
    count: int | None = Field(
        default=None, ge=1, description="The newest this many points (with a window: within it)."
    )


class InputsFromTelemetry(TelemetryWindowIn):
    """Sample metric inputs of a twin's process model ``empirical``-ly from stored telemetry.

    Neither ``window_s`` nor ``count``: the last ``simulation.empirical_window_s`` seconds.
    """

    inputs: dict[str, TelemetryWindowIn] | None = Field(
        default=None,
        description="Only these metric inputs, each with its own window or count (empty: the "
        "one above); absent: every metric input of the model.",
    )


class SimRunIn(BaseModel):
    """One simulation: a model (inline, or a twin's), how to sample it, which engine."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    model: dict[str, Any] | None = Field(
        default=None,
        description="Inline process model: `inputs` (name → distribution), `outputs` (name → "
        "expression) and optional `correlations`. Give this or `model_ref`.",
    )
    model_ref: ModelRef | None = Field(
        default=None, description="A twin's process model instead of an inline one."
    )
    samples: int = Field(
        default=DEFAULT_SAMPLES, description="Samples to draw (the first batch when adaptive)."
    )
    seed: int | None = Field(
        default=None,
        description="Seed; the same seed, request and version give bit-identical results. "
        "Absent: one is drawn and recorded in the run.",
    )
    method: Literal["mc", "sobol", "antithetic"] = Field(
        default="mc", description="Plain Monte Carlo, scrambled Sobol QMC, or antithetic pairs."
    )
    target_rse: float = Field(
        default=DEFAULT_TARGET_RSE,
        description="Relative error of `converge_on` below which the run counts as converged.",
    )
    adaptive: bool = Field(
        default=False,
        description="Keep drawing until `target_rse` is met or `max_samples` is reached.",
    )
    max_samples: int | None = Field(
        default=None,
        description="Sample cap of adaptive and query runs; absent: the larger of `samples` and "
        "the synchronous limit.",
    )
    converge_on: Literal["mean", "p5", "p25", "p50", "p75", "p95", "p99"] = Field(
        default="mean", description="Statistic whose relative error is judged."
    )
    engine: Literal["auto", "classical", "quantum"] = Field(
        default="auto", description="`auto` picks by the cost model and says why."
    )
    query: dict[str, Any] | None = Field(
        default=None,
        description='Optional scalar query: {"kind": "tail_probability", "output", "threshold"} '
        'or {"kind": "bounded_expectation", "output", "low", "high"}, each with optional '
        "`epsilon` and `alpha`. The quantum engine answers only this.",
    )
    sobol_scrambles: int = Field(
        default=SOBOL_SCRAMBLES, description="Independent scrambles behind Sobol error bars."
    )
    inputs_from_telemetry: InputsFromTelemetry | None = Field(
        default=None,
        description="With `model_ref`: sample metric inputs from the asset's recent stored "
        "points (`empirical`) instead of around the baseline.",
    )


class CandidateRange(BaseModel):
    """Evenly spaced candidate values, ends included."""

    model_config = ConfigDict(extra="forbid", strict=True)

    low: float
    high: float
    steps: int


class RecommendObjective(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    output: str = Field(min_length=1, description="Output (KPI) of the process model.")
    goal: Literal["maximize", "minimize"] = "maximize"
    statistic: Literal["mean", "p5", "p25", "p50", "p75", "p95", "p99"] = "p50"


class RecommendConstraint(BaseModel):
    """``statistic(output) >= threshold`` (or ``<=``): give exactly one of the two."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    output: str = Field(min_length=1)
    statistic: Literal["mean", "p5", "p25", "p50", "p75", "p95", "p99"] = "p5"
    at_least: float | None = Field(default=None, alias=">=")
    at_most: float | None = Field(default=None, alias="<=")


class AnomalyRef(BaseModel):
    """An anomaly whose playbook supplies candidates (and, if absent, model and objective)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["spike", "drift", "flatline", "out_of_range"]
    metric: str = Field(min_length=1, max_length=128)
    asset_id: str | None = Field(
        default=None, description="Asset of the anomaly; absent: the request's `asset_id`."
    )
    anomaly_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The anomaly itself (from `GET /anomalies` or an `anomaly.detected` event). "
        "When given, a tracking-error input (`minus_setpoint`) of its metric is estimated from "
        "the readings since the anomaly opened, not from readings before the fault; it must be "
        "an anomaly of this twin, asset, metric and kind.",
    )


class SimRecommendIn(BaseModel):
    """Rank candidate values of a twin's setpoint by simulating its process model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    twin_id: str = Field(min_length=1, max_length=64)
    process_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Process model id; absent: the anomaly's playbook's.",
    )
    asset_id: str = Field(min_length=1, max_length=64, description="Asset of the setpoint.")
    setpoint: str = Field(min_length=1, max_length=64, description="Setpoint id.")
    candidates: list[float] | CandidateRange | None = Field(
        default=None,
        description="Values to try (within the setpoint's bounds); absent: the anomaly's "
        "playbook's. Do-nothing (the current value) is always included.",
    )
    anomaly: AnomalyRef | None = None
    objective: RecommendObjective | None = Field(
        default=None, description="Absent: the anomaly's playbook's (p50 of its KPI)."
    )
    constraint: RecommendConstraint | None = None
    samples: int = Field(default=DEFAULT_SAMPLES, description="Samples per candidate.")
    seed: int | None = None
    method: Literal["mc", "sobol", "antithetic"] = "mc"
    sobol_scrambles: int = SOBOL_SCRAMBLES
    inputs_from_telemetry: InputsFromTelemetry | None = None


class SimRunOut(BaseModel):
    """A run as ``sim.v1`` (documentation model; the full schema is at /schemas/sim.v1)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    sim_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    mode: Literal["sync", "background"]
    progress: float
    created_at: str
    request: dict[str, Any]
    engine_used: Literal["classical", "quantum"] | None = None
    engine_reason: str | None = None
    samples_used: int | None = None
    converged: bool | None = None
    outputs: dict[str, Any] | None = None
    duration_ms: float | None = None


class SimRunPage(BaseModel):
    """Runs of the caller's tenant, newest first."""

    runs: list[dict[str, Any]] = Field(description="sim.v1 records.")
    next_before: str | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )
    has_more: bool
