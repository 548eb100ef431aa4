"""The policy model, ``policy.v1``: how confidence is weighed and what each score leads to.

A policy is a versioned document (admins change it; every version is kept)::

    {"policy_id": "default", "version": 3,
     "weights": {"historical_success": 0.25, "data_quality": 0.25,
                 "simulation_consistency": 0.30, "ai_consensus": 0.20},
     "bands": {"auto_execute": 0.90, "require_approval": 0.70, "analyze": 0.50},
     "approval_expiry_s": 3600, "verification_window_s": 300, "rollback_window_s": 3600,
     "allow_ramp_split": false, "max_ramp_steps": 10,
     "scoring": {...},
     "overrides": [{"match": {"asset_class": "lithography"}, "cap": "require_approval",
                    "reason": "never auto-execute on lithography"}]}

**Band edges.** Each edge is the *inclusive lower end* of its band, so a score exactly on an edge
belongs to the band above it::

    score ≥ auto_execute                       → auto_execute
    require_approval ≤ score < auto_execute    → require_approval
    analyze ≤ score < require_approval         → analyze
    score < analyze                            → reject

Edges must satisfy ``0 ≤ analyze ≤ require_approval ≤ auto_execute ≤ 1``; two equal edges
empty the band between them (e.g. ``auto_execute = require_approval = 1`` never auto-executes
below a perfect score). A NaN score has no band: :meth:`DecisionBands.outcome_for` raises.

**Weights** are non-negative; they are renormalised to sum to 1, so a weight of 0 disables its
component and the others share its part. At least one weight must be positive.

**Overrides** match by action type, asset class and/or asset id (every given key must match) and
apply in the order written: ``cap`` limits the most permissive outcome (several caps: the most
restrictive wins), while ``bands`` and ``allow_ramp_split`` of a later match replace those of an
earlier one.

Outcomes, from most to least permissive: ``auto_execute`` < ``require_approval`` < ``analyze`` <
``reject`` (:data:`OUTCOMES`); combining outcomes always keeps the more restrictive one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from opstwin.kit.errors import FieldError, ValidationFailed

SCHEMA_ID = "urn:opstwin:schema:policy.v1"
ID_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=2000)]

Outcome = Literal["auto_execute", "require_approval", "analyze", "reject"]
Cap = Literal["require_approval", "analyze", "reject"]
ComponentName = Literal[
    "historical_success", "data_quality", "simulation_consistency", "ai_consensus"
]

OUTCOMES: tuple[Outcome, ...] = ("auto_execute", "require_approval", "analyze", "reject")
"""Every outcome, from most to least permissive."""

COMPONENTS: tuple[ComponentName, ...] = (
    "historical_success",
    "data_quality",
    "simulation_consistency",
    "ai_consensus",
)
"""The confidence components, in the order they are reported."""

_RESTRICTIVENESS: dict[str, int] = {outcome: rank for rank, outcome in enumerate(OUTCOMES)}


def most_restrictive(*outcomes: Outcome) -> Outcome:
    """The least permissive of ``outcomes`` (``reject`` beats everything)."""
    return max(outcomes, key=_RESTRICTIVENESS.__getitem__)


class _Spec(BaseModel):
    """Base of every policy object: unknown keys are errors, no coercion from strings, no NaN or
    infinity, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


Weight = Annotated[float, Field(ge=0, le=1)]


class ConfidenceWeights(_Spec):
    """Relative weight of each confidence component; renormalised to sum to 1."""

    historical_success: Weight = Field(
        default=0.25, description="Verified outcomes of this action type on this asset (class)."
    )
    data_quality: Weight = Field(
        default=0.25, description="Quality of the telemetry in the proposal's evidence window."
    )
    simulation_consistency: Weight = Field(
        default=0.30,
        description="P(improvement > 0) from the simulation, discounted if unconverged.",
    )
    ai_consensus: Weight = Field(
        default=0.20, description="Agent votes on the proposal (none: neutral)."
    )

    @model_validator(mode="after")
    def _some_positive(self) -> Self:
        if not any(getattr(self, name) > 0 for name in COMPONENTS):
            raise ValueError("at least one confidence weight must be positive")
        return self

    def normalised(self) -> dict[ComponentName, float]:
        """Weights scaled to sum to 1 (a zero weight stays zero: its component is disabled)."""
        raw = {name: float(getattr(self, name)) for name in COMPONENTS}
        total = math.fsum(raw.values())
        return {name: value / total for name, value in raw.items()}


Edge = Annotated[float, Field(ge=0, le=1)]


class DecisionBands(_Spec):
    """Lower edges (inclusive) of the bands a confidence score falls into."""

    auto_execute: Edge = Field(
        default=0.90, description="Scores at or above this are executed without approval."
    )
    require_approval: Edge = Field(
        default=0.70,
        description="Scores at or above this (and below auto_execute) wait for a supervisor.",
    )
    analyze: Edge = Field(
        default=0.50,
        description="Scores at or above this (and below require_approval) ask for more "
        "evidence; below it the proposal is rejected.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.analyze <= self.require_approval <= self.auto_execute:
            raise ValueError("band edges must satisfy analyze <= require_approval <= auto_execute")
        return self

    def outcome_for(self, score: float) -> Outcome:
        """The band ``score`` falls into (edges inclusive from below). NaN raises."""
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise ValidationFailed(
                "a confidence score must be a finite number in [0, 1]",
                errors=[FieldError(detail=f"got {score!r}", pointer="/confidence/total")],
            )
        if score >= self.auto_execute:
            return "auto_execute"
        if score >= self.require_approval:
            return "require_approval"
        if score >= self.analyze:
            return "analyze"
        return "reject"

    def describe(self) -> dict[str, Any]:
        """The edges as a decision records them, with their meaning spelt out."""
        return {
            "auto_execute": self.auto_execute,
            "require_approval": self.require_approval,
            "analyze": self.analyze,
            "edges": "lower edge inclusive: score >= edge belongs to the band above",
        }


class BetaPrior(_Spec):
    """Beta(α, β) prior on the success rate of an action; α = β = 1 is uniform (mean 0.5)."""

    alpha: float = Field(default=1.0, gt=0, le=1000, description="Pseudo-successes.")
    beta: float = Field(default=1.0, gt=0, le=1000, description="Pseudo-failures.")


class ScoringSettings(_Spec):
    """Parameters of the confidence components (see ``opstwin.policy.confidence``)."""

    history_prior: BetaPrior = Field(
        default_factory=BetaPrior,
        description="Prior of the historical success rate; with no outcomes its mean is the score.",
    )
    min_asset_history: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Verified outcomes on the asset itself needed to use them alone; with fewer, "
        "the outcomes of its whole asset class are used.",
    )
    unconverged_simulation_weight: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="How much of an unconverged simulation's evidence counts: its "
        "P(improvement > 0) is pulled toward the neutral 0.5 by this factor (0: ignored).",
    )
    consensus_prior_votes: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="Neutral (0.5) pseudo-votes added to the agents' votes, so one vote is "
        "never a unanimous consensus.",
    )


class OverrideMatch(_Spec):
    """Which proposals an override applies to: every key given must match."""

    action_type: Id | None = Field(default=None, description="e.g. setpoint_change.")
    asset_class: Text | None = Field(
        default=None, description="The asset's class (its twin.v1 `type`), e.g. lithography."
    )
    asset_id: Id | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.action_type is None and self.asset_class is None and self.asset_id is None:
            raise ValueError("a match needs action_type, asset_class or asset_id")
        return self

    def matches(self, action_type: str, asset_id: str, asset_class: str | None) -> bool:
        return (
            (self.action_type is None or self.action_type == action_type)
            and (self.asset_id is None or self.asset_id == asset_id)
            and (self.asset_class is None or self.asset_class == asset_class)
        )


class PolicyOverride(_Spec):
    """Stricter (or different) rules for some action types or assets."""

    match: OverrideMatch
    cap: Cap | None = Field(
        default=None,
        description="Most permissive outcome allowed, e.g. require_approval for "
        "'never auto-execute'.",
    )
    bands: DecisionBands | None = Field(default=None, description="Band edges to use instead.")
    allow_ramp_split: bool | None = Field(
        default=None, description="Replaces the policy's allow_ramp_split."
    )
    reason: Text = Field(description="Why; recorded in every decision it applies to.")

    @model_validator(mode="after")
    def _has_effect(self) -> Self:
        if self.cap is None and self.bands is None and self.allow_ramp_split is None:
            raise ValueError("an override needs cap, bands or allow_ramp_split")
        return self


class Policy(_Spec):
    """One version of a tenant's action policy."""

    schema_uri: str | None = Field(
        default=None, alias="$schema", description="Optional schema reference for editors."
    )
    policy_id: Id = Field(default="default", description="Stable name of the policy.")
    version: int = Field(default=1, ge=1, description="Increases by one with every change.")
    description: Text | None = None
    weights: ConfidenceWeights = Field(default_factory=ConfidenceWeights)
    bands: DecisionBands = Field(default_factory=DecisionBands)
    approval_expiry_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400,
        description="Seconds after scoring during which a proposal may be approved and its "
        "approval executed; afterwards it expires (default deny).",
    )
    verification_window_s: float = Field(
        default=300.0, gt=0, le=86400, description="Seconds the KPI is watched after execution."
    )
    rollback_window_s: float = Field(
        default=3600.0,
        gt=0,
        le=30 * 86400,
        description="Seconds after success during which a manual rollback is allowed.",
    )
    allow_ramp_split: bool = Field(
        default=False,
        description="Split a step larger than the setpoint's max_step into ramp steps "
        "instead of rejecting it.",
    )
    max_ramp_steps: int = Field(
        default=10, ge=2, le=1000, description="Most ramp steps one proposal may be split into."
    )
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    overrides: list[PolicyOverride] = Field(
        default_factory=list, description="Applied in order; see the module documentation."
    )

    def ref(self) -> dict[str, Any]:
        """How decisions and audit records name this policy version."""
        return {"policy_id": self.policy_id, "version": self.version}

    def effective_for(
        self, action_type: str, asset_id: str, asset_class: str | None
    ) -> EffectivePolicy:
        """The bands, cap and ramp rule that apply to one proposal after overrides."""
        bands = self.bands
        allow_split = self.allow_ramp_split
        cap: Outcome = "auto_execute"
        applied: list[dict[str, Any]] = []
        for index, override in enumerate(self.overrides):
            if not override.match.matches(action_type, asset_id, asset_class):
                continue
            if override.cap is not None:
                cap = most_restrictive(cap, override.cap)
            if override.bands is not None:
                bands = override.bands
            if override.allow_ramp_split is not None:
                allow_split = override.allow_ramp_split
            applied.append({"index": index, "reason": override.reason})
        return EffectivePolicy(
            policy=self,
            bands=bands,
            cap=cap,
            allow_ramp_split=allow_split,
            overrides=tuple(applied),
        )


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """A policy as it applies to one proposal (overrides resolved).

    ``cap`` is ``auto_execute`` when no override limits the outcome.
    """

    policy: Policy
    bands: DecisionBands
    cap: Outcome
    allow_ramp_split: bool
    overrides: tuple[dict[str, Any], ...]

    @property
    def max_ramp_steps(self) -> int:
        return self.policy.max_ramp_steps


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of ``policy.v1``, as committed in ``aiw/schemas/policy.v1.json``."""
    body = Policy.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "policy.v1",
        "description": "OpsTwin action policy: confidence weights (renormalised), decision "
        "bands (each edge the inclusive lower end of its band), approval expiry, verification "
        "and rollback windows, ramp splitting, scoring parameters and per-action-type / "
        "per-asset overrides.",
        **{k: v for k, v in body.items() if k not in ("title", "description")},
    }
