"""From statements to logical plans: the metastore of sources and query planning.

`DataSource` is a stream or table registered in the metastore. `plan_query`
checks a CREATE ... AS SELECT the way ksqlDB does (same error messages for the
cases its conformance tests pin) and returns a `QueryPlan`: the source, an
optional stream-table join, the filter, and either a projection or an
aggregation (grouping, aggregates, window, HAVING, emit mode), with every
expression compiled. `operators.build_query` turns a plan into the physical
operators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import ast
from .expressions import Compiled, Scope, ScopeColumn, compile_expr, contains_aggregate, default_column_name
from .formats import OUTSIDE_SUBSET_FORMATS, VALUE_FORMATS, Column, KeyFormat, SchemaStore, columns_from_avro
from .functions import Aggregate, is_aggregate, make_aggregate
from .types import BIGINT, INT, KsqlError, SqlType

PSEUDO_COLUMNS = [Column("ROWTIME", BIGINT), Column("ROWPARTITION", INT), Column("ROWOFFSET", BIGINT)]
WINDOW_COLUMNS = [Column("WINDOWSTART", BIGINT), Column("WINDOWEND", BIGINT)]
DEFAULT_GRACE_MS = 24 * 3600 * 1000  # Kafka Streams' legacy default grace period


@dataclass
class WindowInfo:
    kind: str  # TUMBLING
    size_ms: int
    grace_ms: int


@dataclass
class DataSource:
    """A stream or table: its topic, columns and formats."""

    name: str
    kind: str  # STREAM | TABLE
    topic: str
    key_columns: list[Column]
    value_columns: list[Column]
    key_format: str
    value_format: str
    partitions: int = 1
    window: WindowInfo | None = None
    avro_full_name: str | None = None
    statement: str = ""
    written_by: str | None = None  # id of the query writing into it

    @property
    def columns(self) -> list[Column]:
        return self.key_columns + self.value_columns

    def schema_text(self) -> str:
        key = "KEY" if self.kind == "STREAM" else "PRIMARY KEY"
        parts = [f"{c.name} {c.type} {key}" for c in self.key_columns] + [f"{c.name} {c.type}" for c in self.value_columns]
        return ", ".join(parts)


# ---------------------------------------------------------------- CREATE STREAM/TABLE


def _format_properties(props: dict, default_key: str = "KAFKA") -> tuple[str, str | None]:
    if "FORMAT" in props and ("VALUE_FORMAT" in props or "KEY_FORMAT" in props):
        raise KsqlError("Cannot supply both 'FORMAT' and 'VALUE_FORMAT' or 'KEY_FORMAT' properties.")
    value_format = str(props.get("FORMAT", props.get("VALUE_FORMAT", ""))).upper() or None
    key_format = str(props.get("FORMAT", props.get("KEY_FORMAT", default_key))).upper()
    for fmt in (value_format, key_format):
        if fmt in OUTSIDE_SUBSET_FORMATS:
            raise KsqlError(f"Format {fmt} is outside the engine's subset (JSON, AVRO, KAFKA, DELIMITED).")
    return key_format, value_format


def _parse_duration_text(text: str) -> int:
    from .parser import _TIME_UNITS

    amount, _, unit = str(text).strip().partition(" ")
    factor = _TIME_UNITS.get(unit.strip().upper())
    if factor is None or not amount.isdigit():
        raise KsqlError(f"Invalid WINDOW_SIZE '{text}': use e.g. '30 SECONDS'.")
    return int(amount) * factor


def _check_window_size(size_ms: int, written: str) -> None:
    # Kafka Streams refuses a window of no length; each record would otherwise fail to find its window
    if size_ms <= 0:
        raise KsqlError(f"Window size must be larger than zero: {written}. Give a SIZE of at least 1 MILLISECOND.")


def _check_boolean(clause: str, expr: ast.Expr, compiled: Compiled) -> None:
    # ksqlDB's check: a filter that is not a condition would silently drop every record
    if compiled.type is not None and compiled.type.base != "BOOLEAN":
        raise KsqlError(f"Type error in {clause} expression: Should evaluate to boolean but is {expr.sql()} ({compiled.type}) instead.")


def create_source(statement: ast.CreateSource, schemas: SchemaStore | None) -> DataSource:
    """Build the DataSource of a CREATE STREAM/TABLE, inferring value columns from the registry when omitted."""
    props = statement.properties
    if "KAFKA_TOPIC" not in props:
        raise KsqlError(f"Missing required property \"KAFKA_TOPIC\" in CREATE {statement.kind} {statement.name} (at {statement.position}).")
    for unsupported in ("KEY_SCHEMA_ID", "VALUE_SCHEMA_ID"):
        if unsupported in props:
            raise KsqlError(f"Property {unsupported} is outside the engine's subset: let the engine infer or derive the schema.")
    key_format, value_format = _format_properties(props)
    if value_format is None:
        raise KsqlError(f"Missing required property \"VALUE_FORMAT\" or \"FORMAT\" in CREATE {statement.kind} {statement.name}.")
    if value_format not in VALUE_FORMATS:
        raise KsqlError(f"Value format {value_format} is outside the engine's subset (JSON, AVRO, KAFKA, DELIMITED).")
    columns = statement.columns or ()
    key_columns, value_columns, seen = [], [], set()
    for column in columns:
        if column.name in seen:
            raise KsqlError(f"Duplicate column names: {column.name}")
        seen.add(column.name)
        if column.constraint == "HEADERS":
            raise KsqlError(f"HEADERS columns are outside the engine's subset (column {column.name}).")
        if column.constraint == "KEY" and statement.kind == "TABLE":
            raise KsqlError(f"Column {column.name} is a 'KEY' column: please use 'PRIMARY KEY' for tables.\nTables have PRIMARY KEYs, which are unique and NON NULL.\nStreams have KEYs, which have no uniqueness or NON NULL constraints.")
        if column.constraint == "PRIMARY KEY" and statement.kind == "STREAM":
            raise KsqlError(f"Column {column.name} is a 'PRIMARY KEY' column: please use 'KEY' for streams.\nTables have PRIMARY KEYs, which are unique and NON NULL.\nStreams have KEYs, which have no uniqueness or NON NULL constraints.")
        target = key_columns if column.constraint in ("KEY", "PRIMARY KEY") else value_columns
        target.append(Column(column.name, column.type))
    topic = str(props["KAFKA_TOPIC"])
    if not value_columns:
        if value_format != "AVRO":
            if statement.columns is None:
                raise KsqlError(f"The statement does not define any columns, and {value_format} cannot infer them: list the columns, e.g. CREATE {statement.kind} {statement.name} (ID STRING KEY, ...).")
        else:
            if schemas is None:
                raise KsqlError(f"Cannot infer the columns of {statement.name}: no schema registry is configured.")
            latest = schemas.latest(f"{topic}-value")
            if latest is None:
                raise KsqlError(f"Schema for message values on topic '{topic}' does not exist in the Schema Registry. Subject: {topic}-value. Register a value schema first, or list the columns.")
            value_columns = columns_from_avro(latest[1])
            clashes = {c.name for c in value_columns} & {c.name for c in key_columns}
            if clashes:
                raise KsqlError(f"The key column(s) {sorted(clashes)} clash with value columns inferred from the registry: give the key column another name.")
    if statement.kind == "TABLE" and not key_columns:
        raise KsqlError(f"Tables require a PRIMARY KEY. Please define the PRIMARY KEY of {statement.name}, e.g. CREATE TABLE {statement.name} (ID STRING PRIMARY KEY) ...")
    window = None
    if "WINDOW_TYPE" in props:
        kind = str(props["WINDOW_TYPE"]).upper()
        if kind != "TUMBLING":
            raise KsqlError(f"WINDOW_TYPE {kind} is outside the engine's subset (TUMBLING).")
        size_ms = _parse_duration_text(props.get("WINDOW_SIZE", ""))
        _check_window_size(size_ms, f"WINDOW_SIZE='{props.get('WINDOW_SIZE', '')}'")
        window = WindowInfo("TUMBLING", size_ms, 0)
    KeyFormat(key_format, key_columns, store=schemas)  # validates the key columns against the key format
    _check_value_format(value_format, value_columns)
    return DataSource(
        name=statement.name,
        kind=statement.kind,
        topic=topic,
        key_columns=key_columns,
        value_columns=value_columns,
        key_format=key_format,
        value_format=value_format,
        partitions=int(props.get("PARTITIONS", 1)),
        window=window,
        avro_full_name=props.get("VALUE_AVRO_SCHEMA_FULL_NAME"),
        statement=statement.text,
    )


def _check_value_format(value_format: str, columns: list[Column]) -> None:
    from .formats import check_kafka_type

    if value_format == "KAFKA":
        if len(columns) > 1:
            raise KsqlError(f"The 'KAFKA' format only supports a single field. Got: {[c.name for c in columns]}")
        for c in columns:
            check_kafka_type(c.type, c.name)
    if value_format == "DELIMITED":
        for c in columns:
            if c.type.base in ("ARRAY", "MAP", "STRUCT"):
                raise KsqlError(f"The 'DELIMITED' format does not support type '{c.type.base}', column: `{c.name}`")


# ---------------------------------------------------------------- query plans


@dataclass
class JoinPlan:
    kind: str  # INNER | LEFT
    table: DataSource
    table_alias: str
    stream_key: Compiled  # join key evaluated on the stream row


@dataclass
class AggregateCall:
    aggregate: Aggregate
    argument: Compiled | None
    expr: ast.FunctionCall


@dataclass
class AggregationPlan:
    group_by: list[Compiled]  # evaluated on the input row
    calls: list[AggregateCall]
    window: WindowInfo | None
    emit_final: bool
    having: Compiled | None  # evaluated on the aggregated row
    table_source: bool


@dataclass
class QueryPlan:
    """The logical plan of one persistent query."""

    query_id: str
    sink: DataSource
    source: DataSource
    source_alias: str
    join: JoinPlan | None
    where: Compiled | None
    key_projection: list[Compiled]  # one per sink key column
    value_projection: list[Compiled]  # one per sink value column
    aggregation: AggregationPlan | None
    slot_prefix: dict[str, str] = field(default_factory=dict)  # source alias -> row slot prefix

    @property
    def source_topics(self) -> list[str]:
        topics = [self.source.topic]
        if self.join:
            topics.append(self.join.table.topic)
        return topics

    def describe(self) -> str:
        steps = [f"Source {self.source.kind.lower()} {self.source.name} (topic {self.source.topic})"]
        if self.join:
            steps.append(f"{self.join.kind} JOIN table {self.join.table.name} on its key")
        if self.where:
            steps.append("Filter (WHERE)")
        if self.aggregation:
            agg = self.aggregation
            window = f", TUMBLING window {agg.window.size_ms} ms, grace {agg.window.grace_ms} ms" if agg.window else ""
            steps.append(f"Aggregate {'table' if agg.table_source else 'stream'} by {len(agg.group_by)} key(s): {', '.join(c.expr.sql() for c in agg.calls)}{window}")
            if agg.having:
                steps.append("Filter (HAVING)")
            if agg.emit_final:
                steps.append("Emit final window results")
        steps.append(f"Project {', '.join(c.name for c in self.sink.columns)}")
        steps.append(f"Sink {self.sink.kind.lower()} {self.sink.name} (topic {self.sink.topic})")
        return " -> ".join(steps)


def _source_scope(source: DataSource, alias: str, prefix: str) -> list[ScopeColumn]:
    columns = source.columns + PSEUDO_COLUMNS + (WINDOW_COLUMNS if source.window else [])
    return [ScopeColumn(alias, c.name, c.type, prefix + c.name) for c in columns]


def _slot_prefixes(left: DataSource, left_alias: str, right: DataSource | None, right_alias: str | None) -> dict[str, str]:
    """Row slot prefixes by source alias: the joined table's columns are prefixed by its alias.

    The stream's columns keep their names, so a record's row is the same for
    every query reading the stream and is built once; only when a stream
    column's name is a prefixed table slot are the stream's prefixed too.
    """
    if right is None:
        return {left_alias: ""}
    right_prefix = f"{right_alias}_"

    def slot_names(source: DataSource, prefix: str) -> set[str]:
        return {prefix + c.name for c in source.columns + PSEUDO_COLUMNS + WINDOW_COLUMNS}

    clash = slot_names(left, "") & slot_names(right, right_prefix)
    return {left_alias: f"{left_alias}_" if clash else "", right_alias: right_prefix}


def _join_type_text(kind: str) -> str:
    return {"INNER": "[INNER] JOIN", "LEFT": "LEFT [OUTER] JOIN", "RIGHT": "RIGHT [OUTER] JOIN", "FULL": "[FULL] OUTER JOIN"}[kind]


def _plan_join(query: ast.Query, left: DataSource, right: DataSource, scope: Scope, join: ast.Join) -> JoinPlan:
    got = f"{query.source.alias} {_join_type_text(join.kind)} {join.right.alias}"
    if left.kind == "TABLE" and right.kind == "STREAM":
        raise KsqlError(f"Invalid join order: table-stream joins are not supported; only stream-table joins. Got {got}.")
    if left.kind == "STREAM" and right.kind == "STREAM":
        raise KsqlError(f"Stream-stream joins are outside the engine's subset (at {join.position}).")
    if left.kind == "TABLE" and right.kind == "TABLE":
        raise KsqlError(f"Table-table joins are outside the engine's subset (at {join.position}).")
    if join.kind in ("FULL", "RIGHT"):
        kind_text = "full-outer" if join.kind == "FULL" else "right"
        raise KsqlError(f"Invalid join type: {kind_text} join not supported for stream-table join. Got {got}.")
    on = join.on
    if not (isinstance(on, ast.BinaryOp) and on.op == "="):
        raise KsqlError(f"Unsupported join expression: {on.sql()}. Join on `stream column = table key`.")
    sides = []
    for operand in (on.left, on.right):
        refs = [e for e in ast.walk(operand) if isinstance(e, ast.ColumnRef)]
        owners = {scope.resolve(r).source for r in refs}
        sides.append((operand, owners))
    table_alias = join.right.alias
    table_side = [s for s in sides if s[1] == {table_alias}]
    stream_side = [s for s in sides if s[1] and table_alias not in s[1]]
    if len(table_side) != 1 or len(stream_side) != 1:
        raise KsqlError(f"Invalid join condition: {on.sql()} must compare an expression of {query.source.alias} with a column of {table_alias}.")
    table_expr, stream_expr = table_side[0][0], stream_side[0][0]
    table_column = scope.resolve(table_expr) if isinstance(table_expr, ast.ColumnRef) else None
    if table_column is None or table_column.name not in [c.name for c in right.key_columns]:
        def qualified(expr):
            if isinstance(expr, ast.ColumnRef):
                column = scope.resolve(expr)
                return f"{column.source}.{column.name}"
            return expr.sql()

        raise KsqlError(
            f"Invalid join condition: stream-table joins require to join on the table's primary key. Got {qualified(stream_expr)} = {qualified(table_expr)}."
        )
    return JoinPlan(join.kind, right, table_alias, compile_expr(stream_expr, scope))


class _Names:
    """Allocates KSQL_COL_n names, skipping names already taken."""

    def __init__(self, taken: set[str]):
        self.taken = set(taken)
        self.counter = 0

    def next(self) -> str:
        while f"KSQL_COL_{self.counter}" in self.taken:
            self.counter += 1
        name = f"KSQL_COL_{self.counter}"
        self.counter += 1
        self.taken.add(name)
        return name


def _expand_select(query: ast.Query, scope: Scope, aliases_in_join: bool) -> list[tuple[ast.Expr, str | None]]:
    """Select items with `*` expanded: (expression, explicit alias or None)."""
    items: list[tuple[ast.Expr, str | None]] = []
    for item in query.select:
        if item.expr is not None:
            items.append((item.expr, item.alias))
            continue
        for column in scope.columns:
            if column.name in ("ROWTIME", "ROWPARTITION", "ROWOFFSET"):
                continue
            if item.star_source and column.source != item.star_source:
                continue
            if column.name in ("WINDOWSTART", "WINDOWEND"):
                continue
            ref = ast.ColumnRef(column.name, column.source if aliases_in_join else None)
            items.append((ref, f"{column.source}_{column.name}" if aliases_in_join else column.name))
    return items


def _item_name(expr: ast.Expr, alias: str | None, join: bool, scope: Scope) -> str | None:
    if alias:
        return alias
    if join and isinstance(expr, ast.ColumnRef):
        column = scope.resolve(expr)
        return f"{column.source}_{column.name}"
    return default_column_name(expr)


def plan_query(
    statement: ast.CreateAsSelect,
    query_id: str,
    lookup: Callable[[str], DataSource | None],
    properties: dict[str, str],
) -> QueryPlan:
    """Check and plan a CREATE STREAM/TABLE ... AS SELECT."""
    query = statement.query
    left = lookup(query.source.name)
    if left is None:
        raise KsqlError(f"{query.source.name} does not exist (at {query.source.position}).")
    if len(query.joins) > 1:
        raise KsqlError(f"Joins of more than two sources are outside the engine's subset (at {query.joins[1].position}).")
    if query.partition_by:
        raise KsqlError(f"PARTITION BY is outside the engine's subset (at {query.clause_positions.get('partition_by')}).")
    if query.limit is not None:
        raise KsqlError(f"LIMIT is not supported in persistent queries (at {query.clause_positions.get('limit')}).")
    join_ast = query.joins[0] if query.joins else None
    right = None
    if join_ast:
        right = lookup(join_ast.right.name)
        if right is None:
            raise KsqlError(f"{join_ast.right.name} does not exist (at {join_ast.right.position}).")
    for source in filter(None, (left, right)):
        if source.value_format == "KAFKA" and query.group_by:
            raise KsqlError(f"Source(s) {source.name} are using the 'KAFKA' value format. This format does not yet support GROUP BY.")
    is_join = join_ast is not None
    prefix = _slot_prefixes(left, query.source.alias, right, join_ast.right.alias if join_ast else None)
    scope = Scope(_source_scope(left, query.source.alias, prefix[query.source.alias]))
    join_plan = None
    if join_ast:
        scope.columns += [c for c in _source_scope(right, join_ast.right.alias, prefix[join_ast.right.alias]) if c.name not in ("ROWTIME", "ROWPARTITION", "ROWOFFSET")]
        join_plan = _plan_join(query, left, right, scope, join_ast)

    where = compile_expr(query.where, scope) if query.where is not None else None
    if where is not None:
        _check_boolean("WHERE", query.where, where)
    items = _expand_select(query, scope, is_join)
    aggregated = bool(query.group_by) or any(contains_aggregate(e) for e, _ in items) or (query.having is not None)

    if query.emit == "FINAL" and (not aggregated or query.window is None):
        raise KsqlError("EMIT FINAL is only supported for windowed aggregations.")
    if query.window is not None and not aggregated:
        raise KsqlError("WINDOW clause requires a GROUP BY clause.")

    key_format, value_format = _format_properties(statement.properties, default_key=left.key_format)
    value_format = value_format or left.value_format
    if "KEY_FORMAT" not in statement.properties and "FORMAT" not in statement.properties:
        key_format = left.key_format
    topic = str(statement.properties.get("KAFKA_TOPIC", statement.name))

    if not aggregated:
        if statement.kind == "TABLE" and left.kind == "STREAM":
            raise KsqlError("Invalid result type. Your SELECT query produces a STREAM. Please use CREATE STREAM AS SELECT statement instead.")
        if statement.kind == "STREAM" and left.kind == "TABLE":
            raise KsqlError("Invalid result type. Your SELECT query produces a TABLE. Please use CREATE TABLE AS SELECT statement instead.")
        if left.kind == "TABLE":
            raise KsqlError("CREATE TABLE AS SELECT over a table without GROUP BY is outside the engine's subset.")
        return _plan_projection(statement, query_id, left, query, scope, items, where, join_plan, prefix, key_format, value_format, topic)

    if statement.kind == "STREAM":
        raise KsqlError("Invalid result type. Your SELECT query produces a TABLE. Please use CREATE TABLE AS SELECT statement instead.")
    return _plan_aggregation(statement, query_id, left, query, scope, items, where, join_plan, prefix, key_format, value_format, topic)


def _plan_projection(statement, query_id, left, query, scope, items, where, join_plan, prefix, key_format, value_format, topic) -> QueryPlan:
    is_join = join_plan is not None
    names = _Names({c.name for c in scope.columns})
    if is_join:
        join_on = query.joins[0].on
        key_refs = [e for e in (join_on.left, join_on.right) if isinstance(e, ast.ColumnRef)]
        key_slots = {scope.resolve(r).slot for r in key_refs}
    else:
        key_slots = {prefix[query.source.alias] + c.name for c in left.key_columns}
    key_columns, key_projection, value_columns, value_projection = [], [], [], []
    used_key_slots: set[str] = set()
    for expr, alias in items:
        compiled = compile_expr(expr, scope)
        name = _item_name(expr, alias, is_join, scope) or names.next()
        slot = scope.resolve(expr).slot if isinstance(expr, ast.ColumnRef) else None
        # a join has one key: the first selected side of its condition
        is_key = slot in key_slots and slot not in used_key_slots and not (is_join and key_columns)
        if is_key:
            used_key_slots.add(slot)
            key_columns.append(Column(name, compiled.type))
            key_projection.append(compiled)
        else:
            value_columns.append(Column(name, compiled.type))
            value_projection.append(compiled)
    expected_keys = 1 if is_join else len(left.key_columns)
    if len(key_columns) < expected_keys:
        if is_join:
            join_key = _join_key_text(query, scope)
            raise KsqlError(f"The query used to build `{statement.name}` must include the join expression {join_key} in its projection (eg, SELECT {join_key}...).")
        missing = [c.name for c in left.key_columns]
        raise KsqlError(f"The query used to build `{statement.name}` must include the key column {', '.join(missing)} in its projection (eg, SELECT {', '.join(missing)}...).")
    _check_duplicates(value_columns, key_columns)
    if not value_columns:
        raise KsqlError("The projection contains no value columns.")
    sink = _make_sink(statement, topic, key_columns, value_columns, key_format, value_format, left, window=left.window)
    return QueryPlan(query_id, sink, left, query.source.alias, join_plan, where, key_projection, value_projection, None, prefix)


def _join_key_text(query: ast.Query, scope: Scope) -> str:
    on = query.joins[0].on
    ref = on.left if isinstance(on.left, ast.ColumnRef) else on.right
    column = scope.resolve(ref)
    return f"{column.source}.{column.name}"


def _check_duplicates(value_columns: list[Column], key_columns: list[Column]) -> None:
    seen: set[str] = {c.name for c in key_columns}
    for column in value_columns:
        if column.name in seen:
            raise KsqlError(f"Duplicate value columns found in schema: `{column.name}` {_type_text(column.type)}")
        seen.add(column.name)


def _type_text(sql_type: SqlType) -> str:
    return "INTEGER" if sql_type.base == "INT" else str(sql_type)


def _make_sink(statement, topic, key_columns, value_columns, key_format, value_format, source: DataSource, window) -> DataSource:
    if key_format == "KAFKA" and len(key_columns) > 1 or any(c.type.base not in ("INT", "BIGINT", "DOUBLE", "STRING", "BYTES") for c in key_columns if key_format == "KAFKA"):
        cols = ", ".join(f"`{c.name}` {_type_text(c.type)} KEY" for c in key_columns)
        if len(key_columns) > 1:
            reason = f"The 'KAFKA' format only supports a single field. Got: [{cols}]"
        else:
            reason = f"The 'KAFKA' format does not support type '{key_columns[0].type.base}'"
        raise KsqlError(f"Key format does not support schema.\nformat: KAFKA\nschema: Persistence{{columns=[{cols}], features=[]}}\nreason: {reason}")
    _check_value_format(value_format, value_columns)
    if key_format in ("DELIMITED", "AVRO"):
        KeyFormat(key_format, key_columns, store=None if key_format != "AVRO" else _NO_STORE)
    return DataSource(
        name=statement.name,
        kind=statement.kind,
        topic=topic,
        key_columns=key_columns,
        value_columns=value_columns,
        key_format=key_format,
        value_format=value_format,
        partitions=int(statement.properties.get("PARTITIONS", source.partitions)),
        window=window,
        avro_full_name=statement.properties.get("VALUE_AVRO_SCHEMA_FULL_NAME"),
        statement=statement.text,
    )


class _NoStore:
    """Stands in for a schema store when only the key columns are being validated."""

    def register(self, subject, schema):  # pragma: no cover - never called while validating
        raise KsqlError("no schema registry configured")


_NO_STORE = _NoStore()


def _join_names(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _plan_aggregation(statement, query_id, left, query, scope, items, where, join_plan, prefix, key_format, value_format, topic) -> QueryPlan:
    is_join = join_plan is not None
    group_by = list(query.group_by)
    if not group_by:
        calls = [e for expr, _ in items for e in ast.walk(expr) if isinstance(e, ast.FunctionCall) and is_aggregate(e.name)]
        non_agg = [expr for expr, _ in items if not contains_aggregate(expr)]
        if non_agg:
            raise KsqlError(f"Non-aggregate SELECT expression(s) not part of GROUP BY: {', '.join(e.sql() for e in non_agg)}\nEither add the column(s) to the GROUP BY or remove them from the SELECT.")
        rendered = ", ".join(f"{c.name}(ROWTIME)" if c.star or not c.args else c.sql() for c in calls)
        raise KsqlError(f"CREATE TABLE AS SELECT statement does not support aggregate function [{rendered}] without a GROUP BY clause.")
    _check_functions_exist([e for e, _ in items] + group_by + ([query.having] if query.having is not None else []))
    seen_groups = set()
    for g in group_by:
        if isinstance(g, ast.ColumnRef):
            column = scope.resolve(g)
            canonical = ast.ColumnRef(column.name, column.source)
            if canonical in seen_groups:
                raise KsqlError(f"Duplicate GROUP BY expression: {column.source}.{column.name}")
            seen_groups.add(canonical)
            continue
        if contains_aggregate(g):
            name = next(e.name for e in ast.walk(g) if isinstance(e, ast.FunctionCall) and is_aggregate(e.name))
            raise KsqlError(f"GROUP BY does not support aggregate functions: {name} is an aggregate function.")
        if g in seen_groups:
            raise KsqlError(f"Duplicate GROUP BY expression: {query.source.alias}.{g.sql()}")
        seen_groups.add(g)
    if not any(contains_aggregate(e) for e, _ in items) and not (query.having is not None and contains_aggregate(query.having)):
        raise KsqlError("GROUP BY requires aggregate functions in either the SELECT or HAVING clause.")

    window = None
    if query.window is not None:
        spec = query.window
        if spec.kind != "TUMBLING":
            raise KsqlError(f"{spec.kind} windows are outside the engine's subset (TUMBLING) (at {spec.position}).")
        if left.kind == "TABLE":
            raise KsqlError("Windowed aggregation over a table is not supported.")
        _check_window_size(spec.size.millis, f"TUMBLING (SIZE {spec.size.text}) at {spec.position}")
        grace = spec.grace.millis if spec.grace is not None else (0 if query.emit == "FINAL" else max(DEFAULT_GRACE_MS - spec.size.millis, 0))
        window = WindowInfo("TUMBLING", spec.size.millis, grace)

    # aggregate calls, in order of first appearance in SELECT then HAVING
    calls: list[AggregateCall] = []
    call_slots: dict[ast.Expr, tuple[str, SqlType]] = {}
    sources = [expr for expr, _ in items] + ([query.having] if query.having is not None else [])
    for expr in sources:
        for node in ast.walk(expr):
            if not (isinstance(node, ast.FunctionCall) and is_aggregate(node.name)) or node in call_slots:
                continue
            for inner in node.args:
                if contains_aggregate(inner):
                    raise KsqlError(f"Aggregate functions can not be nested: {node.sql()}")
            value_args = [a for a in node.args if not isinstance(a, ast.Literal)] if node.name == "COUNT" else node.args[:1]
            argument = compile_expr(value_args[0], scope) if value_args else None
            extra = [a.value for a in node.args[1:] if isinstance(a, ast.Literal)]
            aggregate = make_aggregate(node.name, argument.type if argument else None, node.star or not node.args, extra)
            call_slots[node] = (f"__a{len(calls)}", aggregate.result_type())
            calls.append(AggregateCall(aggregate, argument, node))
    if left.kind == "TABLE":
        bad = list(dict.fromkeys(c.aggregate.name for c in calls if not c.aggregate.supports_undo))
        if bad:
            raise KsqlError(f"The aggregation functions {_join_names(bad)} cannot be applied to a table source, only to a stream source.")

    group_compiled = [compile_expr(g, scope) for g in group_by]
    post = Scope(list(scope.columns))
    post.precomputed = dict(call_slots)
    for i, (g, compiled) in enumerate(zip(group_by, group_compiled)):
        post.precomputed[g] = (f"__k{i}", compiled.type)
        if isinstance(g, ast.ColumnRef):
            # a qualified and an unqualified reference to the same column are the same key
            column = scope.resolve(g)
            post.precomputed[ast.ColumnRef(column.name, column.source)] = (f"__k{i}", compiled.type)
            post.precomputed[ast.ColumnRef(column.name)] = (f"__k{i}", compiled.type)
    if window and is_join:
        for expr, _ in items:
            for node in ast.walk(expr):
                if isinstance(node, ast.ColumnRef) and node.name in ("WINDOWSTART", "WINDOWEND"):
                    # ksqlDB cannot resolve window bounds in a windowed join (its issue 5931)
                    raise KsqlError(f"SELECT column '{node.name}' cannot be resolved.")
    if window:
        post.precomputed[ast.ColumnRef("WINDOWSTART")] = ("WINDOWSTART", BIGINT)
        post.precomputed[ast.ColumnRef("WINDOWEND")] = ("WINDOWEND", BIGINT)

    names = _Names({c.name for c in scope.columns})
    key_columns: list[Column | None] = [None] * len(group_by)
    key_projection: list[Compiled | None] = [None] * len(group_by)
    key_item_names: list[list[str]] = [[] for _ in group_by]
    value_columns, value_projection = [], []
    bad_select = []
    for expr, alias in items:
        name = _item_name(expr, alias, is_join, scope)
        group_index = _group_index(expr, group_by, post)
        if group_index is not None:
            name = name or names.next()
            key_item_names[group_index].append(name)
            if key_columns[group_index] is None:
                key_columns[group_index] = Column(name, group_compiled[group_index].type)
                key_projection[group_index] = Compiled(lambda row, s=f"__k{group_index}": row[s], group_compiled[group_index].type, f"__k{group_index}")
            continue
        try:
            compiled = _compile_post(expr, post)
        except _NotGrouped:
            bad_select.append(expr)
            continue
        value_columns.append(Column(name or names.next(), compiled.type))
        value_projection.append(compiled)
    if bad_select:
        raise KsqlError(f"Non-aggregate SELECT expression(s) not part of GROUP BY: {', '.join(e.sql() for e in bad_select)}\nEither add the column(s) to the GROUP BY or remove them from the SELECT.")
    for names_of_key in key_item_names:
        if len(names_of_key) > 1:
            raise KsqlError(f"The projection contains a key column more than once: `{names_of_key[0]}` and `{names_of_key[1]}`.")
    missing = [g.sql() for g, c in zip(group_by, key_columns) if c is None]
    if missing:
        plural = "expressions" if len(missing) > 1 else "expression"
        raise KsqlError(f"The query used to build `{statement.name}` must include the grouping {plural} {_join_names(missing)} in its projection (eg, SELECT {', '.join(missing)}...).")
    if not value_columns:
        raise KsqlError("The projection contains no value columns.")
    _check_duplicates(value_columns, [c for c in key_columns if c])

    having = None
    if query.having is not None:
        try:
            having = _compile_post(query.having, post)
        except _NotGrouped as exc:
            raise KsqlError(f"Non-aggregate HAVING expression not part of GROUP BY: {exc.expr.sql()}") from None
        _check_boolean("HAVING", query.having, having)

    sink = _make_sink(statement, topic, key_columns, value_columns, key_format, value_format, left, window=window)
    aggregation = AggregationPlan(group_compiled, calls, window, query.emit == "FINAL", having, left.kind == "TABLE")
    return QueryPlan(query_id, sink, left, query.source.alias, join_plan, where, key_projection, value_projection, aggregation, prefix)


def _check_functions_exist(exprs: list[ast.Expr]) -> None:
    from .functions import scalar_function

    for expr in exprs:
        for node in ast.walk(expr):
            if isinstance(node, ast.FunctionCall) and not is_aggregate(node.name):
                scalar_function(node.name, len(node.args))


class _NotGrouped(Exception):
    def __init__(self, expr: ast.Expr):
        self.expr = expr


def _group_index(expr: ast.Expr, group_by: list[ast.Expr], post: Scope) -> int | None:
    for i, g in enumerate(group_by):
        if expr == g:
            return i
        if isinstance(expr, ast.ColumnRef) and post.precomputed.get(expr, (None,))[0] == f"__k{i}":
            return i
    return None


def _compile_post(expr: ast.Expr, post: Scope) -> Compiled:
    """Compile an expression over the aggregated row; bare columns must be grouping keys."""
    for node in ast.walk(expr):
        if node in post.precomputed:
            continue
        if isinstance(node, ast.ColumnRef) and not _inside_precomputed(expr, node, post):
            raise _NotGrouped(node)
    strict = Scope(post.columns, post.precomputed, strict_message=lambda e: f"Column {e.sql()} is not part of GROUP BY")
    return compile_expr(expr, strict)


def _inside_precomputed(root: ast.Expr, target: ast.Expr, post: Scope) -> bool:
    """Whether `target` only occurs inside sub-expressions that are precomputed."""

    def visit(node: ast.Expr) -> bool:
        if node in post.precomputed:
            return True
        if node is target:
            return False
        return all(visit(child) for child in node.children())

    return visit(root)
