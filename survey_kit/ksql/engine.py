"""The embedded ksqlDB-compatible engine: statements in, persistent queries running.

    engine = Engine(schemas=InMemorySchemaStore())
    engine.execute(open("ksql/01_survey_entries.sql").read())
    outputs = engine.process("survey-entries", 0, 42, ts, key_bytes, value_bytes)
    outputs += engine.process_batch(fetched)  # many (topic, partition, offset, ts, key, value) at once
    outputs += engine.punctuate(now_ms)   # wall-clock work (opt-in EMIT FINAL closing)
    outputs += engine.flush()             # at commit: updates held by the record cache
    changes = engine.drain_changes()      # state changes to write to a changelog

The engine is pure: it never talks to Kafka. A runtime consumes
`engine.source_topics()`, calls `process_batch` per fetch (or `process` per
record: the same outputs per topic, slower), produces the returned
`OutputRecord`s (dead letters included, flagged `dead_letter`), and commits
them with the input offsets and the drained state changes in one transaction.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import operator
from dataclasses import dataclass, field

from . import ast
from .formats import AvroFormat, KeyFormat, RecordError, SchemaStore, value_format
from .operators import EMIT_FINAL_WALL_CLOCK, InputRecord, OutputRecord, PersistentQuery, Serdes, check_property, query_settings
from .parser import StatementText, parse_statement, split_statements, substitute
from .planner import DataSource, create_source, plan_query
from .types import KsqlError

DEAD_LETTER_TOPIC = "survey_kit.dead.letter.topic"
DEFAULT_DEAD_LETTER_TOPIC = "ksql-dead-letters"
_topic_of = operator.itemgetter(0)


@dataclass
class StatementResult:
    """What one statement did: a message, and rows for SHOW / DESCRIBE."""

    statement: str
    message: str
    rows: list[dict] = field(default_factory=list)


@dataclass
class EngineMetrics:
    dead_letters: int = 0
    records_in: int = 0


class Engine:
    """Runs ksqlDB statements and the persistent queries they create.

    `schemas` is the schema store used for AVRO (inference and serialization);
    `properties` are ksqlDB properties (as with SET), e.g.
    `ksql.streams.cache.max.bytes.buffering` or `survey_kit.emit.final.wall.clock`.
    """

    def __init__(self, schemas: SchemaStore | None = None, properties: dict[str, str] | None = None, variables: dict[str, str] | None = None):
        self.schemas = schemas
        self.properties: dict[str, str] = dict(properties or {})
        self._default_properties = dict(self.properties)
        self.variables: dict[str, str] = {k.lower(): v for k, v in (variables or {}).items()}
        self.sources: dict[str, DataSource] = {}
        self.queries: dict[str, PersistentQuery] = {}
        self.metrics = EngineMetrics()
        self._serdes: dict[str, Serdes] = {}
        self._query_counter = 0
        self._readers: dict[str, list[tuple[PersistentQuery, DataSource]]] = {}
        self._readers_key: tuple = ()
        self._running: frozenset[str] | None = None  # None: every query runs here

    def run_only(self, query_ids) -> None:
        """Run only the queries `query_ids` in this engine (None: all of them, the default).

        The others stay defined, so statements, SHOW and DESCRIBE see the whole
        pipeline; another engine (a worker process of the runtime) runs them.
        A query created later runs only once named here.
        """
        self._running = None if query_ids is None else frozenset(query_ids)

    def running_queries(self) -> list[PersistentQuery]:
        """The queries this engine runs (see `run_only`), in creation order."""
        if self._running is None:
            return list(self.queries.values())
        return [q for q in self.queries.values() if q.query_id in self._running]

    # ------------------------------------------------------------ statements

    def execute(self, script: str) -> list[StatementResult]:
        """Run every statement of `script` in order; raise KsqlError at the first failing one."""
        results = []
        for piece in split_statements(script):
            text = substitute(piece.text, self.variables)
            statement = parse_statement(StatementText(text, piece.line, piece.column))
            try:
                results.append(self.execute_statement(statement))
            except KsqlError as exc:
                raise KsqlError(f"{exc}\nStatement at {statement.position}: {statement.text}") from None
        return results

    def execute_statement(self, statement: ast.Statement) -> StatementResult:
        text = statement.text
        if isinstance(statement, ast.Define):
            self.variables[statement.name] = statement.value
            return StatementResult(text, f"Defined variable {statement.name}.")
        if isinstance(statement, ast.Undefine):
            self.variables.pop(statement.name, None)
            return StatementResult(text, f"Undefined variable {statement.name}.")
        if isinstance(statement, ast.SetProperty):
            check_property(statement.name, statement.value)
            self.properties[statement.name] = statement.value
            return StatementResult(text, f"Property {statement.name} set to {statement.value}.")
        if isinstance(statement, ast.UnsetProperty):
            self.properties.pop(statement.name, None)
            return StatementResult(text, f"Property {statement.name} unset.")
        if isinstance(statement, ast.CreateSource):
            return self._create_source(statement)
        if isinstance(statement, ast.CreateAsSelect):
            return self._create_as_select(statement)
        if isinstance(statement, ast.Drop):
            return self._drop(statement)
        if isinstance(statement, ast.Show):
            return self._show(statement)
        if isinstance(statement, ast.Describe):
            return self._describe(statement)
        if isinstance(statement, ast.Explain):
            return self._explain(statement)
        if isinstance(statement, ast.Terminate):
            return self._terminate(statement)
        raise KsqlError(f"Unsupported statement at {statement.position}: {text}")

    def _existing(self, kind: str, name: str, if_not_exists: bool, or_replace: bool, text: str = "") -> StatementResult | None:
        existing = self.sources.get(name)
        if existing is None:
            return None
        if if_not_exists:
            message = f"{existing.kind.capitalize()} {name} already exists; nothing to do."
            if text and existing.statement and text.split() != existing.statement.split():
                # e.g. `ksql apply --define` with another window: IF NOT EXISTS keeps the old one, silently in ksqlDB
                message += (f" It was created by a different statement, which stays in force: DROP "
                            f"{existing.kind} {name}; first to replace it.")
            elif existing.written_by in self.queries:
                # the same statement with other properties, e.g. without wall-clock closing: that too stays
                query = self.queries[existing.written_by]
                requested = query_settings(query.plan, self.properties)
                changed = [f"{key} = {value} (this request: {requested[key]})"
                           for key, value in query.settings.items() if requested.get(key) != value]
                if changed:
                    message += (f" Its query runs with {', '.join(changed)}, which stays in force: DROP "
                                f"{existing.kind} {name}; first to change it.")
            return StatementResult("", message)
        if or_replace and existing.kind == kind:
            return None
        raise KsqlError(f"Cannot add {kind.lower()} '{name}': A {existing.kind.lower()} with the same name already exists")

    def _create_source(self, statement: ast.CreateSource) -> StatementResult:
        skipped = self._existing(statement.kind, statement.name, statement.if_not_exists, statement.or_replace, statement.text)
        if skipped:
            return StatementResult(statement.text, skipped.message)
        source = create_source(statement, self.schemas)
        self._register(source)
        return StatementResult(statement.text, f"{source.kind.capitalize()} created")

    def _register(self, source: DataSource) -> None:
        windowed = source.window is not None
        self._serdes[source.name] = Serdes(
            KeyFormat(source.key_format, source.key_columns, windowed=windowed, topic=source.topic, store=self.schemas),
            value_format(source.value_format, source.value_columns, source.topic, self.schemas, source.avro_full_name),
        )
        self.sources[source.name] = source

    def _create_as_select(self, statement: ast.CreateAsSelect) -> StatementResult:
        existing = self.sources.get(statement.name)
        skipped = self._existing(statement.kind, statement.name, statement.if_not_exists, statement.or_replace, statement.text)
        if skipped:
            return StatementResult(statement.text, skipped.message)
        self._query_counter += 1
        prefix = "CSAS" if statement.kind == "STREAM" else "CTAS"
        query_id = f"{prefix}_{statement.name}_{self._query_counter - 1}"
        if existing is not None and existing.written_by:
            query_id = existing.written_by
        plan = plan_query(statement, query_id, self.sources.get, self.properties)
        for topic in plan.source_topics:
            if topic == plan.sink.topic:
                raise KsqlError(f"Cannot create {statement.kind.lower()} {statement.name}: it would read and write the same topic '{topic}'.")
        plan.sink.written_by = query_id
        self._register(plan.sink)
        sink_value = self._serdes[plan.sink.name].value
        if isinstance(sink_value, AvroFormat):
            sink_value.register_schema()
        # a replaced query keeps its state, as ksqlDB's CREATE OR REPLACE does for compatible changes
        old = self.queries.get(query_id)
        query = PersistentQuery(plan, self._serdes[plan.sink.name], self.properties, self._serdes[plan.source.name])
        # what EXPLAIN shows as overriddenProperties: the properties set for it beyond the engine's own
        query.overridden_properties = {k: v for k, v in self.properties.items() if self._default_properties.get(k) != v}
        if old is not None:
            query.stores = old.stores
        self.queries[query_id] = query
        return StatementResult(statement.text, f"Created query with ID {query_id}")

    def _drop(self, statement: ast.Drop) -> StatementResult:
        source = self.sources.get(statement.name)
        if source is None:
            if statement.if_exists:
                return StatementResult(statement.text, f"{statement.name} does not exist; nothing to drop.")
            raise KsqlError(f"Source {statement.name} does not exist.")
        if source.kind != statement.kind:
            raise KsqlError(f"Incompatible data source type is {source.kind}, but statement was DROP {statement.kind}")
        readers = [q.query_id for q in self.queries.values() if source.name in (q.plan.source.name, q.plan.join.table.name if q.plan.join else None)]
        if readers:
            raise KsqlError(f"Cannot drop {source.name}.\nThe following queries read from this source: [{', '.join(sorted(readers))}].\nYou need to terminate them before dropping {source.name}.")
        if source.written_by:
            self.queries.pop(source.written_by, None)
        del self.sources[source.name]
        self._serdes.pop(source.name, None)
        note = f" Topic {source.topic} should be deleted." if statement.delete_topic else ""
        return StatementResult(statement.text, f"Source `{source.name}` (topic: {source.topic}) was dropped.{note}", rows=[{"deleted_topic": source.topic}] if statement.delete_topic else [])

    def _show(self, statement: ast.Show) -> StatementResult:
        what = statement.what
        if what in ("STREAMS", "TABLES"):
            kind = what[:-1]
            rows = [
                {"name": s.name, "topic": s.topic, "key_format": s.key_format, "value_format": s.value_format, "windowed": s.window is not None}
                for s in self.sources.values()
                if s.kind == kind
            ]
        elif what == "QUERIES":
            rows = [{"id": q.query_id, "status": q.status, "sink": q.plan.sink.name, "sink_topic": q.plan.sink.topic, "sources": q.source_topics} for q in self.queries.values()]
        elif what == "PROPERTIES":
            rows = [{"property": k, "value": v} for k, v in sorted(self.properties.items())]
        elif what == "VARIABLES":
            rows = [{"name": k, "value": v} for k, v in sorted(self.variables.items())]
        else:
            topics = sorted({s.topic for s in self.sources.values()})
            rows = [{"topic": t} for t in topics]
        return StatementResult(statement.text, f"{len(rows)} {what.lower()}", rows)

    def _describe(self, statement: ast.Describe) -> StatementResult:
        source = self.sources.get(statement.name)
        if source is None:
            raise KsqlError(f"Could not find STREAM/TABLE '{statement.name}' in the Metastore")
        rows = [{"field": c.name, "type": str(c.type) + (" (key)" if c in source.key_columns else "")} for c in source.columns]
        info = f"Name: {source.name}\nType: {source.kind}\nTopic: {source.topic}\nKey format: {source.key_format}\nValue format: {source.value_format}"
        if source.window:
            info += f"\nWindow: TUMBLING {source.window.size_ms} ms"
        if source.written_by and source.written_by in self.queries:
            info += f"\nWritten by: {source.written_by}\nPlan: {self.queries[source.written_by].plan.describe()}"
        return StatementResult(statement.text, info, rows)

    def _explain(self, statement: ast.Explain) -> StatementResult:
        """A running query: its statement, sources, sink and the properties it was created with (one row)."""
        ids = self._query_ids(statement.query_id)
        if not ids:
            raise KsqlError(f"Query with id:{statement.query_id} does not exist, use SHOW QUERIES to view the full set of queries.")
        query = self.queries[ids[0]]
        plan = query.plan
        described = plan.describe()
        row = {
            "id": query.query_id,
            "statement": plan.sink.statement,
            "sources": [plan.source.name] + ([plan.join.table.name] if plan.join else []),
            "sink": plan.sink.name,
            "window": plan.sink.window.kind if plan.sink.window else None,
            "state": query.status,
            "overridden_properties": dict(query.overridden_properties),
            "plan": described,
        }
        return StatementResult(statement.text, f"Query {query.query_id}: {described}", [row])

    def _query_ids(self, query_id: str) -> list[str]:
        """The running query of that id (ids are case-insensitive), or none."""
        return [q for q in self.queries if q.upper() == query_id.upper()]

    def _terminate(self, statement: ast.Terminate) -> StatementResult:
        if statement.query_id == "ALL":
            ids = list(self.queries)
        else:
            ids = self._query_ids(statement.query_id)
            if not ids:
                raise KsqlError(f"Unknown queryId: {statement.query_id}")
        for query_id in ids:
            del self.queries[query_id]
        return StatementResult(statement.text, f"Terminated {', '.join(ids) or 'no queries'}.")

    # ------------------------------------------------------------ records

    def source_topics(self) -> list[str]:
        """The topics the running queries read, in a stable order."""
        topics: list[str] = []
        for query in self.running_queries():
            for topic in query.source_topics:
                if topic not in topics:
                    topics.append(topic)
        return topics

    def serdes(self, source_name: str) -> Serdes:
        """The key and value formats of a source (to read a sink's output, for instance)."""
        return self._serdes[source_name]

    def source_for_topic(self, topic: str) -> DataSource | None:
        return next((s for s in self.sources.values() if s.topic == topic), None)

    def process(self, topic: str, partition: int, offset: int, timestamp: int, key: bytes | None, value: bytes | None, headers=()) -> list[OutputRecord]:
        """Feed one record of `topic` to every query reading it; return what they produce.

        A record its source's formats cannot read becomes a dead-letter record
        (JSON with the error and the source topic/partition/offset) instead.
        """
        return self.process_batch([(topic, partition, offset, timestamp, key, value, headers)])

    def process_batch(self, records) -> list[OutputRecord]:
        """`process` for a whole fetch: `records` are (topic, partition, offset, timestamp, key, value[, headers]) tuples.

        Each run of consecutive records of one topic is decoded once per source
        and then handed to each query reading it as one batch. Every output
        topic gets the records it would get from calling `process` on each record
        in turn, in the same order; only the interleaving of different topics
        differs (the outputs of one query come together). Dead letters come
        last, in record order.
        """
        outputs: list[OutputRecord] = []
        dead_letters: list[tuple[int, int, OutputRecord]] = []  # (record index, reader index, dead letter)
        first_index = 0
        for topic, run in itertools.groupby(records, _topic_of):
            run = list(run)
            self._process_run(topic, run, first_index, outputs, dead_letters)
            first_index += len(run)
        if dead_letters:
            dead_letters.sort(key=lambda d: (d[0], d[1]))
            outputs += [letter for _, _, letter in dead_letters]
        return outputs

    def _process_run(self, topic: str, run: list[tuple], first_index: int, outputs: list, dead_letters: list) -> None:
        """Records of one topic: decoded once per source, then processed by each query reading them, one query after the other.

        A query that copies values (`PersistentQuery.copies_values`) takes the
        records undecoded and has only those it does not copy decoded, one by
        one. Either way each record is decoded at most once per source, and one
        that cannot be becomes one dead letter.
        """
        self.metrics.records_in += len(run)
        decoded: dict[str, tuple[list[InputRecord], list[int]]] = {}
        decoded_one_by_one: dict[str, dict[int, InputRecord | None]] = {}
        for reader_index, (query, source) in enumerate(self._readers_of(topic)):
            one_by_one = decoded_one_by_one.setdefault(source.name, {})
            if query.copies_values:
                decode = functools.partial(self._decode_one, source, run, first_index, reader_index, dead_letters, decoded, one_by_one)
                failures = query.process_values(run, decode, outputs)
            else:
                inputs = decoded.get(source.name)
                if inputs is None:
                    inputs = decoded[source.name] = self._decode_run(source, run, first_index, reader_index, dead_letters, one_by_one)
                failures = query.process_batch(source, inputs[0], outputs)
                if failures:
                    index_of = {id(record): index for record, index in zip(*inputs)}
                    failures = [(index_of[id(record)], exc) for record, exc in failures]
            # a defect or an unwritable result must not stop the other records or queries
            for index, exc in failures:
                self.metrics.dead_letters += 1
                error = f"query {query.query_id} failed on this record: {type(exc).__name__}: {exc}"
                dead_letters.append((first_index + index, reader_index, self._dead_letter(source, *run[index][:6], error)))

    def _decode_one(self, source: DataSource, run: list[tuple], first_index: int, reader_index: int, dead_letters: list,
                    decoded: dict[str, tuple[list[InputRecord], list[int]]], one_by_one: dict[int, InputRecord | None], index: int) -> InputRecord | None:
        """Record `index` of `run` as `source`'s formats read it (None: it cannot be, and is a dead letter), decoded
        at most once: taken from the whole run if it was decoded, else decoded alone and kept in `one_by_one`."""
        if index not in one_by_one:
            whole = decoded.get(source.name)
            if whole is not None:
                inputs, indexes = whole
                at = bisect.bisect_left(indexes, index)
                one_by_one[index] = inputs[at] if at < len(indexes) and indexes[at] == index else None
            else:
                inputs, _ = self._decode_run(source, run[index:index + 1], first_index + index, reader_index, dead_letters)
                one_by_one[index] = inputs[0] if inputs else None
        return one_by_one[index]

    def _decode_run(self, source: DataSource, run: list[tuple], first_index: int, reader_index: int, dead_letters: list,
                    decoded: dict[int, InputRecord | None] | None = None) -> tuple[list[InputRecord], list[int]]:
        """The records of `run` that `source`'s formats read, and their indexes in the run; the others become dead
        letters. `decoded`: records of the run already decoded (or made dead letters, None), by index."""
        serdes = self._serdes[source.name]
        key_of, value_of = serdes.key.deserialize, serdes.value.deserialize
        inputs: list[InputRecord] = []
        indexes: list[int] = []
        for index, record in enumerate(run):
            if decoded and index in decoded:
                if decoded[index] is not None:
                    inputs.append(decoded[index])
                    indexes.append(index)
                continue
            try:
                key_values, window_start = key_of(record[4])
                row = value_of(record[5])
            except RecordError as exc:
                self.metrics.dead_letters += 1
                dead_letters.append((first_index + index, reader_index, self._dead_letter(source, *record[:6], str(exc))))
                continue
            headers = record[6] if len(record) > 6 else None
            inputs.append(InputRecord(record[0], record[1], record[2], record[3], key_values, window_start, row, tuple(headers) if headers else ()))
            indexes.append(index)
        return inputs, indexes

    def _readers_of(self, topic: str) -> list[tuple[PersistentQuery, DataSource]]:
        """The queries reading `topic`, each with the source it reads there (cached until the set of queries changes)."""
        ids = (tuple(self.queries.values()), self._running)  # the query objects: CREATE OR REPLACE keeps the id but not the object
        if self._readers_key != ids:
            self._readers = {}
            for query in self.running_queries():
                for source_topic in query.source_topics:
                    join = query.plan.join
                    source = join.table if (join and join.table.topic == source_topic) else query.plan.source
                    self._readers.setdefault(source_topic, []).append((query, source))
            self._readers_key = ids
        return self._readers.get(topic, [])

    def _dead_letter(self, source, topic, partition, offset, timestamp, key, value, error) -> OutputRecord:
        body = {
            "error": error,
            "source": source.name,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": timestamp,
            "key": key.hex() if key is not None else None,
            "value": value.hex() if value is not None else None,
        }
        return OutputRecord(
            topic=self.properties.get(DEAD_LETTER_TOPIC, DEFAULT_DEAD_LETTER_TOPIC),
            key=None,
            value=json.dumps(body).encode(),
            timestamp=timestamp,
            dead_letter=True,
        )

    def punctuate(self, wall_clock_ms: int) -> list[OutputRecord]:
        """Wall-clock work: with `survey_kit.emit.final.wall.clock`='true', close due EMIT FINAL windows."""
        outputs = []
        for query in self.running_queries():
            outputs += query.punctuate(wall_clock_ms)
        return outputs

    def flush(self) -> list[OutputRecord]:
        """Updates coalesced by the record cache (only when caching is on); call before each commit."""
        outputs = []
        for query in self.running_queries():
            outputs += query.flush()
        return outputs

    # ------------------------------------------------------------ state

    def drain_changes(self) -> list[tuple[str, str, str, object]]:
        """State changes since the last call: (query id, store, encoded key, value or None)."""
        return [(query.query_id, store, key, value) for query in self.running_queries() for store, key, value in query.stores.drain_changes()]

    def apply_changes(self, changes) -> None:
        """Replay changes from a changelog (as returned by `drain_changes`)."""
        for query_id, store, key, value in changes:
            if query_id in self.queries:
                self.queries[query_id].stores.apply_change(store, key, value)

    def snapshot(self) -> dict:
        return {query_id: query.stores.snapshot() for query_id, query in self.queries.items()}

    def restore(self, snapshot: dict) -> None:
        for query_id, stores in snapshot.items():
            if query_id in self.queries:
                self.queries[query_id].stores.restore(stores)

    def query_metrics(self) -> dict[str, dict[str, int]]:
        return {query_id: query.metrics.as_dict() for query_id, query in self.queries.items()}


__all__ = ["Engine", "EMIT_FINAL_WALL_CLOCK", "KsqlError", "OutputRecord", "StatementResult"]
