"""The statement and expression tree the parser produces and the planner reads.

Identifiers are stored as ksqlDB resolves them: unquoted names upper-cased,
backtick-quoted names exactly as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .types import SqlType


@dataclass(frozen=True)
class Position:
    line: int
    column: int

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}"


# ---------------------------------------------------------------- expressions


class Expr:
    """Base of all expression nodes; `sql()` renders ksqlDB's canonical text."""

    def sql(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def children(self) -> tuple["Expr", ...]:
        return ()


@dataclass(frozen=True)
class Literal(Expr):
    value: Any
    type: SqlType | None  # None for NULL

    def sql(self) -> str:
        if self.value is None:
            return "null"
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, str):
            return "'" + self.value.replace("'", "''") + "'"
        return str(self.value)


@dataclass(frozen=True)
class ColumnRef(Expr):
    name: str
    source: str | None = None

    def sql(self) -> str:
        return f"{self.source}.{self.name}" if self.source else self.name


@dataclass(frozen=True)
class FunctionCall(Expr):
    name: str  # upper-cased
    args: tuple[Expr, ...]
    star: bool = False

    def sql(self) -> str:
        inner = "*" if self.star else ", ".join(a.sql() for a in self.args)
        return f"{self.name}({inner})"

    def children(self) -> tuple[Expr, ...]:
        return self.args


@dataclass(frozen=True)
class StructConstructor(Expr):
    fields: tuple[tuple[str, Expr], ...]

    def sql(self) -> str:
        return "STRUCT(" + ", ".join(f"{n}:={e.sql()}" for n, e in self.fields) + ")"

    def children(self) -> tuple[Expr, ...]:
        return tuple(e for _, e in self.fields)


@dataclass(frozen=True)
class ArrayConstructor(Expr):
    items: tuple[Expr, ...]

    def sql(self) -> str:
        return "ARRAY[" + ", ".join(i.sql() for i in self.items) + "]"

    def children(self) -> tuple[Expr, ...]:
        return self.items


@dataclass(frozen=True)
class BinaryOp(Expr):
    op: str  # + - * / % || = != < <= > >= AND OR
    left: Expr
    right: Expr

    def sql(self) -> str:
        op = "<>" if self.op == "!=" else self.op
        return f"({self.left.sql()} {op} {self.right.sql()})"

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Not(Expr):
    operand: Expr

    def sql(self) -> str:
        return f"(NOT {self.operand.sql()})"

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Negate(Expr):
    operand: Expr

    def sql(self) -> str:
        return f"-{self.operand.sql()}"

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class IsNull(Expr):
    operand: Expr
    negated: bool

    def sql(self) -> str:
        return f"({self.operand.sql()} IS {'NOT ' if self.negated else ''}NULL)"

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Between(Expr):
    operand: Expr
    low: Expr
    high: Expr
    negated: bool

    def sql(self) -> str:
        neg = "NOT " if self.negated else ""
        return f"({self.operand.sql()} {neg}BETWEEN {self.low.sql()} AND {self.high.sql()})"

    def children(self) -> tuple[Expr, ...]:
        return (self.operand, self.low, self.high)


@dataclass(frozen=True)
class InList(Expr):
    operand: Expr
    items: tuple[Expr, ...]
    negated: bool

    def sql(self) -> str:
        neg = "NOT " if self.negated else ""
        return f"({self.operand.sql()} {neg}IN ({', '.join(i.sql() for i in self.items)}))"

    def children(self) -> tuple[Expr, ...]:
        return (self.operand, *self.items)


@dataclass(frozen=True)
class Like(Expr):
    operand: Expr
    pattern: Expr
    negated: bool

    def sql(self) -> str:
        neg = "NOT " if self.negated else ""
        return f"({self.operand.sql()} {neg}LIKE {self.pattern.sql()})"

    def children(self) -> tuple[Expr, ...]:
        return (self.operand, self.pattern)


@dataclass(frozen=True)
class Case(Expr):
    whens: tuple[tuple[Expr, Expr], ...]
    default: Expr | None

    def sql(self) -> str:
        parts = " ".join(f"WHEN {c.sql()} THEN {r.sql()}" for c, r in self.whens)
        tail = f" ELSE {self.default.sql()}" if self.default is not None else ""
        return f"(CASE {parts}{tail} END)"

    def children(self) -> tuple[Expr, ...]:
        out: list[Expr] = []
        for c, r in self.whens:
            out += [c, r]
        if self.default is not None:
            out.append(self.default)
        return tuple(out)


@dataclass(frozen=True)
class Cast(Expr):
    operand: Expr
    type: SqlType

    def sql(self) -> str:
        return f"CAST({self.operand.sql()} AS {self.type})"

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Subscript(Expr):
    base: Expr
    index: Expr

    def sql(self) -> str:
        return f"{self.base.sql()}[{self.index.sql()}]"

    def children(self) -> tuple[Expr, ...]:
        return (self.base, self.index)


@dataclass(frozen=True)
class Dereference(Expr):
    base: Expr
    field: str

    def sql(self) -> str:
        return f"{self.base.sql()}->{self.field}"

    def children(self) -> tuple[Expr, ...]:
        return (self.base,)


def walk(expr: Expr):
    """Yield `expr` and every expression below it, parents first."""
    yield expr
    for child in expr.children():
        yield from walk(child)


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class SelectItem:
    expr: Expr | None  # None for * / alias.*
    alias: str | None = None
    star_source: str | None = None  # for `alias.*`
    position: Position | None = None


@dataclass(frozen=True)
class Duration:
    millis: int
    text: str


@dataclass(frozen=True)
class WindowSpec:
    kind: str  # TUMBLING | HOPPING | SESSION
    size: Duration | None
    grace: Duration | None
    advance: Duration | None = None
    retention: Duration | None = None
    position: Position | None = None


@dataclass(frozen=True)
class SourceRef:
    name: str
    alias: str
    position: Position


@dataclass(frozen=True)
class Join:
    kind: str  # INNER | LEFT | RIGHT | FULL
    right: SourceRef
    on: Expr
    within: Duration | None
    position: Position


@dataclass(frozen=True)
class Query:
    select: tuple[SelectItem, ...]
    source: SourceRef
    joins: tuple[Join, ...]
    window: WindowSpec | None
    where: Expr | None
    group_by: tuple[Expr, ...]
    partition_by: tuple[Expr, ...]
    having: Expr | None
    emit: str | None  # CHANGES | FINAL | None
    limit: int | None
    clause_positions: dict = field(default_factory=dict, compare=False)  # clause name -> Position


# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class ColumnDef:
    name: str
    type: SqlType
    constraint: str | None  # KEY | PRIMARY KEY | HEADERS | None


@dataclass
class Statement:
    text: str = field(default="", kw_only=True)
    position: Position = field(default=Position(1, 1), kw_only=True)


@dataclass
class CreateSource(Statement):
    kind: str  # STREAM | TABLE
    name: str
    columns: tuple[ColumnDef, ...] | None
    properties: dict[str, Any]
    or_replace: bool
    if_not_exists: bool


@dataclass
class CreateAsSelect(Statement):
    kind: str
    name: str
    properties: dict[str, Any]
    query: Query
    or_replace: bool
    if_not_exists: bool


@dataclass
class SetProperty(Statement):
    name: str
    value: str


@dataclass
class UnsetProperty(Statement):
    name: str


@dataclass
class Define(Statement):
    name: str
    value: str


@dataclass
class Undefine(Statement):
    name: str


@dataclass
class Drop(Statement):
    kind: str
    name: str
    if_exists: bool
    delete_topic: bool


@dataclass
class Show(Statement):
    what: str  # STREAMS | TABLES | QUERIES | PROPERTIES | VARIABLES | TOPICS
    extended: bool


@dataclass
class Describe(Statement):
    name: str
    extended: bool


@dataclass
class Explain(Statement):
    query_id: str  # EXPLAIN of a statement's plan is outside the subset


@dataclass
class Terminate(Statement):
    query_id: str  # or "ALL"
