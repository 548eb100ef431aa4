"""Process-model expressions, compiled safely to numpy operations.

An output such as ``0.92 - 0.004*abs(temp_c - 62) - 0.00002*(rf_w - 1500)**2`` is parsed with
:func:`ast.parse` (which only builds a syntax tree: no bytecode, nothing run), checked against a
whitelist, and turned into a tree of closures that call numpy ufuncs on whole sample arrays.
User text never reaches ``eval`` or ``exec``, nor ``compile`` beyond that syntax-tree-only parse.
Constant sub-expressions are folded with numpy float64 arithmetic, never Python ints, so
``9 ** 9 ** 9`` overflows at once instead of computing a number with 370 million digits.

What is allowed:

* numbers (int or float literals), the names of declared inputs;
* ``+ - * / **``, unary ``-``/``+``, comparisons ``< <= > >= == !=`` (also chained), ``and``,
  ``or``, ``not``;
* calls of ``abs(x)``, ``min(a, b, ...)``, ``max(a, b, ...)``, ``exp(x)``, ``log(x)``,
  ``sqrt(x)``, ``clip(x, low, high)``, ``where(condition, a, b)``.

Everything else — attribute access, subscripts, lambdas, comprehensions, strings, keyword
arguments, other names — is rejected with a :class:`~opstwin.kit.errors.ValidationFailed`
whose field error points at the output (``/model/outputs/z``) and names the column.

Comparisons and boolean operators yield 1.0/0.0, so every value is a float64 array or a float
and arithmetic on conditions (``(x > 3) * 2``) behaves as a modeller expects. Evaluation runs under
``np.errstate(all="ignore")``: a division by zero gives ±inf/nan, which the engine reports as an
error on the output rather than as a statistic.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.simulation.distributions import FloatArray

MAX_EXPRESSION_CHARS = 1_000
"""Longest expression text; a process model KPI that needs more belongs in several outputs."""

MAX_NODES = 300
"""Most syntax-tree nodes per expression (bounds compile time and per-sample work)."""

MAX_DEPTH = 32
"""Deepest syntax-tree nesting; also keeps every recursive walk far from Python's stack limit."""

MAX_CONSTANT_EXPONENT = 64.0
"""Largest |k| in ``x ** k`` for a constant k. Process models use squares, cubes and roots; a
constant beyond this overflows float64 for any base above ~65000 and is far more likely an attack
or a typo than physics."""

_SNIPPET_CHARS = 40

_NUMBER_INTO_NAME = re.compile(
    r"(?<![A-Za-z0-9_.])"
    r"(?>(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?)"
    r"[A-Za-z_]\w*"
)
"""A decimal literal running straight into letters (``1and``, ``2if``, ``0x1f``, ``1j``); the
atomic group stops the number from giving back its exponent (``1e5`` is one literal)."""

Value = FloatArray | float
"""An intermediate result: a sample array, or a float that numpy broadcasts."""
Env = Mapping[str, FloatArray]


@dataclass(frozen=True, slots=True)
class _Node:
    """A compiled sub-expression; ``constant`` is set when it was folded at compile time."""

    run: Callable[[Env], Value]
    constant: float | None = None


def _as_float(value: Any) -> Value:
    """Booleans from comparisons become 1.0/0.0."""
    if isinstance(value, np.ndarray):
        return value.astype(np.float64, copy=False)
    return float(value)


_BINARY: dict[type[ast.operator], tuple[str, Callable[[Value, Value], Value]]] = {
    ast.Add: ("+", np.add),
    ast.Sub: ("-", np.subtract),
    ast.Mult: ("*", np.multiply),
    ast.Div: ("/", np.true_divide),
    ast.Pow: ("**", np.power),
}

_COMPARE: dict[type[ast.cmpop], Callable[[Value, Value], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


def _reduce(op: Callable[[Value, Value], Value]) -> Callable[..., Value]:
    def apply(*args: Value) -> Value:
        return functools.reduce(op, args)

    return apply


def _where(condition: Value, if_true: Value, if_false: Value) -> Value:
    return np.where(np.not_equal(condition, 0.0), if_true, if_false)


@dataclass(frozen=True, slots=True)
class _Function:
    run: Callable[..., Value]
    min_args: int
    max_args: int | None

    def arity(self) -> str:
        if self.max_args is None:
            return f"at least {self.min_args} arguments"
        return f"{self.min_args} argument{'s' if self.min_args != 1 else ''}"


FUNCTIONS: dict[str, _Function] = {
    "abs": _Function(np.abs, 1, 1),
    "min": _Function(_reduce(np.minimum), 2, None),
    "max": _Function(_reduce(np.maximum), 2, None),
    "exp": _Function(np.exp, 1, 1),
    "log": _Function(np.log, 1, 1),
    "sqrt": _Function(np.sqrt, 1, 1),
    "clip": _Function(np.clip, 3, 3),
    "where": _Function(_where, 3, 3),
}
"""The whitelist of callable names. ``log`` is the natural logarithm."""

_FORBIDDEN_NAMES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.IfExp: "conditional expressions (use where(condition, a, b))",
    ast.NamedExpr: "assignment expressions",
    ast.Starred: "starred arguments",
    ast.JoinedStr: "strings",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """A checked expression, ready to evaluate over sample arrays."""

    source: str
    inputs_used: frozenset[str]
    node_count: int
    _root: _Node

    @property
    def constant(self) -> float | None:
        """The value when the expression does not depend on any input."""
        return self._root.constant

    def evaluate(self, env: Env, n: int) -> FloatArray:
        """The expression over ``n`` samples; ``env`` maps each input name to an array of ``n``.

        Never raises for numeric reasons: invalid operations produce nan/inf, which callers check.
        """
        with np.errstate(all="ignore"):
            value = self._root.run(env)
        if isinstance(value, np.ndarray) and value.shape == (n,):
            return value.astype(np.float64, copy=False)
        return np.full(n, float(np.asarray(value)), dtype=np.float64)


def compile_expression(source: object, inputs: Collection[str], pointer: str) -> CompiledExpression:
    """Check ``source`` against the whitelist and compile it; ``pointer`` locates it in errors."""
    if not isinstance(source, str):
        raise _failure(pointer, "an output must be an expression string")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise _failure(
            pointer,
            f"expression is {len(source)} characters; the limit is {MAX_EXPRESSION_CHARS}",
        )
    for column, char in enumerate(source):
        if char in "'\"\\":
            raise _failure(pointer, f"column {column + 1}: strings and escapes are not allowed")
        if not (char.isascii() and (char.isprintable() or char in "\t\n\r")):
            raise _failure(
                pointer,
                f"column {column + 1}: character {char!r} is not allowed (ASCII text only)",
            )
    glued = _NUMBER_INTO_NAME.search(source)
    if glued is not None:
        # `1if`, `1and`, `0x1f`: Python warns (3.11: DeprecationWarning, 3.12+: SyntaxWarning)
        # while parsing these; refusing them first keeps user text from emitting warnings.
        raise _failure(
            pointer,
            f"column {glued.start() + 1}: a number must be decimal and not run into a name "
            f"(`{glued.group()}`)",
        )
    # Newlines become spaces so that one column counts characters through the whole text.
    flat = source.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    if not flat.strip():
        raise _failure(pointer, "expression is empty")
    # ast.parse rejects leading indentation; columns in messages count from the original text.
    offset = len(flat) - len(flat.lstrip())
    try:
        tree = ast.parse(flat.strip(), mode="eval")
    except SyntaxError as exc:
        where = f"column {exc.offset + offset}: " if exc.offset else ""
        raise _failure(pointer, f"{where}syntax error: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        # The parser's own limits (nesting, recursion) surface as these, never as success.
        raise _failure(pointer, f"expression cannot be parsed ({type(exc).__name__})") from None
    count, depth = _measure(tree)
    if count > MAX_NODES:
        raise _failure(pointer, f"expression has {count} syntax nodes; the limit is {MAX_NODES}")
    if depth > MAX_DEPTH:
        raise _failure(pointer, f"expression nests {depth} levels deep; the limit is {MAX_DEPTH}")
    compiler = _Compiler(flat, offset, frozenset(inputs), pointer)
    root = compiler.node(tree.body)
    return CompiledExpression(
        source=source,
        inputs_used=frozenset(compiler.used),
        node_count=count,
        _root=root,
    )


def _measure(tree: ast.AST) -> tuple[int, int]:
    """Node count and depth, iteratively (a deep tree must not blow the stack here)."""
    count, deepest = 0, 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        deepest = max(deepest, depth)
        if count > MAX_NODES or deepest > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return count, deepest


def _failure(pointer: str, detail: str) -> ValidationFailed:
    return ValidationFailed(
        "invalid process-model expression", errors=[FieldError(pointer=pointer, detail=detail)]
    )


class _Compiler:
    """Walks a checked tree and builds closures; every rejection names the column."""

    def __init__(self, text: str, offset: int, inputs: frozenset[str], pointer: str) -> None:
        self.text = text
        self.offset = offset
        self.inputs = inputs
        self.pointer = pointer
        self.used: set[str] = set()

    def reject(self, node: ast.AST, what: str) -> ValidationFailed:
        col = getattr(node, "col_offset", None)
        end = getattr(node, "end_col_offset", None)
        if col is None:
            return _failure(self.pointer, what)
        start = col + self.offset
        stop = end + self.offset if end is not None else start + 1
        snippet = self.text[start:stop]
        if len(snippet) > _SNIPPET_CHARS:
            snippet = snippet[: _SNIPPET_CHARS - 1] + "…"
        return _failure(self.pointer, f"column {start + 1}: {what} (`{snippet}`)")

    def node(self, node: ast.expr) -> _Node:
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            return self.binary(node)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.BoolOp):
            return self.boolean(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        for kind, label in _FORBIDDEN_NAMES.items():
            if isinstance(node, kind):
                raise self.reject(node, f"{label} are not allowed")
        raise self.reject(node, f"{type(node).__name__} is not allowed")

    def constant(self, node: ast.Constant) -> _Node:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.reject(
                node, f"only numbers are allowed as literals, not {type(value).__name__}"
            )
        try:
            number = float(value)
        except OverflowError:
            raise self.reject(node, "number is too large") from None
        if not math.isfinite(number):
            raise self.reject(node, "number is too large")
        return _Node(lambda env: number, number)

    def name(self, node: ast.Name) -> _Node:
        if node.id in self.inputs:
            self.used.add(node.id)
            key = node.id
            return _Node(lambda env: env[key])
        if node.id in FUNCTIONS:
            raise self.reject(node, f"function {node.id!r} must be called")
        raise self.reject(
            node, f"unknown name {node.id!r}; declared inputs are {sorted(self.inputs)}"
        )

    def fold(self, node: ast.expr, run: Callable[[Env], Value], parts: list[_Node]) -> _Node:
        """Evaluate now when every part is constant; a non-finite constant is an error."""
        if any(p.constant is None for p in parts):
            return _Node(run)
        with np.errstate(all="ignore"):
            value = float(np.asarray(run({})))
        if not math.isfinite(value):
            raise self.reject(node, "constant sub-expression is not finite")
        return _Node(lambda env: value, value)

    def binary(self, node: ast.BinOp) -> _Node:
        entry = _BINARY.get(type(node.op))
        if entry is None:
            raise self.reject(node, f"operator {type(node.op).__name__} is not allowed")
        symbol, op = entry
        left, right = self.node(node.left), self.node(node.right)
        exponent = right.constant if symbol == "**" else None
        if exponent is not None and abs(exponent) > MAX_CONSTANT_EXPONENT:
            raise self.reject(
                node.right,
                f"constant exponent {exponent:g} exceeds ±{MAX_CONSTANT_EXPONENT:g}",
            )
        lrun, rrun = left.run, right.run
        return self.fold(node, lambda env: op(lrun(env), rrun(env)), [left, right])

    def unary(self, node: ast.UnaryOp) -> _Node:
        operand = self.node(node.operand)
        orun = operand.run
        run: Callable[[Env], Value]
        if isinstance(node.op, ast.USub):
            run = lambda env: np.negative(orun(env))  # noqa: E731
        elif isinstance(node.op, ast.UAdd):
            run = orun
        elif isinstance(node.op, ast.Not):
            run = lambda env: _as_float(np.equal(orun(env), 0.0))  # noqa: E731
        else:
            raise self.reject(node, f"operator {type(node.op).__name__} is not allowed")
        return self.fold(node, run, [operand])

    def compare(self, node: ast.Compare) -> _Node:
        parts = [self.node(node.left)] + [self.node(c) for c in node.comparators]
        ops: list[Callable[[Value, Value], Any]] = []
        for op in node.ops:
            fn = _COMPARE.get(type(op))
            if fn is None:
                raise self.reject(node, f"comparison {type(op).__name__} is not allowed")
            ops.append(fn)
        runs = [p.run for p in parts]

        def run(env: Env) -> Value:
            values = [r(env) for r in runs]
            result = ops[0](values[0], values[1])
            for i in range(1, len(ops)):
                result = np.logical_and(result, ops[i](values[i], values[i + 1]))
            return _as_float(result)

        return self.fold(node, run, parts)

    def boolean(self, node: ast.BoolOp) -> _Node:
        parts = [self.node(v) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        runs = [p.run for p in parts]

        def run(env: Env) -> Value:
            result: Any = np.not_equal(runs[0](env), 0.0)
            for r in runs[1:]:
                result = combine(result, np.not_equal(r(env), 0.0))
            return _as_float(result)

        return self.fold(node, run, parts)

    def call(self, node: ast.Call) -> _Node:
        if not isinstance(node.func, ast.Name):
            raise self.reject(node.func, "only the whitelisted functions may be called")
        function = FUNCTIONS.get(node.func.id)
        if function is None:
            raise self.reject(
                node.func,
                f"function {node.func.id!r} is not allowed; allowed are {sorted(FUNCTIONS)}",
            )
        if node.keywords:
            raise self.reject(node, "keyword arguments are not allowed")
        args = [self.node(a) for a in node.args]
        n = len(args)
        if n < function.min_args or (function.max_args is not None and n > function.max_args):
            raise self.reject(node, f"{node.func.id}() takes {function.arity()}, got {n}")
        runs = [a.run for a in args]
        fn = function.run
        return self.fold(node, lambda env: fn(*(r(env) for r in runs)), args)
