"""Input distributions: small classes behind one :class:`Distribution` protocol, in a registry.

Each distribution is parameterised the way people state uncertainty (mean/std, low/high,
low/mode/high, ...) and can be sampled two ways:

* ``draw(rng, n)`` — independent draws straight from numpy's ``Generator``; the fast path for
  plain Monte Carlo without correlations;
* ``ppf(u)`` — the inverse CDF, mapping uniforms in (0, 1) to values; Sobol points, antithetic
  pairs and the Gaussian copula all go through it.

:func:`parse_distribution` turns a JSON spec such as ``{"dist": "normal", "mean": 100, "std": 10}``
into an instance, raising :class:`~opstwin.kit.errors.ValidationFailed` whose field errors point
at the offending member (``/model/inputs/x/std``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy import special

from opstwin.kit.errors import FieldError, ValidationFailed

FloatArray = npt.NDArray[np.float64]

MAX_EMPIRICAL_OBSERVATIONS = 1_000_000
"""An ``empirical`` input carries its observations inline; beyond this it belongs in telemetry."""

_MAX_REPORTED_ERRORS = 10
"""A list of a million bad observations is reported by its first few, not all of them."""

_U_MIN = 2.0**-53
_U_MAX = 1.0 - 2.0**-53
"""Uniforms are clipped into [2⁻⁵³, 1 − 2⁻⁵³] so an unbounded ppf never returns ±inf."""


class Distribution(Protocol):
    """A univariate input distribution."""

    @property
    def kind(self) -> str:
        """The ``dist`` name this distribution is registered under."""
        ...

    def draw(self, rng: np.random.Generator, n: int) -> FloatArray:
        """``n`` independent draws."""
        ...

    def ppf(self, u: FloatArray) -> FloatArray:
        """Inverse CDF of uniforms ``u`` in [0, 1] (clipped away from the ends)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The JSON spec this distribution was parsed from (normalised)."""
        ...


DistributionParser = Callable[[Mapping[str, Any], str], Distribution]


def clip_uniform(u: FloatArray) -> FloatArray:
    """Uniforms moved into the open interval so inverse CDFs stay finite."""
    return np.clip(u, _U_MIN, _U_MAX)


def _ndtri(u: FloatArray) -> FloatArray:
    return np.asarray(special.ndtri(clip_uniform(u)), dtype=np.float64)


class _Params:
    """Reads numeric parameters from a spec, collecting every problem before raising."""

    def __init__(self, spec: Mapping[str, Any], pointer: str, allowed: set[str]) -> None:
        self.spec = spec
        self.pointer = pointer
        self.errors: list[FieldError] = []
        kind = spec.get("dist")
        for key in spec:
            if key != "dist" and key not in allowed:
                self.errors.append(
                    FieldError(
                        pointer=f"{pointer}/{escape_pointer(str(key))}",
                        detail=f"unknown parameter for {kind!r}; expected {sorted(allowed)}",
                    )
                )

    def number(self, key: str) -> float:
        """A required finite number (booleans are not numbers here)."""
        where = f"{self.pointer}/{key}"
        if key not in self.spec:
            self.errors.append(FieldError(pointer=where, detail=f"{key!r} is required"))
            return math.nan
        result = finite_number(self.spec[key])
        if result is None:
            self.errors.append(FieldError(pointer=where, detail=f"{key!r} must be a finite number"))
            return math.nan
        return result

    def fail(self, key: str, detail: str) -> None:
        self.errors.append(FieldError(pointer=f"{self.pointer}/{key}", detail=detail))

    def failure(self) -> ValidationFailed:
        return ValidationFailed("invalid input distribution", errors=list(self.errors))

    def check(self) -> None:
        if self.errors:
            raise self.failure()


def finite_number(value: object) -> float | None:
    """``value`` as a finite float, or None when it is not a finite number (booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return result if math.isfinite(result) else None


def escape_pointer(token: str) -> str:
    """Escape one JSON-pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True, slots=True)
class Normal:
    """Normal distribution by mean and standard deviation."""

    mean: float
    std: float

    @property
    def kind(self) -> str:
        return "normal"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], pointer: str) -> Normal:
        p = _Params(spec, pointer, {"mean", "std"})
        mean, std = p.number("mean"), p.number("std")
        if std <= 0:
            p.fail("std", "'std' must be > 0 (use dist 'constant' for a fixed value)")
        p.check()
        return cls(mean, std)

    def draw(self, rng: np.random.Generator, n: int) -> FloatArray:
        return rng.normal(self.mean, self.std, n)

    def ppf(self, u: FloatArray) -> FloatArray:
        return self.mean + self.std * _ndtri(u)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "mean": self.mean, "std": self.std}


@dataclass(frozen=True, slots=True)
class Uniform:
    """Uniform distribution on [low, high)."""

    low: float
    high: float

    @property
    def kind(self) -> str:
        return "uniform"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], pointer: str) -> Uniform:
        p = _Params(spec, pointer, {"low", "high"})
        low, high = p.number("low"), p.number("high")
        if not low < high:
            p.fail("high", "'high' must be greater than 'low'")
        p.check()
        return cls(low, high)

    def draw(self, rng: np.random.Generator, n: int) -> FloatArray:
        return rng.uniform(self.low, self.high, n)

    def ppf(self, u: FloatArray) -> FloatArray:
        return self.low + (self.high - self.low) * clip_uniform(u)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True, slots=True)
class Triangular:
    """Triangular distribution by minimum, most likely value and maximum."""

    low: float
    mode: float
    high: float

    @property
    def kind(self) -> str:
        return "triangular"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], pointer: str) -> Triangular:
        p = _Params(spec, pointer, {"low", "mode", "high"})
        low, mode, high = p.number("low"), p.number("mode"), p.number("high")
        if not low < high:
            p.fail("high", "'high' must be greater than 'low'")
        elif not low <= mode <= high:
            p.fail("mode", "'mode' must lie within [low, high]")
        p.check()
        return cls(low, mode, high)

    def draw(self, rng: np.random.Generator, n: int) -> FloatArray:
        return rng.triangular(self.low, self.mode, self.high, n)

    def ppf(self, u: FloatArray) -> FloatArray:
        u = clip_uniform(u)
        width = self.high - self.low
        split = (self.mode - self.low) / width
        rising = self.low + np.sqrt(u * width * (self.mode - self.low))
        falling = self.high - np.sqrt((1.0 - u) * width * (self.high - self.mode))
        return np.where(u < split, rising, falling)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "low": self.low, "mode": self.mode, "high": self.high}


@dataclass(frozen=True, slots=True)
class LogNormal:
    """Log-normal distribution; ``mu``/``sigma`` are the mean and std of ``log(value)``.

    The spec accepts either ``mu``/``sigma`` or the ``mean``/``std`` of the value itself, which
    are converted with ``sigma² = log(1 + std²/mean²)`` and ``mu = log(mean) − sigma²/2``.
    """

    mu: float
    sigma: float

    @property
    def kind(self) -> str:
        return "lognormal"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], pointer: str) -> LogNormal:
        by_value = "mean" in spec or "std" in spec
        by_log = "mu" in spec or "sigma" in spec
        if by_value and by_log:
            raise ValidationFailed(
                "invalid input distribution",
                errors=[
                    FieldError(
                        pointer=pointer,
                        detail="give lognormal either 'mu'/'sigma' (of the log) "
                        "or 'mean'/'std' (of the value), not both",
                    )
                ],
            )
        if by_value:
            p = _Params(spec, pointer, {"mean", "std"})
            mean, std = p.number("mean"), p.number("std")
            if mean <= 0:
                p.fail("mean", "'mean' of a lognormal value must be > 0")
            if std <= 0:
                p.fail("std", "'std' must be > 0")
            p.check()
            sigma2 = math.log1p((std / mean) ** 2)
            return cls(math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2))
        p = _Params(spec, pointer, {"mu", "sigma"})
        mu, sigma = p.number("mu"), p.number("sigma")
        if sigma <= 0:
            p.fail("sigma", "'sigma' must be > 0")
        p.check()
        return cls(mu, sigma)

    def draw(self, rng: np.random.Generator, n: int) -> FloatArray:
        return rng.lognormal(self.mu, self.sigma, n)

    def ppf(self, u: FloatArray) -> FloatArray:
        return np.exp(self.mu + self.sigma * _ndtri(u))

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "mu": self.mu, "sigma": self.sigma}


@dataclass(frozen=True, slots=True)
class Constant:
    """A known, fixed value (a setpoint, or a parameter without uncertainty)."""

    value: float

    @property
    def kind(self) -> str:
        return "constant"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], pointer: str) -> Constant:
        p = _Params(spec, pointer, {"value"})
        value = p.number("value")
        p.check()
        return cls(value)

    def draw(self, rng: np.random.Generator, n: int) -> FloatArray:
        return np.full(n, self.value)

    def ppf(self, u: FloatArray) -> FloatArray:
        return np.full(u.shape, self.value)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "value": self.value}


@dataclass(frozen=True, slots=True, eq=False)
class Empirical:
    """Resampling (with replacement) from observed values, e.g. recent telemetry.

    ``ppf`` is the empirical quantile function (a step function), so Sobol points and copulas
    pick observations by rank.
    """

    observations: FloatArray

    @property
    def kind(self) -> str:
        return "empirical"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], pointer: str) -> Empirical:
        p = _Params(spec, pointer, {"observations"})
        raw = spec.get("observations")
        where = f"{pointer}/observations"
        if not isinstance(raw, list) or not raw:
            p.fail("observations", "'observations' must be a non-empty list of numbers")
            raise p.failure()
        if len(raw) > MAX_EMPIRICAL_OBSERVATIONS:
            p.errors.append(
                FieldError(
                    pointer=where,
                    detail=f"at most {MAX_EMPIRICAL_OBSERVATIONS} observations (got {len(raw)})",
                )
            )
        for i, value in enumerate(raw):
            if finite_number(value) is None:
                p.errors.append(
                    FieldError(pointer=f"{where}/{i}", detail="must be a finite number")
                )
                if len(p.errors) >= _MAX_REPORTED_ERRORS:
                    break
        p.check()
        return cls(np.sort(np.asarray(raw, dtype=np.float64)))

    def draw(self, rng: np.random.Generator, n: int) -> FloatArray:
        return self.observations[rng.integers(0, self.observations.size, n)]

    def ppf(self, u: FloatArray) -> FloatArray:
        m = self.observations.size
        index = np.minimum((clip_uniform(u) * m).astype(np.int64), m - 1)
        return self.observations[index]

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "observations": self.observations.tolist()}


DISTRIBUTIONS: dict[str, DistributionParser] = {
    "normal": Normal.from_spec,
    "uniform": Uniform.from_spec,
    "triangular": Triangular.from_spec,
    "lognormal": LogNormal.from_spec,
    "constant": Constant.from_spec,
    "empirical": Empirical.from_spec,
}
"""Every distribution a model may name, by its ``dist`` value."""


def parse_distribution(
    spec: object,
    pointer: str,
    registry: Mapping[str, DistributionParser] = DISTRIBUTIONS,
) -> Distribution:
    """Build the distribution a JSON spec describes; errors point into the spec."""
    if not isinstance(spec, Mapping):
        raise ValidationFailed(
            "invalid input distribution",
            errors=[FieldError(pointer=pointer, detail="an input must be an object with a 'dist'")],
        )
    kind = spec.get("dist")
    if not isinstance(kind, str) or kind not in registry:
        raise ValidationFailed(
            "invalid input distribution",
            errors=[
                FieldError(
                    pointer=f"{pointer}/dist",
                    detail=f"'dist' must be one of {sorted(registry)}",
                )
            ],
        )
    return registry[kind](spec, pointer)
