"""Serializers for the survey topics: string keys, Avro values through the Schema Registry.

This is the one place where survey-kit builds serializers; producers and consumers everywhere else
get theirs from here, so records on every topic look the same whichever tool wrote them.

>>> producer = avro_producer(cluster, "survey-entries")
>>> producer.produce(cluster.topics.entries, key="1", value={...})
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import DeserializingConsumer, SerializingProducer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import StringDeserializer, StringSerializer

from .cluster import Cluster
from .schemas import load_schema


def key_serializer() -> StringSerializer:
    return StringSerializer("utf_8")


def key_deserializer() -> StringDeserializer:
    return StringDeserializer("utf_8")


def value_serializer(registry: SchemaRegistryClient, schema_name: str) -> AvroSerializer:
    """Avro serializer for one of the survey schemas; registers it under ``<topic>-value``."""
    return AvroSerializer(registry, load_schema(schema_name))


def value_deserializer(registry: SchemaRegistryClient, schema_name: str | None = None) -> AvroDeserializer:
    """Avro deserializer; without a schema name, records decode with the schema they were written with."""
    return AvroDeserializer(registry, load_schema(schema_name) if schema_name else None)


def avro_producer(cluster: Cluster, schema_name: str, **config: Any) -> SerializingProducer:
    """An idempotent producer of ``schema_name`` records with string keys."""
    return SerializingProducer(
        {
            **cluster.producer_config(**config),
            "key.serializer": key_serializer(),
            "value.serializer": value_serializer(cluster.registry(), schema_name),
        }
    )


def avro_consumer(cluster: Cluster, group_id: str | None = None, schema_name: str | None = None, **config: Any) -> DeserializingConsumer:
    """A consumer decoding string keys and Avro values (with the writer's schema by default)."""
    return DeserializingConsumer(
        {
            **cluster.consumer_config(group_id, **config),
            "key.deserializer": key_deserializer(),
            "value.deserializer": value_deserializer(cluster.registry(), schema_name),
        }
    )
