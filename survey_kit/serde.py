"""Serializers for the survey topics: string keys, Avro values through the Schema Registry.

This is the one place where survey-kit builds serializers; producers and consumers everywhere else
get theirs from here, so records on every topic look the same whichever tool wrote them.

>>> producer = avro_producer(cluster, "survey-entries")
>>> producer.produce(cluster.topics.entries, key="1", value={...})
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import DeserializingConsumer, SerializingProducer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import SerializationContext, StringDeserializer, StringSerializer

from .cluster import Cluster
from .schemas import load_schema


def key_serializer() -> StringSerializer:
    return StringSerializer("utf_8")


def key_deserializer() -> StringDeserializer:
    return StringDeserializer("utf_8")


def value_serializer(registry: SchemaRegistryClient, schema_name: str) -> AvroSerializer:
    """Avro serializer for one of the survey schemas; registers it under ``<topic>-value``."""
    return AvroSerializer(registry, load_schema(schema_name))


# The Schema Registry's error code for "no schema has this id".
SCHEMA_NOT_FOUND = 40403


class RegistryUnavailable(ConnectionError):
    """The Schema Registry could not be asked: down, a wrong URL, refused credentials, a timeout, its own failure.

    No record's fault, so readers never count the records they could not decode meanwhile as malformed:
    they wait for the registry and read those records again, or stop with this message.
    """


class UnknownSchemaId(LookupError):
    """The Schema Registry answered that it has no schema with this id: the record's fault."""


def registry_unavailable(exc: Exception, url: str, asking: str) -> RegistryUnavailable | None:
    """What `exc`, raised by a registry client while `asking` (e.g. "for schema id 3"), means for its caller:
    RegistryUnavailable (with what to check) if the registry could not be asked, None if it answered
    about the request itself (no such subject or id, an incompatible schema: a 4xx with its error code).
    """
    if isinstance(exc, SchemaRegistryError):
        status, code = exc.http_status_code, exc.error_code
        if 400 <= status < 500 and status not in (401, 403) and code != SchemaRegistryError.UNKNOWN:
            return None
        reason = str(exc)  # e.g. a 404 without a registry's error code: the URL is not a Schema Registry's
    else:  # the client's HTTP errors: refused, timed out, TLS
        reason = f"{type(exc).__name__}: {exc}"
    return RegistryUnavailable(
        f"the Schema Registry at {url} did not answer {asking} ({reason}). Check that it answers: `survey-kit "
        "status` for the embedded one (`survey-kit up` starts what stopped), schema_registry.url (and "
        "basic_auth_user_info) in survey-kit.yaml for another"
    )


def fetch_schema(registry: SchemaRegistryClient, schema_id: int, url: str) -> Schema:
    """The writer schema `schema_id` from the registry at `url` (cached by the client).

    Raises UnknownSchemaId when the registry does not have it, RegistryUnavailable when the registry
    cannot be asked (the message says what to check).
    """
    try:
        return registry.get_schema(schema_id)
    except Exception as exc:
        failure = registry_unavailable(exc, url, f"for schema id {schema_id}")
        if failure is not None:
            raise failure from None
        if isinstance(exc, SchemaRegistryError) and exc.error_code == SCHEMA_NOT_FOUND:
            raise UnknownSchemaId(f"the Schema Registry at {url} has no schema with id {schema_id}") from None
        raise


class ValueDeserializer:
    """Avro values through the registry, as confluent-kafka's AvroDeserializer reads them, except that a
    registry which cannot be asked raises RegistryUnavailable (never a decoding error of the record)."""

    def __init__(self, cluster: Cluster, schema_name: str | None = None):
        self._registry = cluster.registry()
        self._url = cluster.schema_registry_url
        self._avro = AvroDeserializer(self._registry, load_schema(schema_name) if schema_name else None)
        self._known: set[int] = set()  # schema ids the registry has given

    def __call__(self, value: bytes | None, context: SerializationContext) -> Any:
        if value is not None and len(value) >= 5 and value[0] == 0:
            schema_id = int.from_bytes(value[1:5], "big")
            if schema_id not in self._known:
                fetch_schema(self._registry, schema_id, self._url)
                self._known.add(schema_id)
        return self._avro(value, context)


def value_deserializer(cluster: Cluster, schema_name: str | None = None) -> ValueDeserializer:
    """Avro deserializer; without a schema name, records decode with the schema they were written with."""
    return ValueDeserializer(cluster, schema_name)


def avro_producer(cluster: Cluster, schema_name: str, **config: Any) -> SerializingProducer:
    """An idempotent producer of ``schema_name`` records with string keys."""
    return SerializingProducer(
        {
            **cluster.producer_config(**config),
            "key.serializer": key_serializer(),
            "value.serializer": value_serializer(cluster.registry(), schema_name),
        }
    )


def close_producer(producer: SerializingProducer) -> None:
    """Close a producer at once; records it still holds are dropped (flush first, to keep them).

    A SerializingProducer and its serializers refer to each other, so one that is only let go of lives on,
    connected and retrying a stopped broker on stderr every second, until the garbage collector runs.
    """
    producer.purge()  # else close() waits for them, up to message.timeout.ms while the broker is down
    producer.close()


def avro_consumer(cluster: Cluster, group_id: str | None = None, schema_name: str | None = None, **config: Any) -> DeserializingConsumer:
    """A consumer decoding string keys and Avro values (with the writer's schema by default)."""
    return DeserializingConsumer(
        {
            **cluster.consumer_config(group_id, **config),
            "key.deserializer": key_deserializer(),
            "value.deserializer": value_deserializer(cluster, schema_name),
        }
    )
