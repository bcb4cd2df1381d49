"""The talk's Avro schemas round-trip through the registry with confluent-kafka's own clients."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import DeserializingConsumer, SerializingProducer, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import StringDeserializer, StringSerializer

from survey_kit.consume import read_values
from survey_kit.schemas import SCHEMA_NAMES, field_names, load_schema
from survey_kit.serde import avro_producer

ENTRY = {
    "survey_id": "1",
    "user_id": "12345",
    "name": "Danica",
    "company": "Confluent",
    "location": None,
    "response": "Pumpkin Pie",
}


def test_schemas_are_the_talks():
    assert field_names("survey-entries") == ["survey_id", "user_id", "name", "company", "location", "response"]
    assert field_names("survey-respondents") == ["user_id", "name", "company", "location"]
    assert field_names("survey-responses") == ["survey_id", "user_id", "response"]
    assert field_names("survey-questions") == ["survey_id", "question", "summary", "options", "enabled"]
    for name in SCHEMA_NAMES:
        assert json.loads(load_schema(name))["namespace"] == "survey.bot"
    entries = {f["name"]: f for f in json.loads(load_schema("survey-entries"))["fields"]}
    assert entries["company"]["type"] == ["null", "string"] and entries["company"]["default"] is None


def test_unknown_schema_name_is_refused():
    with pytest.raises(KeyError, match="survey-entries"):
        load_schema("survey-entry")


def test_entry_round_trips_with_confluent_kafkas_own_clients(cluster):
    """What a user's own script does against the printed addresses."""
    registry = cluster.registry()
    topic = cluster.topics.entries
    producer = SerializingProducer({
        "bootstrap.servers": cluster.bootstrap_servers,
        "key.serializer": StringSerializer(),
        "value.serializer": AvroSerializer(registry, load_schema("survey-entries")),
    })
    producer.produce(topic, key="1", value=ENTRY)
    assert producer.flush(10) == 0
    consumer = DeserializingConsumer({
        "bootstrap.servers": cluster.bootstrap_servers,
        "group.id": "round-trip",
        "key.deserializer": StringDeserializer(),
        "value.deserializer": AvroDeserializer(registry),
    })
    consumer.assign([TopicPartition(topic, 0, 0)])
    message = None
    for _ in range(50):
        message = consumer.poll(0.5)
        if message is not None:
            break
    consumer.close()
    assert message is not None and message.error() is None
    assert message.key() == "1"
    assert message.value() == ENTRY
    latest = registry.get_latest_version(f"{topic}-value")
    assert json.loads(latest.schema.schema_str)["name"] == "surveyEntry"


def test_project_serde_writes_what_plain_clients_read(cluster):
    producer = avro_producer(cluster, "survey-entries")
    producer.produce(cluster.topics.entries, key="1", value=ENTRY)
    producer.produce(cluster.topics.entries, key="1", value={**ENTRY, "user_id": "2", "company": None})
    assert producer.flush(10) == 0
    values = [value for _, value in read_values(cluster, cluster.topics.entries)]
    assert [v["user_id"] for v in values] == ["12345", "2"]
    assert values[1]["company"] is None


def test_a_record_that_is_not_avro_is_reported_with_its_offset(cluster):
    from confluent_kafka import Producer

    producer = Producer(cluster.producer_config())
    producer.produce(cluster.topics.entries, key=b"1", value=b"not avro at all")
    producer.flush(10)
    with pytest.raises(ValueError, match=r"\[0\]@0 is not a valid Avro record"):
        list(read_values(cluster, cluster.topics.entries))


def test_missing_required_field_is_refused_before_sending(cluster):
    producer = avro_producer(cluster, "survey-entries")
    incomplete = {k: v for k, v in ENTRY.items() if k != "response"}
    with pytest.raises(Exception, match="response"):
        producer.produce(cluster.topics.entries, key="1", value=incomplete)
