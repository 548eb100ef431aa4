"""Where ``model_ref`` runs get their model: a twin's process model, made an inline model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.kit.errors import ValidationFailed
from opstwin.simulation.service.requests import limit_error
from opstwin.twins.model import MetricInput, SetpointInput
from opstwin.twins.state import reported_state

if TYPE_CHECKING:
    from opstwin.twins.registry import Twin

_POINTER = "/model_ref/process_model"
"""Where every error about a referenced process model points."""


class ModelSource(Protocol):
    """Where ``model_ref`` runs get their model: the twin registry (:class:`TwinModelSource`)."""

    async def inline_model(
        self, conn: AsyncConnection, tenant_id: str, twin_id: str, process_model: str
    ) -> dict[str, Any]: ...


class TwinRegistryReader(Protocol):
    """The part of :class:`opstwin.twins.registry.TwinRegistry` a ``model_ref`` needs."""

    async def get(self, conn: AsyncConnection, tenant_id: str, twin_id: str) -> Twin: ...


class TwinModelSource:
    """Builds the inline model of a twin's process model (``model_ref`` runs).

    Inputs become distributions: a declared distribution as it is; a setpoint its desired value
    (``current``, else ``default``) — normal with the input's ``std`` when it gives one, else a
    constant; a metric the asset's reported state — normal around the detector's baseline mean
    (else the latest value) with the input's ``std``, else the baseline's. A metric input with no
    reported value or no known spread has no distribution yet: 422 saying so.
    """

    def __init__(self, registry: TwinRegistryReader) -> None:
        self._registry = registry

    async def inline_model(
        self, conn: AsyncConnection, tenant_id: str, twin_id: str, process_model: str
    ) -> dict[str, Any]:
        twin = await self._registry.get(conn, tenant_id, twin_id)
        spec = next((pm for pm in twin.spec.process_models if pm.id == process_model), None)
        if spec is None:
            known = ", ".join(pm.id for pm in twin.spec.process_models) or "none"
            raise limit_error(
                _POINTER,
                f"twin {twin_id!r} has no process model {process_model!r} (it has: {known})",
            )
        reported = None
        inputs: dict[str, Any] = {}
        for name, source in spec.inputs.items():
            if isinstance(source, SetpointInput):
                asset = twin.spec.asset(source.asset)
                setpoint = asset.setpoints.get(source.setpoint) if asset else None
                if setpoint is None:  # the loader checks references; guard anyway
                    raise limit_error(
                        _POINTER,
                        f"input {name!r}: setpoint {source.asset}/{source.setpoint} is not declared",
                    )
                value = setpoint.current if setpoint.current is not None else setpoint.default
                inputs[name] = (
                    {"dist": "normal", "mean": value, "std": source.std}
                    if source.std is not None
                    else {"dist": "constant", "value": value}
                )
            elif isinstance(source, MetricInput):
                if reported is None:
                    reported = await reported_state(conn, tenant_id, twin_id)
                state = reported.get(source.asset, {}).get(source.metric)
                where = f"{source.asset}/{source.metric}"
                if state is None or state.value is None:
                    raise _no_distribution_yet(
                        name,
                        f"it reads metric {where}, which has no reported value; send telemetry "
                        "for it, or declare a distribution for the input in the twin model",
                    )
                std = source.std if source.std is not None else state.baseline_std
                if std is None or not std > 0:
                    raise _no_distribution_yet(
                        name,
                        f"metric {where} has no learnt baseline spread; give the input a 'std' "
                        "in the twin model, or wait for the anomaly detector's baseline",
                    )
                mean = state.baseline_mean if state.baseline_mean is not None else state.value
                inputs[name] = {"dist": "normal", "mean": mean, "std": std}
            else:
                inputs[name] = source.model_dump(mode="json")
        return {
            "inputs": inputs,
            "outputs": {name: kpi.expression for name, kpi in spec.outputs.items()},
        }


def _no_distribution_yet(name: str, why: str) -> ValidationFailed:
    return limit_error(_POINTER, f"input {name!r} has no distribution yet: {why}")
