"""How fast the ksql engine runs the talk's pipeline (ksql/) on the embedded broker, against a ceiling.

    .venv/bin/python benchmarks/engine.py [--entries 1000000] [--latency-seconds 10]

Starts an embedded stack (broker + registry), produces N survey entries on survey-entries (Avro
through the registry, keys = survey ids) and one question per survey, then:

1. ceilings (in this process): the same topic consumed in batches and Avro-decoded with no
   processing, to its end (the clock stops at the partition's end), twice: with fastavro (the project's reader, frames.py) and with the
   engine's own decoder (the survey_entries stream's `formats.AvroFormat`, as the engine reads each
   value: a reader compiled for the schema, cavro for what it does not read); the engine is compared
   with the higher of the two. The consumer fetches again 10 ms after its queue was
   full, as the engine's does (librdkafka's default, 1 s, held this ceiling to ~155k entries/s);
2. engine: the engine (`python -m survey_kit.ksql.server`, as `survey-kit up` runs it: the server and
   its worker processes, `--workers`, default 2) gets ksql/ through its REST API and runs its four
   queries (respondents, responses, live and final histograms) over the entries, exactly once
   (transactions, commits every 100 ms, its default); entries/s is measured from the first record
   processed to the last one committed by every worker (its /info, polled);
3. latency: with the engine caught up, entries of new surveys at 1,000 entries/s; for each, the time
   from producing it to its live-histogram record being readable (read_committed), p50 and p99, the
   p99 of each second and the broker's CPU meanwhile (its cost per fetch grows with the batches a
   partition holds, and every entry is one);
4. memory: the resident size of the engine's processes (server and workers, summed) sampled as it
   works through the entries (it should stay flat: the state grows with distinct survey ids, not with
   entries), and the sum of their peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import fastavro
import httpx
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from survey_kit.cluster import from_stack  # noqa: E402
from survey_kit.ksql.apply import register_value_schemas  # noqa: E402
from survey_kit.ksql.formats import AvroFormat, Column, avro_type_to_sql  # noqa: E402
from survey_kit.ksql.pipeline import read_pipeline  # noqa: E402
from survey_kit.ksql.rest import KsqlRestClient  # noqa: E402
from survey_kit.ksql.runtime import DEFAULT_COMMIT_INTERVAL_MS  # noqa: E402
from survey_kit.stack.processes import free_port  # noqa: E402
from survey_kit.schemas import load_schema  # noqa: E402
from survey_kit.stack import EmbeddedStack  # noqa: E402
from survey_kit.topics import create_topics  # noqa: E402
from workload import OPTIONS, SURVEYS, entry_pool, question  # noqa: E402  (benchmarks/, the script's folder)

KSQL_DIR = Path(__file__).resolve().parent.parent / "ksql"


def produce_entries(cluster, count: int, start_ms: int) -> None:
    """N entries: a pool of distinct serialized values produced as raw bytes, timestamps 1 ms apart."""
    topic = cluster.topics.entries
    serializer = AvroSerializer(cluster.registry(), load_schema("survey-entries"))
    context = SerializationContext(topic, MessageField.VALUE)
    pool = [(entry["survey_id"].encode(), serializer(entry, context)) for entry in entry_pool()]
    producer = Producer(cluster.producer_config(**{"linger.ms": 50, "batch.num.messages": 10_000,
                                                   "queue.buffering.max.messages": 500_000}))
    for i in range(count):
        key, value = pool[i % len(pool)]
        while True:
            try:
                producer.produce(topic, value=value, key=key, timestamp=start_ms + i)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise SystemExit("entries were not all delivered")


def produce_questions(cluster, start_ms: int) -> None:
    topic = cluster.topics.questions
    serializer = AvroSerializer(cluster.registry(), load_schema("survey-questions"))
    context = SerializationContext(topic, MessageField.VALUE)
    producer = Producer(cluster.producer_config())
    for survey in range(SURVEYS):
        producer.produce(topic, key=str(survey).encode(), value=serializer(question(survey), context), timestamp=start_ms)
    producer.flush(30)


def fastavro_decoder(writer: dict):
    parsed = fastavro.parse_schema(writer)
    return lambda value: fastavro.schemaless_reader(_Reader(value), parsed, None)


def engine_decoder(writer: dict):
    """The engine's reading of a value: its value format for the stream's columns, as it infers them from the schema."""
    columns = [Column(field["name"].upper(), avro_type_to_sql(field["type"])) for field in writer["fields"]]
    return AvroFormat(columns, "survey-entries", _WriterSchema(writer)).deserialize


class _WriterSchema:
    """A schema store that knows one schema, the topic's writer schema, under whatever id a value names."""

    def __init__(self, writer: dict):
        self.text = json.dumps(writer)

    def schema_by_id(self, schema_id: int) -> str:
        return self.text


def ceiling(cluster, count: int, decoder) -> float:
    """Entries/s of consuming and Avro-decoding the topic with no processing (`decoder(writer schema)` -> decode)."""
    # librdkafka waits fetch.queue.backoff.ms (1 s by default) before fetching again once it holds
    # queued.min.messages: a reader faster than one fetch a second then waits out that second (this
    # ceiling read 154-159k entries/s with it, 260-267k without); the engine's consumer backs off 10 ms too,
    # but fetches only once what it holds is taken (queued.min.messages 1: caught up, fewer fetches)
    consumer = Consumer(cluster.consumer_config(**{"enable.partition.eof": True, "fetch.wait.max.ms": 10,
                                                   "queued.min.messages": 100_000, "fetch.queue.backoff.ms": 10}))
    consumer.assign([TopicPartition(cluster.topics.entries, 0, OFFSET_BEGINNING)])
    registry = cluster.registry()
    decoders: dict[bytes, object] = {}
    decoded = 0
    started = time.perf_counter()
    done = False
    while not done:
        # a short wait: a call waits its whole timeout unless it gets 10,000 records, so the last one, with
        # the partition's end, waited a second that the clock counted (1 s of a ~5 s read: a fifth too low)
        for message in consumer.consume(10_000, 0.01):
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    done = True
                    continue
                raise SystemExit(message.error().str())
            value = message.value()
            schema_id = value[1:5]
            decode = decoders.get(schema_id)
            if decode is None:
                schema = registry.get_schema(int.from_bytes(schema_id, "big")).schema_str
                decode = decoders[schema_id] = decoder(json.loads(schema))
            decode(value)
            decoded += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    assert decoded == count, f"decoded {decoded} of {count}"
    return count / elapsed


class _Reader:
    """A minimal file-like view of a Confluent Avro value past its 5-byte header (no copy of the header)."""

    __slots__ = ("data", "position")

    def __init__(self, data: bytes):
        self.data = data
        self.position = 5

    def read(self, size: int = -1) -> bytes:
        start = self.position
        self.position = len(self.data) if size < 0 else start + size
        return self.data[start:self.position]


class EngineServer:
    """The engine as `survey-kit up` runs it: its own process, its REST API on a free port."""

    def __init__(self, stack, data_dir: Path, commit_interval_ms: int, workers: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir / "engine.log", "ab")
        # one client for every poll: a new one per request loads the TLS certificates each time, and
        # at 5 polls a second that took ~13% of a core from the engine being measured
        self.http = httpx.Client(timeout=10)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "survey_kit.ksql.server", "--port", str(self.port), "--data-dir", str(data_dir),
             "--bootstrap-servers", stack.bootstrap_servers, "--schema-registry-url", stack.schema_registry_url,
             "--commit-interval-ms", str(commit_interval_ms), "--workers", str(workers)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit(f"the engine did not start: see {data_dir / 'engine.log'}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return self.http.get(self.url + "/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def status(self) -> dict:
        return self.http.get(self.url + "/info").json()["survey_kit"]

    def processes(self) -> list[int]:
        """The server and every process it started (its workers), by pid."""
        pids, i = [self.proc.pid], 0
        while i < len(pids):
            try:
                with open(f"/proc/{pids[i]}/task/{pids[i]}/children") as children:
                    pids += [int(pid) for pid in children.read().split()]
            except FileNotFoundError:
                pass
            i += 1
        return pids

    def rss_mb(self) -> float:
        total = 0
        for pid in self.processes():
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * resource.getpagesize()
        return total / 2**20

    def peak_mb(self) -> float:
        total = 0
        for pid in self.processes():
            with open(f"/proc/{pid}/status") as status:
                total += int(next(line for line in status if line.startswith("VmHWM")).split()[1])
        return total / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.http.close()
        self.log.close()


def run_engine(engine: EngineServer, count: int) -> tuple[float, list[float], dict, list[tuple[float, float]], dict[int, float]]:
    """Apply the pipeline, time the engine through the entries; its resident size on the way; when each worker
    processed its first record and its last (seconds after the clock started, to 0.2 s); the share of a core
    each of its processes used meanwhile."""
    with KsqlRestClient(engine.url) as client:  # the pipeline in one request, as `survey-kit ksql apply` sends it
        client.execute("\n".join(script.text for script in read_pipeline(KSQL_DIR)))
    samples = []
    # the clock starts with the first record any worker processes (the status's own records_in is what
    # every worker has read, which a worker starting a moment later would hold at 0)
    while max(w["records_in"] for w in engine.status().get("workers", [engine.status()])) == 0:
        time.sleep(0.01)
    started = time.perf_counter()
    cpu_before = {pid: cpu_seconds(pid) for pid in engine.processes()}
    next_sample = count / 4
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    while True:
        status = engine.status()
        now = time.perf_counter() - started
        workers = status.get("workers", [status])
        for i, worker in enumerate(workers):
            if worker["records_in"]:
                first.setdefault(i, now)
            if worker["records_in"] >= _expected_records(worker, count):
                last.setdefault(i, now)
        if status["records_in"] >= next_sample:
            samples.append(engine.rss_mb())
            next_sample += count / 4
        if status["uncommitted"] == 0 and len(last) == len(workers):
            elapsed = time.perf_counter() - started
            timeline = [(first[i], last[i]) for i in range(len(workers))]
            cpu = {pid: (cpu_seconds(pid) - before) / elapsed for pid, before in cpu_before.items()}
            return count / elapsed, samples, status, timeline, cpu
        time.sleep(0.2)


def _expected_records(worker: dict, count: int) -> int:
    """What a worker reads of the workload: the entries, and the questions too if one of its queries joins
    them (it then reads two partitions; with more workers than joining queries, some read only entries)."""
    return count + (SURVEYS if worker["assigned_partitions"] > 1 else 0)


def latency(cluster, seconds: float, rate: int = 1_000) -> list[float]:
    """Milliseconds from producing an entry of a new survey to its live-histogram record being readable."""
    topic_in, topic_out = cluster.topics.entries, cluster.topics.results_live
    serializer = AvroSerializer(cluster.registry(), load_schema("survey-entries"))
    context = SerializationContext(topic_in, MessageField.VALUE)
    # fetch wait as the engine's own consumer: a reader fetching every 1 ms loaded the embedded broker enough
    # that, after a 1M backlog, updates stopped arriving within 30 s; at 5 ms it adds at most 5 ms. Not
    # longer: the embedded broker answers a waiting fetch when records arrive, not when the transaction that
    # wrote them commits (at 50 ms, the time from commit to read went from ~5 to ~17 ms)
    consumer = Consumer(cluster.consumer_config(**{"isolation.level": "read_committed", "fetch.wait.max.ms": 5}))
    consumer.assign([TopicPartition(topic_out, 0, OFFSET_END)])
    consumer.consume(1, 1.0)  # join the end before anything is produced
    sent: dict[bytes, float] = {}
    seen: dict[bytes, float] = {}
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for message in consumer.consume(1_000, 0.005):
                if message.error() is None and message.key() in sent and message.key() not in seen:
                    seen[message.key()] = time.perf_counter()

    reader = threading.Thread(target=read)
    reader.start()
    # as the bot produces entries (bot/delivery.py: linger 5 ms); one batch per entry also loads the
    # embedded broker more than the engine
    producer = Producer(cluster.producer_config(**{"linger.ms": 5}))

    def entry(survey_id: str, i: int) -> bytes:
        return serializer({"survey_id": survey_id, "user_id": str(i), "name": "Latency", "company": None,
                           "location": None, "response": OPTIONS[i % len(OPTIONS)]}, context)

    # warm up: the producer's first send waits for its connection and producer id, the reader's first fetch too
    warmup = b"latency-warmup"
    sent[warmup] = time.perf_counter()
    producer.produce(topic_in, key=warmup, value=entry("latency-warmup", 0))
    producer.flush(30)
    deadline = time.monotonic() + 30
    while warmup not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    del sent[warmup]
    seen.pop(warmup, None)
    count = int(seconds * rate)
    started = time.perf_counter()
    base_ms = int(time.time() * 1000)
    for i in range(count):
        due = started + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.0005))
        survey_id = f"latency-{i}"
        value = entry(survey_id, i)
        sent[survey_id.encode()] = time.perf_counter()
        producer.produce(topic_in, key=survey_id.encode(), value=value, timestamp=base_ms + i)
        producer.poll(0)
    producer.flush(30)
    deadline = time.monotonic() + 30
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join()
    consumer.close()
    missing = count - len(seen)
    if missing:
        print(f"  ({missing} of {count} latency entries never showed up within 30 s)")
    return [(seen[k] - sent[k]) * 1000 for k in sent if k in seen]  # in the order produced


def p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries pushed through the pipeline (default 1,000,000)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="how long to measure latency at 1,000 entries/s (default 10)")
    parser.add_argument("--commit-interval-ms", type=int, default=DEFAULT_COMMIT_INTERVAL_MS,
                        help=f"the engine's commit interval (default {DEFAULT_COMMIT_INTERVAL_MS}, its default)")
    parser.add_argument("--workers", type=int, default=2, help="the engine's worker processes (default 2, its default)")
    args = parser.parse_args(argv)

    with EmbeddedStack(services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        create_topics(cluster)
        register_value_schemas(cluster)
        start_ms = int(time.time() * 1000) - args.entries - 60_000
        print(f"producing {args.entries:,} entries ...", flush=True)
        produce_questions(cluster, start_ms - 1)
        produce_entries(cluster, args.entries, start_ms)

        print("ceiling: consume + Avro-decode, no processing ...", flush=True)
        # each twice, interleaved, the best kept: the first read of a topic also warms the broker
        fastavro_rate = engine_codec_rate = 0.0
        for _ in range(2):
            fastavro_rate = max(fastavro_rate, ceiling(cluster, args.entries, fastavro_decoder))
            engine_codec_rate = max(engine_codec_rate, ceiling(cluster, args.entries, engine_decoder))
        ceiling_rate = max(fastavro_rate, engine_codec_rate)
        print(f"  fastavro: {fastavro_rate:,.0f} entries/s; the engine's decoder: {engine_codec_rate:,.0f} entries/s")

        print("engine: the ksql/ pipeline, exactly once, in its own process ...", flush=True)
        engine = EngineServer(stack, stack.data_dir / "engine", args.commit_interval_ms, args.workers)
        try:
            before = engine.rss_mb()
            broker_before, phase_started = cpu_seconds(stack.records["broker"].pid), time.monotonic()
            engine_rate, samples, status, timeline, cpu = run_engine(engine, args.entries)
            broker_share = (cpu_seconds(stack.records["broker"].pid) - broker_before) / (time.monotonic() - phase_started)
            workers = status.get("workers", [status])
            print(f"  {engine_rate:,.0f} entries/s = {engine_rate / ceiling_rate:.0%} of the ceiling; "
                  f"{status['records_out']:,} records out, {status['commits']:,} commits; "
                  f"{len(workers)} worker process(es) running " + " + ".join(str(w["queries"]) for w in workers) + " queries")
            # a worker that starts late (it learns the queries from the command topic) holds up the whole run
            print("  " + "; ".join(f"worker {i}: first record at {a:.1f} s, all at {b:.1f} s" for i, (a, b) in enumerate(timeline)))
            print("  share of a core: engine processes " + " / ".join(f"{share:.0%}" for share in cpu.values())
                  + f" (the server, which is worker 0, first), the broker {broker_share:.0%}")
            print(f"  engine resident MB ({len(engine.processes())} processes): {before:.0f} started, at 25/50/75/100% of the entries: "
                  + " / ".join(f"{s:.0f}" for s in samples))
            print(f"latency: entry -> live histogram readable, 1,000 entries/s for {args.latency_seconds:.0f} s ...", flush=True)
            broker_before = cpu_seconds(stack.records["broker"].pid)
            phase_started = time.monotonic()
            in_order = latency(cluster, args.latency_seconds)
            broker_share = (cpu_seconds(stack.records["broker"].pid) - broker_before) / (time.monotonic() - phase_started)
            delays = sorted(in_order)
            if delays:
                print(f"  p50 {statistics.median(delays):.1f} ms, p99 {p99(delays):.1f} ms, max {delays[-1]:.1f} ms over {len(delays):,} entries")
                # the embedded broker's cost per fetch grows with the batches a partition holds (each entry
                # is one): the broker's share of a core and the later seconds' p99 show it
                seconds = [sorted(in_order[i:i + 1_000]) for i in range(0, len(in_order), 1_000)]
                print(f"  p99 in each second: {' '.join(f'{p99(s):.0f}' for s in seconds)} ms; "
                      f"the broker used {broker_share:.0%} of a core meanwhile")
            print(f"peak resident memory of the engine's processes (sum): {engine.peak_mb():.0f} MB "
                  f"(after {args.entries:,} entries of {SURVEYS} surveys and {int(args.latency_seconds * 1000):,} one-entry surveys)")
        finally:
            engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
