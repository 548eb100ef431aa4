"""Shared helpers for the simulation tests: a pinned timer and small model builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from opstwin.simulation.model import ProcessModel, parse_model
from opstwin.simulation.monte_carlo import MonteCarloEngine


class SteppingTimer:
    """A monotonic clock that advances a fixed step per reading, so durations are exact."""

    def __init__(self, step: float = 0.001) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def timer() -> SteppingTimer:
    return SteppingTimer()


@pytest.fixture
def make_timer() -> type[SteppingTimer]:
    """The timer class itself, for tests that need several timers or another step."""
    return SteppingTimer


@pytest.fixture
def engine() -> MonteCarloEngine:
    return MonteCarloEngine()


@pytest.fixture
def single_input() -> Callable[[dict[str, Any]], ProcessModel]:
    """Builds a model whose one output is its one input, to see a distribution through the engine."""

    def build(spec: dict[str, Any]) -> ProcessModel:
        return parse_model({"inputs": {"x": spec}, "outputs": {"out": "x"}})

    return build
