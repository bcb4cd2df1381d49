"""How fast survey_kit.frames.read_topic reads survey entries, against baselines measured in the same run.

    .venv/bin/python benchmarks/frames.py [--entries 1000000] [--partitions 1]

Starts an embedded stack (broker + registry), produces N survey entries (Avro through the registry,
with an entry_id header as the bot writes them), then reads the topic three ways, one after the other:

1. baseline: a plain confluent-kafka Consumer loop decoding each value with the registry's
   AvroDeserializer into a list of dicts (the common approach);
2. ceiling: the same loop decoding with fastavro's schemaless_reader and a cached writer schema;
3. frames: ``read_topic(cluster, topic, progress=False)``, a complete DataFrame.

Prints entries/s for each, frames' ratio to both, and each reader's peak memory above the process's
resident size before it started. The baselines consume in batches (``consume(num_messages=...)``);
frames reads through survey_kit.consume.read_messages (``poll()`` per record, measured as fast here).
All stop at each partition's end-of-partition event.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from survey_kit.cluster import from_stack  # noqa: E402
from survey_kit.frames import read_topic  # noqa: E402
from survey_kit.schemas import load_schema  # noqa: E402
from survey_kit.stack import EmbeddedStack  # noqa: E402

TOPIC = "survey-entries"
OPTIONS = ["Pumpkin Pie", "Pecan Pie", "Apple Pie", "Thanksgiving Leftover Pot Pie", "Other"]
BATCH = 10_000


def produce_entries(cluster, count: int, partitions: int) -> None:
    """N entries on TOPIC: a pool of distinct serialized values, produced as raw bytes (fast)."""
    admin = AdminClient(cluster.admin_config())
    admin.create_topics([NewTopic(TOPIC, partitions, 1)])[TOPIC].result()
    serializer = AvroSerializer(cluster.registry(), load_schema("survey-entries"))
    context = SerializationContext(TOPIC, MessageField.VALUE)
    rng = random.Random(7)
    pool = []
    for user in range(2_000):
        entry = {"survey_id": str(user % 3), "user_id": str(user), "name": f"Respondent {user}",
                 "company": rng.choice([None, "Acme", "Initech", "Globex"]),
                 "location": rng.choice([None, "Berlin", "Lisbon", "Austin"]), "response": rng.choice(OPTIONS)}
        pool.append((entry["survey_id"].encode(), serializer(entry, context)))
    producer = Producer(cluster.producer_config(**{"linger.ms": 50, "batch.num.messages": 10_000,
                                                   "queue.buffering.max.messages": 500_000}))
    started_ms = int(time.time() * 1000) - count
    for i in range(count):
        key, value = pool[i % len(pool)]
        while True:
            try:
                producer.produce(TOPIC, value=value, key=key, timestamp=started_ms + i,
                                 headers=[("entry_id", uuid.UUID(int=i).hex.encode())])
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        raise SystemExit(f"{remaining} entries were not delivered")


def consume_all(cluster, decode) -> list:
    """Read TOPIC to the end (end-of-partition events) in batches, decoding each record into a dict."""
    consumer = Consumer(cluster.consumer_config(**{"enable.partition.eof": True, "fetch.wait.max.ms": 100}))
    partitions = consumer.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
    consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in partitions])
    open_partitions, rows = set(partitions), []
    try:
        while open_partitions:
            # a short wait: a call waits its whole timeout unless it gets BATCH records, and the clock
            # would count the last call's wait, at the partitions' end, as reading time
            for message in consumer.consume(BATCH, 0.01):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise SystemExit(f"consume failed: {error}")
                    open_partitions.discard(message.partition())
                    continue
                rows.append({"key": message.key(), "value": decode(message),
                             "timestamp": message.timestamp()[1], "partition": message.partition(),
                             "offset": message.offset(), "headers": message.headers()})
    finally:
        consumer.close()
    return rows


def avro_deserializer_decode(cluster):
    deserializer = AvroDeserializer(cluster.registry())

    def decode(message):
        return deserializer(message.value(), SerializationContext(TOPIC, MessageField.VALUE, message.headers()))

    return decode


def fastavro_decode(cluster):
    schemas: dict[int, object] = {}

    def decode(message):
        value = message.value()
        schema_id = int.from_bytes(value[1:5], "big")
        schema = schemas.get(schema_id)
        if schema is None:
            schema = schemas[schema_id] = fastavro.parse_schema(json.loads(cluster.registry().get_schema(schema_id).schema_str))
        buffer = io.BytesIO(value)
        buffer.seek(5)
        return fastavro.schemaless_reader(buffer, schema, None)

    return decode


class PeakMemory:
    """Peak resident memory of this process above its level at the start, sampled every 20 ms."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def __enter__(self):
        gc.collect()
        self.base = self.peak = self.rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def megabytes(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(name: str, read, expected: int) -> tuple[float, float]:
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = read()
        elapsed = time.perf_counter() - started
    if len(result) != expected:
        raise SystemExit(f"{name} read {len(result)} entries, expected {expected}")
    del result
    gc.collect()
    rate = expected / elapsed
    print(f"  {name:<44} {rate:>10,.0f} entries/s  {elapsed:6.2f} s  peak +{memory.megabytes:,.0f} MB", flush=True)
    return rate, memory.megabytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="survey entries to produce and read")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of the entries topic")
    args = parser.parse_args()
    with EmbeddedStack(services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        started = time.perf_counter()
        produce_entries(cluster, args.entries, args.partitions)
        print(f"produced {args.entries:,} entries on {args.partitions} partition(s) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        print("reading them back:")
        baseline, _ = measure("baseline: consume + AvroDeserializer -> dicts",
                              lambda: consume_all(cluster, avro_deserializer_decode(cluster)), args.entries)
        ceiling, _ = measure("ceiling: consume + fastavro -> dicts",
                             lambda: consume_all(cluster, fastavro_decode(cluster)), args.entries)
        frames, _ = measure("frames.read_topic -> DataFrame",
                            lambda: read_topic(cluster, TOPIC, progress=False), args.entries)
    print(f"frames / baseline: {frames / baseline:.2f}   frames / ceiling: {frames / ceiling:.2f}   "
          f"(target: at least 0.70 of the baseline)")


if __name__ == "__main__":
    main()
