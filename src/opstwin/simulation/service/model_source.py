"""Where ``model_ref`` runs get their model: a twin's process model, made an inline model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.simulation.distributions import escape_pointer
from opstwin.simulation.service.requests import limit_error
from opstwin.telemetry.detection import anomalies
from opstwin.twins.desired import desired_values, with_desired
from opstwin.twins.model import MetricInput, SetpointInput, TwinSpec
from opstwin.twins.state import reported_state
from opstwin.twins.tables import setpoint_state

if TYPE_CHECKING:
    from opstwin.twins.registry import Twin

_POINTER = "/model_ref/process_model"
"""Where every error about a referenced process model points."""


TRACKING_READINGS = 5
"""A tracking-error input (``minus_setpoint``) averages at most this many of the newest readings
— those taken since the setpoint last changed and, when the request names its anomaly, since the
anomaly opened. Few, because the error of a drift keeps moving (20 readings trailed a 1.5 °C/s
drift by a second at 10 Hz); the input's own ``std`` carries the spread, not the estimate."""
TRACKING_MIN_READINGS = 3
"""Fewer readings than this since then: the newest this many, whenever they were taken."""

TELEMETRY_POINTER = "/inputs_from_telemetry"
"""Where errors about inputs sampled from stored telemetry point."""


@dataclass(frozen=True, slots=True)
class TelemetryWindow:
    """Which recent points of a metric to resample: the last ``window_s`` seconds and/or the
    newest ``count`` points (both: the newest ``count`` within the window)."""

    window_s: float | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True)
class EmpiricalPlan:
    """Metric inputs to sample ``empirical``-ly from the asset's recent stored points.

    ``per_input`` None: every metric input, with ``default``; else only the inputs named, each
    with its own window or count (``default`` when it gives neither).
    """

    default: TelemetryWindow
    per_input: Mapping[str, TelemetryWindow] | None
    now_us: int
    min_points: int
    max_points: int

    def window_for(self, name: str) -> TelemetryWindow | None:
        if self.per_input is None:
            return self.default
        own = self.per_input.get(name)
        if own is None:
            return None
        return own if own.window_s is not None or own.count is not None else self.default

    def pointer(self, name: str) -> str:
        if self.per_input is None:
            return TELEMETRY_POINTER
        return f"{TELEMETRY_POINTER}/inputs/{escape_pointer(name)}"


class ModelSource(Protocol):
    """Where ``model_ref`` runs get their model: the twin registry (:class:`TwinModelSource`)."""

    async def twin(self, conn: AsyncConnection, tenant_id: str, twin_id: str) -> TwinSpec: ...

    async def inline_model(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        twin_id: str,
        process_model: str,
        empirical: EmpiricalPlan | None = None,
        tracking_since_us: int | None = None,
    ) -> dict[str, Any]: ...

    async def anomaly_onset(
        self, conn: AsyncConnection, tenant_id: str, twin_id: str, ref: Mapping[str, Any]
    ) -> int: ...


class TwinRegistryReader(Protocol):
    """The part of :class:`opstwin.twins.registry.TwinRegistry` a ``model_ref`` needs."""

    async def get(self, conn: AsyncConnection, tenant_id: str, twin_id: str) -> Twin: ...


class TelemetryReader(Protocol):
    """The part of :class:`opstwin.telemetry.query.TelemetryQueries` empirical inputs need."""

    async def recent_values(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        *,
        twin_id: str,
        asset_id: str,
        metric: str,
        since_us: int | None,
        limit: int,
    ) -> list[float]: ...


class TwinModelSource:
    """Builds the inline model of a twin's process model (``model_ref`` runs).

    Inputs become distributions: a declared distribution as it is; a setpoint its desired value
    (``current``, else ``default``) — normal with the input's ``std`` when it gives one, else a
    constant; a metric the asset's reported state — normal around the detector's baseline mean
    (else the latest value) with the input's ``std``, else the baseline's. A metric input with no
    reported value or no known spread has no distribution yet: 422 saying so.

    A metric input with ``minus_setpoint`` is the metric's tracking error *now*: the mean of the
    newest readings (not the baseline, which lags a drift by design) minus the setpoint's desired
    value — only readings taken since the setpoint last changed and since ``tracking_since_us``
    (the anomaly's onset, when the request names it), so readings from before the fault or under
    the old setpoint do not dilute it (see :data:`TRACKING_READINGS`).

    With an :class:`EmpiricalPlan` (``inputs_from_telemetry``), the metric inputs it covers are
    instead ``empirical``: resampled from the asset's recent stored points, read through the
    telemetry queries; fewer points than the plan's minimum is a 422 saying how many were found.
    """

    def __init__(
        self, registry: TwinRegistryReader, telemetry: TelemetryReader | None = None
    ) -> None:
        self._registry = registry
        self._telemetry = telemetry

    async def twin(self, conn: AsyncConnection, tenant_id: str, twin_id: str) -> TwinSpec:
        """The twin model with its desired setpoint values (404 when the tenant has none)."""
        spec = (await self._registry.get(conn, tenant_id, twin_id)).spec
        return with_desired(spec, await desired_values(conn, tenant_id, twin_id))

    async def inline_model(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        twin_id: str,
        process_model: str,
        empirical: EmpiricalPlan | None = None,
        tracking_since_us: int | None = None,
    ) -> dict[str, Any]:
        twin_spec = await self.twin(conn, tenant_id, twin_id)
        if empirical is not None and empirical.per_input is not None:
            spec_inputs = next(
                (pm.inputs for pm in twin_spec.process_models if pm.id == process_model), {}
            )
            for name in empirical.per_input:
                if spec_inputs and not isinstance(spec_inputs.get(name), MetricInput):
                    raise limit_error(
                        empirical.pointer(name),
                        f"{name!r} is not a metric input of process model {process_model!r}; "
                        "only inputs bound to a metric can be sampled from telemetry",
                    )
        spec = next((pm for pm in twin_spec.process_models if pm.id == process_model), None)
        if spec is None:
            known = ", ".join(pm.id for pm in twin_spec.process_models) or "none"
            raise limit_error(
                _POINTER,
                f"twin {twin_id!r} has no process model {process_model!r} (it has: {known})",
            )
        reported = None
        inputs: dict[str, Any] = {}
        for name, source in spec.inputs.items():
            if isinstance(source, SetpointInput):
                asset = twin_spec.asset(source.asset)
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
            elif (
                isinstance(source, MetricInput)
                and empirical is not None
                and (window := empirical.window_for(name)) is not None
            ):
                inputs[name] = await self._empirical(
                    conn, tenant_id, twin_id, name, source, window, empirical
                )
                offset = _tracked_setpoint(twin_spec, name, source)
                if offset is not None:
                    inputs[name]["observations"] = [
                        v - offset for v in inputs[name]["observations"]
                    ]
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
                offset = _tracked_setpoint(twin_spec, name, source)
                if offset is not None:
                    level = await self._recent_level(
                        conn, tenant_id, twin_id, source, tracking_since_us
                    )
                    mean = (state.value if level is None else level) - offset
                    inputs[name] = {"dist": "normal", "mean": mean, "std": std}
                    continue
                mean = state.baseline_mean if state.baseline_mean is not None else state.value
                inputs[name] = {"dist": "normal", "mean": mean, "std": std}
            else:
                inputs[name] = source.model_dump(mode="json")
        return {
            "inputs": inputs,
            "outputs": {name: kpi.expression for name, kpi in spec.outputs.items()},
        }

    async def _recent_level(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        twin_id: str,
        source: MetricInput,
        since_us: int | None,
    ) -> float | None:
        """Mean of the metric's newest readings since the setpoint of a tracking-error input
        last changed and since ``since_us`` — at most :data:`TRACKING_READINGS`, and the newest
        :data:`TRACKING_MIN_READINGS` when fewer were taken since (None: no readings)."""
        if self._telemetry is None:
            return None
        assert source.minus_setpoint is not None
        changed_us = (
            await conn.execute(
                select(setpoint_state.c.updated_at_us).where(
                    setpoint_state.c.tenant_id == tenant_id,
                    setpoint_state.c.twin_id == twin_id,
                    setpoint_state.c.asset_id == source.asset,
                    setpoint_state.c.setpoint == source.minus_setpoint,
                )
            )
        ).scalar()
        bounds = [b for b in (since_us, changed_us) if b is not None]
        values: list[float] = []
        for since, limit in (
            (max(bounds) if bounds else None, TRACKING_READINGS),
            (None, TRACKING_MIN_READINGS),  # too few since the bounds: the newest, whenever
        ):
            values = await self._telemetry.recent_values(
                conn,
                tenant_id,
                twin_id=twin_id,
                asset_id=source.asset,
                metric=source.metric,
                since_us=since,
                limit=limit,
            )
            if len(values) >= TRACKING_MIN_READINGS or not bounds:
                break
        return sum(values) / len(values) if values else None

    async def anomaly_onset(
        self, conn: AsyncConnection, tenant_id: str, twin_id: str, ref: Mapping[str, Any]
    ) -> int:
        """When the anomaly a recommendation names (``anomaly.anomaly_id``) opened (µs, the
        time of its first reading); 422 when it is unknown or not the anomaly the ref describes."""
        anomaly_id = str(ref["anomaly_id"])
        pointer = "/anomaly/anomaly_id"
        row = (
            await conn.execute(
                select(
                    anomalies.c.twin_id,
                    anomalies.c.asset_id,
                    anomalies.c.metric,
                    anomalies.c.kind,
                    anomalies.c.opened_at_us,
                ).where(anomalies.c.tenant_id == tenant_id, anomalies.c.anomaly_id == anomaly_id)
            )
        ).first()
        if row is None:
            raise limit_error(pointer, f"no anomaly {anomaly_id!r} in this tenant")
        asset_id = ref.get("asset_id")
        claimed = (twin_id, ref["kind"], ref["metric"])
        if (row.twin_id, row.kind, row.metric) != claimed or (
            asset_id is not None and row.asset_id != asset_id
        ):
            raise limit_error(
                pointer,
                f"anomaly {anomaly_id!r} is a {row.kind} of {row.asset_id}/{row.metric} in twin "
                f"{row.twin_id!r}, not the anomaly this reference describes",
            )
        return int(row.opened_at_us)

    async def _empirical(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        twin_id: str,
        name: str,
        source: MetricInput,
        window: TelemetryWindow,
        plan: EmpiricalPlan,
    ) -> dict[str, Any]:
        """An ``empirical`` input from the newest stored points of the input's metric."""
        pointer = plan.pointer(name)
        if self._telemetry is None:
            raise limit_error(pointer, "inputs from telemetry are not available on this server")
        limit = plan.max_points if window.count is None else min(window.count, plan.max_points)
        since_us = (
            None if window.window_s is None else plan.now_us - round(window.window_s * 1_000_000)
        )
        values = await self._telemetry.recent_values(
            conn,
            tenant_id,
            twin_id=twin_id,
            asset_id=source.asset,
            metric=source.metric,
            since_us=since_us,
            limit=limit,
        )
        if len(values) < plan.min_points:
            scope = []
            if window.window_s is not None:
                scope.append(f"in the last {window.window_s:g} s")
            if window.count is not None:
                scope.append(f"among the newest {window.count}")
            where = f"{source.asset}/{source.metric}"
            detail = (
                f"input {name!r}: metric {where} has {len(values)} stored point(s) "
                f"{' and '.join(scope) or 'in total'}; sampling it from telemetry needs at least "
                f"{plan.min_points} — widen the window, lower the count, or send more telemetry"
            )
            raise ValidationFailed(
                detail,
                errors=[FieldError(detail=detail, pointer=pointer)],
                extensions={"found_points": len(values), "min_points": plan.min_points},
            )
        values.reverse()  # oldest first: the stored request reads in time order
        return {"dist": "empirical", "observations": values}


def _tracked_setpoint(twin: TwinSpec, name: str, source: MetricInput) -> float | None:
    """The desired value of a ``minus_setpoint`` input's setpoint (None: not such an input)."""
    if source.minus_setpoint is None:
        return None
    asset = twin.asset(source.asset)
    setpoint = asset.setpoints.get(source.minus_setpoint) if asset else None
    if setpoint is None:  # the loader checks references; guard anyway
        raise limit_error(
            _POINTER,
            f"input {name!r}: setpoint {source.asset}/{source.minus_setpoint} is not declared",
        )
    return setpoint.current if setpoint.current is not None else setpoint.default


def _no_distribution_yet(name: str, why: str) -> ValidationFailed:
    return limit_error(_POINTER, f"input {name!r} has no distribution yet: {why}")
