"""Read a topic from its beginning to its end, reliably, also on the embedded broker.

The end of a partition is where a fetch reports end-of-partition. The embedded broker's listed high
watermark (``get_watermark_offsets``, ListOffsets) is wrong after multi-record batches, so it is never
used to decide "caught up"; the end-of-partition event carries the true end from the fetch itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.serialization import MessageField, SerializationContext

from .cluster import Cluster
from .serde import RegistryUnavailable, value_deserializer


class TopicMissing(LookupError):
    """The topic does not exist; the message says how to create it."""


class MalformedRecord(ValueError):
    """A record could not be decoded; the message names its topic, partition and offset."""


def partitions_of(cluster: Cluster, topic: str, timeout: float = 10.0) -> list[int]:
    """The partition numbers of ``topic``; raises TopicMissing if there is no such topic."""
    admin = cluster.request_admin()
    try:
        metadata = admin.metadata(timeout)
    except KafkaException as exc:
        raise ConnectionError(f"cannot reach Kafka at {cluster.bootstrap_servers}: {exc.args[0].str()}"
                              f"{admin.reason()}") from None
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        raise TopicMissing(f"topic {topic!r} does not exist: run `survey-kit topics create` first")
    return sorted(described.partitions)


def read_messages(cluster: Cluster, topic: str, timeout: float = 30.0, **config: Any) -> Iterator[Message]:
    """Every record of ``topic`` (raw bytes) from the beginning to its end as it was when reading started.

    ``timeout`` bounds how long it waits without receiving anything before deciding Kafka is down.
    """
    partitions = partitions_of(cluster, topic)
    # A short fetch wait: reads end sooner on quiet topics.
    consumer = Consumer(cluster.consumer_config(**{"enable.partition.eof": True, "fetch.wait.max.ms": 100, **config}))
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        open_partitions = set(partitions)
        idle = 0.0
        while open_partitions:
            message = consumer.poll(0.5)
            if message is None:
                idle += 0.5
                if idle >= timeout:
                    raise TimeoutError(
                        f"no end of {topic!r} after {timeout:.0f} s without records: is Kafka at "
                        f"{cluster.bootstrap_servers} up?"
                    )
                continue
            idle = 0.0
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                    continue
                raise KafkaException(error)
            yield message
    finally:
        consumer.close()


def read_values(cluster: Cluster, topic: str, timeout: float = 30.0) -> Iterator[tuple[Message, Any]]:
    """Like :func:`read_messages`, with each value decoded from Avro through the registry.

    A record that does not decode raises MalformedRecord naming its topic, partition and offset; a Schema
    Registry that cannot be asked raises RegistryUnavailable (a ConnectionError), as the records may be fine.
    """
    deserializer = value_deserializer(cluster)
    for message in read_messages(cluster, topic, timeout):
        context = SerializationContext(topic, MessageField.VALUE, message.headers())
        try:
            value = deserializer(message.value(), context)
        except RegistryUnavailable:
            raise
        except Exception as exc:  # the deserializer raises several unrelated types
            raise MalformedRecord(
                f"record {topic}[{message.partition()}]@{message.offset()} is not a valid Avro record "
                f"of the registry: {exc}"
            ) from None
        yield message, value
