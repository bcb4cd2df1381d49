"""Delivering confirmed entries to survey-entries: outbox first, then one long-lived idempotent producer.

    delivery = EntryDelivery(cluster, Outbox(path)).start()
    sent = await delivery.deliver(entry)      # True: Kafka acknowledged it; False: kept in the outbox

Each entry gets a unique id, carried in the record's `entry_id` header, when it is confirmed. It is written
to the outbox before anything else; one background thread produces the outbox in order and removes each
entry only after the broker acknowledged it. If Kafka is down the thread keeps retrying (with backoff), also
after a restart of the bot, since the outbox is on disk. An entry produced again after a crash between the
acknowledgement and its removal carries the same entry id, so it can be recognised downstream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from typing import Any

from confluent_kafka import KafkaError, SerializingProducer

from ..cluster import Cluster
from ..serde import avro_producer, close_producer
from .outbox import Outbox, PendingEntry

log = logging.getLogger(__name__)

ENTRY_ID_HEADER = "entry_id"
SCHEMA = "survey-entries"


class EntryDelivery:
    """The bot's way to Kafka for survey entries. `deliver` is called from the bot's event loop."""

    def __init__(self, cluster: Cluster, outbox: Outbox, *, delivery_timeout: float = 120.0,
                 ack_wait: float = 3.0, max_backoff: float = 5.0):
        self.cluster = cluster
        self.outbox = outbox
        self.topic = cluster.topics.entries
        self.delivery_timeout = delivery_timeout
        self.ack_wait = ack_wait
        self.max_backoff = max_backoff
        self.delivered = 0
        self.last_error: str | None = None
        self._waiters: dict[str, concurrent.futures.Future[None]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._fatal: KafkaError | None = None
        self._producer: SerializingProducer | None = None
        self._thread = threading.Thread(target=self._run, name="entry-delivery", daemon=True)

    # ---- the bot's side ---------------------------------------------------------------------------

    def submit(self, entry: dict[str, Any]) -> tuple[str, concurrent.futures.Future[None]]:
        """Store a confirmed entry in the outbox; the future completes when Kafka acknowledged it."""
        entry_id = uuid.uuid4().hex
        waiter: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            self._waiters[entry_id] = waiter
        self.outbox.add(entry_id, entry["survey_id"], entry)
        self._wake.set()
        return entry_id, waiter

    async def deliver(self, entry: dict[str, Any]) -> bool:
        """Confirm an entry: True once Kafka acknowledged it, False if it waits in the outbox instead."""
        _, waiter = await asyncio.to_thread(self.submit, entry)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(waiter)), self.ack_wait)
            return True
        except TimeoutError:
            return False

    @property
    def pending(self) -> int:
        return len(self.outbox)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> EntryDelivery:
        # Made now, so the first confirmation does not wait for the producer to start.
        self._producer = self._new_producer()
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop delivering; entries not acknowledged yet stay in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._producer is not None and not self._thread.is_alive():
            close_producer(self._producer)  # what it still holds is in the outbox
            self._producer = None

    # ---- the delivery thread -----------------------------------------------------------------------

    def _new_producer(self) -> SerializingProducer:
        # A long message timeout lets the idempotent producer retry a record itself (the broker drops its
        # duplicates); after a timeout the record is produced anew from the outbox and may arrive twice.
        return avro_producer(
            self.cluster,
            SCHEMA,
            **{
                "message.timeout.ms": int(self.delivery_timeout * 1000),
                "linger.ms": 5,
                "client.id": "survey-kit-bot-entries",
                "error_cb": self._on_client_error,
            },
        )

    def _on_client_error(self, error: KafkaError) -> None:
        self.last_error = error.str()
        if error.fatal():
            self._fatal = error

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            batch = self.outbox.pending()
            if not batch:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if self._producer is None or self._fatal is not None:
                if self._fatal is not None:
                    log.warning("the entries producer failed fatally (%s); starting a new one", self._fatal.str())
                    self._fatal = None
                    if self._producer is not None:
                        close_producer(self._producer)
                self._producer = self._new_producer()
            acknowledged = self._produce(batch)
            if acknowledged:
                self.outbox.remove(acknowledged)
                self.delivered += len(acknowledged)
                with self._lock:
                    waiters = [self._waiters.pop(e, None) for e in acknowledged]
                for waiter in waiters:
                    if waiter is not None:
                        waiter.set_result(None)
            if len(acknowledged) < len(batch):
                log.warning("%d entries wait in the outbox: %s", len(self.outbox), self.last_error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            else:
                backoff = 0.5
        if self._producer is not None:
            self._producer.flush(1.0)

    def _produce(self, batch: list[PendingEntry]) -> list[str]:
        """Produce a batch in order and wait for the broker; returns the acknowledged entry ids, in order."""
        producer = self._producer
        results: dict[str, KafkaError | None] = {}

        def on_delivery(entry_id: str):
            def callback(error: KafkaError | None, message) -> None:
                results[entry_id] = error
                if error is not None:
                    self.last_error = error.str()

            return callback

        produced: list[str] = []
        for pending in batch:
            try:
                producer.produce(
                    self.topic,
                    key=pending.key,
                    value=pending.value,
                    headers=[(ENTRY_ID_HEADER, pending.entry_id.encode())],
                    on_delivery=on_delivery(pending.entry_id),
                )
            except BufferError:
                break  # the local queue is full: deliver what is queued first
            except Exception as exc:  # serializing needs the registry too; any failure is retried
                self.last_error = f"{type(exc).__name__}: {exc}"
                break
            produced.append(pending.entry_id)
        # Wait for every acknowledgement or failure; message.timeout.ms bounds this.
        while len(producer) > 0 and not self._stop.is_set():
            producer.flush(0.5)
        # The idempotent producer keeps each partition (survey) in order: when an entry fails, the later ones
        # of its partition fail too, so retrying the failed ones keeps the order.
        return [e for e in produced if e in results and results[e] is None]
