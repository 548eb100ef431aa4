"""SimulatedPlant: a small physics-flavoured stand-in for the assets of one twin.

Built from a :class:`~opstwin.twins.model.TwinSpec`, it keeps per asset and metric a *true*
process value and reports noisy measurements of it as ``telemetry.v1`` events; it keeps per
setpoint a *commanded* and an *applied* value, and accepts absolute, idempotent writes.

Physics
-------
Every number below is a constructor argument or a named constant of this module.

* **Setpoints.** Each starts at its ``current`` value, else its ``default`` (or at an
  ``initial_setpoints`` override, so a restarted demo continues from stored desired state). A
  write sets the *commanded* value; the *applied* value moves toward it no faster than the
  setpoint's ``ramp_rate_per_s`` (instantly when it declares none). Writes outside ``bounds``
  are refused with :class:`~opstwin.actions.actuators.base.ActuatorRejected`. Writes carry an
  idempotency key; the plant remembers the last ``key_memory`` keys (LRU) and a repeated key is
  a no-op that reports the current state.
* **Targets.** A metric that a setpoint drives (``SetpointSpec.metric``) has as target the
  setpoint's applied value plus the bias of its process faults; any other metric the centre of
  its normal range (without a two-sided one: of its hard limits, kept inside the normal range's
  one end) plus that bias.
* **Dynamics.** The true value follows its target with first-order dynamics, time constant τ
  (``time_constant_s``, default :data:`DEFAULT_TIME_CONSTANT_S`, overridable per metric):
  ``x ← x + (target − x)·(1 − e^(−h/τ))`` over sub-steps ``h`` of at most
  :data:`MAX_SUBSTEP_S`. After k time constants a step change is complete to ``1 − e^(−k)``
  (95 % after 3 τ). The plant starts in steady state (true value = target).
* **Measurement.** Each metric is sampled every ``sampling_period_s`` (default
  :data:`DEFAULT_SAMPLING_PERIOD_S`; ``max_sampling_period_s`` can shorten long ones for a
  demo) as true value + Gaussian noise of standard deviation σ = normal-range width ×
  :data:`NOISE_RANGE_FRACTION` (±6 σ spans the normal range), or
  :data:`NOISE_VALUE_FRACTION` of the value's size (at least :data:`MIN_NOISE_STD`) when the
  metric has no two-sided normal range. Measurement faults (spike, flatline) then alter the
  reading; see :mod:`opstwin.plant.faults`.
* **KPIs.** Metrics bound to process-model outputs (:mod:`opstwin.plant.kpi`) are reported as
  the output's expression over the plant's true state, plus an unmodelled error: Gaussian noise
  (σ = :data:`KPI_ERROR_FRACTION` × the metric's noise rule unless a :class:`KpiError` says
  otherwise) and an optional constant bias, plus the bias of the metric's process faults. An
  expression that evaluates to NaN or ±inf is reported as ``null`` (missing).

Time
----
:meth:`SimulatedPlant.step` is pure: it advances plant time by ``dt_s`` and returns the samples
that fell due, nothing else happens between calls. Samples due at the same instant are grouped
into one event per asset; an event's ``ts`` is ``at`` (the wall-clock time of the end of the
step, default the injected clock's now) minus the time from the sample to the end of the step.
Randomness comes from one independent stream per metric, spawned from ``seed``: a seeded plant
repeats itself exactly, and injecting a fault into one metric changes no other metric's noise.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import structlog

from opstwin.actions.actuators.base import ActuatorRejected, ActuatorUnavailable
from opstwin.kit.clock import Clock, SystemClock, rfc3339
from opstwin.kit.errors import NotFound
from opstwin.kit.ids import IdSource, UlidSource
from opstwin.plant.faults import ActiveFault, FaultKind, FaultSpec, FaultStatus
from opstwin.plant.kpi import (
    DrawSource,
    KpiBinding,
    MetricSource,
    TrackingErrorSource,
    bind_kpis,
)
from opstwin.simulation.distributions import FloatArray
from opstwin.twins.model import MetricSpec, SetpointSpec, TwinSpec

log = structlog.get_logger(__name__)

DEFAULT_TIME_CONSTANT_S = 5.0
"""τ of every metric unless overridden: a chuck or a gas line settles in tens of seconds."""
DEFAULT_SAMPLING_PERIOD_S = 1.0
"""Sampling period of a metric that declares none."""
NOISE_RANGE_FRACTION = 1.0 / 12.0
"""Noise σ as a fraction of the normal range's width: the range is ±6 σ around its centre."""
NOISE_VALUE_FRACTION = 0.005
"""Noise σ as a fraction of the value's size, for metrics without a two-sided normal range."""
MIN_NOISE_STD = 1e-3
"""Floor of that σ (metric unit), so a metric centred on 0 is not noise-free."""
KPI_ERROR_FRACTION = 0.5
"""A KPI's unmodelled noise σ as a fraction of its metric's noise rule: the model explains most."""
MAX_SUBSTEP_S = 0.1
"""Longest internal integration step; short against τ, so ramps and drifts stay smooth."""
DEFAULT_KEY_MEMORY = 4096
"""Idempotency keys remembered (least recently used forgotten first)."""
TELEMETRY_TAGS = {"source": "simulated_plant"}
"""Tags on every event, so stored telemetry says where it came from."""
_EPS = 1e-9
"""Two plant instants closer than this (seconds) are the same instant."""


@dataclass(frozen=True, slots=True)
class KpiError:
    """The unmodelled error of a KPI metric: noise σ (None: the default rule) and a bias."""

    std: float | None = None
    bias: float = 0.0

    def __post_init__(self) -> None:
        if self.std is not None and not (math.isfinite(self.std) and self.std >= 0):
            raise ValueError("a KPI error std must be a finite number >= 0")
        if not math.isfinite(self.bias):
            raise ValueError("a KPI error bias must be finite")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: the setpoint's commanded and applied values afterwards."""

    asset: str
    setpoint: str
    commanded: float
    applied: float
    duplicate: bool
    """True when the idempotency key had been applied before (nothing changed)."""


@dataclass(frozen=True, slots=True)
class SetpointSnapshot:
    """The setpoints of one asset: applied and commanded values, and the last key processed."""

    asset: str
    applied: dict[str, float]
    commanded: dict[str, float]
    last_key: str | None


@dataclass(slots=True)
class _Setpoint:
    asset: str
    name: str
    spec: SetpointSpec
    commanded: float
    applied: float


@dataclass(slots=True)
class _Channel:
    """One (asset, metric): its true value, its sampling schedule, its noise and faults."""

    asset: str
    metric: str
    centre: float
    noise_std: float
    tau_s: float
    period_s: float
    rng: np.random.Generator
    setpoint: _Setpoint | None = None
    kpi: KpiBinding | None = None
    kpi_bias: float = 0.0
    true_value: float = 0.0
    samples_taken: int = 0
    last_reported: float | None = None
    faults: dict[FaultKind, ActiveFault] = field(default_factory=dict)

    @property
    def next_due(self) -> float:
        return (self.samples_taken + 1) * self.period_s

    def process_bias(self, now_s: float) -> float:
        return sum(
            (f.bias(now_s) for f in self.faults.values() if f.spec.acts_on_process), start=0.0
        )

    def target(self, now_s: float) -> float:
        base = self.setpoint.applied if self.setpoint is not None else self.centre
        return base + self.process_bias(now_s)


SetpointListener = Callable[[str], None]
"""Called with an asset id whenever a commanded or applied setpoint value of it changed."""


class SimulatedPlant:
    """The simulated assets of one twin (see the module docstring for the physics)."""

    def __init__(
        self,
        twin: TwinSpec,
        *,
        seed: int | None = None,
        time_constant_s: float = DEFAULT_TIME_CONSTANT_S,
        time_constants: Mapping[tuple[str, str], float] | None = None,
        initial_setpoints: Mapping[tuple[str, str], float] | None = None,
        kpi_errors: Mapping[tuple[str, str], KpiError] | None = None,
        max_sampling_period_s: float | None = None,
        key_memory: int = DEFAULT_KEY_MEMORY,
        clock: Clock | None = None,
        ids: IdSource | None = None,
    ) -> None:
        """``time_constants``, ``initial_setpoints`` and ``kpi_errors`` are keyed by
        (asset id, metric or setpoint id); a time constant or KPI error for a metric the twin
        does not have is a :class:`ValueError`. ``initial_setpoints`` takes stored desired
        state as it is (``opstwin.twins.desired.desired_values``): a value for a setpoint the
        model no longer has, or now outside its bounds, is logged and ignored."""
        if not (math.isfinite(time_constant_s) and time_constant_s > 0):
            raise ValueError("time_constant_s must be a positive number of seconds")
        if max_sampling_period_s is not None and not max_sampling_period_s > 0:
            raise ValueError("max_sampling_period_s must be positive")
        if key_memory < 1:
            raise ValueError("key_memory must be at least 1")
        self._twin = twin
        self._clock: Clock = clock or SystemClock()
        self._ids: IdSource = ids or UlidSource(self._clock)
        self._t = 0.0
        self._key_memory = key_memory
        self._keys: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._last_key: dict[str, str] = {}
        self._listeners: list[SetpointListener] = []

        self._setpoints: dict[tuple[str, str], _Setpoint] = {}
        for asset in twin.assets:
            for name, spec in asset.setpoints.items():
                start = spec.current if spec.current is not None else spec.default
                self._setpoints[(asset.id, name)] = _Setpoint(asset.id, name, spec, start, start)
        for key, value in (initial_setpoints or {}).items():
            setpoint = self._setpoints.get(key)
            if setpoint is None or not (
                math.isfinite(value) and setpoint.spec.bounds.contains(value)
            ):
                # Stored desired state can outlive a model change; start from the model then.
                log.warning(
                    "plant.initial_setpoint_ignored",
                    twin_id=twin.id,
                    setpoint=f"{key[0]}/{key[1]}",
                    value=value,
                    reason="no such setpoint" if setpoint is None else "outside its bounds",
                )
                continue
            setpoint.commanded = setpoint.applied = float(value)

        kpis = {(b.asset, b.metric): b for b in bind_kpis(twin)}
        metrics = [
            (asset.id, m, metric_spec)
            for asset in twin.assets
            for m, metric_spec in asset.metrics.items()
        ]
        streams = np.random.SeedSequence(seed).spawn(len(metrics))
        self._channels: dict[tuple[str, str], _Channel] = {}
        for (asset_id, metric, metric_spec), stream in zip(metrics, streams, strict=True):
            period = metric_spec.sampling_period_s or DEFAULT_SAMPLING_PERIOD_S
            if max_sampling_period_s is not None:
                period = min(period, max_sampling_period_s)
            centre, noise = _centre_and_noise(metric_spec)
            channel = _Channel(
                asset=asset_id,
                metric=metric,
                centre=centre,
                noise_std=noise,
                tau_s=time_constant_s,
                period_s=period,
                rng=np.random.default_rng(stream),
                kpi=kpis.get((asset_id, metric)),
            )
            asset_setpoints = (s for s in self._setpoints.values() if s.asset == asset_id)
            channel.setpoint = next((s for s in asset_setpoints if s.spec.metric == metric), None)
            if channel.kpi is not None:
                channel.noise_std = noise * KPI_ERROR_FRACTION
            self._channels[(asset_id, metric)] = channel
        for key, tau in (time_constants or {}).items():
            if not (math.isfinite(tau) and tau > 0):
                raise ValueError(f"time constant of {key[0]}/{key[1]} must be positive")
            self._channel_for_config(key, "time constant").tau_s = tau
        for key, error in (kpi_errors or {}).items():
            channel = self._channel_for_config(key, "KPI error")
            if channel.kpi is None:
                raise ValueError(f"KPI error for {key[0]}/{key[1]}: no process model computes it")
            channel.kpi_bias = error.bias
            if error.std is not None:
                channel.noise_std = error.std
        # Steady state at start: process values at their targets, KPIs evaluated once.
        for channel in self._channels.values():
            if channel.kpi is None:
                channel.true_value = channel.target(0.0)
        for channel in self._channels.values():
            if channel.kpi is not None:
                channel.true_value = self._kpi_value(channel)

    # --- what the plant is --------------------------------------------------------------------

    @property
    def twin(self) -> TwinSpec:
        return self._twin

    @property
    def twin_id(self) -> str:
        return self._twin.id

    @property
    def elapsed_s(self) -> float:
        """Plant time: seconds simulated since the plant was built."""
        return self._t

    @property
    def kpi_bindings(self) -> list[KpiBinding]:
        """The metrics computed from process models, in declaration order."""
        return [c.kpi for c in self._channels.values() if c.kpi is not None]

    def serves(self, asset: str) -> bool:
        """Whether ``asset`` is an asset of this plant's twin."""
        return self._twin.asset(asset) is not None

    def asset_ids(self) -> list[str]:
        return [asset.id for asset in self._twin.assets]

    # --- setpoints ------------------------------------------------------------------------------

    def applied(self, asset: str, setpoint: str) -> float:
        """The value the actuator currently applies (it moves toward the commanded value)."""
        return self._setpoint(asset, setpoint).applied

    def commanded(self, asset: str, setpoint: str) -> float:
        """The last value written (the applied value ramps toward it)."""
        return self._setpoint(asset, setpoint).commanded

    def snapshot(self, asset: str) -> SetpointSnapshot:
        """Every setpoint of ``asset`` now, and the last idempotency key it processed."""
        if not self.serves(asset):
            raise ActuatorUnavailable(
                f"the simulated plant of twin {self.twin_id!r} has no asset {asset!r}"
            )
        own = [s for s in self._setpoints.values() if s.asset == asset]
        return SetpointSnapshot(
            asset=asset,
            applied={s.name: s.applied for s in own},
            commanded={s.name: s.commanded for s in own},
            last_key=self._last_key.get(asset),
        )

    def write(
        self, asset: str, setpoint: str, value: float, *, idempotency_key: str
    ) -> WriteResult:
        """Command ``setpoint`` of ``asset`` to the absolute ``value``.

        A key processed before is a no-op (``duplicate``). Raises
        :class:`ActuatorUnavailable` for an asset this plant does not have and
        :class:`ActuatorRejected` for an unknown setpoint, a missing key, or a value that is not
        a finite number inside the setpoint's bounds.
        """
        target = self._setpoint(asset, setpoint)
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise ActuatorRejected("a write needs a non-empty idempotency key")
        previous = self._keys.get(idempotency_key)
        if previous is not None:
            self._keys.move_to_end(idempotency_key)
            self._last_key[asset] = idempotency_key
            if previous != (asset, setpoint, value):
                log.warning(
                    "plant.key_reused",
                    key=idempotency_key,
                    first=f"{previous[0]}/{previous[1]}={previous[2]:g}",
                    now=f"{asset}/{setpoint}={value!r}",
                )
            return WriteResult(asset, setpoint, target.commanded, target.applied, duplicate=True)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ActuatorRejected(f"{asset}/{setpoint}: {value!r} is not a finite number")
        bounds = target.spec.bounds
        if not bounds.contains(value):
            raise ActuatorRejected(
                f"{asset}/{setpoint}: {value:g} {target.spec.unit} is outside the bounds "
                f"[{bounds.low:g}, {bounds.high:g}]"
            )
        target.commanded = float(value)
        if target.spec.ramp_rate_per_s is None:
            target.applied = target.commanded
        self._keys[idempotency_key] = (asset, setpoint, float(value))
        while len(self._keys) > self._key_memory:
            self._keys.popitem(last=False)
        self._last_key[asset] = idempotency_key
        log.info(
            "plant.setpoint_written",
            twin_id=self.twin_id,
            asset_id=asset,
            setpoint=setpoint,
            commanded=target.commanded,
            applied=target.applied,
            key=idempotency_key,
        )
        self._notify(asset)
        return WriteResult(asset, setpoint, target.commanded, target.applied, duplicate=False)

    def add_setpoint_listener(self, listener: SetpointListener) -> Callable[[], None]:
        """Call ``listener(asset)`` after each change of an asset's setpoints (a write, or a
        step in which an applied value ramped); returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # --- faults ---------------------------------------------------------------------------------

    def inject(self, fault: FaultSpec) -> None:
        """Start ``fault`` now (replacing a fault of the same kind on the same metric)."""
        channel = self._channel(fault.asset, fault.metric)
        channel.faults[fault.kind] = ActiveFault(fault, self._t, channel.last_reported)
        log.info("plant.fault_injected", twin_id=self.twin_id, **fault.to_dict())

    def clear(self, asset: str, metric: str, kind: FaultKind | None = None) -> int:
        """End the faults of ``asset``'s ``metric`` (only those of ``kind`` when given);
        returns how many were active. A process bias ends at once; the true value then
        relaxes back with the metric's dynamics."""
        channel = self._channel(asset, metric)
        kinds = [kind] if kind is not None else list(channel.faults)
        cleared = sum(channel.faults.pop(k, None) is not None for k in kinds)
        if cleared:
            log.info(
                "plant.fault_cleared",
                twin_id=self.twin_id,
                asset_id=asset,
                metric=metric,
                kind=kind,
            )
        return cleared

    def faults(self) -> list[FaultStatus]:
        """Every active fault, by asset and metric in model order."""
        return [
            fault.status(self._t) for c in self._channels.values() for fault in c.faults.values()
        ]

    # --- state and time -------------------------------------------------------------------------

    def true_value(self, asset: str, metric: str) -> float:
        """The process value without measurement noise or sensor faults."""
        return self._channel(asset, metric).true_value

    def noise_std(self, asset: str, metric: str) -> float:
        """The σ of the Gaussian noise on ``metric``'s readings (its KPI error for a KPI)."""
        return self._channel(asset, metric).noise_std

    def step(self, dt_s: float, at: datetime | None = None) -> list[dict[str, Any]]:
        """Advance ``dt_s`` seconds; return the samples that fell due, as telemetry.v1 events
        (one per asset per sampling instant, in time order). ``at`` is the wall-clock time of
        the end of the step (default: the clock's now)."""
        if not (math.isfinite(dt_s) and dt_s >= 0):
            raise ValueError("dt_s must be a finite number of seconds >= 0")
        end_wall = at if at is not None else self._clock.now()
        end = self._t + dt_s
        before = {key: s.applied for key, s in self._setpoints.items()}
        events: list[dict[str, Any]] = []
        while True:
            due = min((c.next_due for c in self._channels.values()), default=math.inf)
            if due > end + _EPS:
                break
            self._advance_to(due)
            self._sample(due, end_wall - timedelta(seconds=end - due), events)
        self._advance_to(end)
        changed = {key[0] for key, s in self._setpoints.items() if s.applied != before[key]}
        for asset in sorted(changed, key=self.asset_ids().index):
            self._notify(asset)
        return events

    # --- internals ------------------------------------------------------------------------------

    def _setpoint(self, asset: str, setpoint: str) -> _Setpoint:
        found = self._setpoints.get((asset, setpoint))
        if found is not None:
            return found
        if not self.serves(asset):
            raise ActuatorUnavailable(
                f"the simulated plant of twin {self.twin_id!r} has no asset {asset!r}"
            )
        raise ActuatorRejected(f"asset {asset!r} has no setpoint {setpoint!r}")

    def _channel(self, asset: str, metric: str) -> _Channel:
        found = self._channels.get((asset, metric))
        if found is None:
            raise NotFound(f"twin {self.twin_id!r} has no metric {metric!r} on asset {asset!r}")
        return found

    def _channel_for_config(self, key: tuple[str, str], what: str) -> _Channel:
        found = self._channels.get(key)
        if found is None:
            raise ValueError(f"{what} for {key[0]}/{key[1]}: the twin has no such metric")
        return found

    def _notify(self, asset: str) -> None:
        for listener in list(self._listeners):
            listener(asset)

    def _advance_to(self, until: float) -> None:
        """Integrate ramps and first-order dynamics from the plant time to ``until``."""
        while until - self._t > _EPS:
            h = min(MAX_SUBSTEP_S, until - self._t)
            self._t = until if h == until - self._t else self._t + h
            for setpoint in self._setpoints.values():
                rate = setpoint.spec.ramp_rate_per_s
                if rate is not None and setpoint.applied != setpoint.commanded:
                    gap = setpoint.commanded - setpoint.applied
                    reach = rate * h
                    setpoint.applied = (
                        setpoint.commanded
                        if abs(gap) <= reach
                        else setpoint.applied + math.copysign(reach, gap)
                    )
            for channel in self._channels.values():
                if channel.kpi is None:
                    alpha = -math.expm1(-h / channel.tau_s)
                    channel.true_value += (channel.target(self._t) - channel.true_value) * alpha
        self._t = max(self._t, until)

    def _sample(self, instant: float, ts: datetime, events: list[dict[str, Any]]) -> None:
        """Read every channel due at ``instant``; one event per asset that has readings."""
        stamp = rfc3339(ts)
        readings: dict[str, dict[str, float | None]] = {}
        for channel in self._channels.values():
            if channel.next_due > instant + _EPS:
                continue
            channel.samples_taken += 1
            if channel.kpi is not None:
                channel.true_value = self._kpi_value(channel)
            readings.setdefault(channel.asset, {})[channel.metric] = self._measure(channel, instant)
        for asset, metrics in readings.items():
            events.append(
                {
                    "event_id": self._ids.new("tel"),
                    "twin_id": self.twin_id,
                    "asset_id": asset,
                    "ts": stamp,
                    "metrics": metrics,
                    "tags": dict(TELEMETRY_TAGS),
                }
            )

    def _kpi_value(self, channel: _Channel) -> float:
        """The KPI's true value: its expression over the plant's state, plus its biases."""
        binding = channel.kpi
        if binding is None:
            raise ValueError(f"{channel.asset}/{channel.metric} is not a KPI")
        env: dict[str, FloatArray] = {}
        for name, source in binding.inputs.items():
            if isinstance(source, DrawSource):
                env[name] = source.distribution.draw(channel.rng, 1)
            elif isinstance(source, MetricSource):
                env[name] = np.array([self._channels[(source.asset, source.metric)].true_value])
            elif isinstance(source, TrackingErrorSource):
                reached = self._channels[(source.asset, source.metric)].true_value
                asked = self._setpoints[(source.asset, source.setpoint)].applied
                env[name] = np.array([reached - asked])
            else:
                env[name] = np.array([self._setpoints[(source.asset, source.setpoint)].applied])
        value = float(binding.expression.evaluate(env, 1)[0])
        return value + channel.kpi_bias + channel.process_bias(self._t)

    def _measure(self, channel: _Channel, now_s: float) -> float | None:
        """One reading: true value + noise, then the sensor faults (spike, flatline)."""
        noise = float(channel.rng.normal(0.0, channel.noise_std))
        if not math.isfinite(channel.true_value):
            return None
        value = channel.true_value + noise
        spike = channel.faults.get("spike")
        if spike is not None:
            value += spike.bias(now_s)
            spike.remaining -= 1
            if spike.remaining <= 0:
                del channel.faults["spike"]
        flatline = channel.faults.get("flatline")
        if flatline is not None:
            if flatline.held is None:
                flatline.held = (
                    channel.last_reported if channel.last_reported is not None else value
                )
            value = flatline.held
        channel.last_reported = value
        return value


def _centre_and_noise(spec: MetricSpec) -> tuple[float, float]:
    """Where a metric sits when nothing drives it, and its noise σ (module docstring).

    Without a two-sided normal range: the centre of the hard limits when they have two ends
    (moved inside the normal range's one end, if any), else that end, else 0.
    """
    normal, limits = spec.normal_range, spec.hard_limits
    if normal is not None and normal.low is not None and normal.high is not None:
        return (normal.low + normal.high) / 2.0, (normal.high - normal.low) * NOISE_RANGE_FRACTION
    centre: float | None = None
    if limits is not None and limits.low is not None and limits.high is not None:
        centre = (limits.low + limits.high) / 2.0
    if normal is not None:
        if normal.low is not None:
            centre = normal.low if centre is None else max(centre, normal.low)
        elif normal.high is not None:
            centre = normal.high if centre is None else min(centre, normal.high)
    value = 0.0 if centre is None else float(centre)
    return value, max(abs(value) * NOISE_VALUE_FRACTION, MIN_NOISE_STD)
