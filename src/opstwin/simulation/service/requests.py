"""A run request checked against the limits and the domain: :class:`PreparedRun` or a 422."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opstwin.config import SimulationSettings
from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.simulation.coupler import Query, parse_query
from opstwin.simulation.distributions import escape_pointer
from opstwin.simulation.model import ProcessModel, parse_model
from opstwin.simulation.monte_carlo import MAX_VALUES_IN_MEMORY, RunSettings
from opstwin.simulation.service.recommendations import RecommendationTask

ADAPTIVE_BUDGET_SHARE = 0.8
"""Share of the wall-time limit an adaptive run may spend before stopping on its own."""


@dataclass(frozen=True, slots=True, eq=False)
class PreparedRun:
    """A validated run: what is stored (``request``) and what the engine needs."""

    request: dict[str, Any]
    model: ProcessModel
    settings: RunSettings
    engine: str
    query: Query | None
    most_samples: int
    twin_id: str | None = None
    process_model: str | None = None
    recommendation: RecommendationTask | None = None
    """Set for ``POST /sim/recommend``: rank candidate setpoints instead of one plain run."""


def limit_error(pointer: str, detail: str, **extensions: Any) -> ValidationFailed:
    """A 422 about one field of the request (``pointer``), with extensions such as the limit."""
    return ValidationFailed(
        detail, errors=[FieldError(detail=detail, pointer=pointer)], extensions=extensions
    )


def normalise_request(body: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """The request as stored: ``body`` with its inline ``model`` and a seed drawn if none given."""
    return {
        "model": model,
        "samples": body["samples"],
        "seed": body["seed"] if body.get("seed") is not None else secrets.randbits(63),
        "method": body["method"],
        "target_rse": body["target_rse"],
        "adaptive": body["adaptive"],
        "max_samples": body.get("max_samples"),
        "converge_on": body["converge_on"],
        "engine": body["engine"],
        "query": body.get("query"),
        "sobol_scrambles": body["sobol_scrambles"],
    }


def compile_request(
    request: dict[str, Any],
    limits: SimulationSettings,
    *,
    twin_id: str | None = None,
    process_model: str | None = None,
) -> PreparedRun:
    """Validate a normalised request (fills in ``max_samples``) and build the engine's inputs."""
    samples = request["samples"]
    if isinstance(samples, int) and samples > limits.max_samples:
        raise limit_error(
            "/samples",
            f"samples is {samples}; the limit is {limits.max_samples}",
            limit_samples=limits.max_samples,
        )
    if request.get("max_samples") is None:
        request["max_samples"] = min(limits.max_samples, max(samples, limits.sync_max_samples))
    max_samples = request["max_samples"]
    if max_samples > limits.max_samples:
        raise limit_error(
            "/max_samples",
            f"max_samples is {max_samples}; the limit is {limits.max_samples}",
            limit_samples=limits.max_samples,
        )
    model_json = request["model"]
    outputs = model_json.get("outputs") if isinstance(model_json, Mapping) else None
    if isinstance(outputs, Mapping):
        for name, source in outputs.items():
            if isinstance(source, str) and len(source) > limits.max_expression_chars:
                raise limit_error(
                    f"/model/outputs/{escape_pointer(str(name))}",
                    f"expression is {len(source)} characters; the limit is "
                    f"{limits.max_expression_chars}",
                    limit_chars=limits.max_expression_chars,
                )
    model = parse_model(model_json)
    query = parse_query(request["query"]) if request.get("query") is not None else None
    if query is not None and query.output not in model.outputs:
        raise limit_error("/query/output", f"{query.output!r} is not an output of the model")
    engine = request["engine"]
    if engine == "quantum" and query is None:
        raise limit_error(
            "/engine",
            "the quantum engine answers one scalar query (tail_probability or "
            "bounded_expectation); give 'query' or use engine 'classical'",
        )
    adaptive = bool(request["adaptive"])
    bounded_by_cap = adaptive or query is not None
    most = max_samples if bounded_by_cap else samples
    background = most > limits.sync_max_samples
    timeout = limits.background_timeout_s if background else limits.timeout_s
    settings = RunSettings(
        seed=request["seed"],
        samples=samples,
        method=request["method"],
        adaptive=adaptive,
        target_rse=request["target_rse"],
        max_samples=max_samples,
        converge_on=request["converge_on"],
        time_budget_s=timeout * ADAPTIVE_BUDGET_SHARE if adaptive else None,
        sobol_scrambles=request["sobol_scrambles"],
    )
    columns = len(model.inputs) + len(model.outputs)
    if most * columns > MAX_VALUES_IN_MEMORY:
        pointer = "/max_samples" if bounded_by_cap else "/samples"
        raise limit_error(
            pointer,
            f"{most} samples × {columns} inputs+outputs exceeds the in-memory limit of "
            f"{MAX_VALUES_IN_MEMORY} values; at most {MAX_VALUES_IN_MEMORY // columns} fit",
            limit_samples=MAX_VALUES_IN_MEMORY // columns,
        )
    recommendation = None
    if request.get("recommend") is not None:  # POST /sim/recommend
        recommendation = RecommendationTask.from_request(request["recommend"])
        values = recommendation.value_count
        if samples * columns * values > MAX_VALUES_IN_MEMORY:
            fit = MAX_VALUES_IN_MEMORY // (columns * values)
            raise limit_error(
                "/samples",
                f"{samples} samples × {columns} inputs+outputs × {values} candidate values "
                f"exceeds the in-memory limit of {MAX_VALUES_IN_MEMORY} values; at most {fit} "
                "samples fit",
                limit_samples=fit,
            )
        # every value is simulated, then the recommended one once more for its summary
        most = samples * (values + 1)
    return PreparedRun(
        request=request,
        model=model,
        settings=settings,
        engine=engine,
        query=query,
        most_samples=most,
        twin_id=twin_id,
        process_model=process_model,
        recommendation=recommendation,
    )
