"""Process-model expressions: numeric results, rejections with locations, and fuzzing."""

from __future__ import annotations

import ast
import builtins
import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from opstwin.kit.errors import ValidationFailed
from opstwin.simulation.expressions import (
    MAX_CONSTANT_EXPONENT,
    MAX_DEPTH,
    MAX_EXPRESSION_CHARS,
    MAX_NODES,
    CompiledExpression,
    compile_expression,
)

POINTER = "/model/outputs/z"
INPUTS = ("x", "y", "temp_c", "rf_w")
FUZZ = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def env(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "x": rng.normal(1.0, 2.0, n),
        "y": rng.uniform(0.5, 3.0, n),
        "temp_c": rng.normal(62.0, 2.0, n),
        "rf_w": rng.normal(1500.0, 50.0, n),
    }


def compile_(text: str) -> CompiledExpression:
    return compile_expression(text, INPUTS, POINTER)


def rejection(text: str) -> str:
    with pytest.raises(ValidationFailed) as caught:
        compile_(text)
    assert caught.value.status == 422
    [error] = caught.value.errors
    assert error.pointer == POINTER
    return error.detail


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x + y", lambda e: e["x"] + e["y"]),
        (
            "0.92 - 0.004*abs(temp_c - 62) - 0.00002*(rf_w - 1500)**2",
            lambda e: 0.92 - 0.004 * np.abs(e["temp_c"] - 62) - 0.00002 * (e["rf_w"] - 1500) ** 2,
        ),
        ("-x ** 2", lambda e: -(e["x"] ** 2)),
        ("2 ** -1 * x", lambda e: 0.5 * e["x"]),
        ("min(x, y, 1)", lambda e: np.minimum(np.minimum(e["x"], e["y"]), 1.0)),
        ("max(x, 0)", lambda e: np.maximum(e["x"], 0.0)),
        (
            "exp(-y) + log(y) + sqrt(y)",
            lambda e: np.exp(-e["y"]) + np.log(e["y"]) + np.sqrt(e["y"]),
        ),
        ("clip(x, -1, 2)", lambda e: np.clip(e["x"], -1, 2)),
        ("where(x > 1, y, -y)", lambda e: np.where(e["x"] > 1, e["y"], -e["y"])),
        ("(x > 1) * 2 + (y <= 2)", lambda e: (e["x"] > 1) * 2.0 + (e["y"] <= 2) * 1.0),
        ("0 < x < 2", lambda e: ((e["x"] > 0) & (e["x"] < 2)) * 1.0),
        (
            "x > 0 and not y > 2 or x == y",
            lambda e: (((e["x"] > 0) & ~(e["y"] > 2)) | (e["x"] == e["y"])) * 1.0,
        ),
        ("x != x", lambda e: np.zeros_like(e["x"])),
        ("3", lambda e: np.full_like(e["x"], 3.0)),
        ("2 * 3 + 1_000", lambda e: np.full_like(e["x"], 1006.0)),
        ("  x\n  + y  ", lambda e: e["x"] + e["y"]),
    ],
)
def test_expressions_compute_what_they_say(
    text: str, expected: Callable[[dict[str, np.ndarray]], np.ndarray]
) -> None:
    values = env()
    result = compile_(text).evaluate(values, 5)
    assert result.dtype == np.float64
    assert result.shape == (5,)
    np.testing.assert_allclose(result, expected(values), rtol=1e-12)


def test_constant_parts_are_folded_and_inputs_recorded() -> None:
    compiled = compile_("2 * 3 + x")
    assert compiled.inputs_used == {"x"}
    assert compile_("2 ** 10 / 4").constant == 256.0


def test_invalid_numerics_become_nan_not_exceptions() -> None:
    values = {"x": np.array([-1.0, 0.0, 1.0]), "y": np.zeros(3)}
    result = compile_expression("log(x) + 1 / y", ["x", "y"], POINTER).evaluate(values, 3)
    assert not np.isfinite(result).any()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("__import__(x)", "'__import__' is not allowed"),
        ("__import__", "unknown name '__import__'"),
        ("open(x)", "'open' is not allowed"),
        ("eval(x)", "'eval' is not allowed"),
        ("x.__class__", "attribute access"),
        ("x.real", "attribute access"),
        ("abs.__globals__", "attribute access"),
        ("exp(x).conjugate()", "only the whitelisted functions"),
        ("x[0]", "subscripts"),
        ("(lambda: x)()", "only the whitelisted functions"),
        ("lambda: x", "lambdas"),
        ("[x for x in y]", "comprehensions"),
        ("{x for x in y}", "comprehensions"),
        ("{x: 1 for x in y}", "comprehensions"),
        ("sum(x for x in y)", "'sum' is not allowed"),
        ("max(x for x in y)", "generator expressions"),
        ("x if y else 1", "where(condition, a, b)"),
        ("(z := x)", "assignment expressions"),
        ("max(*x)", "starred"),
        ("abs(x=1)", "keyword arguments"),
        ("[x, y]", "lists"),
        ("(x, y)", "tuples"),
        ("x @ y", "MatMult"),
        ("x // y", "FloorDiv"),
        ("x % y", "Mod"),
        ("x << 2", "LShift"),
        ("~x", "Invert"),
        ("x is y", "comparison Is"),
        ("x in y", "comparison In"),
        ("True + x", "not bool"),
        ("None", "not NoneType"),
        ("1j * x", "must be decimal"),
        ("0x1f + x", "must be decimal"),
        ("1if x else 2", "`1if`"),
        ("x + 2and y", "`2and`"),
        ("x ** 1e9", "constant exponent 1e+09"),
        ("x ** -(-100)", "constant exponent 100"),
        ("x ** (10 ** 10)", "constant exponent 1e+10"),
        ("1e308 * 10", "not finite"),
        ("1" + "0" * 400, "too large"),
        ("log(0)", "not finite"),
        ("abs(x, y)", "abs() takes 1 argument, got 2"),
        ("min(x)", "min() takes at least 2 arguments, got 1"),
        ("clip(x, 1)", "clip() takes 3 arguments, got 2"),
        ("abs", "must be called"),
        ("unknown + 1", "unknown name 'unknown'"),
        ("x +", "syntax error"),
        ("x = 1", "syntax error"),
        ("'x'", "strings"),
        ('"a" + x', "strings"),
        ("x\\\n+1", "strings and escapes"),
        ("x + ý", "ASCII"),
        ("x\x00", "ASCII"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_forbidden_constructs_are_rejected_with_a_reason(text: str, fragment: str) -> None:
    assert fragment in rejection(text)


def test_rejections_name_the_column() -> None:
    detail = rejection("x + y.__class__")
    assert detail.startswith("column 5: attribute access")
    assert "`y.__class__`" in detail
    assert rejection("  x + os").startswith("column 7: unknown name 'os'")
    assert rejection("x + (").startswith("column 5: syntax error")


def test_size_limits() -> None:
    too_long = "x + " * (MAX_EXPRESSION_CHARS // 4) + "x"
    assert f"limit is {MAX_EXPRESSION_CHARS}" in rejection(too_long)
    many_nodes = "+".join(["x"] * (MAX_NODES // 2 + 2))
    detail = rejection(many_nodes)
    assert "syntax nodes" in detail or "levels deep" in detail
    deep = "abs(" * (MAX_DEPTH + 1) + "x" + ")" * (MAX_DEPTH + 1)
    assert f"limit is {MAX_DEPTH}" in rejection(deep)
    deep_unary = "-" * 400 + "x"
    assert f"limit is {MAX_DEPTH}" in rejection(deep_unary)
    # The parser's own nesting limit surfaces as a validation error too.
    assert "syntax error" in rejection("(" * 300 + "x" + ")" * 300)


def test_exponent_limit_is_inclusive() -> None:
    compile_(f"x ** {MAX_CONSTANT_EXPONENT:g}")
    compile_(f"x ** -{MAX_CONSTANT_EXPONENT:g}")
    compile_("x ** y")  # a variable exponent is allowed; overflow becomes inf, caught per run


@contextlib.contextmanager
def no_code_execution() -> Iterator[list[str]]:
    """Records any eval, exec, import or open, and compile beyond a syntax tree, in the block.

    The guards are installed only around the code under test, so pytest's own lazy imports
    and file reads (reporting) are unaffected.
    """
    calls: list[str] = []
    real_compile = builtins.compile

    def guarded_compile(
        source: Any, filename: Any, mode: str, flags: int = 0, *args: Any, **kwargs: Any
    ) -> Any:
        if not flags & ast.PyCF_ONLY_AST:
            calls.append(f"compile({source!r})")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    def refuse(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(f"{name}{args!r}")
            raise AssertionError(f"{name} called")

        return call

    names = ("eval", "exec", "open", "__import__")
    saved = {name: getattr(builtins, name) for name in (*names, "compile")}
    builtins.compile = guarded_compile
    for name in names:
        setattr(builtins, name, refuse(name))
    try:
        yield calls
    finally:
        for name, value in saved.items():
            setattr(builtins, name, value)


ATTACKS = [
    "__import__(x)",
    "__builtins__",
    "open(x)",
    "eval(x)",
    "exec(x)",
    "compile(x, x, x)",
    "getattr(x, x)",
    "x.__class__.__bases__[0].__subclasses__()",
    "abs.__self__",
    "(lambda: __import__(x))()",
    "[c for c in ().__class__.__base__.__subclasses__()]",
    "(y := __import__)",
    "max(x, 9) ** 9 ** 9 ** 9",
    "abs(" * 200 + "x" + ")" * 200,
]


@pytest.mark.parametrize("text", ATTACKS)
def test_escape_attempts_are_rejected_without_executing_anything(text: str) -> None:
    failure: ValidationFailed | None = None
    with no_code_execution() as calls:
        try:
            compile_(text)
        except ValidationFailed as exc:
            failure = exc
    assert calls == []
    assert failure is not None, f"{text!r} compiled"


def test_compiling_and_evaluating_allowed_expressions_runs_no_code() -> None:
    values = env()
    with no_code_execution() as calls:
        compiled = compile_("where(x > 0, sqrt(abs(x)) * exp(-y), min(x, y, 2) ** 2)")
        result = compiled.evaluate(values, 5)
    assert calls == []
    assert np.isfinite(result).all()


def _assert_safe(text: str) -> CompiledExpression | None:
    """The property every input must satisfy: a compiled expression or a ValidationFailed."""
    failure: ValidationFailed | None = None
    try:
        compiled = compile_(text)
    except ValidationFailed as exc:
        failure = exc
    if failure is not None:
        assert [e.pointer for e in failure.errors] == [POINTER]
        return None
    result = compiled.evaluate(env(8), 8)
    assert result.dtype == np.float64
    assert result.shape == (8,)
    return compiled


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    _assert_safe(text)


TOKENS = [
    "x", "y", "temp_c", "1", "2.5", "1e9", "0", "(", ")", "+", "-", "*", "/", "**", "<", ">=",
    "==", " and ", " or ", "not ", ",", "abs(", "min(", "max(", "exp(", "log(", "sqrt(",
    "clip(", "where(", ".", "[", "]", "lambda ", ":", " for ", " in ", " if ", " else ",
    "__import__", "__class__", "os", "=", "*", "~", "@", "%", "//", "j", "_", " ",
]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_fuzz_token_soup(text: str) -> None:
    _assert_safe(text)


# ---- random syntax trees ---------------------------------------------------------------------
#
# Two generators: `allowed_trees` uses only the whitelisted grammar (so most of them compile and
# get evaluated), and `hostile_nodes` are constructs that must never compile. Injecting one
# hostile node anywhere into an allowed tree must make the whole expression fail.

SAFE_BINOPS = [ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow]
SAFE_UNARY = [ast.USub, ast.UAdd, ast.Not]
SAFE_COMPARE = [ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq]
ARITY = {"abs": 1, "exp": 1, "log": 1, "sqrt": 1, "min": 2, "max": 3, "clip": 3, "where": 3}
HOSTILE_NAMES = ("__import__", "__builtins__", "eval", "exec", "open", "os", "getattr", "q")
BAD_BINOPS = [ast.Mod, ast.FloorDiv, ast.MatMult, ast.LShift, ast.BitAnd, ast.BitOr, ast.BitXor]
BAD_COMPARE = [ast.Is, ast.IsNot, ast.In, ast.NotIn]


def _name(node_id: str) -> ast.Name:
    return ast.Name(id=node_id, ctx=ast.Load())


def _comprehension(iterable: ast.expr) -> ast.comprehension:
    return ast.comprehension(
        target=ast.Name(id="q", ctx=ast.Store()), iter=iterable, ifs=[], is_async=0
    )


safe_constants = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, 0.5, 2.0, 64.0, 1e-300]),
).map(lambda v: ast.Constant(value=abs(v)))  # unparse writes negatives as unary minus anyway
safe_leaves = st.one_of(st.sampled_from(["x", "y", "temp_c"]).map(_name), safe_constants)


def _extend_safe(children: st.SearchStrategy[ast.expr]) -> st.SearchStrategy[ast.expr]:
    return st.one_of(
        st.builds(
            lambda a, op, b: ast.BinOp(a, op(), b), children, st.sampled_from(SAFE_BINOPS), children
        ),
        st.builds(lambda op, a: ast.UnaryOp(op(), a), st.sampled_from(SAFE_UNARY), children),
        st.builds(
            lambda a, rest: ast.Compare(a, [op() for op, _ in rest], [b for _, b in rest]),
            children,
            st.lists(st.tuples(st.sampled_from(SAFE_COMPARE), children), min_size=1, max_size=2),
        ),
        st.builds(
            lambda op, vs: ast.BoolOp(op(), vs),
            st.sampled_from([ast.And, ast.Or]),
            st.lists(children, min_size=2, max_size=3),
        ),
        st.sampled_from(sorted(ARITY)).flatmap(
            lambda f: st.lists(children, min_size=ARITY[f], max_size=ARITY[f]).map(
                lambda args: ast.Call(_name(f), args, [])
            )
        ),
    )


allowed_trees = st.recursive(safe_leaves, _extend_safe, max_leaves=20)


def _hostile(inner: ast.expr) -> st.SearchStrategy[ast.expr]:
    return st.one_of(
        st.sampled_from(HOSTILE_NAMES).map(_name),
        st.sampled_from(HOSTILE_NAMES).map(lambda n: ast.Call(_name(n), [inner], [])),
        st.sampled_from(["real", "__class__", "__globals__"]).map(
            lambda a: ast.Attribute(inner, a, ast.Load())
        ),
        st.just(ast.Subscript(inner, ast.Constant(0), ast.Load())),
        st.just(
            ast.Lambda(
                ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
                inner,
            )
        ),
        st.just(ast.ListComp(inner, [_comprehension(inner)])),
        st.just(ast.GeneratorExp(inner, [_comprehension(inner)])),
        st.just(ast.SetComp(inner, [_comprehension(inner)])),
        st.just(ast.IfExp(inner, inner, inner)),
        st.just(ast.NamedExpr(ast.Name(id="q", ctx=ast.Store()), inner)),
        st.just(ast.Tuple([inner, inner], ast.Load())),
        st.just(ast.List([inner], ast.Load())),
        st.just(ast.Call(_name("max"), [ast.Starred(inner, ast.Load()), inner], [])),
        st.just(ast.Call(_name("abs"), [inner], [ast.keyword(arg="k", value=inner)])),
        st.sampled_from(BAD_BINOPS).map(lambda op: ast.BinOp(inner, op(), inner)),
        st.sampled_from(BAD_COMPARE).map(lambda op: ast.Compare(inner, [op()], [inner])),
        st.just(ast.UnaryOp(ast.Invert(), inner)),
        st.sampled_from(["s", b"b", None, True, 1j]).map(lambda v: ast.Constant(value=v)),
        st.just(ast.BinOp(inner, ast.Pow(), ast.Constant(1e9))),
    )


hostile_nodes = safe_leaves.flatmap(_hostile)


def _expression_slots(tree: ast.AST) -> list[tuple[ast.AST, str, int | None]]:
    """Every place in ``tree`` that holds an expression: (parent, field, index in list)."""
    slots: list[tuple[ast.AST, str, int | None]] = []
    for parent in ast.walk(tree):
        for field_name, value in ast.iter_fields(parent):
            if isinstance(value, ast.expr) and field_name != "func":
                slots.append((parent, field_name, None))
            elif isinstance(value, list):
                slots.extend(
                    (parent, field_name, i) for i, v in enumerate(value) if isinstance(v, ast.expr)
                )
    return slots


def _unparse(tree: ast.expr) -> str | None:
    try:
        return ast.unparse(ast.fix_missing_locations(ast.Expression(body=tree)))
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None


@FUZZ
@given(allowed_trees)
def test_fuzz_whitelisted_syntax_trees(tree: ast.expr) -> None:
    text = _unparse(tree)
    assume(text is not None)
    assert text is not None
    _assert_safe(text)


@FUZZ
@given(allowed_trees, hostile_nodes, st.integers(min_value=0))
def test_fuzz_one_hostile_node_anywhere_is_rejected(
    tree: ast.expr, hostile: ast.expr, where: int
) -> None:
    slots = _expression_slots(tree)
    if slots:
        parent, field_name, index = slots[where % len(slots)]
        if index is None:
            setattr(parent, field_name, hostile)
        else:
            getattr(parent, field_name)[index] = hostile
    else:
        tree = hostile
    text = _unparse(tree)
    assume(text is not None)
    assert text is not None
    assert _assert_safe(text) is None, f"hostile expression compiled: {text}"


def test_parsing_user_text_emits_no_warnings() -> None:
    texts = ["1and x", "x + 1if", "0x1for x", "1.e5or y", "x is 1", "x\\d", "'\\d'", "1_000_"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for text in texts:
            with pytest.raises(ValidationFailed):
                compile_(text)
    assert [str(w.message) for w in seen] == []


def test_huge_integer_literal_is_not_evaluated_in_python() -> None:
    # 9 ** 9 ** 9 in Python ints would take minutes; as float64 it overflows at once and is refused.
    detail = rejection("9 ** 9 ** 9")
    assert "constant exponent" in detail or "not finite" in detail
    assert math.isfinite(compile_("9 ** 9").constant or math.nan)
