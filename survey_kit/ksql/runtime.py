"""Run the engine's persistent queries against Kafka, exactly once.

    runtime = EngineRuntime(cluster, engine_id="survey_kit", data_dir=Path("engine"))
    runtime.start()                                   # a background thread consumes and produces
    runtime.execute(open("ksql/03_survey_respondents.sql").read())
    ...
    runtime.stop()

The engine (`engine.Engine`) is a pure core: records in, records out. This
module is its Kafka I/O, shaped like Kafka Streams / ksqlDB:

* one consumer `assign()`s every partition of the queries' source topics (no
  group join; the embedded broker makes joins slow) and reads them in offset
  order per partition, in batches. With several workers (see below) worker 0's
  consumer reads for all of them and hands each fetch on, as a Kafka Streams
  thread serves several tasks from one consumer: on the embedded broker a
  fetch that finds new records costs time in proportion to the batches the
  partition holds, for every reader (tests/test_broker_quirks.py);
* the outputs and one checkpoint record (the state changes from
  `engine.drain_changes()`, the input offsets and the end offset of every
  output partition, on the changelog topic) are committed in one Kafka
  transaction every `commit_interval_ms` or `commit_records` records, so a
  crash at any moment leaves the output topics as if the engine had never
  stopped. (The embedded broker shows the records of aborted and fenced
  transactions to read_committed readers; the checkpoint being one record
  keeps state and offsets consistent, and the outputs a cut-short
  transaction left are not written twice: see `_commit`, `_count_replayed`.)
* every statement that changes the engine (CREATE, DROP, TERMINATE; with
  the properties its request SET) is appended to a command topic, as ksqlDB
  does; on start the engine is rebuilt from it, its state and input offsets
  restored from the checkpoints. A query created later reads its topics from
  where the engine's consumer is (from the beginning for a topic no query
  read before). A copy of the commands kept in
  `data_dir` rebuilds the engine when the broker lost its topics (the
  embedded broker keeps them in memory);
* malformed records become dead letters (the engine produces them; they are
  counted), the broker or the Schema Registry going away is logged once per
  outage and survived (a record read meanwhile is read again, not dead-lettered).
"""

from __future__ import annotations

import bisect
import collections
import json
import logging
import operator
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from survey_kit.cluster import Cluster
from survey_kit.serde import RegistryUnavailable

from . import ast
from .engine import DEAD_LETTER_TOPIC, DEFAULT_DEAD_LETTER_TOPIC, Engine, StatementResult
from .formats import RegistrySchemaStore
from .handoff import Inbox
from .operators import CACHE_BYTES, OutputRecord, check_property
from .parser import StatementText, parse_statement, split_statements, substitute
from .types import KsqlError

log = logging.getLogger("survey_kit.ksql.runtime")

# ksqlDB's defaults where the engine core defaults differently (the core follows the QTT runs).
RUNTIME_DEFAULT_PROPERTIES = {CACHE_BYTES: str(10 * 1024 * 1024)}
# Statements that change what the engine runs: they are recorded in the command topic.
_COMMANDS = (ast.CreateSource, ast.CreateAsSelect, ast.Drop, ast.Terminate)
CHECKPOINT_KEY = b"checkpoint"
# The command topic and the changelog are logs read in order: they are written to and read from this one
# partition, whatever the topic has. The embedded broker, restarted, creates a topic a client still asks
# about with 4 partitions, before the engine can create it with one.
_LOG_PARTITION = 0
# records handed on to a worker that it may hold before worker 0 waits for it: a few batches when it is
# behind; caught up (fetches of a few records), enough that a pause of the worker (a commit, a read of the
# command topic) does not hold worker 0 up
_FEED_RECORDS = 20_000
# how long one call waits when reading a log or the outputs to their end at a (re)build: a call waits its
# whole timeout unless it gets 10,000 records, so with 0.5 s each read of a short topic ended with half a
# second of waiting (the talk's pipeline rebuilt: ready 3.2-3.6 s after start, 1.7 s with 0.02 s)
_READ_WAIT = 0.02
# Busy, the engine commits every this many ms, as Kafka Streams does under exactly-once (ksqlDB's default,
# commit.interval.ms 100): a commit blocks a worker on the broker for a few ms, and at 20 ms the talk's
# pipeline ran at 29.5% of the ceiling on average against 34.2% at 100 (benchmarks/engine.py, six
# alternated pairs). Caught up, it commits within min_commit_interval_ms of the last record instead, so a
# trickle of entries is readable within a few ms.
DEFAULT_COMMIT_INTERVAL_MS = 100
# after an assignment, how long worker 0 waits at most for every partition to deliver or reach its end
_HOLD_AFTER_ASSIGNMENT = 2.0
_offset_of = operator.itemgetter(2)
# Recorded with a CREATE ... AS SELECT: the worker process that runs its query (and holds its state).
WORKER_PROPERTY = "survey_kit.worker"


class RuntimeUnavailable(ConnectionError):
    """The engine cannot reach Kafka right now (the message says what it tried)."""


class StatementFailed(KsqlError):
    """A statement was rejected: `statement` is its text, `results` what the statements before it did."""

    def __init__(self, message: str, statement: str, results: list):
        super().__init__(message)
        self.message = message
        self.statement = statement
        self.results = results


@dataclass
class RuntimeMetrics:
    records_in: int = 0
    records_out: int = 0
    dead_letters: int = 0
    commits: int = 0
    aborts: int = 0
    recoveries: int = 0


@dataclass(frozen=True)
class Command:
    """One recorded statement (variables already substituted) and the properties it ran with."""

    statement: str
    properties: dict[str, str]

    def encode(self) -> bytes:
        return json.dumps({"statement": self.statement, "streamsProperties": self.properties}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Command:
        body = json.loads(data)
        return cls(body["statement"], dict(body.get("streamsProperties") or {}))


class EngineRuntime:
    """An `Engine` whose persistent queries run on a Kafka cluster, exactly once.

    `engine_id` names the internal topics (`_survey_kit_ksql_<id>_command`,
    `..._changelog`), the transactional id and the offsets' group; two
    runtimes with the same id on one cluster fence each other, as they should.
    `properties` are engine defaults (ksqlDB property names).

    The queries can run in several processes, as ksqlDB runs each persistent
    query as its own Kafka Streams application: `workers` runtimes with the same
    id, `worker` 0 to workers - 1. Worker 0 takes the statements (and records
    them); each new query is placed on a worker (`_new_owner`), the placement
    recorded with its statement. Every worker knows the whole pipeline (it
    follows the command topic) and runs only its own queries, with its own input
    positions, transactions and changelog (`..._w<k>_changelog` for k > 0).

    Only worker 0 reads the source topics from Kafka. Another worker subscribes
    (`on_subscribe`: a generation number and the position it needs in each
    partition, after each rebuild and when its queries change); worker 0 then
    reads from there and hands it every fetch (`on_forward`, each chunk of
    records at most once per generation), which it takes with `feed`.
    """

    def __init__(
        self,
        cluster: Cluster,
        engine_id: str = "survey_kit",
        data_dir: str | Path | None = None,
        properties: dict[str, str] | None = None,
        commit_interval_ms: int = DEFAULT_COMMIT_INTERVAL_MS,
        min_commit_interval_ms: int = 10,
        commit_records: int = 20_000,
        punctuate_interval_ms: int = 1_000,
        batch_size: int = 5_000,
        worker: int = 0,
        workers: int = 1,
        command_topic_interval_s: float = 30.0,
    ):
        if not 0 <= worker < workers:
            raise ValueError(f"worker must be in 0..{workers - 1}, got {worker}")
        self.cluster = cluster
        self.engine_id = engine_id
        self.data_dir = Path(data_dir) if data_dir else None
        self.properties = {**RUNTIME_DEFAULT_PROPERTIES, **(properties or {})}
        self.commit_interval = commit_interval_ms / 1000
        self.min_commit_interval = min(min_commit_interval_ms, commit_interval_ms) / 1000
        self.commit_records = commit_records
        self.punctuate_interval = punctuate_interval_ms / 1000
        self.batch_size = batch_size
        self.worker, self.workers = worker, workers
        self.leader = worker == 0  # takes statements and records them; the others follow the command topic
        name = f"_survey_kit_ksql_{engine_id}" + (f"_w{worker}" if worker else "")
        self.command_topic = f"_survey_kit_ksql_{engine_id}_command"
        self.changelog_topic = f"{name}_changelog"
        self.group_id = name  # also the transactional id
        self.metrics = RuntimeMetrics()
        self.engine = self._new_engine()
        self.ready = threading.Event()  # set once the engine is rebuilt and consuming
        self._lock = threading.RLock()  # the engine is shared by the loop and statement callers
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._commands: list[Command] = self._read_backup()
        self._owners: dict[str, int] = {}  # query id -> the worker that runs it
        self._command_offset = 0  # followers: the next record of the command topic to apply
        # followers: (rebuild, [(offset, command), ...]) worker 0 recorded (rebuild None: passed on by worker 0)
        # or the command topic held when read in the background during that rebuild's lifetime
        self._recorded: queue.SimpleQueue = queue.SimpleQueue()
        self._rebuilds = 0  # how many times the clients and the engine were rebuilt from the broker
        self._last_follow = 0.0
        self._command_reader: threading.Thread | None = None  # followers: the periodic read of the command topic
        self.command_topic_interval = command_topic_interval_s
        # worker 0: told the (offset, command) of the statements each request recorded, all at once, so
        # that another worker starts a request's queries together, as worker 0 does (under its lock)
        self.on_recorded: Callable[[list[tuple[int, bytes]]], None] | None = None
        self._just_recorded: list[tuple[int, bytes]] = []
        # worker 0: hands the fetched records a worker subscribed to on to it: (worker, generation, chunks)
        self.on_forward: Callable[[int, int, list], None] | None = None
        self._followers: dict[int, tuple[int, dict[tuple[str, int], int]]] = {}  # worker -> (generation, next offset to hand on)
        self._subscriptions: queue.SimpleQueue = queue.SimpleQueue()  # (worker, generation, positions or None: gone)
        # worker 0: what its consumer reads, for every worker: partition -> the next offset it delivers
        self._fetching: dict[tuple[str, int], int] = {}
        self._reassign = False
        # worker 0, after an assignment: the partitions not heard from yet (no record, no end), and what the
        # others delivered meanwhile (see `_fetch_chunks`)
        self._unheard: set[tuple[str, int]] = set()
        self._held: dict[tuple[str, int], list[tuple]] = {}
        self._released: collections.deque[tuple[tuple[str, int], list[tuple]]] = collections.deque()
        self._hold_until = 0.0
        # other workers: told (generation, positions) to subscribe; fed worker 0's fetches, of this generation only
        self.on_subscribe: Callable[[int, dict[tuple[str, int], int]], None] | None = None
        self._subscribed: set[tuple[str, int]] | None = None  # None: to subscribe (again) at the next assignment
        self._inbox = Inbox(_FEED_RECORDS)
        # librdkafka would log every failed reconnect; errors come to _client_error instead
        self._quiet = {"error_cb": self._client_error, "log_level": 2}
        self._admin = AdminClient(cluster.admin_config(**self._quiet))
        self._producer: Producer | None = None
        self._command_producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._positions: dict[tuple[str, int], int] = {}  # next input offset per source partition
        self._output_ends: dict[tuple[str, int], int] = {}  # next offset per output partition, from deliveries
        self._replayed: dict[tuple[str, int], int] = {}  # outputs a crashed transaction already wrote
        self._partition_counts: dict[str, int] = {}
        self._delivery_error: KafkaError | None = None
        self._in_transaction = False
        self._uncommitted = 0
        self._last_commit = time.monotonic()
        self._last_punctuate = time.monotonic()
        self._last_resync = 0.0
        self._last_group_offsets = 0.0
        self._resync_wanted = True
        self._needs_recovery = True
        self._outage: str | None = None  # what is wrong while Kafka or the Schema Registry does not answer
        self._outage_of = ""  # which of the two

    # ------------------------------------------------------------ life cycle

    def start(self) -> EngineRuntime:
        """Run the queries in a background thread (returns at once; see `ready`)."""
        self._thread = threading.Thread(target=self.run, name=f"ksql-runtime-{self.engine_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what was processed and stop."""
        self._stop.set()
        self._inbox.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Consume, process, produce and commit until `stop()` (the loop of the background thread)."""
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except (KafkaException, RuntimeUnavailable, RegistryUnavailable) as exc:
                    self._outage_began(exc)
                    self._needs_recovery = True
                    self._stop.wait(1.0)
                except Exception:  # a defect: say so loudly, then start over from what was committed
                    log.exception("the engine failed; rebuilding it from the last commit")
                    self._needs_recovery = True
                    self._stop.wait(5.0)
            if not self._needs_recovery:
                try:
                    with self._lock:
                        self._commit()
                except (KafkaException, RuntimeUnavailable) as exc:
                    log.warning("could not commit the last records before stopping (%s); they will be processed again", _text(exc))
        finally:
            self._close_clients()

    def _step(self) -> None:
        if self._needs_recovery:
            self._recover()
        now = time.monotonic()
        if self.leader:
            self._apply_subscriptions()
        elif not self._recorded.empty():
            self._follow_commands()
        elif now - self._last_follow > self.command_topic_interval:
            self._look_at_command_topic()
        if self._resync_wanted or now - self._last_resync > 2.0:
            self._sync_assignment()
        chunks, errors, drained = self._fetch_chunks() if self.leader else self._fed_chunks()
        with self._lock:
            processed = self._process(chunks) if chunks else 0
            for error in errors:
                self._consumer_error(error)
            if processed and self._outage is not None:
                self._recovered()
            now = time.monotonic()
            if now - self._last_punctuate >= self.punctuate_interval:
                self._last_punctuate = now
                self._emit(self.engine.punctuate(int(time.time() * 1000)))
            since_commit = now - self._last_commit
            # caught up (the input drained): commit soon rather than at the interval, so a trickle of
            # entries is readable within a few ms, but at most every min_commit_interval: each commit
            # adds two batches to every output partition it writes, which each of their readers pays
            # for on the embedded broker (tests/test_broker_quirks.py); busy, commit every interval so
            # transactions stay large
            caught_up = self._in_transaction and drained and since_commit >= self.min_commit_interval
            if caught_up or self._uncommitted >= self.commit_records or since_commit >= self.commit_interval:
                self._commit()

    # ------------------------------------------------------------ records

    def _fetch(self) -> list:
        """What the consumer holds, up to a batch, without waiting; else wait briefly for the next record.

        (consume() with a timeout waits for a full batch: fine for throughput, bad for latency.)
        """
        messages = self._consumer.consume(self.batch_size, 0)
        if messages:
            return messages
        first = self._consumer.poll(self._input_wait())
        if first is None:
            return []
        return [first, *self._consumer.consume(self.batch_size - 1, 0)]

    def _input_wait(self) -> float:
        """How long to wait for the next input: caught up with records processed, no longer than until their
        commit is due (an update is readable only after it)."""
        if not self._in_transaction:
            return 0.02
        return min(0.02, max(0.0, self.min_commit_interval - (time.monotonic() - self._last_commit)))

    def _fetch_chunks(self) -> tuple[list, list, bool]:
        """Worker 0: a fetch as (partition, records) chunks in the order to process them, handed on to the
        workers subscribed to them; the fetch's errors; whether it drained what the consumer held."""
        if self._released:  # what was held after an assignment, a batch at a time
            chunks = self._take_released()
            if self._followers:
                self._forward(chunks)
            return chunks, [], False
        if not self._fetching:
            self._stop.wait(0.05)
            return [], [], True
        messages = self._fetch()
        runs: dict[tuple[str, int], list[tuple]] = {}
        errors = []
        fetching = self._fetching
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._unheard.discard((message.topic(), message.partition()))
                else:
                    errors.append(error)
                continue
            where = (message.topic(), message.partition())
            run = runs.get(where)
            if run is None:
                if where not in fetching:
                    continue  # a partition released since the fetch (its topic no longer read)
                run = runs[where] = []
            run.append((where[0], where[1], message.offset(), message.timestamp()[1], message.key(), message.value(), message.headers() or ()))
        for where, run in runs.items():
            fetching[where] = run[-1][2] + 1
        if self._unheard or self._held:
            # just assigned: hold what arrives until every partition delivered records or its end, so the
            # first records are taken in timestamp order across all of them, as Kafka Streams waits for
            # each partition of a task (a question read after its entries would join none of them)
            for where, run in runs.items():
                self._held.setdefault(where, []).extend(run)
                self._unheard.discard(where)
            if self._unheard and time.monotonic() < self._hold_until:
                # a partition that delivered waits for the others, paused: it would otherwise fill memory
                # with a backlog and, on the embedded broker, take every fetch (its other partitions'
                # first records came only after the whole backlog)
                if runs:
                    self._consumer.pause([TopicPartition(*where) for where in runs])
                return [], errors, True
            self._resume_fetching()
            # what was held goes on a batch at a time
            self._released.extend((where, run[i:i + self.batch_size]) for where, run in in_timestamp_order(self._held)
                                  for i in range(0, len(run), self.batch_size))
            self._held, self._unheard = {}, set()
            chunks = self._take_released()
        else:
            chunks = in_timestamp_order(runs)
        if self._followers and chunks:
            self._forward(chunks)
        return chunks, errors, len(messages) < self.batch_size and not self._released

    def _resume_fetching(self) -> None:
        """Worker 0: fetch again every partition, those paused while holding too (see `_fetch_chunks`)."""
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.resume(assigned)

    def _take_released(self) -> list:
        """Worker 0: the next chunks of what was held after an assignment, up to a batch."""
        chunks, count = [], 0
        while self._released and count < self.batch_size:
            chunk = self._released.popleft()
            chunks.append(chunk)
            count += len(chunk[1])
        return chunks

    def _forward(self, chunks: list) -> None:
        """Worker 0: hand each subscribed worker the records of these chunks it has not had in its generation."""
        for worker, (generation, offsets) in list(self._followers.items()):
            theirs = []
            for where, run in chunks:
                start = offsets.get(where)
                if start is None:
                    continue
                if run[0][2] < start:
                    run = run[bisect.bisect_left(run, start, key=_offset_of):]
                    if not run:
                        continue
                theirs.append((where, run))
                offsets[where] = run[-1][2] + 1
            if theirs:
                self.on_forward(worker, generation, theirs)

    def _fed_chunks(self) -> tuple[list, list, bool]:
        """Another worker: the chunks worker 0 handed on in this generation, up to a batch (waiting briefly
        for the first); whether none are left waiting."""
        chunks, drained = self._inbox.take(self.batch_size, self._input_wait())
        return chunks, [], drained

    def feed(self, generation: int, chunks: list) -> None:
        """Another worker: take chunks worker 0 handed on (see `handoff.Inbox.put`)."""
        self._inbox.put(generation, chunks)

    def _process(self, chunks: list) -> int:
        """Feed (partition, records) chunks to the engine, in order, past the records already processed; how many were."""
        processed = 0
        positions, assigned = self._positions, self._assigned
        for where, run in chunks:
            if where not in assigned:
                continue  # another worker's partition (worker 0 reads for all), or one released since the fetch
            position = positions[where]
            if run[0][2] < position:  # read again for another worker that needed them
                run = run[bisect.bisect_left(run, position, key=_offset_of):]
            processed += self._process_run(where, run)
        if processed:
            self._begin()  # offsets advanced: they are committed in a transaction even without outputs
            self._uncommitted += processed
            self.metrics.records_in += processed
        return processed

    def _process_run(self, where: tuple[str, int], run: list[tuple]) -> int:
        """Process records of one partition, in offset order; produce the outputs; return how many."""
        if not run:
            return 0
        outputs = self.engine.process_batch(run)
        self._positions[where] = run[-1][2] + 1
        self._emit(outputs, where[1])
        return len(run)

    def _emit(self, outputs: list[OutputRecord], input_partition: int = 0) -> None:
        """Produce `outputs` in order, each to the partition Kafka's Java clients would pick (keyless: the input's).

        Only the last record of each output partition asks for its delivery
        report: its offset is the partition's new end (records of a partition are
        delivered in order), and a record that fails makes the transaction fail.
        A Python callback per record cost ~1 µs of the engine's ~20 µs per entry.
        """
        if not outputs:
            return
        self._begin()
        partition_of = self._partition_of
        placed = [partition_of(out, input_partition) for out in outputs]
        last = {(out.topic, partition): i for i, (out, partition) in enumerate(zip(outputs, placed))}
        reports = [None] * len(outputs)
        for i in last.values():
            reports[i] = self._delivered
        produce = self._producer.produce
        metrics = self.metrics
        replayed = self._replayed
        for out, partition, report in zip(outputs, placed, reports):
            topic = out.topic
            if replayed and replayed.get((topic, partition)):
                # already written by a transaction a crash cut short (visible on the embedded broker)
                replayed[(topic, partition)] -= 1
                continue
            if out.dead_letter:
                metrics.dead_letters += 1
            metrics.records_out += 1
            headers = list(out.headers) if out.headers else None
            while True:
                try:
                    # positional: produce(topic, value, key, partition, callback, on_delivery, timestamp,
                    # headers), the order of confluent-kafka's argument list; parsing keywords took half
                    # of this call's ~0.8 µs (tests/test_ksql_runtime.py checks what lands on the topics)
                    produce(topic, out.value, out.key, partition, report, None, out.timestamp, headers)
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    self._producer.poll(0.05)

    def _partition_of(self, out: OutputRecord, input_partition: int) -> int:
        if out.partition is not None:
            return out.partition
        partitions = self._partition_counts.get(out.topic) or self._partition_count(out.topic)
        if partitions == 1:
            return 0
        if out.key is not None:
            return (murmur2(out.key) & 0x7FFFFFFF) % partitions
        return input_partition % partitions

    def _delivered(self, error, message) -> None:
        if error is None:
            self._output_ends[(message.topic(), message.partition())] = message.offset() + 1
        else:
            self._delivery_error = error

    def _begin(self) -> None:
        if not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True

    def _commit(self) -> None:
        """Commit outputs, state changes and input offsets as one transaction.

        The state changes, the input offsets and the end offset of every output
        partition travel in ONE checkpoint record on the changelog topic,
        produced after the outputs are acknowledged. Kafka makes the whole
        transaction visible or not; the embedded broker (Tansu 0.6) also
        exposes what a killed engine's unfinished transaction wrote once the
        next instance starts. The checkpoint being one record, state and
        offsets stay consistent either way, and the output ends let the next
        instance skip outputs that are already there (see `_count_replayed`).
        """
        self._emit(self.engine.flush())
        changes = self.engine.drain_changes()
        self._last_commit = time.monotonic()
        if not self._in_transaction and not changes:
            return
        self._begin()
        try:
            if self._producer.flush(30):
                raise RuntimeUnavailable("outputs were not acknowledged within 30 s")
            if self._delivery_error is not None:
                error, self._delivery_error = self._delivery_error, None
                raise KafkaException(error)
            checkpoint = {
                "changes": changes,
                "offsets": [[t, p, o] for (t, p), o in self._positions.items() if o >= 0],
                "ends": [[t, p, o] for (t, p), o in self._output_ends.items()],
            }
            self._producer.produce(self.changelog_topic, json.dumps(checkpoint, separators=(",", ":")).encode(), CHECKPOINT_KEY,
                                   partition=_LOG_PARTITION)
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._positions.items() if o >= 0]
            if offsets and self._consumer is not None and not self.cluster.embedded and time.monotonic() - self._last_group_offsets > 5.0:
                # also in the consumer group, where lag monitors look (every 5 s: it adds two round trips to a
                # commit, and each update waits for about two commits). Not on the embedded broker: nothing
                # watches it there, and after it restarts this call can hang well past its timeout. Only
                # worker 0 has a consumer (and so a group): lag shows there.
                self._producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), 5)
                self._last_group_offsets = time.monotonic()
            self._commit_transaction()
        except (KafkaException, RuntimeUnavailable):
            self._abort()
            raise
        self._in_transaction = False
        self._uncommitted = 0
        self.metrics.commits += 1

    def _commit_transaction(self) -> None:
        # a few short tries: while the broker is gone, giving up and rebuilding from the last commit
        # once it is back beats waiting minutes inside librdkafka (a restarted embedded broker never
        # finishes the old transaction)
        for attempt in range(3):
            try:
                self._producer.commit_transaction(10)
                return
            except KafkaException as exc:
                if not exc.args[0].retriable() or self._stop.is_set() and attempt > 1:
                    raise
                self._outage_began(exc)

    def _abort(self) -> None:
        """Drop the open transaction; the engine is rebuilt from what was committed."""
        self.metrics.aborts += 1
        self._in_transaction = False
        self._needs_recovery = True
        try:
            self._producer.abort_transaction(10)
        except KafkaException:
            self._close_producer()  # a fatal producer state: a new producer fences it on recovery

    # ------------------------------------------------------------ statements

    def execute(self, ksql: str, properties: dict[str, str] | None = None, variables: dict[str, str] | None = None) -> list[tuple[ast.Statement, StatementResult]]:
        """Run statements (ksqlDB syntax) on the engine; those changing it are recorded in the command topic.

        As on a ksqlDB server, `variables` (DEFINE) and `properties` (SET) hold
        for this request only; the properties apply to the queries it creates.
        Returns each statement with its result (DEFINE and SET have none).
        Raises StatementFailed for a statement the engine rejects, with the
        results of the statements before it (which stay applied, as on ksqlDB).
        """
        if not self.leader:
            raise RuntimeError("statements go to worker 0, which records them for the other workers")
        if not self.ready.wait(30):
            raise RuntimeUnavailable(f"the engine is not connected to Kafka at {self.cluster.bootstrap_servers} yet; try again")
        scope = {k.lower(): str(v) for k, v in (variables or {}).items()}
        request_properties = {str(k): str(v) for k, v in (properties or {}).items()}
        for name, value in request_properties.items():
            check_property(name, value)
        results: list[tuple[ast.Statement, StatementResult]] = []
        with self._lock:
            try:
                self._execute_pieces(ksql, scope, request_properties, results)
            finally:
                self._pass_on_recorded()
        return results

    def _pass_on_recorded(self) -> None:
        recorded, self._just_recorded = self._just_recorded, []
        if recorded and self.on_recorded is not None:
            self.on_recorded(recorded)

    def _execute_pieces(self, ksql: str, scope: dict, request_properties: dict, results: list) -> None:
        """Run the statements of one request in order, appending (statement, result) to `results`."""
        for piece in split_statements(ksql):
            try:
                text = substitute(piece.text, scope)
                statement = parse_statement(type(piece)(text, piece.line, piece.column))
                if isinstance(statement, ast.Define):
                    scope[statement.name] = statement.value
                elif isinstance(statement, ast.Undefine):
                    scope.pop(statement.name, None)
                elif isinstance(statement, ast.SetProperty):
                    check_property(statement.name, statement.value)
                    request_properties[statement.name] = statement.value
                elif isinstance(statement, ast.UnsetProperty):
                    request_properties.pop(statement.name, None)
                else:
                    results.append((statement, self._execute_statement(statement, request_properties)))
            except KsqlError as exc:
                raise StatementFailed(str(exc), piece.text, results) from None

    def _execute_statement(self, statement: ast.Statement, request_properties: dict[str, str]) -> StatementResult:
        if isinstance(statement, ast.CreateSource):
            self._check_source_topic(statement)
        before = self._fingerprint()
        result = self._run(statement, request_properties)
        if isinstance(statement, _COMMANDS) and self._fingerprint() != before:
            properties = request_properties
            if isinstance(statement, ast.CreateAsSelect):
                query_id = self.engine.sources[statement.name].written_by
                # a replaced query stays where its state is
                owner = self._owners.get(query_id)
                if owner is None:
                    owner = self._new_owner(query_id)
                properties = {**request_properties, WORKER_PROPERTY: str(owner)}
                self._place(statement, properties)
            self._record(Command(statement.text, properties))
            if isinstance(statement, ast.CreateAsSelect):
                self._ensure_sink_topics()
            if isinstance(statement, ast.Drop) and statement.delete_topic:
                self._delete_topic(result)
            self._resync_wanted = True
        return result

    def _run(self, statement: ast.Statement, request_properties: dict[str, str]) -> StatementResult:
        engine = self.engine
        saved = dict(engine.properties)
        engine.properties.update(request_properties)
        try:
            return engine.execute_statement(statement)
        finally:
            engine.properties = saved

    def _fingerprint(self) -> tuple:
        engine = self.engine
        return (tuple(engine.sources), tuple(engine.queries), tuple(sorted(engine.properties.items())))

    def _check_source_topic(self, statement: ast.CreateSource) -> None:
        """As ksqlDB: a source's topic must exist, unless PARTITIONS says how to create it."""
        props = {k.upper(): v for k, v in statement.properties.items()}
        topic = props.get("KAFKA_TOPIC")
        if topic is None or statement.name in self.engine.sources:
            return  # the engine reports what is wrong (or that nothing is to do)
        topic = str(topic)
        if self._partitions(topic):
            return
        if "PARTITIONS" not in props:
            raise KsqlError(
                f"Topic '{topic}' does not exist. If you want to create a new topic for the "
                f"{statement.kind.lower()} please re-run the statement providing the required 'PARTITIONS' "
                f"configuration in the WITH clause (and optionally 'REPLICAS')."
            )
        self._create_topic(topic, int(props["PARTITIONS"]), {})

    def _delete_topic(self, result: StatementResult) -> None:
        for row in result.rows:
            topic = row.get("deleted_topic")
            if topic:
                futures = self._admin.delete_topics([topic], operation_timeout=10)
                try:
                    futures[topic].result()
                except KafkaException as exc:
                    log.warning("could not delete topic %s: %s", topic, _text(exc))

    # ------------------------------------------------------------ command topic

    def _record(self, command: Command, remember: bool = True) -> None:
        """Append a command to the command topic (and the local copy) before confirming it."""
        if self._command_producer is None:
            self._command_producer = Producer(self.cluster.producer_config(**{"acks": "all", **self._quiet}))
        failures: list[KafkaError] = []
        offsets: list[int] = []

        def delivered(error, message) -> None:
            if error is not None:
                failures.append(error)
            else:
                offsets.append(message.offset())

        self._command_producer.produce(self.command_topic, command.encode(), partition=_LOG_PARTITION, on_delivery=delivered)
        remaining = self._command_producer.flush(30)
        if remaining or failures:
            reason = failures[0].str() if failures else "timed out"
            self._command_producer = None  # a producer that failed may be stuck (e.g. a broker that lost its state)
            raise RuntimeUnavailable(f"the statement ran but could not be recorded in {self.command_topic} ({reason}); it will not survive a restart")
        if offsets:
            self._just_recorded.append((offsets[0], command.encode()))
        if not remember:
            return
        self._commands.append(command)
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with open(self._backup_path(), "ab") as backup:
                backup.write(command.encode() + b"\n")

    def _backup_path(self) -> Path:
        return self.data_dir / f"{self.command_topic}.jsonl"

    def _read_backup(self) -> list[Command]:
        if self.data_dir is None or not self._backup_path().exists():
            return []
        return [Command.decode(line) for line in self._backup_path().read_bytes().splitlines() if line.strip()]

    def _write_backup(self) -> None:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._backup_path().write_bytes(b"".join(c.encode() + b"\n" for c in self._commands))

    def commands(self) -> list[Command]:
        """The statements the engine was built from, oldest first."""
        return list(self._commands)

    # ------------------------------------------------------------ recovery

    def _new_engine(self) -> Engine:
        return Engine(schemas=RegistrySchemaStore(self.cluster.registry(), self.cluster.schema_registry_url), properties=dict(self.properties))

    def _recover(self) -> None:
        """(Re)build the engine from the command topic, its state from the changelog, its inputs from the committed offsets."""
        with self._lock:  # statements wait: they must land in the rebuilt engine
            self._rebuild()
        self._needs_recovery = False
        self.metrics.recoveries += 1
        self.ready.set()
        log.info("engine %s running %d queries over %s", self.engine_id, len(self.engine.queries), ", ".join(self.engine.source_topics()) or "no topics yet")
        if self._outage is not None:
            self._recovered()

    def _rebuild(self) -> None:
        self._rebuilds += 1  # what a background read of the command topic found before this is stale
        self._close_clients()
        if not self.leader:
            self._inbox.renew()  # what worker 0 handed on is read again from the restored positions
            self._subscribed = None
        self._command_producer = None  # its idempotence state belongs to the broker it talked to
        self._ensure_topic(self.command_topic, {"cleanup.policy": "delete", "retention.ms": "-1"})
        # every checkpoint holds the changes since the one before: none may be compacted or expire
        self._ensure_topic(self.changelog_topic, {"cleanup.policy": "delete", "retention.ms": "-1"})
        producer = Producer(self.cluster.producer_config(**{
            "transactional.id": self.group_id,
            # outputs leave in batches while the engine works (with linger 0 the many small requests cost
            # the broker and the engine a third of the throughput); a commit's flush sends what lingers at
            # once (librdkafka's flush overrides linger.ms), so no update waits for it
            "linger.ms": 5,
            "transaction.timeout.ms": 60_000,
            **self._quiet,
        }))
        try:
            producer.init_transactions(30)  # fences a previous instance and aborts its open transaction
        except KafkaException as exc:
            raise RuntimeUnavailable(f"cannot start a Kafka transaction: {_text(exc)}") from None
        self._producer = producer
        recorded = self._read_log(self.command_topic)
        self._command_offset = recorded[-1].offset() + 1 if recorded else 0
        commands = [Command.decode(m.value()) for m in recorded if m.value()]
        if not commands and self._commands and self.leader:
            # the broker lost its topics (the embedded one keeps them in memory): record the commands again
            log.warning("the command topic %s is empty: re-recording the %d statements this engine ran", self.command_topic, len(self._commands))
            commands = list(self._commands)
            replay_and_record = True
        else:
            replay_and_record = False
        self.engine = self._new_engine()
        self._owners = {}
        applied = []
        for command in commands:
            try:
                self._replay(command)
            except KsqlError as exc:
                if not self.leader:
                    raise self._not_worker_0s(exc) from None
                log.error("cannot re-run a recorded statement, skipping it: %s", exc)
                continue
            applied.append(command)
        if replay_and_record:
            for command in applied:
                self._record(command, remember=False)
            self._pass_on_recorded()
            self._commands = applied
        elif self.leader:
            self._commands = applied
            self._write_backup()
        self._positions = {}
        self._output_ends = {}
        self._partition_counts = {}
        self._delivery_error = None
        self._restore_state()
        self._ensure_sink_topics()
        self._count_replayed()
        self._assigned = set()
        self._fetching = {}
        self._in_transaction = False
        self._uncommitted = 0
        if self.leader:  # the other workers are fed by worker 0's consumer
            self._consumer = Consumer(self.cluster.consumer_config(self.group_id, **{
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 5,
                # fetch again once what was fetched is taken, at most every 10 ms (librdkafka's default
                # backoff, 1 s, held a reader faster than about one fetch a second back): caught up, each
                # fetch that finds records costs the embedded broker in proportion to the batches in the
                # partition (tests/test_broker_quirks.py), and fetching while a commit is under way only
                # brings records that wait for the next one. Busy, a fetch brings thousands of records.
                "queued.min.messages": 1,
                "fetch.queue.backoff.ms": 10,
                "enable.partition.eof": True,  # the end of each partition, after an assignment (_fetch_chunks)
                # a position past a partition's end means the broker lost data (a restarted embedded broker):
                # say so and rebuild, rather than jump silently to another offset
                "auto.offset.reset": "error",
                **self._quiet,
            }))
        self._sync_assignment()

    # ------------------------------------------------------------ placement on workers

    def _replay(self, command: Command) -> None:
        """Run a recorded statement again (rebuilding, or following worker 0); KsqlError if it now fails."""
        statement = parse_statement(StatementText(command.statement, 1, 1))
        self._run(statement, command.properties)
        if isinstance(statement, ast.CreateAsSelect):
            self._place(statement, command.properties)

    def _new_owner(self, query_id: str) -> int:
        """The worker a new query runs on.

        Worker 0 reads the source topics for every worker and hands the records
        on. A query that copies values (a projection of plain columns:
        `PersistentQuery.copies_values`) decodes nothing, so it adds little to
        that: it runs on worker 0. The others, which decode every record they
        read, go to the other workers in turn: queries there that read the same
        topic decode each record once between them. (Placed in turn on all
        workers, the talk's pipeline ran at 44-54k entries/s; this way at
        50-64k: benchmarks/engine.py, 500,000 entries, ten runs alternated.)
        """
        if self.workers == 1 or self.engine.queries[query_id].copies_values:
            return 0
        elsewhere = sum(1 for owner in self._owners.values() if owner != 0)
        return 1 + elsewhere % (self.workers - 1)

    def _not_worker_0s(self, exc: KsqlError) -> RuntimeUnavailable:
        """Workers other than 0: a recorded statement failed here, so what this worker read is not what worker 0
        ran (a read that raced a broker restart, say): read them all again, as a rebuild does."""
        return RuntimeUnavailable(f"a statement worker 0 recorded does not run here ({exc}); reading {self.command_topic} again")

    def _place(self, statement: ast.CreateAsSelect, properties: dict[str, str]) -> None:
        """Note which worker runs the query `statement` made; run it here if it is this one."""
        source = self.engine.sources.get(statement.name)
        if source is None or not source.written_by:
            return
        owner = int(properties.get(WORKER_PROPERTY, 0))  # statements recorded before workers existed: worker 0
        if owner >= self.workers:
            log.warning("query %s was placed on worker %d but the engine runs %d workers: worker %d runs it from "
                        "empty state (start the engine with --workers %d to keep its state)",
                        source.written_by, owner, self.workers, owner % self.workers, owner + 1)
            owner %= self.workers
        self._owners[source.written_by] = owner
        self.engine.run_only(q for q in self.engine.queries if self._owners.get(q, 0) == self.worker)

    def commands_recorded(self, recorded: list[tuple[int, bytes]]) -> None:
        """Workers other than 0: the (offset, command) statements one request to worker 0 recorded; applied together at the next step."""
        self._recorded.put((None, recorded))

    def _look_at_command_topic(self) -> None:
        """Workers other than 0: every `command_topic_interval_s` (30 s), in the background, queue what the
        command topic holds for `_follow_commands`.

        A safety net for a statement worker 0 recorded and did not pass on. The
        read takes the embedded broker about a second when it is busy, and the
        loop must not stall for it: the queries of this worker would pause, and
        worker 0 with them once this worker's feed is full. What it finds is
        dropped if the worker rebuilt meanwhile (a restarted embedded broker
        comes back without its topics: the old topic's statements are not the
        new one's).
        """
        self._last_follow = time.monotonic()
        if self._command_reader is not None and self._command_reader.is_alive():
            return
        rebuild = self._rebuilds

        def read() -> None:
            try:
                recorded = [(m.offset(), m.value()) for m in self._read_log(self.command_topic) if m.value()]
            except (KafkaException, RuntimeUnavailable) as exc:
                log.debug("could not read the command topic (%s); trying again later", _text(exc))
                return
            if recorded:
                self._recorded.put((rebuild, recorded))

        self._command_reader = threading.Thread(target=read, name="ksql-command-topic", daemon=True)
        self._command_reader.start()

    def _follow_commands(self) -> None:
        """Workers other than 0: apply the statements worker 0 recorded since the last look.

        Worker 0 passes each one on as it records it (through the worker pool);
        the command topic is read instead when one was missed (an offset gap),
        and now and then in the background (`_look_at_command_topic`).
        """
        self._last_follow = time.monotonic()
        told: dict[int, bytes] = {}  # by offset: the background read and worker 0 may tell the same statement
        while not self._recorded.empty():
            rebuild, recorded = self._recorded.get()
            if rebuild is None or rebuild == self._rebuilds:
                told.update(recorded)
        if not told:
            return  # only what a background read found before the last rebuild, which read the topic anew
        fresh = sorted((offset, command) for offset, command in told.items() if offset >= self._command_offset)
        if not fresh:
            return  # already applied (read at the last rebuild)
        if [offset for offset, _ in fresh] == list(range(self._command_offset, self._command_offset + len(fresh))):
            pending = [(offset, Command.decode(command)) for offset, command in fresh]
        else:
            # read from the beginning: a read starting near the end stalls on the embedded broker, whose
            # listed end offset can be short of the real one (see tests/test_broker_quirks.py)
            pending = [(m.offset(), Command.decode(m.value())) for m in self._read_log(self.command_topic)
                       if m.value() and m.offset() >= self._command_offset]
        if not pending:
            return
        with self._lock:
            self._commit()  # what was processed under the old statements is committed under them
            for offset, command in pending:
                try:
                    self._replay(command)
                except KsqlError as exc:
                    raise self._not_worker_0s(exc) from None
                self._command_offset = offset + 1
            self._ensure_sink_topics()
            self._resync_wanted = True

    def _restore_state(self) -> None:
        """Replay the checkpoints: state changes, input offsets, output ends."""
        latest: dict[tuple, object] = {}
        checkpoints = 0
        for message in self._read_log(self.changelog_topic):
            if message.key() != CHECKPOINT_KEY or message.value() is None:
                continue
            checkpoint = json.loads(message.value())
            checkpoints += 1
            for query_id, store, key, value in checkpoint["changes"]:
                latest[(query_id, store, key)] = value
            self._positions = {(t, p): o for t, p, o in checkpoint["offsets"]}
            self._output_ends = {(t, p): o for t, p, o in checkpoint["ends"]}
        self.engine.apply_changes([(q, s, k, v) for (q, s, k), v in latest.items()])
        if checkpoints:
            log.info("restored %d state entries and the offsets of %d partitions from %d checkpoints", len(latest), len(self._positions), checkpoints)

    def _count_replayed(self) -> None:
        """Count, per output partition, records past the last checkpoint: a crash's unfinished transaction.

        On Kafka they are aborted and invisible (nothing to count). On the
        embedded broker they are visible, and the same records come again
        when their inputs are processed again: that many are skipped. Tables
        with the record cache on are left out: their updates coalesce
        differently from run to run, and repeating the latest row of a key is
        harmless in a table.
        """
        self._replayed = {}
        running = self.engine.running_queries()
        cached = {q.plan.sink.topic for q in running if getattr(q, "caching", False)}
        topics = {q.plan.sink.topic for q in running}
        if self.workers == 1:
            # with several workers the dead letters interleave: a repeat there after a crash is left alone
            topics.add(self._dead_letter_topic())
        wanted = [(t, p) for t in sorted(topics - cached) for p in range(self._partition_count(t))]
        if not wanted:
            return
        consumer = Consumer(self.cluster.consumer_config(**{"enable.partition.eof": True, "isolation.level": "read_committed", "fetch.wait.max.ms": 10, **self._quiet}))
        try:
            consumer.assign([TopicPartition(t, p, self._output_ends.get((t, p), OFFSET_BEGINNING)) for t, p in wanted])
            open_partitions = set(wanted)
            deadline = time.monotonic() + 30
            while open_partitions:
                if time.monotonic() > deadline:
                    raise RuntimeUnavailable("reading the output topics past the last checkpoint timed out")
                for message in consumer.consume(10_000, _READ_WAIT):
                    where = (message.topic(), message.partition())
                    error = message.error()
                    if error is None:
                        self._replayed[where] = self._replayed.get(where, 0) + 1
                        self._output_ends[where] = message.offset() + 1
                    elif error.code() == KafkaError._PARTITION_EOF:
                        open_partitions.discard(where)
                    else:
                        raise KafkaException(error)
        finally:
            consumer.close()
        if self._replayed:
            log.warning("a crash left %s output records past the last checkpoint; their repeats will be skipped",
                        ", ".join(f"{n} on {t}[{p}]" for (t, p), n in sorted(self._replayed.items())))

    def _read_log(self, topic: str) -> list:
        """Every committed record of the command topic or the changelog, in order, to its end
        (end-of-partition, never the listed watermark); none if the topic does not exist."""
        if not self._partitions(topic):
            return []
        consumer = Consumer(self.cluster.consumer_config(**{"enable.partition.eof": True, "isolation.level": "read_committed", "fetch.wait.max.ms": 10, **self._quiet}))
        records = []
        try:
            consumer.assign([TopicPartition(topic, _LOG_PARTITION, OFFSET_BEGINNING)])
            at_end = False
            deadline = time.monotonic() + 10
            while not at_end:
                if time.monotonic() > deadline:
                    raise RuntimeUnavailable(f"reading {topic} to its end stalled for 10 s")
                for message in consumer.consume(10_000, _READ_WAIT):
                    error = message.error()
                    if error is None:
                        records.append(message)
                        deadline = time.monotonic() + 10
                    elif error.code() == KafkaError._PARTITION_EOF:
                        at_end = True
                    else:
                        raise KafkaException(error)
        finally:
            consumer.close()
        return records

    # ------------------------------------------------------------ topics and assignment

    def _topics(self) -> dict[str, int]:
        try:
            metadata = self._admin.list_topics(timeout=10)
        except KafkaException as exc:
            raise RuntimeUnavailable(f"cannot list the topics: {_text(exc)}") from None
        return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}

    def _partition_count(self, topic: str) -> int:
        count = self._partition_counts.get(topic) or self._topics().get(topic, 0)
        if not count:
            raise RuntimeUnavailable(f"topic {topic} does not exist")
        self._partition_counts[topic] = count
        return count

    def _partitions(self, topic: str) -> list[int]:
        return list(range(self._topics().get(topic, 0)))

    def _create_topic(self, topic: str, partitions: int, config: dict[str, str]) -> None:
        replication = 1 if self.cluster.embedded else -1
        future = self._admin.create_topics([NewTopic(topic, partitions, replication, config=config)], request_timeout=15)[topic]
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeUnavailable(f"cannot create topic {topic}: {_text(exc)}") from None

    def _ensure_topic(self, topic: str, config: dict[str, str], partitions: int = 1) -> None:
        if topic not in self._topics():
            self._create_topic(topic, partitions, config)

    def _ensure_sink_topics(self) -> None:
        """Create missing sink and dead-letter topics (the broker would auto-create them with its own partition count)."""
        topics = self._topics()
        for query in self.engine.queries.values():
            sink = query.plan.sink
            if sink.topic in topics:
                continue
            explicit = _statement_partitions(sink.statement)
            partitions = explicit or topics.get(query.plan.source.topic) or sink.partitions
            config = {"cleanup.policy": "compact"} if sink.kind == "TABLE" and sink.window is None else {}
            self._create_topic(sink.topic, partitions, config)
            topics[sink.topic] = partitions
        dead_letters = self._dead_letter_topic()
        if dead_letters not in topics:
            self._create_topic(dead_letters, 1, {})

    def _dead_letter_topic(self) -> str:
        return self.engine.properties.get(DEAD_LETTER_TOPIC, DEFAULT_DEAD_LETTER_TOPIC)

    def _sync_assignment(self) -> None:
        """Read every partition of the source topics that exist: new queries and new topics are picked up.

        Worker 0 assigns its consumer what it and the subscribed workers read;
        another worker subscribes to worker 0 when what it reads changed.
        """
        self._last_resync = time.monotonic()
        self._resync_wanted = False
        topics = self._topics()
        if self.command_topic not in topics or self.changelog_topic not in topics:
            # a broker that lost its topics (the embedded one, restarted): offsets and state start over
            raise RuntimeUnavailable(f"the engine's topics are gone from {self.cluster.bootstrap_servers}")
        wanted = {(t, p) for t in self.engine.source_topics() for p in range(topics.get(t, 0))}
        if wanted != self._assigned:
            for key in wanted - self._assigned:
                self._positions.setdefault(key, OFFSET_BEGINNING)  # the checkpoints hold where reading stopped
            for key in self._assigned - wanted:
                self._positions.pop(key, None)
            self._assigned = wanted
            log.info("reading %d partitions of %s", len(wanted), ", ".join(sorted({t for t, _ in wanted})) or "nothing")
        if self.leader:
            self._assign_consumer(topics)
        elif self._subscribed != wanted:
            self._subscribe()

    def _assign_consumer(self, topics: dict[str, int]) -> None:
        """Worker 0: assign every partition it or a subscribed worker reads, from the lowest position needed."""
        starts = {key: self._positions[key] for key in self._assigned}
        for _, offsets in self._followers.values():
            for (topic, partition), offset in offsets.items():
                if partition < topics.get(topic, 0):
                    starts[(topic, partition)] = min(starts.get((topic, partition), offset), offset)
        if starts.keys() == self._fetching.keys() and not self._reassign:
            return
        for (topic, partition), offset in starts.items():
            if offset == OFFSET_BEGINNING:
                # the first offset itself: a partition assigned at a logical offset looks it up first and
                # may then deliver after another one that holds later records
                starts[(topic, partition)] = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[0]
        self._resume_fetching()  # a pause could outlast the assignment
        self._consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in sorted(starts.items())])
        self._fetching = starts
        self._reassign = False
        # see _fetch_chunks; what was held and not processed yet is read again from the positions
        self._unheard, self._held, self._released = set(starts), {}, collections.deque()
        self._hold_until = time.monotonic() + _HOLD_AFTER_ASSIGNMENT

    def _subscribe(self) -> None:
        """Another worker: ask worker 0 for the records of its partitions from its positions, in a new generation."""
        generation = self._inbox.renew()
        self._subscribed = set(self._assigned)
        if self.on_subscribe is not None:
            self.on_subscribe(generation, {key: self._positions[key] for key in self._assigned})

    def follower_subscribed(self, worker: int, generation: int, positions: dict[tuple[str, int], int]) -> None:
        """Worker 0: worker `worker` reads `positions` (partition -> next offset) from now on, as `generation`."""
        self._subscriptions.put((worker, generation, positions))

    def follower_gone(self, worker: int) -> None:
        """Worker 0: worker `worker` stopped; nothing is handed on to it until it subscribes again."""
        self._subscriptions.put((worker, 0, None))

    def _apply_subscriptions(self) -> None:
        """Worker 0: take the workers' new subscriptions. The consumer is assigned anew only when a worker
        needs records it read already (or partitions it does not read): an assignment starts each
        partition's fetching afresh, and a partition can then deliver before another that holds earlier
        records (an entry read before its question joins none)."""
        while not self._subscriptions.empty():
            worker, generation, positions = self._subscriptions.get()
            if positions is None:
                self._followers.pop(worker, None)
                continue
            self._followers[worker] = (generation, dict(positions))
            if any(self._read_past(where, start) for where, start in positions.items()):
                self._reassign = True
            self._resync_wanted = True

    def _read_past(self, where: tuple[str, int], start: int) -> bool:
        """Worker 0: whether its consumer delivered records of `where` from `start` on already."""
        read = self._fetching.get(where)
        if read is None or read == OFFSET_BEGINNING:
            return False  # not read (yet): assigned at the next sync, or delivering from the beginning
        return start == OFFSET_BEGINNING or start < read

    # ------------------------------------------------------------ trouble

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC):
            self._resync_wanted = True  # a topic went away (a restarted embedded broker loses them)
            raise RuntimeUnavailable(f"a source topic is gone: {error.str()}")
        if error.code() == KafkaError._AUTO_OFFSET_RESET:
            raise RuntimeUnavailable(f"an input partition no longer has the records the engine read (did the broker lose its data?): {error.str()}")
        if error.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT):
            self._outage_began(KafkaException(error))
            return
        log.warning("consumer error: %s", error.str())

    def _client_error(self, error: KafkaError) -> None:
        if error.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE):
            # not an outage by itself: these callbacks come late, after the engine is running again, from
            # clients that noticed an old disconnect; an outage makes the loop's own calls fail (logged there)
            log.debug("Kafka client: %s", error.str())
        elif error.fatal():
            log.error("Kafka client error: %s", error.str())
            self._needs_recovery = True

    def _outage_began(self, exc: Exception) -> None:
        """Log an outage of Kafka or of the Schema Registry once, when it starts."""
        reason = _text(exc)
        if self._outage is None:
            self._outage = reason
            if isinstance(exc, RegistryUnavailable):
                self._outage_of = f"the Schema Registry at {self.cluster.schema_registry_url}"
                log.warning("%s; the engine keeps trying from its last commit", reason)
            else:
                self._outage_of = f"Kafka at {self.cluster.bootstrap_servers}"
                log.warning("Kafka at %s is unreachable or failing (%s); the engine keeps trying", self.cluster.bootstrap_servers, reason)

    def _recovered(self) -> None:
        log.warning("%s answers again; the engine resumes", self._outage_of)
        self._outage = None

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush(1)
            except KafkaException:
                pass

    def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError):
                pass
        self._close_producer()

    def status(self) -> dict[str, Any]:
        """What the runtime does: readiness, counts, the outage in progress if any."""
        return {
            "engine_id": self.engine_id,
            "worker": self.worker,
            "ready": self.ready.is_set(),
            "outage": self._outage,
            "queries": len(self.engine.running_queries()),
            "assigned_partitions": len(self._assigned),
            "fetching_partitions": len(self._fetching),  # read from Kafka (worker 0 reads for every worker)
            "uncommitted": self._uncommitted,
            **self.metrics.__dict__,
        }


def in_timestamp_order(runs: dict) -> list[tuple]:
    """(partition, records) chunks of `runs` (each partition's records in offset order) in Kafka Streams' order.

    Kafka Streams processes next the record with the lowest timestamp among the
    partitions' next records, so a table row joins the stream records that come
    after it in time, whichever topic a fetch returned first. Records are
    (topic, partition, offset, timestamp, ...) tuples; a chunk runs as long as
    its partition stays the earliest.
    """
    if len(runs) < 2:
        return list(runs.items())
    position = dict.fromkeys(runs, 0)
    chunks = []
    while position:
        where = min(position, key=lambda w: runs[w][position[w]][3])
        run, start = runs[where], position[where]
        limit = min(runs[w][position[w]][3] for w in position if w != where) if len(position) > 1 else None
        end = start + 1
        if limit is None:
            end = len(run)
        else:
            while end < len(run) and run[end][3] <= limit:
                end += 1
        chunks.append((where, run[start:end]))
        if end == len(run):
            del position[where]
        else:
            position[where] = end
    return chunks


def _statement_partitions(text: str) -> int | None:
    try:
        statement = parse_statement(StatementText(text, 1, 1)) if text else None
    except KsqlError:
        return None
    props = {k.upper(): v for k, v in getattr(statement, "properties", {}).items()}
    return int(props["PARTITIONS"]) if "PARTITIONS" in props else None


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (as the Java clients' default partitioner), unsigned 32-bit."""
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def _text(exc: Exception) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return str(exc)
