"""ConfidenceScorer: how much to trust a proposal, from four components in [0, 1].

Each component is computed by a small function registered in :data:`COMPONENT_SCORERS` and says
where its number came from (``provenance``). The total is the weighted mean with the policy's
weights renormalised (:meth:`ConfidenceWeights.normalised`), so a weight of 0 disables a
component.

* **historical_success** — posterior mean of a Beta(α, β) prior updated with the verified
  outcomes (successes ``s``, failures ``f``) of this action type: ``(α + s) / (α + β + s + f)``.
  The asset's own outcomes are used when there are at least ``min_asset_history`` of them (or
  when there is no class record); otherwise the pooled outcomes of its asset class. With no
  outcomes at all the score is the prior's mean (0.5 for the default uniform prior) and ``n`` is 0.
* **data_quality** — mean ``data_quality_score`` of the telemetry samples in the evidence window
  (a sample without a score counts as :data:`UNSCORED_SAMPLE_QUALITY`), times the window's
  coverage ``min(1, received / expected)`` when the expected sample count is known. A window
  that should have had samples but has none scores 0.
* **simulation_consistency** — ``P(improvement > 0)`` of the recommended value against
  do-nothing. An unconverged simulation counts for less: its probability is pulled toward the
  neutral 0.5 by the policy's ``unconverged_simulation_weight`` ``u``:
  ``0.5 + u · (p − 0.5)`` (``u = 0`` ignores it, ``u = 1`` trusts it fully).
* **ai_consensus** — each vote (one per principal) maps to ``0.5 ± confidence / 2`` (+ approve,
  − reject); the score is their mean after adding ``consensus_prior_votes`` neutral
  pseudo-votes, so no votes is exactly 0.5 and one confident vote is never 1.0.

**Missing evidence never counts as perfect:** a component without evidence scores the neutral
:data:`MISSING_EVIDENCE_SCORE` (0.5) and says ``missing``. With the default weights and edges any
single missing component keeps the total below the auto-execute edge: a missing component costs
half its weight (0.10–0.15) and the historical posterior mean is always below 1, so with no
votes the total is at most ``0.90 − 0.25 · β / (α + β + n)`` < 0.90. Under the default policy,
auto-execution therefore needs at least one approving vote (or a policy that weighs AI consensus
at 0).
**NaN or infinity anywhere** in the evidence raises :class:`ValidationFailed` naming the field;
it is never turned into a score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.policy.policy import COMPONENTS, ComponentName, Policy, ScoringSettings

MISSING_EVIDENCE_SCORE = 0.5
"""Score of a component that has no evidence: neutral, never perfect."""

UNSCORED_SAMPLE_QUALITY = 0.5
"""Quality assumed for a telemetry sample that carries no quality score (unknown, not perfect)."""


# --- evidence ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedOutcomes:
    """Verified outcomes of past actions: succeeded vs. failed or rolled back."""

    successes: int = 0
    failures: int = 0

    @property
    def n(self) -> int:
        return self.successes + self.failures


@dataclass(frozen=True, slots=True)
class HistoryEvidence:
    """Track record of one action type on one asset and on its asset class."""

    action_type: str
    asset: VerifiedOutcomes
    asset_class: str | None = None
    asset_class_outcomes: VerifiedOutcomes | None = None


@dataclass(frozen=True, slots=True)
class TelemetryWindow:
    """The telemetry the proposal relies on: one quality score per sample (None: unscored)."""

    quality_scores: Sequence[float | None]
    expected_samples: int | None = None


@dataclass(frozen=True, slots=True)
class SimulationEvidence:
    """The simulation behind the proposal: P(improvement > 0) and whether it converged."""

    p_improvement: float
    converged: bool
    sim_id: str | None = None
    samples: int | None = None


@dataclass(frozen=True, slots=True)
class Vote:
    """One principal's vote on a proposal."""

    principal_id: str
    approve: bool
    confidence: float
    rationale: str = ""


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything the scorer looks at; ``None`` (or no votes) means that evidence is missing."""

    history: HistoryEvidence | None = None
    telemetry: TelemetryWindow | None = None
    simulation: SimulationEvidence | None = None
    votes: Sequence[Vote] = ()


# --- result -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComponentScore:
    """One component: its value in [0, 1], its normalised weight and where it came from."""

    value: float
    weight: float
    missing: bool
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "weight": self.weight,
            "missing": self.missing,
            "provenance": dict(self.provenance),
        }


@dataclass(frozen=True, slots=True)
class Confidence:
    """The scorer's answer: the weighted total and every component."""

    total: float
    components: Mapping[ComponentName, ComponentScore]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "components": {name: c.to_dict() for name, c in self.components.items()},
        }


# --- components -------------------------------------------------------------------------------


def _invalid(pointer: str, detail: str) -> ValidationFailed:
    return ValidationFailed(
        "invalid confidence evidence", errors=[FieldError(detail=detail, pointer=pointer)]
    )


def _unit(value: float, pointer: str) -> float:
    """``value`` as a float, refusing NaN, infinities and anything outside [0, 1]."""
    number = float(value)
    if not math.isfinite(number):
        raise _invalid(pointer, f"must be a finite number, got {number!r}")
    if not 0.0 <= number <= 1.0:
        raise _invalid(pointer, f"must be in [0, 1], got {number!r}")
    return number


def _count(value: int, pointer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalid(pointer, f"must be a non-negative integer, got {value!r}")
    return value


def _checked(outcomes: VerifiedOutcomes, pointer: str) -> VerifiedOutcomes:
    _count(outcomes.successes, pointer + "/successes")
    _count(outcomes.failures, pointer + "/failures")
    return outcomes


ComponentScorer = Callable[[Evidence, ScoringSettings], tuple[float, bool, dict[str, Any]]]
"""Computes one component: (value, missing, provenance)."""


def historical_success(
    evidence: Evidence, settings: ScoringSettings
) -> tuple[float, bool, dict[str, Any]]:
    """Beta-posterior mean of verified outcomes (asset, else asset class, else the prior)."""
    prior = settings.history_prior
    history = evidence.history
    scope = "prior"
    outcomes = VerifiedOutcomes()
    if history is not None:
        own = _checked(history.asset, "/evidence/history/asset")
        pooled = (
            None
            if history.asset_class_outcomes is None
            else _checked(history.asset_class_outcomes, "/evidence/history/asset_class_outcomes")
        )
        if own.n >= settings.min_asset_history or (own.n > 0 and (pooled is None or pooled.n == 0)):
            scope, outcomes = "asset", own
        elif pooled is not None and pooled.n > 0:
            scope, outcomes = "asset_class", pooled
    value = (prior.alpha + outcomes.successes) / (prior.alpha + prior.beta + outcomes.n)
    provenance: dict[str, Any] = {
        "method": "beta_posterior_mean",
        "scope": scope,
        "prior": {"alpha": prior.alpha, "beta": prior.beta},
        "successes": outcomes.successes,
        "failures": outcomes.failures,
        "n": outcomes.n,
        "min_asset_history": settings.min_asset_history,
    }
    if history is not None:
        provenance["action_type"] = history.action_type
        provenance["asset_class"] = history.asset_class
    return value, outcomes.n == 0, provenance


def data_quality(
    evidence: Evidence, settings: ScoringSettings
) -> tuple[float, bool, dict[str, Any]]:
    """Mean sample quality of the evidence window times its coverage."""
    window = evidence.telemetry
    if window is None:
        return MISSING_EVIDENCE_SCORE, True, {"method": "missing", "reason": "no evidence window"}
    expected = (
        None
        if window.expected_samples is None
        else _count(window.expected_samples, "/evidence/telemetry/expected_samples")
    )
    scores = [
        UNSCORED_SAMPLE_QUALITY
        if score is None
        else _unit(score, f"/evidence/telemetry/quality_scores/{index}")
        for index, score in enumerate(window.quality_scores)
    ]
    received = len(scores)
    scored = sum(1 for score in window.quality_scores if score is not None)
    provenance: dict[str, Any] = {
        "method": "mean_sample_quality_times_coverage",
        "samples": received,
        "scored_samples": scored,
        "unscored_sample_quality": UNSCORED_SAMPLE_QUALITY,
        "expected_samples": expected,
    }
    if received == 0:
        if expected:
            provenance.update(mean_quality=None, coverage=0.0)
            return 0.0, False, provenance
        provenance.update(method="missing", reason="the evidence window holds no telemetry")
        return MISSING_EVIDENCE_SCORE, True, provenance
    mean_quality = math.fsum(scores) / received
    coverage = 1.0 if not expected else min(1.0, received / expected)
    provenance.update(mean_quality=mean_quality, coverage=coverage)
    return mean_quality * coverage, False, provenance


def simulation_consistency(
    evidence: Evidence, settings: ScoringSettings
) -> tuple[float, bool, dict[str, Any]]:
    """P(improvement > 0), pulled toward 0.5 when the simulation did not converge."""
    simulation = evidence.simulation
    if simulation is None:
        return MISSING_EVIDENCE_SCORE, True, {"method": "missing", "reason": "no simulation"}
    p = _unit(simulation.p_improvement, "/evidence/simulation/p_improvement")
    trust = 1.0 if simulation.converged else settings.unconverged_simulation_weight
    return (
        MISSING_EVIDENCE_SCORE + trust * (p - MISSING_EVIDENCE_SCORE),
        False,
        {
            "method": "p_improvement_shrunk_if_unconverged",
            "sim_id": simulation.sim_id,
            "p_improvement": p,
            "converged": simulation.converged,
            "samples": simulation.samples,
            "trust": trust,
        },
    )


def ai_consensus(
    evidence: Evidence, settings: ScoringSettings
) -> tuple[float, bool, dict[str, Any]]:
    """Mean of the votes (approve: 0.5 + c/2, reject: 0.5 − c/2) with neutral pseudo-votes."""
    seen: set[str] = set()
    points: list[float] = []
    approvals = 0
    for index, vote in enumerate(evidence.votes):
        if vote.principal_id in seen:
            raise _invalid(
                f"/evidence/votes/{index}/principal_id",
                f"one vote per principal: {vote.principal_id!r} voted twice",
            )
        seen.add(vote.principal_id)
        confidence = _unit(vote.confidence, f"/evidence/votes/{index}/confidence")
        approvals += vote.approve
        points.append(0.5 + confidence / 2.0 if vote.approve else 0.5 - confidence / 2.0)
    prior_votes = settings.consensus_prior_votes
    provenance: dict[str, Any] = {
        "method": "mean_vote_with_neutral_prior",
        "votes": len(points),
        "approve": approvals,
        "reject": len(points) - approvals,
        "prior_votes": prior_votes,
    }
    if not points:
        return MISSING_EVIDENCE_SCORE, True, provenance
    value = (MISSING_EVIDENCE_SCORE * prior_votes + math.fsum(points)) / (prior_votes + len(points))
    return value, False, provenance


COMPONENT_SCORERS: dict[ComponentName, ComponentScorer] = {
    "historical_success": historical_success,
    "data_quality": data_quality,
    "simulation_consistency": simulation_consistency,
    "ai_consensus": ai_consensus,
}
"""One scoring function per component (explicit registry, no discovery)."""


class ConfidenceScorer:
    """Scores a proposal's evidence under a policy."""

    def __init__(self, scorers: Mapping[ComponentName, ComponentScorer] | None = None) -> None:
        self._scorers = dict(COMPONENT_SCORERS if scorers is None else scorers)
        if set(self._scorers) != set(COMPONENTS):
            raise ValueError(f"a scorer is needed for each of {list(COMPONENTS)}")

    def score(self, evidence: Evidence, policy: Policy) -> Confidence:
        """Every component with its provenance and the weighted total.

        Raises :class:`ValidationFailed` when any evidence is NaN, infinite or out of range.
        """
        weights = policy.weights.normalised()
        components: dict[ComponentName, ComponentScore] = {}
        for name in COMPONENTS:
            value, missing, provenance = self._scorers[name](evidence, policy.scoring)
            value = _unit(value, f"/confidence/components/{name}/value")
            components[name] = ComponentScore(
                value=value, weight=weights[name], missing=missing, provenance=provenance
            )
        total = math.fsum(c.value * c.weight for c in components.values())
        # Rounding can leave a weighted mean of values in [0, 1] a hair outside it.
        total = min(1.0, max(0.0, total))
        return Confidence(total=total, components=components)
