"""Faults the simulated plant can be given, one channel (asset, metric) at a time.

Two act on the **process** — the true value moves, so the KPIs computed from it move too, and a
setpoint change can compensate them:

* ``drift``: a bias that grows linearly at ``rate_per_s`` (signed) from the moment it is
  injected, its size capped at ``max_offset`` when given — a heater losing calibration, a
  chamber wall coating up;
* ``offset``: a constant bias ``magnitude`` from the moment it is injected (a step).

Two act on the **measurement** only — the true value is unaffected, the reported one is wrong:

* ``spike``: the next ``samples`` reported values are off by ``magnitude``; then the fault
  removes itself;
* ``flatline``: the sensor is stuck; it reports ``value``, or when none is given the last value
  it reported before the fault (noise included).

A channel holds at most one fault of each kind (injecting a kind again replaces it); faults of
different kinds combine (a drifting heater whose sensor then sticks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

FaultKind = Literal["drift", "spike", "flatline", "offset"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
PROCESS_FAULTS: frozenset[FaultKind] = frozenset({"drift", "offset"})
"""Kinds that bias the true value (and through it the KPIs)."""

# Which optional parameters each kind takes; the others must stay unset.
_PARAMETERS: dict[FaultKind, frozenset[str]] = {
    "drift": frozenset({"rate_per_s", "max_offset"}),
    "offset": frozenset({"magnitude"}),
    "spike": frozenset({"magnitude", "samples"}),
    "flatline": frozenset({"value"}),
}
_REQUIRED: dict[FaultKind, frozenset[str]] = {
    "drift": frozenset({"rate_per_s"}),
    "offset": frozenset({"magnitude"}),
    "spike": frozenset({"magnitude"}),
    "flatline": frozenset(),
}
_OPTIONAL_FIELDS = ("rate_per_s", "max_offset", "magnitude", "samples", "value")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A fault to inject into one metric of one asset (see the module docstring for kinds).

    Raises :class:`ValueError` when a parameter the kind needs is missing, one it does not take
    is given, or a number is not finite (or not positive where it must be).
    """

    kind: FaultKind
    asset: str
    metric: str
    rate_per_s: float | None = None
    """drift: bias growth, metric unit per second (signed)."""
    max_offset: float | None = None
    """drift: largest size of the bias (positive); absent: it grows without limit."""
    magnitude: float | None = None
    """offset: the step; spike: the excursion added to each affected sample (signed)."""
    samples: int | None = None
    """spike: how many consecutive reported samples are affected (default 1)."""
    value: float | None = None
    """flatline: the stuck reading; absent: the last value reported before the fault."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        given = {name for name in _OPTIONAL_FIELDS if getattr(self, name) is not None}
        extra = given - _PARAMETERS[self.kind]
        if extra:
            raise ValueError(
                f"a {self.kind} fault does not take {', '.join(sorted(extra))} "
                f"(it takes {', '.join(sorted(_PARAMETERS[self.kind])) or 'nothing else'})"
            )
        missing = _REQUIRED[self.kind] - given
        if missing:
            raise ValueError(f"a {self.kind} fault needs {', '.join(sorted(missing))}")
        for name in ("rate_per_s", "max_offset", "magnitude", "value"):
            number = getattr(self, name)
            if number is not None and (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or not math.isfinite(number)
            ):
                raise ValueError(f"{name} must be a finite number")
        if self.max_offset is not None and self.max_offset <= 0:
            raise ValueError("max_offset must be positive (it caps the size of the bias)")
        if self.samples is not None and (
            isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1
        ):
            raise ValueError("samples must be a whole number of at least 1")

    @property
    def acts_on_process(self) -> bool:
        """Whether the fault biases the true value (drift, offset) rather than the reading."""
        return self.kind in PROCESS_FAULTS

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: kind, asset, metric and the parameters that are set."""
        body: dict[str, Any] = {"kind": self.kind, "asset": self.asset, "metric": self.metric}
        for name in _OPTIONAL_FIELDS:
            if (number := getattr(self, name)) is not None:
                body[name] = number
        return body

    @classmethod
    def from_dict(cls, body: object) -> FaultSpec:
        """The fault a JSON object describes (the shape :meth:`to_dict` writes).

        Raises :class:`ValueError` naming the first problem.
        """
        if not isinstance(body, dict):
            raise ValueError("a fault is a JSON object with kind, asset and metric")
        unknown = set(body) - {"kind", "asset", "metric", *_OPTIONAL_FIELDS}
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(map(str, unknown)))}")
        for name in ("kind", "asset", "metric"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise ValueError(f"a fault needs {name} (a string)")
        return cls(
            kind=cast(FaultKind, body["kind"]),
            asset=body["asset"],
            metric=body["metric"],
            **{name: body[name] for name in _OPTIONAL_FIELDS if body.get(name) is not None},
        )


@dataclass(frozen=True, slots=True)
class FaultStatus:
    """An active fault as the plant sees it now."""

    spec: FaultSpec
    started_at_s: float
    """Plant time (seconds since the plant started) when the fault was injected."""
    bias: float
    """The bias the fault adds now (drift, offset, spike height); 0 for a flatline."""
    remaining_samples: int | None
    """spike: reported samples it still affects; None for other kinds."""
    held_value: float | None
    """flatline: the value reported while stuck (None until the first stuck sample)."""


class ActiveFault:
    """The running state of one injected fault (held by its channel)."""

    __slots__ = ("held", "remaining", "spec", "started_at_s")

    def __init__(self, spec: FaultSpec, started_at_s: float, last_reported: float | None) -> None:
        self.spec = spec
        self.started_at_s = started_at_s
        self.remaining = (spec.samples or 1) if spec.kind == "spike" else 0
        self.held = spec.value if spec.value is not None else last_reported

    def bias(self, now_s: float) -> float:
        """What the fault adds to the process (drift, offset) or the reading (spike) at ``now_s``."""
        spec = self.spec
        if spec.kind == "offset" or spec.kind == "spike":
            return cast(float, spec.magnitude)
        if spec.kind == "drift":
            grown = cast(float, spec.rate_per_s) * max(now_s - self.started_at_s, 0.0)
            if spec.max_offset is not None:
                return max(-spec.max_offset, min(spec.max_offset, grown))
            return grown
        return 0.0

    def status(self, now_s: float) -> FaultStatus:
        return FaultStatus(
            spec=self.spec,
            started_at_s=self.started_at_s,
            bias=self.bias(now_s),
            remaining_samples=self.remaining if self.spec.kind == "spike" else None,
            held_value=self.held if self.spec.kind == "flatline" else None,
        )
