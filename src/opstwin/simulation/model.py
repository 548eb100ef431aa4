"""Process models: uncertain inputs, output expressions over them, optional input correlations.

The inline JSON form is the contract other tools build on::

    {
      "inputs": {
        "x": {"dist": "normal", "mean": 100, "std": 10},
        "y": {"dist": "triangular", "low": 1, "mode": 2, "high": 4}
      },
      "outputs": {"z": "x + y"},
      "correlations": {"inputs": ["x", "y"], "matrix": [[1, 0.6], [0.6, 1]]}
    }

``correlations`` is optional; it couples the listed inputs through a Gaussian copula (each keeps
its own marginal distribution; their normal scores get the given correlation matrix, which must
be symmetric, have a unit diagonal and be positive semi-definite).

:func:`parse_model` reports every problem it finds at once, each with a JSON pointer
(``/model/inputs/x/std``, ``/model/outputs/z``, ``/model/correlations/matrix/0/1``).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.simulation.distributions import (
    Distribution,
    FloatArray,
    escape_pointer,
    finite_number,
    parse_distribution,
)
from opstwin.simulation.expressions import FUNCTIONS, CompiledExpression, compile_expression

MAX_INPUTS = 64
"""Most inputs per model (also the Sobol dimension)."""

MAX_OUTPUTS = 32
"""Most outputs per model; each is kept in memory at full sample count for percentiles."""

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""Input and output names: identifiers of at most 64 ASCII characters."""

PSD_TOLERANCE = 1e-9
"""Smallest eigenvalue a correlation matrix may have below zero (floating-point slack)."""

SYMMETRY_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True, eq=False)
class Correlation:
    """Gaussian-copula coupling of some inputs.

    ``factor`` is a square root of ``matrix`` (``factor @ factor.T == matrix``), computed from the
    eigen-decomposition so that semi-definite matrices (perfect correlation) work too.
    """

    names: tuple[str, ...]
    matrix: FloatArray
    factor: FloatArray

    @classmethod
    def from_matrix(cls, names: tuple[str, ...], matrix: FloatArray) -> Correlation:
        eigenvalues, eigenvectors = np.linalg.eigh(matrix)
        factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
        # Clipping tiny negative eigenvalues shrinks the diagonal a hair; restore unit variances.
        factor /= np.sqrt(np.sum(factor**2, axis=1, keepdims=True))
        return cls(names, matrix, factor)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.names), "matrix": self.matrix.tolist()}


@dataclass(frozen=True, slots=True)
class ProcessModel:
    """A parsed, validated model. Input order is the declaration order (it fixes Sobol columns)."""

    inputs: Mapping[str, Distribution]
    outputs: Mapping[str, CompiledExpression]
    correlation: Correlation | None = None
    pointer: str = "/model"

    def with_input(self, name: str, distribution: Distribution) -> ProcessModel:
        """The same model with one input's distribution replaced (e.g. a candidate setpoint)."""
        if name not in self.inputs:
            raise KeyError(name)
        inputs = dict(self.inputs)
        inputs[name] = distribution
        return replace(self, inputs=inputs)

    def output_pointer(self, name: str) -> str:
        """JSON pointer of an output's expression, for errors found while evaluating it."""
        return f"{self.pointer}/outputs/{escape_pointer(name)}"

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "inputs": {name: dist.to_dict() for name, dist in self.inputs.items()},
            "outputs": {name: expr.source for name, expr in self.outputs.items()},
        }
        if self.correlation is not None:
            body["correlations"] = self.correlation.to_dict()
        return body


def _name_problem(name: str) -> str | None:
    if not NAME_PATTERN.fullmatch(name):
        return "names must be identifiers: a letter or '_' then letters, digits or '_' (≤ 64)"
    if keyword.iskeyword(name):
        return f"{name!r} is a Python keyword and cannot name a value"
    if name in FUNCTIONS:
        return f"{name!r} is a function name ({sorted(FUNCTIONS)}) and cannot name a value"
    return None


def parse_model(payload: object, pointer: str = "/model") -> ProcessModel:
    """Validate the inline JSON model and compile its expressions.

    Raises :class:`ValidationFailed` listing every problem found, each located by a JSON pointer
    under ``pointer``.
    """
    errors: list[FieldError] = []
    if not isinstance(payload, Mapping):
        raise ValidationFailed(
            "invalid process model",
            errors=[FieldError(pointer=pointer, detail="the model must be an object")],
        )
    errors.extend(
        FieldError(
            pointer=f"{pointer}/{escape_pointer(str(key))}",
            detail="unknown member; expected 'inputs', 'outputs' and optional 'correlations'",
        )
        for key in payload
        if key not in ("inputs", "outputs", "correlations")
    )

    inputs: dict[str, Distribution] = {}
    raw_inputs = payload.get("inputs")
    # Outputs and correlations are checked against every declared name, valid or not, so one
    # bad input yields one error rather than one more per expression that uses it.
    declared = [str(name) for name in raw_inputs] if isinstance(raw_inputs, Mapping) else []
    if not isinstance(raw_inputs, Mapping) or not raw_inputs:
        errors.append(
            FieldError(pointer=f"{pointer}/inputs", detail="'inputs' must be a non-empty object")
        )
        raw_inputs = {}
    elif len(raw_inputs) > MAX_INPUTS:
        errors.append(
            FieldError(
                pointer=f"{pointer}/inputs",
                detail=f"at most {MAX_INPUTS} inputs (got {len(raw_inputs)})",
            )
        )
        raw_inputs = {}
    for name, spec in raw_inputs.items():
        where = f"{pointer}/inputs/{escape_pointer(str(name))}"
        problem = _name_problem(str(name))
        if problem is not None:
            errors.append(FieldError(pointer=where, detail=problem))
            continue
        try:
            inputs[str(name)] = parse_distribution(spec, where)
        except ValidationFailed as exc:
            errors.extend(exc.errors)

    outputs: dict[str, CompiledExpression] = {}
    raw_outputs = payload.get("outputs")
    if not isinstance(raw_outputs, Mapping) or not raw_outputs:
        errors.append(
            FieldError(
                pointer=f"{pointer}/outputs",
                detail="'outputs' must be a non-empty object of name → expression",
            )
        )
        raw_outputs = {}
    elif len(raw_outputs) > MAX_OUTPUTS:
        errors.append(
            FieldError(
                pointer=f"{pointer}/outputs",
                detail=f"at most {MAX_OUTPUTS} outputs (got {len(raw_outputs)})",
            )
        )
        raw_outputs = {}
    for name, source in raw_outputs.items():
        where = f"{pointer}/outputs/{escape_pointer(str(name))}"
        problem = _name_problem(str(name))
        if problem is None and name in declared:
            problem = f"{name!r} is already an input"
        if problem is not None:
            errors.append(FieldError(pointer=where, detail=problem))
            continue
        try:
            outputs[str(name)] = compile_expression(source, declared, where)
        except ValidationFailed as exc:
            errors.extend(exc.errors)

    correlation = None
    if "correlations" in payload and payload["correlations"] is not None:
        try:
            correlation = _parse_correlation(
                payload["correlations"], declared, f"{pointer}/correlations"
            )
        except ValidationFailed as exc:
            errors.extend(exc.errors)

    if errors:
        raise ValidationFailed("invalid process model", errors=errors)
    return ProcessModel(inputs=inputs, outputs=outputs, correlation=correlation, pointer=pointer)


def _parse_correlation(raw: object, declared: list[str], pointer: str) -> Correlation:
    def fail(where: str, detail: str) -> ValidationFailed:
        return ValidationFailed(
            "invalid correlations", errors=[FieldError(pointer=where, detail=detail)]
        )

    if not isinstance(raw, Mapping) or set(raw) != {"inputs", "matrix"}:
        raise fail(pointer, "'correlations' must be an object with 'inputs' and 'matrix'")
    names_raw = raw["inputs"]
    if not isinstance(names_raw, list) or len(names_raw) < 2:
        raise fail(f"{pointer}/inputs", "'inputs' must list at least two input names")
    for i, name in enumerate(names_raw):
        if not isinstance(name, str) or name not in declared:
            raise fail(f"{pointer}/inputs/{i}", f"{name!r} is not a declared input")
    if len(set(names_raw)) != len(names_raw):
        raise fail(f"{pointer}/inputs", "an input is listed twice")
    k = len(names_raw)
    rows = raw["matrix"]
    if not isinstance(rows, list) or len(rows) != k:
        raise fail(f"{pointer}/matrix", f"'matrix' must be {k}×{k} (one row per listed input)")
    matrix = np.empty((k, k))
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != k:
            raise fail(f"{pointer}/matrix/{i}", f"each row must have {k} numbers")
        for j, value in enumerate(row):
            number = finite_number(value)
            if number is None or not -1.0 <= number <= 1.0:
                raise fail(f"{pointer}/matrix/{i}/{j}", "must be a number in [-1, 1]")
            matrix[i, j] = number
    for i in range(k):
        if matrix[i, i] != 1.0:
            raise fail(f"{pointer}/matrix/{i}/{i}", "the diagonal must be 1")
        for j in range(i + 1, k):
            if abs(matrix[i, j] - matrix[j, i]) > SYMMETRY_TOLERANCE:
                raise fail(f"{pointer}/matrix/{j}/{i}", f"must equal matrix[{i}][{j}] (symmetric)")
    smallest = float(np.linalg.eigvalsh(matrix)[0])
    if smallest < -PSD_TOLERANCE:
        raise fail(
            f"{pointer}/matrix",
            f"not positive semi-definite (smallest eigenvalue {smallest:.3g}); these "
            "correlations cannot hold together",
        )
    return Correlation.from_matrix(tuple(names_raw), matrix)
