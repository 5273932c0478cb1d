"""The conditions of pipeline steps: a small, safe expression language, never ``eval``.

``evaluate.metrics.accuracy >= params.min_accuracy and not params.dry``: parsed with :mod:`ast`
and walked by hand. Allowed: literals (numbers, strings, booleans, None, tuples/lists of them),
names and attribute chains rooted at a known namespace (``params`` or a step's name), a constant
subscript (``evaluate.metrics["f1-score"]``), comparisons, ``and``/``or``/``not``, and ``+ - * /
// %`` on numbers. No calls, no powers, no comprehensions, no dunders: nothing can run code or
allocate without bound.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_LENGTH = 2000
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


class ExprError(Exception):
    """A condition that cannot be parsed (at load) or evaluated (at run time)."""


@dataclass(frozen=True)
class Parsed:
    text: str
    tree: ast.Expression
    refs: tuple[tuple[str, ...], ...]  # every name chain read, e.g. ("evaluate", "metrics", "x")


def parse(text: str) -> Parsed:
    """Parse and check ``text``; ``ExprError`` names what is not allowed."""
    if len(text) > MAX_LENGTH:
        raise ExprError(f"longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"not a valid expression: {e.msg}") from None
    refs: list[tuple[str, ...]] = []
    _check(tree.body, refs)
    return Parsed(text, tree, tuple(refs))


def _check(node: ast.AST, refs: list[tuple[str, ...]]) -> None:
    if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
        refs.append(chain(node))
        return
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float, str, bool, type(None))):
            raise ExprError(f"literal {node.value!r} is not allowed")
        return
    if isinstance(node, (ast.Tuple, ast.List)):
        children: list[ast.AST] = list(node.elts)
    elif isinstance(node, ast.BoolOp) and isinstance(node.op, (ast.And, ast.Or)):
        children = list(node.values)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
        children = [node.operand]
    elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        children = [node.left, node.right]
    elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        children = [node.left, *node.comparators]
    else:
        what = type(node).__name__ if not isinstance(node, ast.Call) else "a function call"
        raise ExprError(
            f"{what} is not allowed (only comparisons, and/or/not, arithmetic, "
            "params.NAME and STEP.metrics.NAME / STEP.outputs.NAME)"
        )
    for child in children:
        _check(child, refs)


def chain(node: ast.AST) -> tuple[str, ...]:
    """``a.b["c"]`` → ("a", "b", "c"); anything else in the chain is refused."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            key = node.slice
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                raise ExprError("a subscript must be a string, e.g. evaluate.metrics['f1']")
            parts.append(key.value)
            node = node.value
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            break
        else:
            raise ExprError(f"{type(node).__name__} cannot start a name")
    if any(p.startswith("__") for p in parts):
        raise ExprError("names starting with __ are not allowed")
    return tuple(reversed(parts))


Lookup = Callable[[tuple[str, ...]], Any]


def evaluate(parsed: Parsed, lookup: Lookup) -> Any:
    """The value of ``parsed``; ``lookup(chain)`` gives each name's value (it raises ExprError
    naming what is missing)."""
    return _eval(parsed.tree.body, lookup)


def _eval(node: ast.AST, lookup: Lookup) -> Any:
    if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
        return lookup(chain(node))
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_eval(e, lookup) for e in node.elts)
    if isinstance(node, ast.BoolOp):
        result: Any = None
        for value in node.values:
            result = _eval(value, lookup)
            if isinstance(node.op, ast.And) != bool(result):
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, lookup)
        if isinstance(node.op, ast.Not):
            return not operand
        _number(operand, "a sign")
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, lookup), _eval(node.right, lookup)
        _number(left, "arithmetic")
        _number(right, "arithmetic")
        try:
            return _ARITH[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ExprError("division by zero") from None
    assert isinstance(node, ast.Compare)  # parse() allowed nothing else
    left = _eval(node.left, lookup)
    for op, comparator in zip(node.ops, node.comparators, strict=True):
        right = _eval(comparator, lookup)
        try:
            if not _COMPARE[type(op)](left, right):
                return False
        except TypeError:
            raise ExprError(f"cannot compare {left!r} with {right!r}") from None
        left = right
    return True


def _number(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExprError(f"{what} needs numbers, got {value!r}")


def lookup_in(namespaces: Mapping[str, Any]) -> Lookup:
    """A lookup over nested mappings: ``("evaluate", "metrics", "accuracy")``."""

    def lookup(parts: tuple[str, ...]) -> Any:
        node: Any = namespaces
        for depth, part in enumerate(parts):
            if not isinstance(node, Mapping) or part not in node:
                known = sorted(node) if isinstance(node, Mapping) else []
                where = ".".join(parts[: depth + 1])
                also = f" (it has: {', '.join(map(str, known))})" if known else " (it has none)"
                raise ExprError(f"{where} does not exist{also}")
            node = node[part]
        return node

    return lookup
