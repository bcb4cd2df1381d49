"""Compile expression trees into Python callables over a row, with their SQL type.

A row is a dict from slot name to value; a `Scope` says which slots a query
can see and under which (source alias, column name) they are referenced.
Evaluation follows ksqlDB: NULL in, NULL out for operators; an error while
evaluating (bad cast, division by zero, failing function) makes the
expression NULL rather than stopping the query.
"""

from __future__ import annotations

import decimal
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import ast
from .functions import is_aggregate, scalar_function
from .types import BIGINT, BOOLEAN, DOUBLE, INT, STRING, TEMPORAL, KsqlError, SqlType, coerce, convert_temporal, format_temporal, java_narrow
from .types import java_wrap, parse_temporal, wider_numeric

Evaluator = Callable[[dict], Any]


@dataclass(frozen=True)
class ScopeColumn:
    source: str | None  # alias of the source it comes from (None for computed slots)
    name: str
    type: SqlType
    slot: str


@dataclass
class Scope:
    """The columns an expression may reference."""

    columns: list[ScopeColumn] = field(default_factory=list)
    # expressions already computed into a slot (GROUP BY keys, aggregate results)
    precomputed: dict[ast.Expr, tuple[str, SqlType]] = field(default_factory=dict)
    # when set, a column reference outside `precomputed` raises this message
    strict_message: Callable[[ast.Expr], str] | None = None

    def resolve(self, ref: ast.ColumnRef) -> ScopeColumn:
        matches = [c for c in self.columns if c.name == ref.name and (ref.source is None or c.source == ref.source)]
        if not matches and ref.source is None:
            # a join's prefixed name, e.g. L_A for L.A
            matches = [c for c in self.columns if c.source and f"{c.source}_{c.name}" == ref.name]
        if not matches:
            known_sources = {c.source for c in self.columns if c.source}
            if ref.source is not None and ref.source not in known_sources:
                raise KsqlError(f"Source '{ref.source}' is not part of the query (sources: {', '.join(sorted(known_sources))}).")
            raise KsqlError(f"Column '{ref.sql()}' cannot be resolved.")
        if len(matches) > 1:
            sources = sorted(c.source or "" for c in matches)
            raise KsqlError(f"Column '{ref.name}' is ambiguous. Could be any of: {', '.join(f'{s}.{ref.name}' for s in sources)}")
        return matches[0]


@dataclass(frozen=True)
class Compiled:
    fn: Evaluator
    type: SqlType | None
    # the row slot the expression reads, when it is nothing but a column (or precomputed) reference:
    # evaluators then read the slots directly instead of calling `fn`
    slot: str | None = None


def evaluate_safely(fn: Evaluator, row: dict):
    try:
        return fn(row)
    except (ArithmeticError, ValueError, TypeError, KeyError, IndexError, AttributeError, decimal.InvalidOperation):
        return None


def tuple_evaluator(compiled: list[Compiled]) -> Callable[[dict], tuple]:
    """Evaluate several expressions into a tuple; one that fails is NULL, the others keep their value."""
    if not compiled:  # e.g. the key of a stream without key columns
        return _no_values
    fns = [c.fn for c in compiled]

    def evaluate_one_by_one(row):
        return tuple([evaluate_safely(fn, row) for fn in fns])

    slots = [c.slot for c in compiled]
    if slots and None not in slots:
        # only column references (the common case): one C-level itemgetter call per row;
        # a missing slot raises KeyError and the one-by-one path makes it NULL, as `fn` would
        getter = operator.itemgetter(*slots)
        single = len(slots) == 1

        def read_slots(row):
            try:
                return (getter(row),) if single else getter(row)
            except KeyError:
                return evaluate_one_by_one(row)

        return read_slots

    def evaluate(row):
        try:
            return tuple([fn(row) for fn in fns])
        except Exception:  # rare: redo one by one so only the failing expressions become NULL
            return evaluate_one_by_one(row)

    return evaluate


def _no_values(_row) -> tuple:
    return ()


def dict_evaluator(names: list[str], compiled: list[Compiled]) -> Callable[[dict], dict]:
    """Evaluate named expressions into a dict (a row's value columns), failures as NULL."""
    pairs = [(name, c.fn) for name, c in zip(names, compiled)]

    def evaluate_one_by_one(row):
        return {name: evaluate_safely(fn, row) for name, fn in pairs}

    slots = [c.slot for c in compiled]
    if slots and None not in slots:
        # only column references: the values are read from their slots (a loop of stores is
        # twice as fast as dict(zip(...)) for a few columns); a missing slot is NULL, as `fn` makes it
        renames = list(zip(names, slots))

        def read_slots(row):
            value = {}
            try:
                for name, slot in renames:
                    value[name] = row[slot]
            except KeyError:
                return evaluate_one_by_one(row)
            return value

        return read_slots

    def evaluate(row):
        try:
            return {name: fn(row) for name, fn in pairs}
        except Exception:
            return evaluate_one_by_one(row)

    return evaluate


def compile_expr(expr: ast.Expr, scope: Scope) -> Compiled:
    """Compile `expr` against `scope`; raise KsqlError for unknown columns or functions."""
    if expr in scope.precomputed:
        slot, slot_type = scope.precomputed[expr]
        return Compiled(lambda row, s=slot: row[s], slot_type, slot)
    if isinstance(expr, ast.Literal):
        value = expr.value
        if expr.type is not None and expr.type.base == "DECIMAL":
            value = decimal.Decimal(str(value))
        return Compiled(lambda row, v=value: v, expr.type)
    if isinstance(expr, ast.ColumnRef):
        if scope.strict_message is not None and expr.name not in ("WINDOWSTART", "WINDOWEND"):
            raise KsqlError(scope.strict_message(expr))
        column = scope.resolve(expr)
        return Compiled(lambda row, s=column.slot: row.get(s), column.type, column.slot)
    if isinstance(expr, ast.FunctionCall):
        return _compile_call(expr, scope)
    if isinstance(expr, ast.StructConstructor):
        parts = [(name, compile_expr(e, scope)) for name, e in expr.fields]
        struct_type = SqlType("STRUCT", fields=tuple((n, c.type or STRING) for n, c in parts))
        return Compiled(lambda row: {n: c.fn(row) for n, c in parts}, struct_type)
    if isinstance(expr, ast.ArrayConstructor):
        items = [compile_expr(e, scope) for e in expr.items]
        item_type = next((i.type for i in items if i.type is not None), STRING)
        return Compiled(lambda row: [i.fn(row) for i in items], SqlType("ARRAY", item=item_type))
    if isinstance(expr, ast.BinaryOp):
        return _compile_binary(expr, scope)
    if isinstance(expr, ast.Not):
        inner = compile_expr(expr.operand, scope).fn

        def not_(row):
            value = inner(row)
            return None if value is None else not value

        return Compiled(not_, BOOLEAN)
    if isinstance(expr, ast.Negate):
        inner = compile_expr(expr.operand, scope)
        return Compiled(lambda row: None if (v := inner.fn(row)) is None else -v, inner.type)
    if isinstance(expr, ast.IsNull):
        inner = compile_expr(expr.operand, scope).fn
        if expr.negated:
            return Compiled(lambda row: inner(row) is not None, BOOLEAN)
        return Compiled(lambda row: inner(row) is None, BOOLEAN)
    if isinstance(expr, ast.Between):
        operand = compile_expr(expr.operand, scope)
        value = operand.fn
        low, high = (_compared_with(operand, compile_expr(e, scope), expr.sql()) for e in (expr.low, expr.high))

        def between(row):
            v, lo, hi = value(row), low(row), high(row)
            if v is None or lo is None or hi is None:
                return None
            return (lo <= v <= hi) != expr.negated

        return Compiled(between, BOOLEAN)
    if isinstance(expr, ast.InList):
        operand = compile_expr(expr.operand, scope)
        value = operand.fn
        items = [_compared_with(operand, compile_expr(e, scope), expr.sql()) for e in expr.items]

        def in_list(row):
            v = value(row)
            if v is None:
                return None
            return any(v == item(row) for item in items) != expr.negated

        return Compiled(in_list, BOOLEAN)
    if isinstance(expr, ast.Like):
        value = compile_expr(expr.operand, scope).fn
        pattern = compile_expr(expr.pattern, scope).fn

        def like(row):
            v, p = value(row), pattern(row)
            if v is None or p is None:
                return None
            regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in p)
            return (re.fullmatch(regex, v, re.DOTALL) is not None) != expr.negated

        return Compiled(like, BOOLEAN)
    if isinstance(expr, ast.Case):
        whens = [(compile_expr(c, scope).fn, compile_expr(r, scope)) for c, r in expr.whens]
        default = compile_expr(expr.default, scope) if expr.default is not None else None
        result_type = next((r.type for _, r in whens if r.type is not None), default.type if default else None)

        def case(row):
            for condition, result in whens:
                if condition(row):
                    return result.fn(row)
            return default.fn(row) if default else None

        return Compiled(case, result_type)
    if isinstance(expr, ast.Cast):
        inner = compile_expr(expr.operand, scope)
        return Compiled(_caster(inner.fn, inner.type, expr.type), expr.type)
    if isinstance(expr, ast.Subscript):
        base = compile_expr(expr.base, scope)
        index = compile_expr(expr.index, scope).fn
        if base.type is None or base.type.base not in ("MAP", "ARRAY"):
            raise KsqlError(f"Subscript expression {expr.sql()} needs an ARRAY or MAP, got {base.type}.")

        def subscript(row):
            container, i = base.fn(row), index(row)
            if container is None or i is None:
                return None
            if isinstance(container, dict):
                return container.get(i)
            position = i - 1 if i > 0 else len(container) + i
            return container[position] if 0 <= position < len(container) else None

        return Compiled(subscript, base.type.item)
    if isinstance(expr, ast.Dereference):
        base = compile_expr(expr.base, scope)
        if base.type is None or base.type.base != "STRUCT":
            raise KsqlError(f"Expected STRUCT type for {expr.base.sql()}, got {base.type}.")
        field_type = base.type.field_type(expr.field)
        if field_type is None:
            raise KsqlError(f"Could not find field '{expr.field}' in '{expr.base.sql()}'.")
        name = next(n for n, _ in base.type.fields if n.upper() == expr.field.upper())
        return Compiled(lambda row: None if (v := base.fn(row)) is None else v.get(name), field_type)
    raise KsqlError(f"Unsupported expression: {expr.sql()}")


def _compile_call(expr: ast.FunctionCall, scope: Scope) -> Compiled:
    if is_aggregate(expr.name):
        raise KsqlError(f"Aggregate function {expr.name} is not allowed here: {expr.sql()}")
    function = scalar_function(expr.name, len(expr.args))
    args = [compile_expr(a, scope) for a in expr.args]
    function.check_arguments([a.type for a in args])
    fns = [a.fn for a in args]
    result_type = function.returns([a.type for a in args])
    call = function.fn() if function.per_call_site else function.fn

    def invoke(row):
        return call(*(f(row) for f in fns))

    return Compiled(invoke, result_type)


_ARITHMETIC = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}


def _java_div(a, b):
    if isinstance(a, int) and isinstance(b, int):
        quotient = abs(a) // abs(b)
        return quotient if (a >= 0) == (b >= 0) else -quotient
    return a / b


def _java_mod(a, b):
    if isinstance(a, int) and isinstance(b, int):
        remainder = abs(a) % abs(b)
        return remainder if a >= 0 else -remainder
    return decimal.Decimal(a) % decimal.Decimal(b) if isinstance(a, decimal.Decimal) else float(a) % float(b)


_COMPARE = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _compile_binary(expr: ast.BinaryOp, scope: Scope) -> Compiled:
    left = compile_expr(expr.left, scope)
    right = compile_expr(expr.right, scope)
    lf, rf = left.fn, right.fn
    op = expr.op
    if op == "AND":

        def and_(row):
            a = lf(row)
            if a is False:
                return False
            b = rf(row)
            if b is False:
                return False
            return None if a is None or b is None else True

        return Compiled(and_, BOOLEAN)
    if op == "OR":

        def or_(row):
            a = lf(row)
            if a is True:
                return True
            b = rf(row)
            if b is True:
                return True
            return None if a is None or b is None else False

        return Compiled(or_, BOOLEAN)
    if op in _COMPARE:
        compare = _COMPARE[op]
        if right.type is not None and right.type.base in TEMPORAL:
            lf = _compared_with(right, left, expr.sql())  # '2026-12-07T10:00:00' < ts
        else:
            rf = _compared_with(left, right, expr.sql())

        def comparison(row):
            a, b = lf(row), rf(row)
            if a is None or b is None:
                return None
            return compare(a, b)

        return Compiled(comparison, BOOLEAN)
    if op == "||" or (op == "+" and STRING in (left.type, right.type)):
        return Compiled(lambda row: None if (a := lf(row)) is None or (b := rf(row)) is None else str(a) + str(b), STRING)
    for side in (left, right):
        if side.type is not None and not side.type.is_numeric:
            raise KsqlError(f"Error processing expression: {expr.sql()}. Unsupported arithmetic types. {left.type} {right.type}")
    result_type = wider_numeric(left.type or INT, right.type or INT)
    compute = {"/": _java_div, "%": _java_mod}.get(op) or _ARITHMETIC[op]
    integer = result_type.base if result_type.base in ("INT", "BIGINT") else None

    def arithmetic(row):
        a, b = lf(row), rf(row)
        if a is None or b is None:
            return None
        if isinstance(a, decimal.Decimal) or isinstance(b, decimal.Decimal):
            if result_type.base == "DOUBLE":
                a, b = float(a), float(b)
            else:
                a, b = decimal.Decimal(a), decimal.Decimal(b)
        result = compute(a, b)
        return java_wrap(int(result), integer) if integer else result  # overflows as Java's int and long do

    return Compiled(arithmetic, result_type)


def _compared_with(operand: Compiled, other: Compiled, where: str) -> Evaluator:
    """`other` as a value comparable with `operand` (text read as a TIMESTAMP, DATE or TIME when `operand` is
    one); raises KsqlError for types that do not compare."""
    a, b = operand.type, other.type
    if a is None or b is None or (a.is_numeric and b.is_numeric) or a.base == b.base:
        return other.fn
    if a.base in TEMPORAL and b.base == "STRING":
        return _caster(other.fn, b, a)
    raise KsqlError(f"Cannot compare {a} to {b} in {where}.")


def _caster(fn: Evaluator, source: SqlType | None, target: SqlType) -> Evaluator:
    source_base = source.base if source is not None else None

    def cast(row):
        value = fn(row)
        if value is None:
            return None
        if source_base in TEMPORAL:
            if target.base == "STRING":
                return format_temporal(value, source_base)
            if target.base in TEMPORAL:
                return convert_temporal(value, source_base, target.base)
        elif target.base in TEMPORAL and isinstance(value, str):
            return parse_temporal(value, target.base)  # text that is not one: an error, NULL
        if target.base == "STRING":
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
        if target.base in ("INT", "BIGINT"):
            if isinstance(value, str):  # Integer.parseInt: a number out of range is an error (NULL)
                return coerce(int(value.strip()), target, "CAST")
            if isinstance(value, (float, decimal.Decimal)):
                return java_narrow(value, target.base)
            if isinstance(value, int) and not isinstance(value, bool):
                return java_wrap(value, target.base)  # BIGINT to INT keeps the low 32 bits, as Java's (int)
        return coerce(value, target, "CAST")

    return cast


def contains_aggregate(expr: ast.Expr) -> bool:
    return any(isinstance(e, ast.FunctionCall) and is_aggregate(e.name) for e in ast.walk(expr))


def default_column_name(expr: ast.Expr) -> str | None:
    """The name ksqlDB gives an unaliased select expression, or None for KSQL_COL_n."""
    if isinstance(expr, ast.ColumnRef):
        return expr.name
    if isinstance(expr, ast.Dereference):
        return expr.field
    return None


__all__ = [
    "Compiled",
    "Scope",
    "ScopeColumn",
    "compile_expr",
    "contains_aggregate",
    "default_column_name",
    "evaluate_safely",
    "BIGINT",
    "DOUBLE",
]
