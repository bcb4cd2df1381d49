"""survey_kit.frames against the embedded stack: real producers write, read_topic and tails read."""

from __future__ import annotations

import dataclasses
import struct
import threading
import time

import pandas as pd
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from survey_kit.consume import TopicMissing
from survey_kit.frames import MalformedRecord, errors_frame, read_topic, tail
from survey_kit.schemas import load_schema
from survey_kit.serde import RegistryUnavailable, avro_producer

T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z in epoch ms


def entry(user: int, response: str, survey_id: str = "1", company: str | None = "Acme") -> dict:
    return {"survey_id": survey_id, "user_id": str(user), "name": f"User {user}", "company": company,
            "location": None, "response": response}


def create_topic(cluster, suffix: str, partitions: int) -> str:
    name = f"{cluster.topics.entries}-{suffix}"
    admin = AdminClient(cluster.admin_config())
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result()
    return name


def produce_entries(cluster, topic, records, **config):
    """records: (entry, timestamp_ms, partition or None, entry_id or None)."""
    producer = avro_producer(cluster, "survey-entries", **config)
    for value, timestamp, partition, entry_id in records:
        extra = {"partition": partition} if partition is not None else {}
        headers = [("entry_id", entry_id.encode())] if entry_id else None
        producer.produce(topic, key=value["survey_id"], value=value, timestamp=timestamp, headers=headers, **extra)
    assert producer.flush(10) == 0


def serialized_entry(cluster, topic, value) -> bytes:
    return AvroSerializer(cluster.registry(), load_schema("survey-entries"))(
        value, SerializationContext(topic, MessageField.VALUE))


def test_reads_every_record_with_columns_from_key_value_timestamp_and_headers(cluster):
    topic = cluster.topics.entries
    records = [(entry(i, ["Apple Pie", "Pecan Pie"][i % 2]), T0 + i * 1000, None, f"e{i}") for i in range(25)]
    # linger batches many records together: the listed high watermark is wrong then, the read is not.
    produce_entries(cluster, topic, records, **{"linger.ms": 100})

    frame = read_topic(cluster, topic, progress=False)

    assert len(frame) == 25
    assert list(frame.columns) == ["key", "survey_id", "user_id", "name", "company", "location", "response",
                                   "timestamp", "timestamp_ms", "partition", "offset", "entry_id", "headers",
                                   "tombstone"]
    first = frame.iloc[0]
    assert first["key"] == "1" and first["user_id"] == "0" and first["response"] == "Apple Pie"
    assert first["company"] == "Acme" and first["location"] is None
    assert first["timestamp"] == pd.Timestamp(T0, unit="ms", tz="UTC")
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert list(frame["timestamp_ms"]) == [T0 + i * 1000 for i in range(25)]
    assert list(frame["offset"]) == list(range(25))
    assert list(frame["entry_id"]) == [f"e{i}" for i in range(25)]
    assert first["headers"] == {"entry_id": "e0"}
    assert not frame["tombstone"].any()
    assert frame.attrs["error_count"] == 0 and errors_frame(frame).empty


def test_time_range_filters_on_each_records_own_timestamp_across_partitions(cluster):
    topic = create_topic(cluster, "range", 3)
    # Out of order within each partition: a range read must not stop at the first record past the range.
    stamps = {0: [T0 + 5_000, T0 + 1_000, T0 + 3_000], 1: [T0 + 2_000, T0 + 9_000, T0 + 4_000], 2: [T0 + 4_999]}
    records = [(entry(p * 10 + i, "Other"), ts, p, f"p{p}-{i}") for p, stamps_ in stamps.items()
               for i, ts in enumerate(stamps_)]
    produce_entries(cluster, topic, records)

    start = pd.Timestamp(T0 + 3_000, unit="ms", tz="UTC")
    frame = read_topic(cluster, topic, start=start, end=T0 + 5_000, progress=False)

    # [start, end): 3000 and 4000 and 4999 are in; 5000 (the end) and 1000, 2000, 9000 are out.
    assert sorted(frame["timestamp_ms"] - T0) == [3_000, 4_000, 4_999]
    assert list(zip(frame["partition"], frame["offset"])) == [(0, 2), (1, 2), (2, 0)]
    assert len(read_topic(cluster, topic, progress=False)) == 7


def test_time_range_accepts_iso_strings_and_rejects_an_empty_range(cluster):
    topic = cluster.topics.entries
    produce_entries(cluster, topic, [(entry(1, "Other"), T0, None, None)])
    iso = pd.Timestamp(T0, unit="ms", tz="UTC").isoformat()
    assert len(read_topic(cluster, topic, start=iso, progress=False)) == 1
    assert len(read_topic(cluster, topic, end=iso, progress=False)) == 0
    with pytest.raises(ValueError, match="empty"):
        read_topic(cluster, topic, start=T0, end=T0)
    with pytest.raises(ValueError, match="not a time"):
        read_topic(cluster, topic, start="yesterday-ish")


def test_malformed_records_are_collected_with_where_they_are_and_counted(cluster):
    topic = cluster.topics.entries
    good = serialized_entry(cluster, topic, entry(1, "Apple Pie"))
    producer = Producer(cluster.producer_config())
    producer.produce(topic, key=b"1", value=good, timestamp=T0)
    producer.produce(topic, key=b"1", value=b'{"json": "not avro"}', timestamp=T0 + 1)  # no magic byte
    producer.produce(topic, key=b"1", value=b"\x00" + struct.pack(">I", 987_654) + good[5:], timestamp=T0 + 2)
    producer.produce(topic, key=b"1", value=good[:5] + b"\xff\xff", timestamp=T0 + 3)  # truncated Avro
    producer.produce(topic, key=b"1", value=good, timestamp=T0 + 4)
    assert producer.flush(10) == 0

    with pytest.warns(UserWarning, match="3 record"):
        frame = read_topic(cluster, topic, progress=False)

    assert list(frame["offset"]) == [0, 4]
    errors = errors_frame(frame)
    assert frame.attrs["error_count"] == 3
    assert list(errors.columns) == ["topic", "partition", "offset", "timestamp_ms", "key", "error"]
    assert list(errors["offset"]) == [1, 2, 3] and set(errors["topic"]) == {topic}
    assert "wire format" in errors["error"][0]
    assert "987654" in errors["error"][1]
    with pytest.raises(MalformedRecord, match=rf"{topic}\[0\]@1"):
        read_topic(cluster, topic, progress=False, on_error="raise")


def test_tombstones_are_rows_marked_as_such(cluster):
    topic = cluster.topics.questions
    producer = avro_producer(cluster, "survey-questions")
    producer.produce(topic, key="7", value={"survey_id": "7", "question": "Pie?", "summary": "Pie",
                                            "options": ["a", "b"], "enabled": True})
    producer.produce(topic, key="7", value=None)
    assert producer.flush(10) == 0
    frame = read_topic(cluster, topic, progress=False)
    assert list(frame["tombstone"]) == [False, True]
    assert frame["options"][0] == ["a", "b"]
    assert frame["question"].isna().tolist() == [False, True]


RESULTS_SCHEMA = """{"type": "record", "name": "KsqlDataSourceSchema", "namespace": "io.confluent.ksql.avro_schemas",
  "fields": [{"name": "RESULTS", "type": ["null", {"type": "map", "values": ["null", "long"]}], "default": null}]}"""


def test_windowed_keys_give_key_window_start_and_window_end(cluster):
    topic = cluster.topics.results_final
    serializer = AvroSerializer(cluster.registry(), RESULTS_SCHEMA)
    window = 48 * 3600 * 1000
    start = (T0 // window) * window
    producer = Producer(cluster.producer_config())
    for question, window_start, results in [("Pie?", start, {"Apple Pie": 3, "Other": 1}),
                                            ("Pie?", start + window, {"Apple Pie": 1})]:
        value = serializer({"RESULTS": results}, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, key=question.encode() + struct.pack(">q", window_start), value=value,
                         timestamp=window_start + 5)
    producer.produce(topic, key=b"short", value=value)  # not a windowed key: an error, not a crash
    assert producer.flush(10) == 0

    with pytest.warns(UserWarning, match="1 record"):
        frame = read_topic(cluster, topic, windowed=True, window_size="48h", progress=False)

    assert list(frame.columns[:4]) == ["key", "window_start", "window_end", "RESULTS"]
    assert list(frame["key"]) == ["Pie?", "Pie?"]
    assert list(frame["window_start"]) == [pd.Timestamp(start, unit="ms", tz="UTC"),
                                           pd.Timestamp(start + window, unit="ms", tz="UTC")]
    assert (frame["window_end"] - frame["window_start"]).eq(pd.Timedelta(hours=48)).all()
    assert frame["RESULTS"][0] == {"Apple Pie": 3, "Other": 1}
    assert "8 bytes" in errors_frame(frame)["error"][0]
    with pytest.warns(UserWarning):
        without_size = read_topic(cluster, topic, windowed=True, progress=False)
    assert "window_end" not in without_size.columns


def test_an_empty_topic_gives_an_empty_frame_with_the_registered_columns(cluster):
    topic = cluster.topics.entries
    serialized_entry(cluster, topic, entry(1, "Other"))  # registers the schema under <topic>-value
    frame = read_topic(cluster, topic, progress=False)
    assert len(frame) == 0
    assert {"key", "survey_id", "response", "timestamp", "partition", "offset", "entry_id"} <= set(frame.columns)
    assert len(read_topic(cluster, cluster.topics.responses, progress=False)) == 0  # nothing registered: fine


def test_a_missing_topic_says_so(cluster):
    with pytest.raises(TopicMissing, match="does not exist"):
        read_topic(cluster, "no-such-topic-" + cluster.topics.entries, progress=False)


def wait_until_caught_up(live, timeout=20.0):
    rows = []
    deadline = time.monotonic() + timeout
    while not live.caught_up:
        assert time.monotonic() < deadline, "the tail did not reach the end of the topic"
        rows.append(live.poll(0.2))
    return pd.concat(rows, ignore_index=True)


def wait_for_rows(live, count, timeout=20.0):
    rows = []
    deadline = time.monotonic() + timeout
    while sum(len(r) for r in rows) < count and time.monotonic() < deadline:
        batch = live.poll(0.5)
        if len(batch):
            rows.append(batch)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def test_tail_from_the_end_yields_only_records_written_after_it_started(cluster):
    topic = cluster.topics.entries
    # The old records come in one batch, so the listed high watermark (where "the end" starts) is too early.
    produce_entries(cluster, topic, [(entry(i, "Old"), T0 + i, None, f"old{i}") for i in range(5)],
                    **{"linger.ms": 100})
    with tail(cluster, topic) as live:
        skipped = wait_until_caught_up(live)
        assert skipped.empty  # the old records, redelivered from the too-early "end", are skipped
        produce_entries(cluster, topic, [(entry(i, "New"), T0 + 100 + i, None, f"new{i}") for i in range(3)])
        rows = wait_for_rows(live, 3)
    assert list(rows["entry_id"]) == ["new0", "new1", "new2"]
    assert set(rows["response"]) == {"New"}


def test_tail_from_the_beginning_and_its_idle_timeout_end_the_iteration(cluster):
    topic = cluster.topics.entries
    produce_entries(cluster, topic, [(entry(i, "Apple Pie"), T0 + i, None, None) for i in range(4)])
    started = time.monotonic()
    batches = list(tail(cluster, topic, from_beginning=True, idle_timeout=1.0, poll_timeout=0.2))
    assert sum(len(b) for b in batches) == 4
    assert time.monotonic() - started < 30  # it ended by itself, not by the test's timeout


def test_tail_in_a_background_thread_delivers_rows_and_stops_cleanly(cluster):
    topic = cluster.topics.entries
    received: list[pd.DataFrame] = []
    arrived = threading.Event()

    def on_rows(batch):
        received.append(batch)
        if sum(len(b) for b in received) >= 2:
            arrived.set()

    live = tail(cluster, topic, poll_timeout=0.2).start(on_rows)
    try:
        deadline = time.monotonic() + 20
        while not live.caught_up:  # the rows it delivers are those written once it has found the end
            assert time.monotonic() < deadline, "the tail did not reach the end of the topic"
            time.sleep(0.05)
        produce_entries(cluster, topic, [(entry(i, "Pecan Pie"), T0, None, None) for i in range(2)])
        assert arrived.wait(20)
        assert live.running
    finally:
        live.stop()
    assert not live.running and live.failure is None
    with pytest.raises(RuntimeError, match="stopped"):
        live.poll()


def test_a_registry_that_does_not_answer_is_not_taken_for_malformed_records(registry_cluster, own_registry):
    # The records are fine; only the Schema Registry is gone. A read must say so (not list every record as
    # undecodable), and a live tail must wait for the registry and then give those very records, in order.
    topic = registry_cluster.topics.entries
    produce_entries(registry_cluster, topic, [(entry(user, "Apple Pie"), 1_000 + user, None, None) for user in range(3)])
    own_registry.stop_service("registry")
    reader = dataclasses.replace(registry_cluster)  # a new registry client: no schema cached yet
    with pytest.raises(RegistryUnavailable, match=rf"Schema Registry at {own_registry.schema_registry_url} .*schema_registry.url"):
        read_topic(reader, topic, progress=False)

    live = tail(reader, topic, from_beginning=True, poll_timeout=0.2)
    try:
        deadline = time.monotonic() + 20
        while live.last_error is None and time.monotonic() < deadline:
            assert len(live.poll()) == 0
        assert isinstance(live.last_error, RegistryUnavailable)
        assert all(len(live.poll()) == 0 for _ in range(3)) and live.errors == []  # held, not dropped
        assert live.waiting.startswith(f"the Schema Registry at {own_registry.schema_registry_url} did not answer")
        assert live.waiting.endswith("3 records held until it answers")
        own_registry.start_service("registry")
        batches = []
        deadline = time.monotonic() + 20
        while sum(map(len, batches)) < 3 and time.monotonic() < deadline:
            batches.append(live.poll())
        rows = pd.concat(batches)
        assert list(rows["user_id"]) == ["0", "1", "2"] and live.errors == []
        assert live.waiting is None
    finally:
        live.stop()
    frame = read_topic(dataclasses.replace(registry_cluster), topic, progress=False)
    assert len(frame) == 3 and frame.attrs["error_count"] == 0


def test_a_tail_whose_broker_went_away_says_so(tmp_path):
    from survey_kit.cluster import from_stack
    from survey_kit.stack import EmbeddedStack
    from survey_kit.topics import create_topics

    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as own:
        cluster = from_stack(own)
        create_topics(cluster)
        topic = cluster.topics.entries
        produce_entries(cluster, topic, [(entry(0, "Apple Pie"), 1_000, None, None)])
        live = tail(cluster, topic, from_beginning=True, poll_timeout=0.2)
        try:
            deadline = time.monotonic() + 20
            while not live.caught_up and time.monotonic() < deadline:
                live.poll()
            assert live.caught_up and live.waiting is None
            own.stop_service("broker")
            deadline = time.monotonic() + 30
            while live.waiting is None and time.monotonic() < deadline:
                assert len(live.poll()) == 0
            assert live.waiting is not None and live.waiting.startswith("Kafka said at ")
            assert "(retrying; no records since)" in live.waiting
        finally:
            live.stop()
