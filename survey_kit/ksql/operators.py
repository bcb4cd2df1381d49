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

import functools
import re
from dataclasses import dataclass, field
from operator import attrgetter, call
from typing import Any, Callable

from .expressions import Compiled, dict_evaluator, evaluate_safely, tuple_evaluator
from .formats import KeyFormat, ValueFormat
from .planner import DataSource, QueryPlan
from .state import Stores
from .types import KsqlError

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
    # rows already built from this record, by slot prefix (joined rows by the pair of prefixes, with the
    # table row they joined): queries reading the same record share them
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


def check_property(name: str, value: str) -> None:
    """Reject a value the queries could not use for a property they read, as ksqlDB checks those of its own."""
    if name == CACHE_BYTES and not re.fullmatch(r"\d+", str(value).strip()):
        raise KsqlError(f"Invalid value {value} for configuration {name}: Not a number of type LONG (a size in bytes, 0 to turn the cache off).")
    if name == EMIT_FINAL_WALL_CLOCK and str(value).strip().lower() not in ("true", "false"):
        raise KsqlError(f"Invalid value {value} for configuration {name}: Expected value to be either true or false.")


def query_settings(plan: QueryPlan, properties: dict[str, str]) -> dict[str, str]:
    """The properties that change what this query emits, with the values it would run with under `properties`.

    Wall-clock closing for EMIT FINAL, the record cache for other aggregations; none for projections. A
    CREATE ... IF NOT EXISTS of a running query compares them, since it keeps the running query's.
    """
    agg = plan.aggregation
    if agg is None:
        return {}
    if agg.emit_final:
        return {EMIT_FINAL_WALL_CLOCK: "true" if str(properties.get(EMIT_FINAL_WALL_CLOCK, "false")).lower() == "true" else "false"}
    return {CACHE_BYTES: str(max(_int(properties.get(CACHE_BYTES, "0")), 0))}


def _truthy(fn, row) -> bool:
    return evaluate_safely(fn, row) is True


class PersistentQuery:
    """One running CREATE ... AS SELECT: its operators and its state.

    Records go in by batches (`process_batch`): each operator is one loop over
    a batch, with what it needs per record looked up once per batch. Aggregate
    states are copied once per key and batch and then updated in place, and
    when no update is read one by one, a key's arguments are added at once
    (see the aggregation section), so a batch of updates to few keys costs
    little more than gathering them.
    """

    def __init__(self, plan: QueryPlan, sink_serdes: Serdes, properties: dict[str, str], source_serdes: Serdes | None = None):
        self.plan = plan
        self.sink_serdes = sink_serdes
        self.stores = Stores()
        self.metrics = QueryMetrics()
        self.settings = query_settings(plan, properties)
        self.wall_clock_close = self.settings.get(EMIT_FINAL_WALL_CLOCK) == "true"  # EMIT FINAL only
        self.caching = int(self.settings.get(CACHE_BYTES, "0")) > 0  # other aggregations only
        self.overridden_properties: dict[str, str] = {}  # set by the engine (EXPLAIN shows them)
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
        self._join = plan.join
        if plan.join is not None:
            self._table_prefix = plan.slot_prefix[plan.join.table_alias]
            self._build_table_row = row_builder(plan.join.table, self._table_prefix)
            self._join_key_of = plan.join.stream_key.fn
            self._join_key_slot = plan.join.stream_key.slot  # a plain column: read it, no evaluation
            self._no_table_row = _null_row(tuple(self._table_prefix + c.name for c in plan.join.table.columns))
            self._joined_slot = (self._source_prefix, self._table_prefix)  # where a record's joined row is kept (see _input_rows)
        self._where = plan.where.fn if plan.where is not None else None
        if plan.aggregation is not None:
            agg = plan.aggregation
            self._group_of = tuple_evaluator(agg.group_by)
            # group keys of plain types are store keys as they are; STRUCT/MAP/ARRAY parts (or unknown types) are frozen
            self._freeze = _hashable if any(g.type is None or g.type.base in ("STRUCT", "MAP", "ARRAY") for g in agg.group_by) else None
            self._arguments_of = tuple_evaluator([c.argument or _NONE for c in agg.calls])
            self._inits = [c.aggregate.init for c in agg.calls]
            self._copiers = [c.aggregate.copy for c in agg.calls]
            self._adders = [c.aggregate.add for c in agg.calls]
            # (index, add_all) of each aggregate call; those changing their state in place last (see `_fold`)
            self._folders = sorted(enumerate(c.aggregate.add_all for c in agg.calls), key=lambda f: agg.calls[f[0]].aggregate.changes_in_place)
            self._undoers = [c.aggregate.undo for c in agg.calls]
            self._results = [(f"__a{j}", c.aggregate.result) for j, c in enumerate(agg.calls)]
            self._key_slots = [f"__k{i}" for i in range(len(agg.group_by))]
            self._window_size = agg.window.size_ms if agg.window is not None else None
            self._having = agg.having.fn if agg.having is not None else None
        self._copy_value = self._value_copier(source_serdes)
        # the operator for this kind of query, chosen once
        if plan.aggregation is None:
            self._run = self._project_stream
        elif plan.aggregation.table_source:
            self._run = self._aggregate_table
        elif plan.aggregation.window is None:
            self._run = self._aggregate_stream
        else:
            self._run = self._aggregate_windowed
        # EMIT CHANGES windows: per partition, the stream time - grace at which closed windows are next forgotten
        # (memory only: after a restart the first record scans the store)
        self._next_expiry: dict[int, int] = {}

    @property
    def query_id(self) -> str:
        return self.plan.query_id

    @property
    def source_topics(self) -> list[str]:
        return self.plan.source_topics

    # ------------------------------------------------------------ entry points

    def process_batch(self, source: DataSource, records: list[InputRecord], outputs: list[OutputRecord]) -> list[tuple[InputRecord, Exception]]:
        """Run the query over `records` of `source`, in order; append what it produces to `outputs`.

        Returns the records it failed on, each with its error: a failing record
        never stops the others. The outputs are those of processing the records
        one by one, in the same order.
        """
        metrics = self.metrics
        metrics.processed += len(records)
        emitted_before = len(outputs)
        failures: list[tuple[InputRecord, Exception]] = []
        join = self._join
        if join is not None and source is join.table:
            self._update_join_table(records, failures)
        else:
            self._run(records, outputs, failures)
        metrics.emitted += len(outputs) - emitted_before
        return failures

    def process(self, source: DataSource, record: InputRecord) -> list[OutputRecord]:
        """`process_batch` for one record; its error, if any, is raised."""
        outputs: list[OutputRecord] = []
        failures = self.process_batch(source, [record], outputs)
        if failures:
            raise failures[0][1]
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
                timestamp = state["ts"]
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
        outputs: list[OutputRecord] = []
        partitions = {k[0] for k, _ in windows.items()}
        for partition in sorted(partitions):
            due = sorted(
                ((start, key), state) for (p, start, key), state in windows.items() if p == partition and start + window.size_ms <= close
            )
            for (start, key), state in due:
                self._emit_update(tuple(state["key"]), state, start, False, outputs)
                windows.delete((partition, start, key))
            wall = meta.get(("wall_close", partition))
            if wall is None or close > wall:
                meta.put(("wall_close", partition), close)
        self.metrics.emitted += len(outputs)
        return outputs

    # ------------------------------------------------------------ rows

    def _input_rows(self, records: list[InputRecord], failures: list) -> zip:
        """The stream records that carry a value, each with its row: joined with the table, kept by WHERE.

        (record, row) pairs, made by zipping two lists (a pair is then not an allocation per record).

        A record's own row is built once and shared by the queries reading it
        (`InputRecord.rows`, by slot prefix): it is never changed. A join makes
        a new row, shared too by the queries that join the record with the same
        table row object (their join tables hold the rows built once from the
        table's records).
        """
        prefix, build = self._source_prefix, self._build_source_row
        join, where = self._join, self._where
        if join is not None:
            table_get = self.stores.get("join_table").get
            join_key_slot, join_key_of = self._join_key_slot, self._join_key_of
            no_table_row, inner, joined_slot = self._no_table_row, join.kind == "INNER", self._joined_slot
        kept: list[InputRecord] = []
        kept_rows: list[dict] = []
        keep, keep_row = kept.append, kept_rows.append
        for record in records:
            if record.value is None:  # a null value is no event on a stream
                continue
            try:
                rows = record.rows
                row = rows.get(prefix)
                if row is None:
                    row = rows[prefix] = build(record)
                if join is not None:
                    join_key = row.get(join_key_slot) if join_key_slot is not None else evaluate_safely(join_key_of, row)
                    table_row = table_get((join_key,)) if join_key is not None else None
                    if table_row is None:
                        if inner:
                            continue
                        table_row = no_table_row
                    joined = rows.get(joined_slot)  # (table row, joined row)
                    if joined is None or joined[0] is not table_row:
                        joined = rows[joined_slot] = (table_row, {**row, **table_row})
                    row = joined[1]
                if where is not None and evaluate_safely(where, row) is not True:
                    continue
                keep(record)
                keep_row(row)
            except Exception as exc:
                failures.append((record, exc))
        return zip(kept, kept_rows)

    def _update_join_table(self, records: list[InputRecord], failures: list) -> None:
        """Keep the joined table's rows by key (a null value deletes the row)."""
        table = self.stores.get("join_table")
        prefix, build = self._table_prefix, self._build_table_row
        for record in records:
            try:
                if not record.key or record.key[0] is None:
                    self.metrics.null_key_dropped += 1
                    continue
                if record.value is None:
                    table.delete(record.key)
                    continue
                rows = record.rows
                row = rows.get(prefix)
                if row is None:
                    row = rows[prefix] = build(record)
                table.put(record.key, row)
            except Exception as exc:
                failures.append((record, exc))

    def _serialize(self, key: tuple, value: dict | None, timestamp: int, window_start: int | None) -> OutputRecord:
        return OutputRecord(self._sink_topic, self._serialize_key(key, window_start), self._serialize_value(value), timestamp)

    # ------------------------------------------------------------ stream projection

    def _value_copier(self, source_serdes: Serdes | None):
        """For a projection of plain value columns of a source without key columns, with no join or filter: the
        sink format's function writing its value from the bytes of a source value (`AvroFormat.copier`), or None."""
        plan = self.plan
        if source_serdes is None or plan.aggregation is not None or plan.join is not None or plan.where is not None:
            return None
        if plan.source.key_columns or plan.source.window is not None or plan.sink.key_columns or plan.sink.window is not None:
            return None  # a key to read (whose reading may fail) or to write
        value_columns = {self._source_prefix + c.name: c.name for c in plan.source.value_columns}
        columns = [value_columns.get(c.slot) for c in plan.value_projection]
        if None in columns:
            return None  # a computed value, or a pseudo column
        return self.sink_serdes.value.copier(source_serdes.value, columns)

    @property
    def copies_values(self) -> bool:
        """Whether this query can take its source's records undecoded (`process_values`)."""
        return self._copy_value is not None

    def process_values(self, records: list[tuple], decode: Callable[[int], InputRecord | None], outputs: list[OutputRecord]) -> list[tuple[int, Exception]]:
        """`process_batch` for a query that `copies_values`, over undecoded records of its source.

        `records` are (topic, partition, offset, timestamp, key, value, ...)
        tuples. Most values are copied as bytes, without being decoded
        (decoding, building a row and writing the columns again cost ~3 µs a
        record; copying ~1.2 µs); `decode(i)` gives the `InputRecord` of the
        others, or None for a record that cannot be read (the caller has made
        it a dead letter), and they are processed as `process_batch` does.
        Returns the indexes of the records it failed on, each with its error.
        """
        copy, topic, emit = self._copy_value, self._sink_topic, outputs.append
        key = self._serialize_key((), None)
        emitted_before = len(outputs)
        failures: list[tuple[int, Exception]] = []
        processed = 0
        for index, record in enumerate(records):
            data = record[5]
            value = copy(data) if data is not None else None
            if value is not None:
                processed += 1
                emit(OutputRecord(topic, key, value, record[3]))
                continue
            decoded = decode(index)
            if decoded is None:
                continue
            processed += 1
            failed: list[tuple[InputRecord, Exception]] = []
            self._project_stream([decoded], outputs, failed)
            failures += [(index, exc) for _, exc in failed]
        self.metrics.processed += processed
        self.metrics.emitted += len(outputs) - emitted_before
        return failures

    def _project_stream(self, records: list[InputRecord], outputs: list[OutputRecord], failures: list) -> None:
        # a projection never goes through the record cache (only aggregations do): serialize directly
        topic, key_of, value_of = self._sink_topic, self._key_of, self._value_of
        serialize_key, serialize_value = self._serialize_key, self._serialize_value
        emit = outputs.append
        sink = self.plan.sink
        # a sink without key columns (and no window): every record has the same key bytes (none), made once
        fixed_key = not sink.key_columns and sink.window is None
        key_bytes = serialize_key((), None) if fixed_key else None
        for record, row in self._input_rows(records, failures):
            try:
                key = key_bytes if fixed_key else serialize_key(key_of(row), record.window_start)
                emit(OutputRecord(topic, key, serialize_value(value_of(row)), record.timestamp))
            except Exception as exc:
                failures.append((record, exc))

    # ------------------------------------------------------------ aggregation
    #
    # The updates of one key within a batch gather in a `_KeyUpdates`: the key's state, owned by the batch
    # (copied once from the store, then changed in place), and the records not yet added to it. When
    # nothing reads the state per update (EMIT FINAL, which emits at window close; the record cache
    # without HAVING, which keeps the latest update per key) the records are added at once at the end of
    # the batch (or before windows close), each aggregate folding its values in one call; otherwise they
    # are added and emitted record by record.

    def _folds_per_batch(self) -> bool:
        agg = self.plan.aggregation
        return agg.emit_final or (self.caching and agg.having is None)

    def _key_updates(self, store, store_key: tuple, key: tuple, window_start: int | None, timestamp: int) -> _KeyUpdates:
        """The updates of `key` in this batch, with a state of its own put in `store`.

        The state is a copy of the stored one (others may hold that one: the
        record cache, the changelog, an output not yet serialized), or a new
        state stamped `timestamp`: copied once per key per batch.
        """
        stored = store.get(store_key)
        if stored is None:
            state = {"aggs": [init() for init in self._inits], "ts": timestamp, "key": list(key)}
        else:
            state = {"aggs": [copy(s) for copy, s in zip(self._copiers, stored["aggs"])], "ts": stored["ts"], "key": stored["key"]}
        store.put(store_key, state)
        return _KeyUpdates(key, window_start, state, stored is not None)

    def _gather(self, updates: dict, store, store_key: tuple, key: tuple, window_start: int | None, record: InputRecord, row: dict) -> _KeyUpdates:
        """Note the record's update of `key` (its aggregate arguments); `updates` keeps keys in order of their latest update."""
        entry = updates.pop(store_key, None)
        if entry is None:
            entry = self._key_updates(store, store_key, key, window_start, record.timestamp)
        updates[store_key] = entry
        entry.arguments.append(self._arguments_of(row))
        entry.records.append(record)
        return entry

    def _fold(self, entry: _KeyUpdates, failures: list) -> bool:
        """Add the entry's pending records to its state, in order; whether any was added.

        Each aggregate adds its values in one call (`Aggregate.add_all`); the
        state's timestamp becomes the latest of the records. When a record
        makes an aggregate fail, the records are added again one by one and the
        failing ones left out (reported in `failures`), as if never seen: the
        aggregates that change their state in place (HISTOGRAM, which cannot
        fail on its STRING values) come last, so the failure comes before the
        state changed.
        """
        arguments, records = entry.arguments, entry.records
        if not records:
            return False
        entry.arguments, entry.records = [], []
        state = entry.state
        try:
            self._add_all(state, arguments, records)
        except Exception:
            added = False
            for one, record in zip(arguments, records):
                try:
                    self._add_all(state, [one], [record])
                    added = True
                except Exception as exc:
                    failures.append((record, exc))
            if not added:
                return False
        entry.existed = True
        return True

    def _add_all(self, state: dict, arguments: list[tuple], records: list[InputRecord]) -> None:
        """Add the records' aggregate arguments to `state` (see `_fold`)."""
        values = list(zip(*arguments))  # per aggregate call, its values in record order
        aggs = state["aggs"][:]
        for j, add_all in self._folders:
            aggs[j] = add_all(aggs[j], values[j])
        state["aggs"] = aggs
        latest = max(map(_timestamp, records))
        if latest > state["ts"]:
            state["ts"] = latest

    def _update(self, entry: _KeyUpdates, outputs: list[OutputRecord], failures: list) -> None:
        """Add an entry's pending record to its state and emit the update (HAVING sees the value before and after)."""
        old_passed = self._having is not None and entry.existed and self._passes_having(entry.key, entry.state, entry.window_start)
        if self._fold(entry, failures):
            self._emit_update(entry.key, entry.state, entry.window_start, old_passed, outputs)

    def _fold_all(self, updates: dict, outputs: list[OutputRecord] | None, failures: list) -> None:
        """Add every entry's pending records; emit each key's update when `outputs` is given (to the record cache)."""
        for entry in updates.values():
            if self._fold(entry, failures) and outputs is not None:
                self._emit_update(entry.key, entry.state, entry.window_start, False, outputs)

    def _post_row(self, key: tuple, state: dict, window_start: int | None) -> dict[str, Any]:
        post: dict[str, Any] = dict(zip(self._key_slots, key))
        for (slot, result), s in zip(self._results, state["aggs"]):
            post[slot] = result(s)
        if window_start is not None:
            post["WINDOWSTART"] = window_start
            post["WINDOWEND"] = window_start + self._window_size
        return post

    def _passes_having(self, key: tuple, state: dict, window_start: int | None) -> bool:
        return self._having is None or _truthy(self._having, self._post_row(key, state, window_start))

    def _emit_update(self, key: tuple, state: dict, window_start: int | None, old_passed: bool, outputs: list[OutputRecord]) -> None:
        """Write an aggregate's new state to the sink, or hand it to the record cache.

        When HAVING rejects the new value, a tombstone retracts the key if its
        previous value was in the table (`old_passed`), and nothing is written
        otherwise (as ksqlDB's table filter does). Without HAVING, the record
        cache keeps the state itself and computes the value at the flush, once
        per key (the state may still change in place within the batch: the
        value is the latest).
        """
        if self._having is None:
            if self.caching:
                self._cache_put(key, window_start, (key, None, None, window_start, state))
            else:
                outputs.append(self._serialize(key, self._value_of(self._post_row(key, state, window_start)), state["ts"], window_start))
            return
        post = self._post_row(key, state, window_start)
        if _truthy(self._having, post):
            value = self._value_of(post)
        elif old_passed:
            value = None
        else:
            return
        if self.caching:
            self._cache_put(key, window_start, (key, value, state["ts"], window_start, None))
        else:
            outputs.append(self._serialize(key, value, state["ts"], window_start))

    def _cache_put(self, key: tuple, window_start: int | None, entry: tuple) -> None:
        cache_key = (_hashable(key), window_start)
        cache = self._cache
        cache.pop(cache_key, None)  # re-inserted last: updates leave in the order of their latest change
        cache[cache_key] = entry

    def _aggregate_stream(self, records: list[InputRecord], outputs: list[OutputRecord], failures: list) -> None:
        store = self.stores.get("aggregates")
        group_of, freeze, gather, update = self._group_of, self._freeze, self._gather, self._update
        per_batch = self._folds_per_batch()
        updates: dict[tuple, _KeyUpdates] = {}
        metrics = self.metrics
        for record, row in self._input_rows(records, failures):
            try:
                key = group_of(row)
                if None in key:
                    metrics.null_key_dropped += 1
                    continue
                entry = gather(updates, store, key if freeze is None else freeze(key), key, None, record, row)
                if not per_batch:
                    update(entry, outputs, failures)
            except Exception as exc:
                failures.append((record, exc))
        self._fold_all(updates, outputs, failures)

    def _aggregate_table(self, records: list[InputRecord], outputs: list[OutputRecord], failures: list) -> None:
        """Aggregate a table: a changed row retracts its old value (undo) before adding its new one, record by record."""
        table = self.stores.get("source_table")
        store = self.stores.get("aggregates")
        prefix, build = self._source_prefix, self._build_source_row
        updates: dict[tuple, _KeyUpdates] = {}

        def grouped(row):
            """(group key, aggregate arguments) of a table row, or None when WHERE drops it or its key has a NULL."""
            if row is None or (self._where is not None and not _truthy(self._where, row)):
                return None
            key = self._group_of(row)
            return None if None in key else (key, self._arguments_of(row))

        def apply(key, subtract, add, timestamp):
            store_key = _hashable(key)
            entry = updates.get(store_key)
            if entry is None:
                entry = updates[store_key] = self._key_updates(store, store_key, key, None, timestamp)
            state = entry.state
            old_passed = self._having is not None and entry.existed and self._passes_having(key, state, None)
            aggs = state["aggs"]
            if subtract is not None and entry.existed:
                aggs = list(map(call, self._undoers, aggs, subtract))
            if add is not None:
                aggs = list(map(call, self._adders, aggs, add))
            state["aggs"] = aggs
            if timestamp > state["ts"]:
                state["ts"] = timestamp
            entry.existed = True
            self._emit_update(key, state, None, old_passed, outputs)

        for record in records:
            try:
                if not record.key or None in record.key:
                    self.metrics.null_key_dropped += 1
                    continue
                old_row = table.get(record.key)
                new_row = None
                if record.value is not None:
                    rows = record.rows
                    new_row = rows.get(prefix)
                    if new_row is None:
                        new_row = rows[prefix] = build(record)
                    table.put(record.key, new_row)
                else:
                    table.delete(record.key)
                old, new = grouped(old_row), grouped(new_row)
                if old and new and old[0] == new[0]:
                    apply(new[0], old[1], new[1], record.timestamp)
                else:
                    if old:
                        apply(old[0], old[1], None, record.timestamp)
                    if new:
                        apply(new[0], None, new[1], record.timestamp)
            except Exception as exc:
                failures.append((record, exc))

    def _aggregate_windowed(self, records: list[InputRecord], outputs: list[OutputRecord], failures: list) -> None:
        """Tumbling-window aggregation with stream time per input partition.

        A record for a window that stream time - grace (or the wall clock) has
        closed is dropped and counted. EMIT FINAL emits closed windows as stream
        time passes their end; EMIT CHANGES emits every update and forgets
        closed windows. Either scans the window store only when stream time -
        grace reaches a window end it had not reached (windows start at
        multiples of their size), not per record.
        """
        window = self.plan.aggregation.window
        size, grace = window.size_ms, window.grace_ms
        emit_final = self.plan.aggregation.emit_final
        per_batch = self._folds_per_batch()
        updated = None if emit_final else outputs  # where a folded update goes: nowhere before its window closes (EMIT FINAL)
        meta = self.stores.get("meta")
        windows = self.stores.get("windows")
        group_of, freeze, gather, update = self._group_of, self._freeze, self._gather, self._update
        metrics = self.metrics
        updates: dict[tuple, _KeyUpdates] = {}
        # the clock of the partition being read, in locals; written to `meta` when the partition changes,
        # before a window store scan and at the end
        partition = None
        stream_time = max_start = wall_close = next_scan = None
        for record, row in self._input_rows(records, failures):
            try:
                key = group_of(row)
                if None in key:
                    metrics.null_key_dropped += 1
                    continue
                if record.partition != partition:
                    if partition is not None:
                        self._save_clock(meta, partition, stream_time, max_start)
                    partition = record.partition
                    stream_time = meta.get(("stream_time", partition))
                    max_start = meta.get(("max_start", partition))
                    wall_close = meta.get(("wall_close", partition))
                    if emit_final:
                        last_emit = meta.get(("last_emit_close", partition))
                        next_scan = size if last_emit is None else _next_window_end(last_emit, size)
                    else:
                        next_scan = self._next_expiry.get(partition)
                timestamp = record.timestamp
                if stream_time is None or timestamp > stream_time:
                    stream_time = timestamp
                close = stream_time - grace
                start = timestamp - timestamp % size
                end = start + size
                if end > close and (wall_close is None or end > wall_close):
                    entry = gather(updates, windows, (partition, start, key if freeze is None else freeze(key)), key, start, record, row)
                    if max_start is None or start > max_start:
                        max_start = start
                    if not per_batch:
                        update(entry, outputs, failures)
                else:
                    metrics.late_records_dropped += 1
                if next_scan is None or close >= next_scan:
                    next_scan = _next_window_end(close, size)
                    self._fold_all(updates, updated, failures)  # the scan reads or forgets states: add what is pending first
                    if emit_final:
                        self._save_clock(meta, partition, stream_time, max_start)
                        self._emit_closed_windows(partition, close, updates, outputs)
                    else:
                        self._next_expiry[partition] = next_scan
                        self._expire_windows(partition, close, updates)
            except Exception as exc:
                failures.append((record, exc))
        self._fold_all(updates, updated, failures)
        if partition is not None:
            self._save_clock(meta, partition, stream_time, max_start)

    @staticmethod
    def _save_clock(meta, partition: int, stream_time: int | None, max_start: int | None) -> None:
        """Write a partition's stream time and newest window start to `meta`, when they changed."""
        if stream_time is not None and meta.get(("stream_time", partition)) != stream_time:
            meta.put(("stream_time", partition), stream_time)
        if max_start is not None and meta.get(("max_start", partition)) != max_start:
            meta.put(("max_start", partition), max_start)

    def _expire_windows(self, partition: int, close: int, owned: dict) -> None:
        """Forget the partition's windows that can no longer change (end <= stream time - grace)."""
        windows = self.stores.get("windows")
        size = self.plan.aggregation.window.size_ms
        for store_key, _ in windows.items():
            if store_key[0] == partition and store_key[1] + size <= close:
                windows.delete(store_key)
                owned.pop(store_key, None)

    def _emit_closed_windows(self, partition: int, close: int, owned: dict, outputs: list[OutputRecord]) -> None:
        """Kafka Streams' emit-on-window-close for tumbling windows, per input partition.

        Called when `close` (stream time - grace) reaches a window end it had not
        reached at the last call. A window is emitted once close reaches its end,
        in order of window start then key. As in Kafka Streams, windows older
        than the store's retention (size + grace behind the newest window) are
        dropped unemitted when stream time jumps past them.
        """
        window = self.plan.aggregation.window
        size = window.size_ms
        meta = self.stores.get("meta")
        windows = self.stores.get("windows")
        last_emit = meta.get(("last_emit_close", partition))
        upper = close - size
        lower = 0 if last_emit is None else max(0, last_emit - size) + 1
        max_start = meta.get(("max_start", partition), 0)
        horizon = max_start - size - window.grace_ms
        due = []
        for store_key, state in windows.items():
            p, start, _ = store_key
            if p != partition:
                continue
            key = tuple(state["key"])
            if start < horizon:
                windows.delete(store_key)
                owned.pop(store_key, None)
                self.metrics.expired_windows_dropped += 1
            elif lower <= start <= upper:
                due.append((start, self.sink_serdes.key.serialize(key) or b"", key, state, store_key))
        due.sort(key=lambda d: (d[0], d[1]))
        for start, _, key, state, store_key in due:
            self._emit_update(key, state, start, False, outputs)
            windows.delete(store_key)
            owned.pop(store_key, None)
        meta.put(("last_emit_close", partition), close)


def _next_window_end(close: int, size: int) -> int:
    """The first window end after `close` (windows are epoch-aligned: they end at multiples of `size`)."""
    return (close // size + 1) * size


def row_builder(source: DataSource, prefix: str):
    """A function building the row of slots of a record of `source` (slot = prefix + column name).

    Made once per query: the per-record work is a few dict operations. Without
    a prefix, the row starts as a copy of the decoded value, whose keys are the
    value columns' names (one C-level copy instead of a store per column); the
    key and pseudo columns are then added.
    """
    key_slots = [prefix + c.name for c in source.key_columns]
    value_slots = [(prefix + c.name, c.name) for c in source.value_columns]
    # a value of as many fields as the source has value columns is copied (a formats' deserializer
    # gives exactly the columns); any other value, column by column, a missing column as NULL
    copied_size = len(value_slots) if prefix == "" else -1
    rowtime, rowpartition, rowoffset = prefix + "ROWTIME", prefix + "ROWPARTITION", prefix + "ROWOFFSET"
    window_size = source.window.size_ms if source.window is not None else None
    windowstart, windowend = prefix + "WINDOWSTART", prefix + "WINDOWEND"

    def build(record: InputRecord) -> dict[str, Any]:
        value = record.value
        if len(value) == copied_size:
            row = value.copy()
        else:
            get = value.get
            row = {slot: get(name) for slot, name in value_slots}
        if key_slots:
            for slot, part in zip(key_slots, record.key):
                row[slot] = part
        row[rowtime] = record.timestamp
        row[rowpartition] = record.partition
        row[rowoffset] = record.offset
        if window_size is not None and record.window_start is not None:
            row[windowstart] = record.window_start
            row[windowend] = record.window_start + window_size
        return row

    return build


@functools.cache
def _null_row(slots: tuple[str, ...]) -> dict[str, None]:
    """The slots of a missing table row (LEFT JOIN), one object per set of slots: queries share the joined rows."""
    return dict.fromkeys(slots)


class _KeyUpdates:
    """One aggregation key's updates within a batch: its state, owned by the batch, and the records not yet added."""

    __slots__ = ("key", "window_start", "state", "existed", "arguments", "records")

    def __init__(self, key: tuple, window_start: int | None, state: dict, existed: bool):
        self.key = key
        self.window_start = window_start
        self.state = state
        self.existed = existed  # whether the key had a value before the pending records (HAVING retracts only then)
        self.arguments: list[tuple] = []  # the aggregate arguments of each pending record
        self.records: list[InputRecord] = []


_timestamp = attrgetter("timestamp")


def _none(_row):
    return None


_NONE = Compiled(_none, None)  # the argument of an argument-less aggregate call, e.g. COUNT(*)


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
