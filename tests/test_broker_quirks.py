"""The embedded broker's known quirks (see shared/notes/embedded-broker.md), each pinned by a test.

Each test first shows the quirk is still there (so a broker upgrade that fixes or changes it is
noticed) and, where the project works around it, that the workaround does its job.
"""

from __future__ import annotations

import os
import time
import uuid

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from survey_kit.consume import read_messages
from survey_kit.topics import create_topics


def produce_batches(cluster, topic, sizes):
    producer = Producer(cluster.producer_config(**{"linger.ms": 50}))
    for size in sizes:
        for i in range(size):
            producer.produce(topic, value=f"record-{i}".encode(), timestamp=1_000 * (i + 1))
        producer.flush(10)


def test_listed_high_watermark_is_wrong_after_batches_but_reading_to_the_end_is_not(cluster):
    topic = cluster.topics.entries
    produce_batches(cluster, topic, [1, 2, 5])  # 8 records in three batches
    consumer = Consumer(cluster.consumer_config())
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.close()
    assert high == 4  # the quirk: last batch's base offset + 1, not 8
    # The workaround: the end of a partition comes from the fetch's end-of-partition event.
    assert len(list(read_messages(cluster, topic))) == 8


def test_offsets_for_times_is_off_by_one(cluster):
    topic = cluster.topics.entries
    producer = Producer(cluster.producer_config())
    for ts in (1_000, 2_000, 3_000):
        producer.produce(topic, value=b"x", timestamp=ts)
        producer.flush(10)
    consumer = Consumer(cluster.consumer_config())
    [found] = consumer.offsets_for_times([TopicPartition(topic, 0, 1_500)], timeout=10)
    consumer.close()
    # Kafka answers 1 (the first record at or after 1500); Tansu answers 0. Time-range reads
    # therefore filter on each record's own timestamp instead of seeking by time.
    assert found.offset == 0


def test_group_join_waits_half_the_session_timeout(cluster):
    topic = cluster.topics.entries
    produce_batches(cluster, topic, [1])

    def first_record_after(config) -> float:
        consumer = Consumer({**config, "group.id": f"g-{uuid.uuid4().hex}"})
        consumer.subscribe([topic])
        started = time.monotonic()
        try:
            while consumer.poll(0.2) is None:
                assert time.monotonic() - started < 40, "no record within 40 s"
            return time.monotonic() - started
        finally:
            consumer.close()

    # cluster.consumer_config() sets session.timeout.ms=6000 for the embedded broker: about 3 s.
    short = first_record_after(cluster.consumer_config())
    slow = first_record_after({**cluster.consumer_config(), "session.timeout.ms": 20000})
    assert short < 6 and slow > 8


def test_unknown_topics_are_auto_created_with_four_partitions(cluster):
    admin = AdminClient(cluster.admin_config())
    name = f"auto-{uuid.uuid4().hex[:8]}"
    producer = Producer(cluster.producer_config())
    producer.produce(name, value=b"x")
    producer.flush(10)
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 4
    # The workaround: create_topics creates every survey topic explicitly with the configured count.
    for report in create_topics(cluster):
        assert report.partitions == cluster.settings.partitions


def test_describe_configs_returns_only_explicit_configs(cluster):
    admin = AdminClient(cluster.admin_config())
    name = f"cfg-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, 1, 1, config={"cleanup.policy": "compact"})])[name].result()
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["cleanup.policy"].value == "compact"
    assert "retention.ms" not in configs  # Kafka would list every broker default too


def test_a_fetch_costs_the_broker_more_the_more_batches_its_partition_holds(stack, cluster):
    """Tansu 0.6 (memory storage) works through a partition's batches to serve a fetch: reading the new
    records of a partition of 3,000 batches keeps the broker far busier than of one of 10. Kafka finds
    the fetch offset in an index. This is why the engine's update latency grows as single-entry batches
    accumulate (benchmarks/engine.py, README)."""
    broker = stack.status()["broker"]["pid"]

    def broker_cpu_seconds() -> float:
        with open(f"/proc/{broker}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def following(topic: str, records: int = 100) -> float:
        """Broker CPU seconds while a consumer at the end of `topic` reads `records` produced one by one."""
        consumer = Consumer(cluster.consumer_config(**{"fetch.wait.max.ms": 5}))
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        consumer.consume(1, 1.0)
        producer = Producer(cluster.producer_config(**{"linger.ms": 0}))
        before = broker_cpu_seconds()
        read = 0
        for _ in range(records):
            producer.produce(topic, value=b"x")
            producer.flush(10)
            read += len(consumer.consume(100, 0.002))
        while read < records:
            batch = consumer.consume(100, 5.0)
            assert batch, f"only {read} of {records} records came back"
            read += len(batch)
        used = broker_cpu_seconds() - before
        consumer.close()
        return used

    few, many = cluster.topics.entries, cluster.topics.responses
    producer = Producer(cluster.producer_config(**{"linger.ms": 0, "batch.num.messages": 1}))  # one record per batch
    for topic, batches in ((few, 10), (many, 3_000)):
        for _ in range(batches):
            producer.produce(topic, value=b"x")
        producer.flush(60)
    at_few, at_many = following(few), following(many)
    assert at_many > 3 * at_few, f"broker CPU: {at_few:.2f} s following 10 batches, {at_many:.2f} s following 3,000"
