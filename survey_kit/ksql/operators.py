"""Physical operators: run one persistent query over decoded input records.

The operators are pure: a record (already decoded by its source's formats)
and the query's explicit state go in, output records come out. Nothing here
touches Kafka; the runtime and the test drivers feed records and ship the
outputs. All state lives in `state.Stores`, so it can be changelogged,
snapshotted and restored.

Semantics follow ksqlDB / Kafka Streams as the conformance tests pin them:
stream time per input partition; epoch-aligned tumbling windows; records for
windows closed by stream time - grace are dropped and counted; EMIT FINAL
emits a window when stream time reaches its end + grace (Kafka Streams'
emit-on-window-close, including its retention horizon); table aggregations
retract a row's old value before adding its new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .expressions import Compiled, dict_evaluator, evaluate_safely, tuple_evaluator
from .formats import KeyFormat, ValueFormat
from .planner import DataSource, QueryPlan
from .state import Stores

EMIT_FINAL_WALL_CLOCK = "survey_kit.emit.final.wall.clock"
CACHE_BYTES = "ksql.streams.cache.max.bytes.buffering"


@dataclass(slots=True)  # slots: one is made per output, so they are made and read a little faster
class OutputRecord:
    """A record to produce: `partition` None lets the producer partition by key."""

    topic: str
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: tuple = ()
    partition: int | None = None
    dead_letter: bool = False


@dataclass(slots=True)  # slots: one is made per input record
class InputRecord:
    """A record read from a source topic and decoded with that source's formats."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: tuple
    window_start: int | None
    value: dict | None
    headers: tuple = ()
    # rows already built from this record, by slot prefix: queries reading the same record share them
    rows: dict = field(default_factory=dict, repr=False)


@dataclass
class QueryMetrics:
    processed: int = 0
    emitted: int = 0
    late_records_dropped: int = 0
    null_key_dropped: int = 0
    expired_windows_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Serdes:
    key: KeyFormat
    value: ValueFormat


def _truthy(fn, row) -> bool:
    return evaluate_safely(fn, row) is True


class PersistentQuery:
    """One running CREATE ... AS SELECT: its operators and its state."""

    def __init__(self, plan: QueryPlan, sink_serdes: Serdes, properties: dict[str, str]):
        self.plan = plan
        self.sink_serdes = sink_serdes
        self.stores = Stores()
        self.metrics = QueryMetrics()
        self.wall_clock_close = str(properties.get(EMIT_FINAL_WALL_CLOCK, "false")).lower() == "true"
        self.caching = _int(properties.get(CACHE_BYTES, "0")) > 0 and bool(plan.aggregation) and not plan.aggregation.emit_final
        # record cache: (store key, window start) -> (key, value, timestamp, window start, state to compute the value from, or None)
        self._cache: dict[tuple, tuple] = {}
        self.status = "RUNNING"
        # the projections and grouping, each evaluated in one call per record
        self._key_of = tuple_evaluator(plan.key_projection)
        self._value_of = dict_evaluator([c.name for c in plan.sink.value_columns], plan.value_projection)
        self._sink_topic = plan.sink.topic
        self._serialize_key = sink_serdes.key.serialize
        self._serialize_value = sink_serdes.value.serialize
        # rows are built by closures made once per query, not by walking the columns per record
        self._source_prefix = plan.slot_prefix[plan.source_alias]
        self._build_source_row = row_builder(plan.source, self._source_prefix)
        if plan.join is not None:
            self._table_prefix = plan.slot_prefix[plan.join.table_alias]
            self._build_table_row = row_builder(plan.join.table, self._table_prefix)
            self._join_key_of = plan.join.stream_key.fn
            self._no_table_row = {self._table_prefix + c.name: None for c in plan.join.table.columns}
        self._where = plan.where.fn if plan.where is not None else None
        if plan.aggregation is not None:
            agg = plan.aggregation
            self._group_of = tuple_evaluator(agg.group_by)
            self._arguments_of = tuple_evaluator([c.argument or _NONE for c in agg.calls])
            self._inits = [c.aggregate.init for c in agg.calls]
            self._adders = [c.aggregate.add for c in agg.calls]
            self._undoers = [c.aggregate.undo for c in agg.calls]
            self._results = [(f"__a{j}", c.aggregate.result) for j, c in enumerate(agg.calls)]
            self._key_slots = [f"__k{i}" for i in range(len(agg.group_by))]
            self._window_size = agg.window.size_ms if agg.window is not None else None
            self._having = agg.having.fn if agg.having is not None else None
        # the operator for this kind of query, chosen once
        if plan.aggregation is None:
            self._handle = self._project_stream
        elif plan.aggregation.table_source:
            self._handle = self._aggregate_table
        elif plan.aggregation.window is None:
            self._handle = self._aggregate_stream
        else:
            self._handle = self._aggregate_windowed

    @property
    def query_id(self) -> str:
        return self.plan.query_id

    @property
    def source_topics(self) -> list[str]:
        return self.plan.source_topics

    # ------------------------------------------------------------ entry points

    def process(self, source: DataSource, record: InputRecord) -> list[OutputRecord]:
        metrics = self.metrics
        metrics.processed += 1
        join = self.plan.join
        if join is not None and source is join.table:
            self._update_join_table(record)
            return []
        outputs = self._handle(record)  # never holds None
        if outputs:
            metrics.emitted += len(outputs)
        return outputs

    def flush(self) -> list[OutputRecord]:
        """Release the updates coalesced by the record cache (call at each commit).

        With `ksql.streams.cache.max.bytes.buffering` > 0 an aggregate keeps only
        the latest update of each key between commits, as ksqlDB's record cache
        does; they are serialized here, once.
        """
        outputs = []
        for key, value, timestamp, window_start, state in self._cache.values():
            if state is not None:
                value = self._value_of(self._post_row(key, state, window_start))
            outputs.append(self._serialize(key, value, timestamp, window_start))
        self._cache.clear()
        self.metrics.emitted += len(outputs)
        return outputs

    def punctuate(self, wall_clock_ms: int) -> list[OutputRecord]:
        """With `survey_kit.emit.final.wall.clock` on, close EMIT FINAL windows whose end + grace has passed."""
        agg = self.plan.aggregation
        if not (self.wall_clock_close and agg and agg.emit_final):
            return []
        window = agg.window
        close = wall_clock_ms - window.grace_ms
        meta = self.stores.get("meta")
        windows = self.stores.get("windows")
        outputs = []
        partitions = {k[0] for k, _ in windows.items()}
        for partition in sorted(partitions):
            due = sorted(
                ((start, key), state) for (p, start, key), state in windows.items() if p == partition and start + window.size_ms <= close
            )
            for (start, key), state in due:
                outputs += _present([self._aggregate_output(tuple(state["key"]), state, start)])
                windows.delete((partition, start, key))
            wall = meta.get(("wall_close", partition))
            if wall is None or close > wall:
                meta.put(("wall_close", partition), close)
        self.metrics.emitted += len(outputs)
        return outputs

    # ------------------------------------------------------------ rows

    def _source_row(self, record: InputRecord) -> dict[str, Any]:
        """The record as a row of the query's source slots (shared by the queries reading it: do not modify)."""
        rows = record.rows
        row = rows.get(self._source_prefix)
        if row is None:
            row = rows[self._source_prefix] = self._build_source_row(record)
        return row

    def _input_row(self, record: InputRecord) -> dict | None:
        """The joined and filtered row of a stream record, or None when it is dropped."""
        row = self._source_row(record)
        if self.plan.join is not None:
            row = dict(row)
            join_key = evaluate_safely(self._join_key_of, row)
            table_row = self.stores.get("join_table").get((join_key,)) if join_key is not None else None
            if table_row is None:
                if self.plan.join.kind == "INNER":
                    return None
                row.update(self._no_table_row)
            else:
                row.update(table_row)
        if self._where is not None and evaluate_safely(self._where, row) is not True:
            return None
        return row

    def _update_join_table(self, record: InputRecord) -> None:
        if not record.key or record.key[0] is None:
            self.metrics.null_key_dropped += 1
            return
        table = self.stores.get("join_table")
        if record.value is None:
            table.delete(record.key)
            return
        rows = record.rows
        row = rows.get(self._table_prefix)
        if row is None:
            row = rows[self._table_prefix] = self._build_table_row(record)
        table.put(record.key, row)

    def _output(self, key: tuple, value: dict | None, timestamp: int, window_start: int | None = None, state: dict | None = None) -> OutputRecord | None:
        """The output record, or None when the record cache holds it until the next flush.

        With `state` given (and `value` None), the cache computes the value from the
        aggregate state at the flush, once per key, instead of once per update
        (aggregate states are never changed in place, so the result is the same).
        """
        if self.caching:
            cache_key = (_hashable(key), window_start)
            cache = self._cache
            cache.pop(cache_key, None)  # re-inserted last: updates leave in the order of their latest change
            cache[cache_key] = (key, value, timestamp, window_start, state)
            return None
        if state is not None:
            value = self._value_of(self._post_row(key, state, window_start))
        return self._serialize(key, value, timestamp, window_start)

    def _serialize(self, key: tuple, value: dict | None, timestamp: int, window_start: int | None) -> OutputRecord:
        return OutputRecord(self._sink_topic, self._serialize_key(key, window_start), self._serialize_value(value), timestamp)

    # ------------------------------------------------------------ stream projection

    def _project_stream(self, record: InputRecord) -> list[OutputRecord]:
        if record.value is None:
            return []
        row = self._input_row(record)
        if row is None:
            return []
        # a projection never goes through the record cache (only aggregations do): serialize directly
        return [self._serialize(self._key_of(row), self._value_of(row), record.timestamp, record.window_start)]

    # ------------------------------------------------------------ aggregation

    def _group_key(self, row: dict) -> tuple | None:
        key = self._group_of(row)
        if None in key:
            return None
        return key

    def _arguments(self, row: dict) -> tuple:
        return self._arguments_of(row)

    def _initial(self) -> list:
        return [init() for init in self._inits]

    def _add(self, states: list, args: list) -> list:
        return [add(s, a) for add, s, a in zip(self._adders, states, args)]

    def _undo(self, states: list, args: list) -> list:
        return [undo(s, a) for undo, s, a in zip(self._undoers, states, args)]

    def _post_row(self, key: tuple, state: dict, window_start: int | None) -> dict[str, Any]:
        post: dict[str, Any] = dict(zip(self._key_slots, key))
        for (slot, result), s in zip(self._results, state["aggs"]):
            post[slot] = result(s)
        if window_start is not None:
            post["WINDOWSTART"] = window_start
            post["WINDOWEND"] = window_start + self._window_size
        return post

    def _passes_having(self, key: tuple, state: dict | None, window_start: int | None = None) -> bool:
        if state is None:
            return False
        return self._having is None or _truthy(self._having, self._post_row(key, state, window_start))

    def _aggregate_output(self, key: tuple, state: dict, window_start: int | None = None, old: dict | None = None) -> OutputRecord | None:
        """The sink record for an aggregate update.

        When HAVING rejects the new value, a tombstone retracts the key if its
        previous value was in the table, and nothing is written otherwise (as
        ksqlDB's table filter does).
        """
        if self._having is None:
            return self._output(key, None, state["ts"], window_start, state)
        post = self._post_row(key, state, window_start)
        if not _truthy(self._having, post):
            if not self._passes_having(key, old, window_start):
                return None
            value = None
        else:
            value = self._value_of(post)
        return self._output(key, value, state["ts"], window_start)

    def _aggregate_stream(self, record: InputRecord) -> list[OutputRecord]:
        if record.value is None:
            return []
        row = self._input_row(record)
        if row is None:
            return []
        key = self._group_of(row)
        if None in key:
            self.metrics.null_key_dropped += 1
            return []
        store = self.stores.get("aggregates")
        store_key = _hashable(key)
        old = store.get(store_key)
        states = old["aggs"] if old else self._initial()
        timestamp = max(record.timestamp, old["ts"]) if old else record.timestamp
        new = {"aggs": self._add(states, self._arguments_of(row)), "ts": timestamp, "key": list(key)}
        store.put(store_key, new)
        output = self._aggregate_output(key, new, old=old)
        return [] if output is None else [output]

    def _aggregate_table(self, record: InputRecord) -> list[OutputRecord]:
        plan = self.plan
        if not record.key or any(v is None for v in record.key):
            self.metrics.null_key_dropped += 1
            return []
        table = self.stores.get("source_table")
        old_row = table.get(record.key)
        new_row = None
        if record.value is not None:
            new_row = self._source_row(record)
            table.put(record.key, new_row)
        else:
            table.delete(record.key)

        def pair(row):
            if row is None or (plan.where is not None and not _truthy(plan.where.fn, row)):
                return None
            key = self._group_key(row)
            return None if key is None else (key, self._arguments(row))

        old_pair, new_pair = pair(old_row), pair(new_row)
        store = self.stores.get("aggregates")
        outputs = []

        def apply(key, subtract, add):
            current = store.get(_hashable(key))
            states = current["aggs"] if current else self._initial()
            timestamp = max(record.timestamp, current["ts"]) if current else record.timestamp
            if subtract is not None and current is not None:
                states = self._undo(states, subtract)
            if add is not None:
                states = self._add(states, add)
            new = {"aggs": states, "ts": timestamp, "key": list(key)}
            store.put(_hashable(key), new)
            outputs.append(self._aggregate_output(key, new, old=current))

        if old_pair and new_pair and old_pair[0] == new_pair[0]:
            apply(new_pair[0], old_pair[1], new_pair[1])
        else:
            if old_pair:
                apply(old_pair[0], old_pair[1], None)
            if new_pair:
                apply(new_pair[0], None, new_pair[1])
        return _present(outputs)

    def _aggregate_windowed(self, record: InputRecord) -> list[OutputRecord]:
        if record.value is None:
            return []
        row = self._input_row(record)
        if row is None:
            return []
        key = self._group_key(row)
        if key is None:
            self.metrics.null_key_dropped += 1
            return []
        agg = self.plan.aggregation
        window = agg.window
        meta = self.stores.get("meta")
        windows = self.stores.get("windows")
        partition = record.partition
        stream_time = max(meta.get(("stream_time", partition), record.timestamp), record.timestamp)
        meta.put(("stream_time", partition), stream_time)
        close = stream_time - window.grace_ms
        wall_close = meta.get(("wall_close", partition))
        start = record.timestamp - record.timestamp % window.size_ms
        end = start + window.size_ms
        outputs = []
        if end > close and (wall_close is None or end > wall_close):
            store_key = (partition, start, _hashable(key))
            old = windows.get(store_key)
            states = old["aggs"] if old else self._initial()
            timestamp = max(record.timestamp, old["ts"]) if old else record.timestamp
            new = {"aggs": self._add(states, self._arguments(row)), "ts": timestamp, "key": list(key)}
            windows.put(store_key, new)
            max_start = meta.get(("max_start", partition))
            if max_start is None or start > max_start:
                meta.put(("max_start", partition), start)
            if not agg.emit_final:
                outputs.append(self._aggregate_output(key, new, start, old=old))
        else:
            self.metrics.late_records_dropped += 1
        if agg.emit_final:
            outputs += self._emit_closed_windows(partition, close)
        else:
            self._expire_windows(partition, close)
        return _present(outputs)

    def _expire_windows(self, partition: int, close: int) -> None:
        """Forget windows that can no longer change (end <= stream time - grace)."""
        windows = self.stores.get("windows")
        size = self.plan.aggregation.window.size_ms
        for store_key, _ in windows.items():
            if store_key[0] == partition and store_key[1] + size <= close:
                windows.delete(store_key)

    def _emit_closed_windows(self, partition: int, close: int) -> list[OutputRecord]:
        """Kafka Streams' emit-on-window-close for tumbling windows, per input partition.

        A window is emitted once stream time - grace reaches its end, in order of
        window start then key. As in Kafka Streams, windows older than the store's
        retention (size + grace behind the newest window) are dropped unemitted
        when stream time jumps past them.
        """
        window = self.plan.aggregation.window
        size = window.size_ms
        meta = self.stores.get("meta")
        windows = self.stores.get("windows")
        last_emit = meta.get(("last_emit_close", partition))
        if last_emit is not None and last_emit >= close:
            return []
        upper = close - size
        if upper < 0:
            return []
        lower = 0 if last_emit is None else max(0, last_emit - size) + 1
        if last_emit is not None and upper // size == (lower - 1) // size:
            return []
        max_start = meta.get(("max_start", partition), 0)
        horizon = max_start - size - window.grace_ms
        due = []
        for store_key, state in windows.items():
            p, start, _ = store_key
            key = tuple(state["key"])
            if p != partition:
                continue
            if start < horizon:
                windows.delete(store_key)
                self.metrics.expired_windows_dropped += 1
            elif lower <= start <= upper:
                due.append((start, self.sink_serdes.key.serialize(key) or b"", key, state, store_key))
        due.sort(key=lambda d: (d[0], d[1]))
        outputs = []
        for start, _, key, state, store_key in due:
            outputs.append(self._aggregate_output(key, state, start))
            windows.delete(store_key)
        meta.put(("last_emit_close", partition), close)
        return _present(outputs)


def row_builder(source: DataSource, prefix: str):
    """A function building the row of slots of a record of `source` (slot = prefix + column name).

    Made once per query: the per-record work is a few dict operations, in the
    column order of the source (key columns, value columns, pseudo columns).
    """
    key_slots = [prefix + c.name for c in source.key_columns]
    value_slots = [(prefix + c.name, c.name) for c in source.value_columns]
    rowtime, rowpartition, rowoffset = prefix + "ROWTIME", prefix + "ROWPARTITION", prefix + "ROWOFFSET"
    window_size = source.window.size_ms if source.window is not None else None
    windowstart, windowend = prefix + "WINDOWSTART", prefix + "WINDOWEND"

    def build(record: InputRecord) -> dict[str, Any]:
        row = dict(zip(key_slots, record.key))
        get = record.value.get
        for slot, name in value_slots:
            row[slot] = get(name)
        row[rowtime] = record.timestamp
        row[rowpartition] = record.partition
        row[rowoffset] = record.offset
        if window_size is not None and record.window_start is not None:
            row[windowstart] = record.window_start
            row[windowend] = record.window_start + window_size
        return row

    return build


def _none(_row):
    return None


_NONE = Compiled(_none, None)  # the argument of an argument-less aggregate call, e.g. COUNT(*)


def _present(outputs: list) -> list[OutputRecord]:
    return [o for o in outputs if o is not None]


def _hashable(key: tuple) -> tuple:
    """A store key for a group key whose parts may be STRUCT/MAP/ARRAY values."""
    for v in key:  # a plain loop: this runs for every aggregated record
        if isinstance(v, (dict, list)):
            break
    else:
        return key

    def freeze(v):
        if isinstance(v, dict):
            return tuple(sorted((k, freeze(x)) for k, x in v.items()))
        if isinstance(v, list):
            return tuple(freeze(x) for x in v)
        return v

    return tuple(freeze(v) for v in key)


def _int(text) -> int:
    try:
        return int(str(text))
    except ValueError:
        return 0
