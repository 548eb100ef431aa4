"""Which metrics of a twin the plant computes from its process models (its KPIs).

A process-model output whose name is also a metric of an asset of the same twin
(``etch_yield_model.gate_cd_nm`` ↔ ``inspection_tool_1.gate_cd_nm``) is *bound* to that metric:
the plant reports it by evaluating the output's expression — with the project's expression
engine, :mod:`opstwin.simulation.expressions` — over the plant's own true state, instead of
giving the metric first-order dynamics of its own. Each input of the model is read as:

* ``{asset, setpoint}`` → the value the setpoint *actually achieves*: the true value of the
  metric it drives (``SetpointSpec.metric``, so a drifting heater shows in the KPI), or the
  applied setpoint value when it drives no metric — or when the same model also reads that
  setpoint's tracking error (below): the model then adds the error itself, and reading the
  achieved value here would count the error twice;
* ``{asset, metric}`` → that metric's true value (no measurement noise);
* ``{asset, metric, minus_setpoint}`` → the tracking error: the metric's true value minus the
  setpoint's applied value (a model writes the reached value as ``setpoint + error``);
* a distribution → one draw per sample (the variation the model declares as unexplained).

The model's per-input ``std`` (the simulator's uncertainty about an input) is not used: the
plant's inputs are what they are.

Binding rules, applied model by model in declaration order: a metric is bound at most once
(the first model wins); a metric that a setpoint of its asset drives is never bound (it follows
its setpoint); and an output is not bound to a metric the same model reads as an input (that
would be circular). An output may bind to several assets that share the metric name.
"""

from __future__ import annotations

from dataclasses import dataclass

from opstwin.simulation.distributions import Distribution, escape_pointer, parse_distribution
from opstwin.simulation.expressions import CompiledExpression, compile_expression
from opstwin.twins.model import MetricInput, SetpointInput, TwinSpec


@dataclass(frozen=True, slots=True)
class MetricSource:
    """An input read from the true value of ``asset``'s ``metric``."""

    asset: str
    metric: str


@dataclass(frozen=True, slots=True)
class SetpointSource:
    """An input read from the applied value of ``asset``'s ``setpoint`` (it drives no metric)."""

    asset: str
    setpoint: str


@dataclass(frozen=True, slots=True)
class TrackingErrorSource:
    """An input read as ``asset``'s ``metric`` (true value) minus its ``setpoint`` (applied)."""

    asset: str
    metric: str
    setpoint: str


@dataclass(frozen=True, slots=True)
class DrawSource:
    """An input drawn from a distribution, once per sample."""

    distribution: Distribution


InputSource = MetricSource | SetpointSource | TrackingErrorSource | DrawSource


@dataclass(frozen=True, slots=True)
class KpiBinding:
    """A process-model output reported as ``asset``'s ``metric``."""

    model_id: str
    output: str
    asset: str
    metric: str
    expression: CompiledExpression
    inputs: dict[str, InputSource]
    """Every input the expression uses, by name, and where the plant reads it."""


def bind_kpis(twin: TwinSpec) -> list[KpiBinding]:
    """The KPI bindings of ``twin`` (see the module docstring for the rules)."""
    driven = {
        (asset.id, setpoint.metric)
        for asset in twin.assets
        for setpoint in asset.setpoints.values()
        if setpoint.metric is not None
    }
    bound: set[tuple[str, str]] = set()
    bindings: list[KpiBinding] = []
    for index, model in enumerate(twin.process_models):
        read = {
            (source.asset, source.metric)
            for source in model.inputs.values()
            if isinstance(source, MetricInput)
        }
        sources: dict[str, InputSource] | None = None
        for output, kpi in model.outputs.items():
            targets = [
                (asset.id, output)
                for asset in twin.assets
                if output in asset.metrics and (asset.id, output) not in bound | driven | read
            ]
            if not targets:
                continue
            pointer = f"/process_models/{index}/outputs/{escape_pointer(output)}/expression"
            expression = compile_expression(kpi.expression, model.inputs, pointer)
            if sources is None:
                sources = _input_sources(twin, index)
            used = {name: sources[name] for name in model.inputs if name in expression.inputs_used}
            for asset_id, metric in targets:
                bound.add((asset_id, metric))
                bindings.append(
                    KpiBinding(
                        model_id=model.id,
                        output=output,
                        asset=asset_id,
                        metric=metric,
                        expression=expression,
                        inputs=used,
                    )
                )
    return bindings


def _input_sources(twin: TwinSpec, index: int) -> dict[str, InputSource]:
    """Where the plant reads each input of process model ``index``."""
    model = twin.process_models[index]
    errors_read = {
        (source.asset, source.minus_setpoint)
        for source in model.inputs.values()
        if isinstance(source, MetricInput) and source.minus_setpoint is not None
    }
    sources: dict[str, InputSource] = {}
    for name, source in model.inputs.items():
        if isinstance(source, MetricInput):
            if source.minus_setpoint is not None:
                sources[name] = TrackingErrorSource(
                    source.asset, source.metric, source.minus_setpoint
                )
            else:
                sources[name] = MetricSource(source.asset, source.metric)
        elif isinstance(source, SetpointInput):
            asset = twin.asset(source.asset)
            spec = asset.setpoints.get(source.setpoint) if asset is not None else None
            achieved = (source.asset, source.setpoint) not in errors_read
            if spec is not None and spec.metric is not None and achieved:
                sources[name] = MetricSource(source.asset, spec.metric)
            else:
                sources[name] = SetpointSource(source.asset, source.setpoint)
        else:
            pointer = f"/process_models/{index}/inputs/{escape_pointer(name)}"
            sources[name] = DrawSource(parse_distribution(source.model_dump(), pointer))
    return sources
