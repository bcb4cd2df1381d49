"""The scalar functions (UDFs) and aggregate functions (UDAFs) the engine knows.

Scalar functions take already-evaluated arguments; like ksqlDB, most return
NULL when an argument is NULL. Aggregates keep a plain, JSON-friendly state so
the runtime can write it to a changelog: `init()`, `add(state, value)` or
`add_all(state, values)` (one value after the other, in one call: an
aggregation adds a batch's values of a key at once), `undo(state, value)` (only
for those usable on tables), `result(state)`.

`add`, `add_all` and `undo` may change a mutable state (HISTOGRAM's dict) in
place and return it: the caller owns the state it passes. A state that others
may hold (the store, the record cache, the changelog) is first copied with
`copy(state)`; the operators do so once per key per batch of records, not once
per record.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from typing import Any, Callable

from .types import BIGINT, BOOLEAN, DOUBLE, INT, STRING, KsqlError, SqlType, java_wrap

HISTOGRAM_LIMIT = 1000


# ---------------------------------------------------------------- scalar


def _mask(value, *replacements):
    """MASK(str[, upper, lower, digit, other]): replace each character by its class mark.

    A replacement given as NULL keeps that class of characters unchanged.
    """
    if value is None:
        return None
    marks = list(replacements) + ["X", "x", "n", "-"][len(replacements) :]

    def mark(c: str) -> str:
        index = 0 if c.isupper() else 1 if c.islower() else 2 if c.isdigit() else 3
        return c if marks[index] is None else marks[index]

    return "".join(mark(c) for c in value)


def _substring(value, start, length=None):
    if value is None or start is None:
        return None
    # ksqlDB positions are 1-based; 0 behaves like 1, negative counts from the end
    if start > 0:
        begin = start - 1
    elif start == 0:
        begin = 0
    else:
        begin = max(len(value) + start, 0)
    if length is None:
        return value[begin:]
    if length < 0:
        return ""
    return value[begin : begin + length]


def _initcap(value):
    if value is None:
        return None
    return " ".join(word[:1].upper() + word[1:].lower() for word in value.split(" "))


def _concat(*args):
    return "".join(a for a in args if a is not None)


def _concat_ws(sep, *args):
    if sep is None:
        return None
    return sep.join(a for a in args if a is not None)


def _null_safe(fn: Callable) -> Callable:
    def call(*args):
        if any(a is None for a in args):
            return None
        return fn(*args)

    return call


def _ifnull(value, default):
    return default if value is None else value


def _coalesce(*args):
    return next((a for a in args if a is not None), None)


class _BadUdf:
    """ksqlDB's test-only BAD_UDF: an INT argument makes it throw; a STRING one
    makes it return NULL on every other call. Each call site keeps its own count."""

    def __init__(self):
        self.calls = 0

    def __call__(self, value):
        if value is None:
            return None
        if isinstance(value, int):
            raise ValueError("BAD_UDF fails on purpose")
        self.calls += 1
        return None if self.calls % 2 == 1 else value


@dataclass(frozen=True)
class ScalarFunction:
    name: str
    fn: Callable[..., Any]
    returns: Callable[[list[SqlType]], SqlType]
    min_args: int
    max_args: int | None
    # the type each argument must have: a base type, NUMERIC or ANY; the last one also for further arguments
    params: tuple[str, ...] = ("ANY",)
    per_call_site: bool = False  # fn is a factory: each compiled call gets its own instance

    def check_arguments(self, types: list[SqlType | None]) -> None:
        """Reject arguments of types the function does not take (a NULL literal fits any), as ksqlDB rejects
        the statement when it finds no variant of the function for them."""
        for position, sql_type in enumerate(types):
            wanted = self._param(position)
            if sql_type is None or wanted in ("ANY", sql_type.base) or (wanted == "NUMERIC" and sql_type.is_numeric):
                continue
            given = ", ".join("NULL" if t is None else str(t) for t in types)
            raise KsqlError(f"Function '{self.name}' does not accept parameters ({given}): it takes {self.signature()}. "
                            f"Convert argument {position + 1} first, e.g. with CAST(... AS {'DOUBLE' if wanted == 'NUMERIC' else wanted}).")

    def signature(self) -> str:
        """How the function is called, e.g. `SUBSTRING(STRING, INT[, INT])` or `CONCAT(STRING, ...)`."""
        required = ", ".join(self._param(i) for i in range(self.min_args))
        if self.max_args is None:
            return f"{self.name}({required}, ...)"
        optional = ", ".join(self._param(i) for i in range(self.min_args, self.max_args))
        return f"{self.name}({required}{f'[, {optional}]' if optional else ''})"

    def _param(self, position: int) -> str:
        return self.params[min(position, len(self.params) - 1)]


def _same_as_first(types: list[SqlType]) -> SqlType:
    return types[0] if types and types[0] is not None else STRING


def _fixed(t: SqlType) -> Callable[[list[SqlType]], SqlType]:
    return lambda _types: t


SCALAR_FUNCTIONS: dict[str, ScalarFunction] = {
    f.name: f
    for f in [
        ScalarFunction("UCASE", _null_safe(str.upper), _fixed(STRING), 1, 1, ("STRING",)),
        ScalarFunction("UPPER", _null_safe(str.upper), _fixed(STRING), 1, 1, ("STRING",)),
        ScalarFunction("LCASE", _null_safe(str.lower), _fixed(STRING), 1, 1, ("STRING",)),
        ScalarFunction("LOWER", _null_safe(str.lower), _fixed(STRING), 1, 1, ("STRING",)),
        ScalarFunction("TRIM", _null_safe(str.strip), _fixed(STRING), 1, 1, ("STRING",)),
        ScalarFunction("LTRIM", _null_safe(str.lstrip), _fixed(STRING), 1, 1, ("STRING",)),
        ScalarFunction("RTRIM", _null_safe(str.rstrip), _fixed(STRING), 1, 1, ("STRING",)),
        ScalarFunction("LEN", _null_safe(len), _fixed(INT), 1, 1, ("STRING",)),
        ScalarFunction("LENGTH", _null_safe(len), _fixed(INT), 1, 1, ("STRING",)),
        ScalarFunction("CONCAT", _concat, _fixed(STRING), 1, None, ("STRING",)),
        ScalarFunction("CONCAT_WS", _concat_ws, _fixed(STRING), 2, None, ("STRING",)),
        ScalarFunction("SUBSTRING", _substring, _fixed(STRING), 2, 3, ("STRING", "INT")),
        ScalarFunction("INITCAP", _initcap, _fixed(STRING), 1, 1, ("STRING",)),
        ScalarFunction("MASK", _mask, _fixed(STRING), 1, 5, ("STRING",)),
        ScalarFunction("REPLACE", _null_safe(lambda s, a, b: s.replace(a, b)), _fixed(STRING), 3, 3, ("STRING",)),
        ScalarFunction("ABS", _null_safe(abs), _same_as_first, 1, 1, ("NUMERIC",)),
        ScalarFunction("IFNULL", _ifnull, _same_as_first, 2, 2),
        ScalarFunction("COALESCE", _coalesce, _same_as_first, 1, None),
        ScalarFunction("AS_VALUE", lambda v: v, _same_as_first, 1, 1),
        ScalarFunction("BAD_UDF", _BadUdf, lambda types: types[0] if types and types[0] else INT, 1, 1, per_call_site=True),
    ]
}


def scalar_function(name: str, arg_count: int) -> ScalarFunction:
    function = SCALAR_FUNCTIONS.get(name)
    if function is None:
        raise KsqlError(f"Can't find any functions with the name '{name}'")
    if arg_count < function.min_args or (function.max_args is not None and arg_count > function.max_args):
        raise KsqlError(f"Function '{name}' does not accept {arg_count} parameters.")
    return function


# ---------------------------------------------------------------- aggregate


class Aggregate:
    """One aggregate call: its input is the evaluated argument of each row."""

    name = ""
    supports_undo = True
    changes_in_place = False  # whether add/undo change a state in place (`copy` then copies it)

    def __init__(self, arg_type: SqlType | None):
        self.arg_type = arg_type

    def result_type(self) -> SqlType:
        raise NotImplementedError

    def init(self):
        return None

    def copy(self, state):
        """A copy of `state` that `add` and `undo` may change in place (states of immutable values are shared)."""
        return state

    # a subclass defines `add` or `add_all`, each being the other applied to one value or in a loop

    def add(self, state, value):
        """The state with `value` added."""
        return self.add_all(state, (value,))

    def add_all(self, state, values):
        """The state with each of `values` added in turn."""
        for value in values:
            state = self.add(state, value)
        return state

    def undo(self, state, value):
        raise NotImplementedError

    def result(self, state):
        return state


class Count(Aggregate):
    """COUNT(*) / COUNT() count rows; COUNT(expr) counts rows where expr is not NULL."""

    name = "COUNT"

    def __init__(self, arg_type, counts_rows: bool):
        super().__init__(arg_type)
        self.counts_rows = counts_rows

    def result_type(self):
        return BIGINT

    def init(self):
        return 0

    def add_all(self, state, values):
        return state + (len(values) if self.counts_rows else sum(value is not None for value in values))

    def undo(self, state, value):
        return state - 1 if self.counts_rows or value is not None else state


class Sum(Aggregate):
    name = "SUM"

    def result_type(self):
        return self.arg_type

    def init(self):
        if self.arg_type.base == "DOUBLE":
            return 0.0
        if self.arg_type.base == "DECIMAL":
            return "0"
        return 0

    def _num(self, state):
        return decimal.Decimal(state) if self.arg_type.base == "DECIMAL" else state

    def _store(self, value):
        return str(value) if self.arg_type.base == "DECIMAL" else value

    def add(self, state, value):
        return state if value is None else self._store(self._num(state) + value)

    def undo(self, state, value):
        return state if value is None else self._store(self._num(state) - value)

    def result(self, state):
        if self.arg_type.base in ("INT", "BIGINT"):
            return java_wrap(state, self.arg_type.base)  # ksqlDB's integer sums overflow as Java's do
        return self._num(state)


class MinMax(Aggregate):
    supports_undo = False

    def __init__(self, arg_type, pick: Callable):
        super().__init__(arg_type)
        self.pick = pick

    def result_type(self):
        return self.arg_type

    def add(self, state, value):
        if value is None:
            return state
        return value if state is None else self.pick(state, value)


class LatestByOffset(Aggregate):
    name = "LATEST_BY_OFFSET"
    supports_undo = False

    def __init__(self, arg_type, ignore_nulls: bool = True):
        super().__init__(arg_type)
        self.ignore_nulls = ignore_nulls

    def result_type(self):
        return self.arg_type

    def add_all(self, state, values):
        """The last value (the last non-NULL one when NULLs are ignored)."""
        if not self.ignore_nulls:
            return values[-1] if values else state
        for value in reversed(values):
            if value is not None:
                return value
        return state


class Histogram(Aggregate):
    """Counts of each distinct value, at most 1000 distinct values (as ksqlDB)."""

    name = "HISTOGRAM"
    changes_in_place = True

    def result_type(self):
        return SqlType("MAP", key=STRING, item=BIGINT)

    def init(self):
        return {}

    def copy(self, state):
        return dict(state)

    def add_all(self, state, values):
        for value in values:
            if value is not None and (value in state or len(state) < HISTOGRAM_LIMIT):
                state[value] = state.get(value, 0) + 1
        return state

    def undo(self, state, value):
        if value is None or value not in state:
            return state
        state[value] -= 1
        if state[value] <= 0:
            del state[value]
        return state

    def result(self, state):
        return dict(state)  # a copy: the state goes on changing after the result is taken


AGGREGATE_NAMES = {"COUNT", "SUM", "MIN", "MAX", "LATEST_BY_OFFSET", "HISTOGRAM"}
UNSUPPORTED_AGGREGATES = {"TOPK", "TOPKDISTINCT", "COLLECT_LIST", "COLLECT_SET", "AVG", "EARLIEST_BY_OFFSET", "COUNT_DISTINCT", "STDDEV_SAMP", "CORRELATION"}


def is_aggregate(name: str) -> bool:
    return name in AGGREGATE_NAMES or name in UNSUPPORTED_AGGREGATES


def make_aggregate(name: str, arg_type: SqlType | None, star_or_empty: bool, extra_args: list) -> Aggregate:
    """Build the aggregate for a call like COUNT(*), HISTOGRAM(col), LATEST_BY_OFFSET(col, false)."""
    if name in UNSUPPORTED_AGGREGATES:
        raise KsqlError(f"Aggregate function {name} is outside the engine's subset (COUNT, SUM, MIN, MAX, LATEST_BY_OFFSET, HISTOGRAM).")
    if name == "COUNT":
        return Count(arg_type, counts_rows=star_or_empty or arg_type is None)
    if arg_type is None:
        raise KsqlError(f"Function '{name}' needs an argument")
    if name == "SUM":
        if not arg_type.is_numeric:
            raise KsqlError(f"Function 'SUM' does not accept parameters ({arg_type}).")
        aggregate = Sum(arg_type)
        aggregate.name = "SUM"
        return aggregate
    if name in ("MIN", "MAX"):
        aggregate = MinMax(arg_type, min if name == "MIN" else max)
        aggregate.name = name
        return aggregate
    if name == "LATEST_BY_OFFSET":
        ignore_nulls = bool(extra_args[0]) if extra_args else True
        return LatestByOffset(arg_type, ignore_nulls)
    if name == "HISTOGRAM":
        if arg_type.base != "STRING":
            # ksqlDB's HISTOGRAM counts STRING values only (its result is a MAP<STRING, BIGINT>)
            raise KsqlError(f"Function 'HISTOGRAM' does not accept parameters ({arg_type}).")
        return Histogram(arg_type)
    raise KsqlError(f"Unknown aggregate function {name}")


__all__ = [
    "Aggregate",
    "HISTOGRAM_LIMIT",
    "SCALAR_FUNCTIONS",
    "is_aggregate",
    "make_aggregate",
    "scalar_function",
    "BOOLEAN",
    "DOUBLE",
]
