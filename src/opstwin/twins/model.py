"""The twin model, ``twin.v1``: twins, their assets, and what may be done to them.

A twin file (YAML or JSON) declares, per twin::

    twins:
      - id: fab_line_3
        products:   [{id, name}]                      # what the line makes
        processes:  [{id, name, products}]            # how it makes it
        assets:                                       # the resources
          - id: etch_tool_7
            process: poly_etch                        # Product–Process–Resource links
            products: [logic_wafer_28nm]
            metrics:   {temp_c: {unit, aliases, normal_range, hard_limits,
                                 sampling_period_s, anomaly}}
            setpoints: {esc_temp_sp: {unit, metric, bounds, max_step, ramp_rate_per_s,
                                      actuator, default, current}}
        process_models: [{id, process, inputs, outputs}]   # KPI expressions for the simulator
        playbooks:      [{id, asset, metric, kinds, actions, objective}]

Ids (twins, assets, metrics, setpoints, products, processes, models, playbooks, actuators)
match :data:`ID_PATTERN`. Names used inside expressions (process-model inputs and KPI
outputs) match :data:`NAME_PATTERN` so that they are plain identifiers.

These models check the shape and what can be checked locally (a range's low below its
high, a distribution's parameters). Everything that needs the whole document — dangling
references, expression names, a normal range outside the hard limits, a default outside
the setpoint bounds — is checked by :func:`opstwin.twins.loader.parse_twin_document`,
which reports every problem with a JSON pointer to the offending field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)

SCHEMA_ID = "urn:opstwin:schema:twin.v1"
ID_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,63}$"

# Functions a process-model expression may call, besides its declared inputs. The
# expression engine (``opstwin.simulation.expressions``) owns their semantics.
EXPRESSION_FUNCTIONS = frozenset({"abs", "min", "max", "exp", "log", "sqrt", "clip", "where"})

AnomalyKindName = Literal["spike", "drift", "flatline", "out_of_range"]
ANOMALY_KIND_NAMES: tuple[AnomalyKindName, ...] = ("spike", "drift", "flatline", "out_of_range")

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ExprName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
Unit = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Alias = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^\S+$")]
# The limit is the expression engine's (opstwin.simulation.expressions.MAX_EXPRESSION_CHARS).
Expression = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]

# Labels pydantic puts into error locations for union members; they are not fields of the
# input document, so the loader skips them when it turns a location into a JSON pointer.
UNION_LABELS = frozenset(
    {"metric-input", "setpoint-input", "distribution", "normal", "uniform", "triangular"}
    | {"lognormal", "cusum", "ewma"}
)


class _Spec(BaseModel):
    """Base of every twin-model object: unknown keys are errors, no coercion from strings,
    no NaN or infinity, and immutable once loaded."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


# --- ranges -------------------------------------------------------------------------------


class Range(_Spec):
    """An interval; either side may be open (absent), but not both."""

    low: float | None = Field(default=None, description="Lower end (inclusive); absent: none.")
    high: float | None = Field(default=None, description="Upper end (inclusive); absent: none.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low is None and self.high is None:
            raise ValueError("a range needs low, high or both")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self

    def contains(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def contains_range(self, other: Range) -> bool:
        """Whether ``other`` lies inside this range (an open end only fits an open end)."""
        low_ok = self.low is None or (other.low is not None and other.low >= self.low)
        high_ok = self.high is None or (other.high is not None and other.high <= self.high)
        return low_ok and high_ok

    def describe(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "+inf" if self.high is None else f"{self.high:g}"
        return f"[{low}, {high}]"


class Bounds(_Spec):
    """A closed interval with both ends given (setpoints must always be bounded)."""

    low: float = Field(description="Lowest value that may be written.")
    high: float = Field(description="Highest value that may be written.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


# --- anomaly thresholds ---------------------------------------------------------------------


class CusumDrift(_Spec):
    """Two-sided CUSUM on standardised residuals: alarms when the cumulative excess over ``k``
    reaches ``h``. With the defaults, a 1 σ shift is found in about 26 samples and clean
    Gaussian noise gives a false alarm about once per 500,000 samples."""

    method: Literal["cusum"] = Field(description="Drift statistic.")
    k: float = Field(default=0.5, gt=0, description="Allowance in σ (half the shift to detect).")
    h: float = Field(default=12.0, gt=0, description="Decision interval in σ.")


class EwmaDrift(_Spec):
    """EWMA chart on standardised residuals: alarms when the smoothed residual leaves
    ``limit`` times its stationary standard deviation ``sqrt(λ / (2 − λ))``."""

    method: Literal["ewma"] = Field(description="Drift statistic.")
    smoothing: float = Field(
        default=0.05, gt=0, le=1, description="λ, weight of the newest residual."
    )
    limit: float = Field(
        default=4.0, gt=0, description="L, control limit in EWMA standard deviations."
    )


DriftSpec = Annotated[CusumDrift | EwmaDrift, Field(discriminator="method")]


class FlatlineSpec(_Spec):
    """A stuck sensor: ``window_samples`` consecutive values each within ``tolerance`` of the
    previous one, while the baseline still had variance."""

    window_samples: int = Field(
        default=30, ge=2, description="Consecutive samples that make a flatline."
    )
    tolerance: float = Field(
        default=0.0,
        ge=0,
        description="Largest change between samples still counted as stuck (metric unit).",
    )


class SeasonalitySpec(_Spec):
    """A cycle the metric follows (a daily load curve, a shift pattern, a batch cycle). With a
    cycle the baseline is a level plus the cycle's learnt profile, so the cycle itself is
    never an anomaly and what departs from it is found at full sensitivity."""

    detect: bool = Field(
        default=True,
        description="Search the first samples for a cycle when period_s is not given.",
    )
    period_s: float | None = Field(
        default=None,
        gt=0,
        description="The cycle's length in seconds (e.g. 86400 for daily); learnt once two "
        "cycles of samples have been seen.",
    )
    search_samples: int = Field(
        default=1000,
        ge=200,
        le=20_000,
        description="Samples searched for a cycle (every 200 of them, up to this many); a "
        "cycle must be seen three times in them.",
    )
    halflife_cycles: float = Field(
        default=4.0, gt=0, description="Half-life of the learnt profile, in cycles."
    )


class AnomalyThresholds(_Spec):
    """How the anomaly detector treats one metric. Given at the twin level
    (``anomaly_defaults``) and per metric; a metric's keys override the twin's, key by key."""

    z_threshold: float = Field(default=4.5, gt=0, description="|z| that opens a spike anomaly.")
    z_clear: float = Field(
        default=2.0, ge=0, description="|z| below which an excursion counts as calm (hysteresis)."
    )
    clear_samples: int = Field(
        default=5, ge=1, description="Consecutive calm samples that resolve an open anomaly."
    )
    warmup_samples: int = Field(
        default=60, ge=2, description="Samples learnt before spike, drift or flatline can fire."
    )
    baseline_halflife_samples: float = Field(
        default=200.0, ge=1, description="Half-life of the EWMA baseline, in samples."
    )
    relearn_after_samples: int = Field(
        default=400,
        ge=1,
        description="An excursion lasting this long is taken as a new normal: the baseline is "
        "re-learnt from it and the anomaly resolved (flatlines excepted).",
    )
    min_std: float | None = Field(
        default=None,
        gt=0,
        description="Floor for the baseline standard deviation (metric unit); absent: "
        "a thousandth of the normal range's width when it has two ends.",
    )
    drift: DriftSpec = Field(
        default_factory=lambda: CusumDrift(method="cusum"), description="Drift detection."
    )
    flatline: FlatlineSpec = Field(
        default_factory=FlatlineSpec, description="Stuck-sensor detection."
    )
    seasonality: SeasonalitySpec = Field(
        default_factory=SeasonalitySpec, description="A cycle in the metric's values."
    )
    adapt_to_tails: bool = Field(
        default=True,
        description="Raise the spike threshold when the noise has heavier tails than a normal "
        "distribution (a noisy sensor), so that spikes stay about as rare as on normal noise.",
    )


# --- metrics, setpoints, assets ---------------------------------------------------------------


class MetricSpec(_Spec):
    """One measured quantity of an asset."""

    unit: Unit = Field(description="Unit of the canonical values, e.g. degC, mTorr, W, sccm.")
    description: Text | None = None
    aliases: list[Alias] = Field(
        default_factory=list,
        description="Other names devices use for this metric (mapped on ingest).",
    )
    normal_range: Range | None = Field(
        default=None, description="Where the value sits in normal operation."
    )
    hard_limits: Range | None = Field(
        default=None,
        description="Physically or safety-wise impossible beyond; breaches are out_of_range.",
    )
    sampling_period_s: float | None = Field(
        default=None, gt=0, description="Expected seconds between samples."
    )
    anomaly: AnomalyThresholds | None = Field(
        default=None,
        description="Detector settings for this metric (override the twin's defaults).",
    )


class SetpointSpec(_Spec):
    """A value the platform may write (desired state), with the limits any proposal must respect."""

    unit: Unit
    description: Text | None = None
    metric: Id | None = Field(
        default=None, description="Metric of the same asset that reads this setpoint back."
    )
    bounds: Bounds = Field(description="Values outside are never written.")
    max_step: float = Field(
        gt=0, description="Largest change allowed in one action (setpoint unit)."
    )
    ramp_rate_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Largest rate of change the actuator applies (unit per second).",
    )
    actuator: Id = Field(description="Name of the actuator adapter that writes this setpoint.")
    default: float = Field(description="Value used when nothing better is known.")
    current: float | None = Field(default=None, description="Last known value, if any.")


class AssetSpec(_Spec):
    """A resource of the twin (a tool, a chamber, a sensor group)."""

    id: Id
    name: Text | None = None
    type: Text | None = Field(
        default=None, description="Free-form asset type, e.g. plasma_etch_chamber."
    )
    process: Id | None = Field(default=None, description="Id of the process this asset serves.")
    products: list[Id] = Field(
        default_factory=list, description="Ids of the products this asset affects."
    )
    metrics: dict[Id, MetricSpec] = Field(default_factory=dict)
    setpoints: dict[Id, SetpointSpec] = Field(default_factory=dict)

    def canonical_metric(self, name: str) -> str | None:
        """The metric id for ``name`` (an id or an alias), or ``None`` when unknown."""
        if name in self.metrics:
            return name
        for metric_id, metric in self.metrics.items():
            if name in metric.aliases:
                return metric_id
        return None


class Product(_Spec):
    id: Id
    name: Text | None = None
    description: Text | None = None


class Process(_Spec):
    id: Id
    name: Text | None = None
    description: Text | None = None
    products: list[Id] = Field(
        default_factory=list, description="Ids of the products this process makes."
    )


# --- process models -------------------------------------------------------------------------------


class MetricInput(_Spec):
    """An input read from an asset's metric (its latest value, or its baseline when simulated).

    With ``minus_setpoint`` the input is the metric's *tracking error* instead: the mean of its
    newest readings minus the named setpoint's current value (the offset a heater or sensor drift puts between
    what is asked and what is reached). A model then writes the reached value as
    ``setpoint + error``, so candidate setpoints are simulated where the plant would really go.
    """

    asset: Id
    metric: Id
    std: float | None = Field(
        default=None,
        gt=0,
        description="Measurement uncertainty (metric unit); absent: the baseline's.",
    )
    minus_setpoint: Id | None = Field(
        default=None,
        description="A setpoint of the same asset: the input is the mean of the metric's newest "
        "readings minus that setpoint's current value (its tracking error).",
    )


class SetpointInput(_Spec):
    """An input taken from an asset's setpoint (the decision variable of a simulation)."""

    asset: Id
    setpoint: Id
    std: float | None = Field(
        default=None, gt=0, description="Actuation uncertainty (setpoint unit)."
    )


class NormalInput(_Spec):
    dist: Literal["normal"]
    mean: float
    std: float = Field(gt=0)


class UniformInput(_Spec):
    dist: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self


class TriangularInput(_Spec):
    dist: Literal["triangular"]
    low: float
    mode: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not (self.low <= self.mode <= self.high and self.low < self.high):
            raise ValueError("needs low <= mode <= high and low < high")
        return self


class LognormalInput(_Spec):
    """Log-normal: ``exp(N(mu, sigma))`` (parameters of the underlying normal)."""

    dist: Literal["lognormal"]
    mu: float
    sigma: float = Field(gt=0)


DistributionInput = Annotated[
    NormalInput | UniformInput | TriangularInput | LognormalInput, Field(discriminator="dist")
]


def _input_tag(value: Any) -> str | None:
    """Which kind of process-model input ``value`` is, from the key that tells them apart."""
    if isinstance(value, dict):
        if "dist" in value:
            return "distribution"
        if "setpoint" in value:
            return "setpoint-input"
        if "metric" in value:
            return "metric-input"
        return None
    if isinstance(value, MetricInput):
        return "metric-input"
    if isinstance(value, SetpointInput):
        return "setpoint-input"
    return "distribution"


ModelInput = Annotated[
    Annotated[MetricInput, Tag("metric-input")]
    | Annotated[SetpointInput, Tag("setpoint-input")]
    | Annotated[DistributionInput, Tag("distribution")],
    Discriminator(
        _input_tag,
        custom_error_type="invalid_input",
        custom_error_message="an input is {asset, metric}, {asset, setpoint} or {dist: ...}",
    ),
]


class KpiSpec(_Spec):
    """A KPI the simulator computes from the model's inputs."""

    expression: Expression = Field(
        description="Arithmetic over the model's input names and "
        + ", ".join(sorted(EXPRESSION_FUNCTIONS))
        + "."
    )
    unit: Unit | None = None
    goal: Literal["maximize", "minimize"] | None = Field(
        default=None, description="Which way is better."
    )
    description: Text | None = None


class ProcessModel(_Spec):
    """KPI expressions over metrics, setpoints and uncertain inputs, for simulation."""

    id: Id
    process: Id | None = Field(default=None, description="Id of the process this model describes.")
    description: Text | None = None
    inputs: dict[ExprName, ModelInput] = Field(min_length=1)
    outputs: dict[ExprName, KpiSpec] = Field(min_length=1)


# --- playbooks ----------------------------------------------------------------------------------


class SearchRange(_Spec):
    """Evenly spaced candidate values from ``low`` to ``high`` inclusive."""

    low: float
    high: float
    steps: int = Field(ge=2, le=1000, description="Number of values tried, ends included.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self


class PlaybookAction(_Spec):
    """A setpoint that may fix the anomaly, with the values worth trying."""

    setpoint: Id
    asset: Id | None = Field(
        default=None, description="Asset of the setpoint; absent: the playbook's asset."
    )
    candidates: list[float] | None = Field(default=None, min_length=1, description="Values to try.")
    search: SearchRange | None = Field(
        default=None, description="A range to scan instead of candidates."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.candidates is None) == (self.search is None):
            raise ValueError("give exactly one of candidates or search")
        return self


class PlaybookObjective(_Spec):
    process_model: Id
    kpi: ExprName
    goal: Literal["maximize", "minimize"]


class Playbook(_Spec):
    """What the automation loop may try for an anomaly of ``kinds`` on (``asset``, ``metric``)."""

    id: Id
    description: Text | None = None
    asset: Id
    metric: Id
    kinds: list[AnomalyKindName] = Field(min_length=1)
    actions: list[PlaybookAction] = Field(min_length=1)
    objective: PlaybookObjective | None = Field(
        default=None, description="The KPI a candidate is judged by in simulation."
    )


# --- twins and the document ---------------------------------------------------------------------


class TwinSpec(_Spec):
    """One digital twin (e.g. a production line)."""

    id: Id
    name: Text | None = None
    description: Text | None = None
    auto_register_assets: bool = Field(
        default=False,
        description="Accept telemetry from assets not declared here (registered on first sight).",
    )
    anomaly_defaults: AnomalyThresholds | None = Field(
        default=None, description="Detector settings for every metric of this twin."
    )
    products: list[Product] = Field(default_factory=list)
    processes: list[Process] = Field(default_factory=list)
    assets: list[AssetSpec] = Field(default_factory=list)
    process_models: list[ProcessModel] = Field(default_factory=list)
    playbooks: list[Playbook] = Field(default_factory=list)

    def asset(self, asset_id: str) -> AssetSpec | None:
        return next((a for a in self.assets if a.id == asset_id), None)

    def anomaly_thresholds(self, metric: MetricSpec | None) -> AnomalyThresholds:
        """The detector settings in force for ``metric``: built-in defaults, overridden by the
        twin's ``anomaly_defaults``, overridden by the metric's ``anomaly`` (key by key)."""
        merged: dict[str, Any] = {}
        for layer in (self.anomaly_defaults, metric.anomaly if metric else None):
            if layer is not None:
                merged.update(layer.model_dump(exclude_unset=True))
        return AnomalyThresholds.model_validate(merged)


class TwinDocument(_Spec):
    """A twin file: one or more twins."""

    schema_uri: str | None = Field(
        default=None, alias="$schema", description="Optional schema reference for editors."
    )
    twins: list[TwinSpec] = Field(min_length=1)

    def twin(self, twin_id: str) -> TwinSpec | None:
        return next((t for t in self.twins if t.id == twin_id), None)


def twin_json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of ``twin.v1``, as committed in ``aiw/schemas/twin.v1.json``."""
    body = TwinDocument.model_json_schema(by_alias=True, mode="validation")
    _close_pattern_maps(body)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "twin.v1",
        "description": "OpsTwin twin model: twins, assets with metrics and setpoints, "
        "Product–Process–Resource links, process models and playbooks. Cross-references "
        "(dangling ids, expression names, ranges against limits) are checked by the loader "
        "beyond this schema.",
        **{k: v for k, v in body.items() if k not in ("title", "description")},
    }


def _close_pattern_maps(node: Any) -> None:
    """Pydantic describes ``dict[Id, X]`` with ``patternProperties`` only, which lets keys that
    miss the pattern through; the model rejects them, so the schema must too."""
    if isinstance(node, dict):
        if "patternProperties" in node and "properties" not in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close_pattern_maps(value)
    elif isinstance(node, list):
        for value in node:
            _close_pattern_maps(value)
