"""Following a topic from its beginning in a background thread, to keep a table in memory up to date.

The bot keeps three such tables: the surveys (survey-questions), who answered what (survey-entries) and the
live results (survey-results-live). Each `TopicFollower` reads every partition from the beginning with
assign() (no consumer group: every bot instance needs the whole topic), hands each decoded record to a
callback, and sets `caught_up` once it has reached the end of every partition, so the bot can wait for its
tables to be complete before answering from them. A record that does not decode is logged and skipped; one
it cannot decode because the Schema Registry does not answer is read again once it does, so no survey and
no earlier answer goes missing from the tables.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition
from confluent_kafka.error import ConsumeError, KeyDeserializationError, ValueDeserializationError

from ..cluster import Cluster
from ..consume import TopicMissing, partitions_of
from ..serde import RegistryUnavailable, avro_consumer

log = logging.getLogger(__name__)

OnRecord = Callable[[Message, Any], None]


class TopicFollower:
    """Calls `on_record(message, decoded_value)` for every record of `topic`, now and as they come."""

    def __init__(self, cluster: Cluster, topic: str, on_record: OnRecord):
        self.cluster = cluster
        self.topic = topic
        self.on_record = on_record
        self.caught_up = threading.Event()
        self.records = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)

    def start(self) -> TopicFollower:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # keep following: Kafka may be down for a while
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("following %s failed (%s); retrying", self.topic, self.error)
                self._stop.wait(2.0)

    def _partitions(self) -> list[int]:
        while not self._stop.is_set():
            try:
                return partitions_of(self.cluster, self.topic)
            except (TopicMissing, ConnectionError) as exc:
                self.error = str(exc)
                self._stop.wait(2.0)
        return []

    def _follow(self) -> None:
        partitions = self._partitions()
        if not partitions:
            return
        consumer = avro_consumer(self.cluster, **{"enable.partition.eof": True})
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            at_end: set[int] = set()
            while not self._stop.is_set():
                try:
                    message = consumer.poll(0.5)
                except ConsumeError as exc:  # what a DeserializingConsumer makes of every event
                    if exc.code == KafkaError._PARTITION_EOF:
                        at_end.add(exc.kafka_message.partition())
                        if at_end >= set(partitions):
                            self.caught_up.set()
                    elif isinstance(exc.exception, RegistryUnavailable):
                        self._wait_for_registry(consumer, exc.kafka_message, exc.exception)
                    elif isinstance(exc, (KeyDeserializationError, ValueDeserializationError)):
                        log.error("skipping an undecodable record on %s: %s", self.topic, exc)
                    else:  # librdkafka recovers from these by itself (broker down, ...)
                        self.error = str(exc)
                    continue
                if message is None:
                    continue
                if self.error is not None:
                    log.info("following %s again", self.topic)
                self.error = None
                self.records += 1
                self.on_record(message, message.value())
        finally:
            consumer.close()

    def _wait_for_registry(self, consumer, message: Message, exc: RegistryUnavailable) -> None:
        """Read `message` again in a while: its value may well be fine."""
        if self.error != str(exc):
            log.warning("cannot decode %s[%d]@%d yet: %s; trying again every 2 s", self.topic, message.partition(),
                        message.offset(), exc)
        self.error = str(exc)
        consumer.seek(TopicPartition(self.topic, message.partition(), message.offset()))
        self._stop.wait(2.0)
