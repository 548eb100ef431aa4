"""The inline model contract: parsing, pointers to every problem, correlation checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from opstwin.kit.errors import ValidationFailed
from opstwin.simulation.distributions import Constant, Normal, Triangular
from opstwin.simulation.model import MAX_INPUTS, parse_model

CONTRACT_EXAMPLE: dict[str, Any] = {
    "inputs": {
        "x": {"dist": "normal", "mean": 100, "std": 10},
        "y": {"dist": "triangular", "low": 1, "mode": 2, "high": 4},
    },
    "outputs": {"z": "x + y"},
}


def pointers(payload: Any) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        parse_model(payload)
    assert caught.value.status == 422
    return [e.pointer or "" for e in caught.value.errors]


def test_contract_example_parses_and_round_trips() -> None:
    model = parse_model(CONTRACT_EXAMPLE)
    assert model.inputs["x"] == Normal(100.0, 10.0)
    assert model.inputs["y"] == Triangular(1.0, 2.0, 4.0)
    assert model.outputs["z"].inputs_used == {"x", "y"}
    assert model.to_dict() == {
        "inputs": {
            "x": {"dist": "normal", "mean": 100.0, "std": 10.0},
            "y": {"dist": "triangular", "low": 1.0, "mode": 2.0, "high": 4.0},
        },
        "outputs": {"z": "x + y"},
    }
    assert parse_model(model.to_dict()).to_dict() == model.to_dict()


def test_every_problem_is_reported_with_its_pointer() -> None:
    payload = {
        "inputs": {
            "x": {"dist": "normal", "mean": 100, "std": -10},
            "y": {"dist": "weibull"},
            "2bad": {"dist": "constant", "value": 1},
        },
        "outputs": {"z": "x + y.real", "w": "x + undefined", "x": "y"},
        "extra": 1,
    }
    assert sorted(pointers(payload)) == [
        "/model/extra",
        "/model/inputs/2bad",
        "/model/inputs/x/std",
        "/model/inputs/y/dist",
        "/model/outputs/w",
        "/model/outputs/x",
        "/model/outputs/z",
    ]


def test_pointer_prefix_follows_the_caller() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_model({"inputs": {"a/b": {"dist": "constant", "value": 1}}, "outputs": {}}, "/body")
    assert {e.pointer for e in caught.value.errors} == {"/body/inputs/a~1b", "/body/outputs"}


@pytest.mark.parametrize(
    ("payload", "pointer"),
    [
        ([], "/model"),
        ({"outputs": {"z": "1"}}, "/model/inputs"),
        ({"inputs": {}, "outputs": {"z": "1"}}, "/model/inputs"),
        ({"inputs": {"x": {"dist": "constant", "value": 1}}}, "/model/outputs"),
        (
            {"inputs": {"x": {"dist": "constant", "value": 1}}, "outputs": {"z": 3}},
            "/model/outputs/z",
        ),
        (
            {"inputs": {"abs": {"dist": "constant", "value": 1}}, "outputs": {"z": "1"}},
            "/model/inputs/abs",
        ),
        (
            {"inputs": {"lambda": {"dist": "constant", "value": 1}}, "outputs": {"z": "1"}},
            "/model/inputs/lambda",
        ),
        (
            {"inputs": {"x": {"dist": "constant", "value": 1}}, "outputs": {"z z": "x"}},
            "/model/outputs/z z",
        ),
    ],
)
def test_structural_problems(payload: Any, pointer: str) -> None:
    assert pointer in pointers(payload)


def test_input_count_is_limited() -> None:
    inputs = {f"x{i}": {"dist": "constant", "value": i} for i in range(MAX_INPUTS + 1)}
    assert pointers({"inputs": inputs, "outputs": {"z": "x0"}}) == ["/model/inputs"]


def with_correlations(correlations: Any) -> dict[str, Any]:
    return {**CONTRACT_EXAMPLE, "correlations": correlations}


def test_correlation_factor_reproduces_the_matrix() -> None:
    model = parse_model(with_correlations({"inputs": ["x", "y"], "matrix": [[1, 0.6], [0.6, 1]]}))
    corr = model.correlation
    assert corr is not None
    assert corr.names == ("x", "y")
    np.testing.assert_allclose(corr.factor @ corr.factor.T, [[1, 0.6], [0.6, 1]], atol=1e-12)


def test_perfect_correlation_is_semidefinite_and_accepted() -> None:
    model = parse_model(with_correlations({"inputs": ["x", "y"], "matrix": [[1, 1], [1, 1]]}))
    assert model.correlation is not None
    np.testing.assert_allclose(np.sum(model.correlation.factor**2, axis=1), [1, 1], atol=1e-12)


@pytest.mark.parametrize(
    ("correlations", "pointer", "fragment"),
    [
        ({"inputs": ["x", "y"]}, "/model/correlations", "'inputs' and 'matrix'"),
        (
            {"inputs": ["x", "q"], "matrix": [[1, 0], [0, 1]]},
            "/model/correlations/inputs/1",
            "not a declared",
        ),
        ({"inputs": ["x", "x"], "matrix": [[1, 0], [0, 1]]}, "/model/correlations/inputs", "twice"),
        ({"inputs": ["x", "y"], "matrix": [[1, 0]]}, "/model/correlations/matrix", "2×2"),
        (
            {"inputs": ["x", "y"], "matrix": [[1, 0.5], [0.4, 1]]},
            "/model/correlations/matrix/1/0",
            "symmetric",
        ),
        (
            {"inputs": ["x", "y"], "matrix": [[0.9, 0.5], [0.5, 1]]},
            "/model/correlations/matrix/0/0",
            "diagonal",
        ),
        (
            {"inputs": ["x", "y"], "matrix": [[1, 1.5], [1.5, 1]]},
            "/model/correlations/matrix/0/1",
            "[-1, 1]",
        ),
        (
            {"inputs": ["x", "y"], "matrix": [[1, "a"], [0, 1]]},
            "/model/correlations/matrix/0/1",
            "[-1, 1]",
        ),
    ],
)
def test_bad_correlations(correlations: Any, pointer: str, fragment: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_model(with_correlations(correlations))
    [error] = caught.value.errors
    assert error.pointer == pointer
    assert fragment in error.detail


def test_correlations_that_cannot_coexist_are_rejected() -> None:
    payload = {
        "inputs": {n: {"dist": "normal", "mean": 0, "std": 1} for n in ("a", "b", "c")},
        "outputs": {"s": "a + b + c"},
        # a~b and b~c strongly positive but a~c strongly negative: no such joint distribution
        "correlations": {
            "inputs": ["a", "b", "c"],
            "matrix": [[1, 0.9, -0.9], [0.9, 1, 0.9], [-0.9, 0.9, 1]],
        },
    }
    with pytest.raises(ValidationFailed) as caught:
        parse_model(payload)
    [error] = caught.value.errors
    assert error.pointer == "/model/correlations/matrix"
    assert "not positive semi-definite" in error.detail


def test_with_input_replaces_one_distribution_only() -> None:
    model = parse_model(CONTRACT_EXAMPLE)
    changed = model.with_input("x", Constant(5.0))
    assert changed.inputs["x"] == Constant(5.0)
    assert changed.inputs["y"] is model.inputs["y"]
    assert model.inputs["x"] == Normal(100.0, 10.0)
    with pytest.raises(KeyError):
        model.with_input("nope", Constant(1.0))
