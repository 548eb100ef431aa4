"""Simulation: pure domain code (no web framework, no database).

* :mod:`.distributions` — input distributions behind one protocol, in a registry;
* :mod:`.expressions` — process-model expressions, whitelisted and compiled to numpy;
* :mod:`.model` — the inline model contract and its parser (``parse_model``);
* :mod:`.monte_carlo` — ``MonteCarloEngine``: mc, Sobol and antithetic sampling, convergence;
* :mod:`.summary` / :mod:`.results` — statistics, error bars and the JSON result contract;
* :mod:`.coupler` — ``HybridCoupler``: classical or quantum by a stated cost model;
* :mod:`.quantum` — amplitude estimation behind our own interface (optional qiskit extra);
* :mod:`.recommend` — ranking candidate setpoints with common random numbers.
"""

from opstwin.simulation.coupler import (
    BoundedExpectation,
    HybridCoupler,
    TailProbability,
    parse_query,
)
from opstwin.simulation.model import ProcessModel, parse_model
from opstwin.simulation.monte_carlo import MonteCarloEngine, RunSettings
from opstwin.simulation.recommend import (
    Objective,
    Recommendation,
    RiskConstraint,
    SetpointRecommender,
)
from opstwin.simulation.results import OutputSummary, QueryEstimate, SimulationResult

__all__ = [
    "BoundedExpectation",
    "HybridCoupler",
    "MonteCarloEngine",
    "Objective",
    "OutputSummary",
    "ProcessModel",
    "QueryEstimate",
    "Recommendation",
    "RiskConstraint",
    "RunSettings",
    "SetpointRecommender",
    "SimulationResult",
    "TailProbability",
    "parse_model",
    "parse_query",
]
