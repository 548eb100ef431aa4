"""Anomaly kinds: how each kind's evidence becomes a score, a severity and a next step.

A small registry (:data:`ANOMALY_KINDS`): detection itself lives in the tracker, where it is
vectorised; what an alarm *means* is decided here, one class per kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

Severity = Literal["low", "medium", "high", "critical"]

SPIKE, DRIFT, FLATLINE, OUT_OF_RANGE = "spike", "drift", "flatline", "out_of_range"

# A stuck sensor is a data fault: its size says nothing about the process, so it has a fixed
# score (and severity medium).
FLATLINE_SCORE = 0.75


@dataclass(frozen=True, slots=True)
class Assessment:
    """Score in [0, 1], severity, and what the automation loop should do next."""

    score: float
    severity: Severity
    recommended_next: str


class AnomalyKind(Protocol):
    """Turns a kind's evidence ratio (1 at its threshold) into an assessment."""

    name: str

    def assess(self, ratio: float, outside_normal: bool) -> Assessment: ...


def ratio_score(ratio: float) -> float:
    """``1 − 2^(−r²)``: 0.5 at the threshold (r = 1), 0.94 at twice it, → 1."""
    if not ratio > 0.0:
        return 0.0
    return 1.0 - math.exp2(-(ratio * ratio))


_LEVELS: tuple[Severity, ...] = ("low", "medium", "high")


def severity_for(score: float, outside_normal: bool) -> Severity:
    """< 0.7 low, < 0.9 medium, else high; one level up (at most high) outside the normal range."""
    level = 0 if score < 0.7 else 1 if score < 0.9 else 2
    if outside_normal:
        level = min(level + 1, 2)
    return _LEVELS[level]


class SpikeKind:
    name = SPIKE

    def assess(self, ratio: float, outside_normal: bool) -> Assessment:
        score = ratio_score(ratio)
        severity = severity_for(score, outside_normal)
        return Assessment(score, severity, "observe" if severity == "low" else "sim_run")


class DriftKind:
    name = DRIFT

    def assess(self, ratio: float, outside_normal: bool) -> Assessment:
        score = ratio_score(ratio)
        return Assessment(score, severity_for(score, outside_normal), "sim_run")


class FlatlineKind:
    name = FLATLINE

    def assess(self, ratio: float, outside_normal: bool) -> Assessment:
        return Assessment(FLATLINE_SCORE, "medium", "inspect_sensor")


class OutOfRangeKind:
    name = OUT_OF_RANGE

    def assess(self, ratio: float, outside_normal: bool) -> Assessment:
        excess = max(ratio, 0.0)
        return Assessment(0.9 + 0.1 * (1.0 - math.exp2(-excess)), "critical", "sim_run")


ANOMALY_KINDS: dict[str, AnomalyKind] = {
    kind.name: kind for kind in (SpikeKind(), DriftKind(), FlatlineKind(), OutOfRangeKind())
}
