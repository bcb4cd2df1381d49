"""Final results to Telegram: what the talk did with Kafka Connect's HTTP sink, inside the project.

`FinalResultsAlerter` consumes survey-results-final and sends each closed window's histogram to every
subscribed chat and to the admin chats. It commits a record's offset only after Telegram accepted the
messages for it, waits out Telegram's 429 `retry_after`, and records every (window, chat) it posted in
SQLite, so a restart (even one between a post and the commit) never posts a window to a chat twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import threading
import time
from pathlib import Path

from confluent_kafka import OFFSET_STORED, DeserializingConsumer, TopicPartition
from confluent_kafka.error import ConsumeError, ValueDeserializationError
from telegram import Bot
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter

from ..cluster import Cluster
from ..consume import TopicMissing, partitions_of
from ..serde import RegistryUnavailable, value_deserializer
from ..surveys import Survey
from .catalog import SurveyCatalog
from .ratelimit import retry_after_seconds
from .results import SurveyResult, format_results, parse_result
from .subscribers import Subscribers

log = logging.getLogger(__name__)

GROUP_ID = "survey-kit-bot-alerter"


class AlertLog:
    """Which window was posted to which chat (durable), so nothing is posted twice."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS alerts_sent (window_id TEXT, chat_id INTEGER, outcome TEXT,"
            " PRIMARY KEY (window_id, chat_id))"
        )
        self._lock = threading.Lock()

    def done(self, window_id: str, chat_id: int) -> bool:
        with self._lock:
            return self._db.execute(
                "SELECT 1 FROM alerts_sent WHERE window_id = ? AND chat_id = ?", (window_id, chat_id)
            ).fetchone() is not None

    def mark(self, window_id: str, chat_id: int, outcome: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO alerts_sent VALUES (?, ?, ?)", (window_id, chat_id, outcome))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def posted(self) -> list[tuple[str, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT window_id, chat_id FROM alerts_sent WHERE outcome = 'sent' ORDER BY window_id, chat_id"
            ).fetchall()


def window_id(result: SurveyResult) -> str:
    start = int(result.window_start.timestamp() * 1000) if result.window_start else "all"
    return f"{result.key}@{start}"


def final_text(result: SurveyResult, catalog: SurveyCatalog) -> str:
    survey = catalog.find(result.key) or Survey(
        result.key, result.question or result.key, result.question or result.key, sorted(result.counts)
    )
    when = f" of the window from {result.window_start:%Y-%m-%d %H:%M} UTC" if result.window_start else ""
    return format_results(survey, result.counts, f"final results{when}")


class FinalResultsAlerter:
    """Posts each closed window of survey-results-final once to subscribers and admin chats."""

    def __init__(self, cluster: Cluster, catalog: SurveyCatalog, subscribers: Subscribers, alert_log: AlertLog,
                 admin_chat_ids: frozenset[int] = frozenset(), *, group_id: str = GROUP_ID,
                 network_retry: float = 2.0):
        self.cluster = cluster
        self.catalog = catalog
        self.subscribers = subscribers
        self.alert_log = alert_log
        self.admin_chat_ids = admin_chat_ids
        self.group_id = group_id
        self.network_retry = network_retry
        self.windows_alerted = 0
        self.messages_sent = 0
        self.error: str | None = None
        # The consumer is not thread-safe: every call to it runs on this one thread.
        self._kafka = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="alerter-kafka")

    async def run(self, bot: Bot, stopping: asyncio.Event) -> None:
        """Alert until `stopping` is set (run it in the bot's event loop, with the bot's Bot)."""
        loop = asyncio.get_running_loop()
        # A message names its survey and lists every option from survey-questions: posted before that topic
        # is read (windows that closed while the bot was down come at once), it would not, and for good.
        while not stopping.is_set() and not await asyncio.to_thread(self.catalog.ready.wait, 0.5):
            pass
        consumer = await loop.run_in_executor(self._kafka, self._consumer, stopping)
        if consumer is None:
            return
        try:
            while not stopping.is_set():
                try:
                    message = await loop.run_in_executor(self._kafka, consumer.poll, 0.5)
                except ValueDeserializationError as exc:
                    if isinstance(exc.exception, RegistryUnavailable):  # the result may be fine: read it again
                        await loop.run_in_executor(self._kafka, self._read_again, consumer, exc.kafka_message, exc.exception)
                        try:
                            await asyncio.wait_for(stopping.wait(), self.network_retry)
                        except TimeoutError:
                            pass
                        continue
                    log.error("skipping an undecodable final result: %s", exc)
                    message, result = exc.kafka_message, None
                except ConsumeError as exc:  # librdkafka recovers from these by itself
                    self.error = str(exc)
                    continue
                else:
                    if message is None:
                        continue
                    result = parse_result(message.key(), message.value(), windowed=True)
                if result is not None and not await self._post(bot, result, stopping):
                    return  # stopping: the record is neither posted everywhere nor committed
                await loop.run_in_executor(
                    self._kafka, lambda: consumer.commit(message=message, asynchronous=False)
                )
        finally:
            await loop.run_in_executor(self._kafka, consumer.close)

    def _consumer(self, stopping: asyncio.Event) -> DeserializingConsumer | None:
        """A consumer of survey-results-final starting at the committed offsets (no group join needed)."""
        topic = self.cluster.topics.results_final
        while not stopping.is_set():
            try:
                partitions = partitions_of(self.cluster, topic)
                break
            except (TopicMissing, ConnectionError) as exc:
                self.error = str(exc)
                time.sleep(2.0)  # the topic appears when the pipeline or `topics create` makes it
        else:
            return None
        consumer = DeserializingConsumer({
            **self.cluster.consumer_config(self.group_id),
            "value.deserializer": value_deserializer(self.cluster),
        })
        consumer.assign([TopicPartition(topic, p, OFFSET_STORED) for p in partitions])
        return consumer

    def _read_again(self, consumer: DeserializingConsumer, message, exc: RegistryUnavailable) -> None:
        """Make the consumer return `message` again (on the consumer's thread)."""
        if self.error != str(exc):
            log.warning("cannot read the final result at %s[%d]@%d yet: %s; trying again every %.0f s", message.topic(),
                        message.partition(), message.offset(), exc, self.network_retry)
        self.error = str(exc)
        consumer.seek(TopicPartition(message.topic(), message.partition(), message.offset()))

    async def _post(self, bot: Bot, result: SurveyResult, stopping: asyncio.Event) -> bool:
        """Send one window to every recipient not yet sent it; False if stopped before finishing."""
        window = window_id(result)
        text = final_text(result, self.catalog)
        recipients = sorted(set(self.subscribers.chat_ids()) | set(self.admin_chat_ids))
        for chat_id in recipients:
            if self.alert_log.done(window, chat_id):
                continue
            outcome = await self._send(bot, chat_id, text, stopping)
            if outcome is None:
                return False
            self.alert_log.mark(window, chat_id, outcome)
        self.windows_alerted += 1
        return True

    async def _send(self, bot: Bot, chat_id: int, text: str, stopping: asyncio.Event) -> str | None:
        """'sent', 'refused' (Telegram will never take it: chat gone, bot blocked) or None if stopped."""
        while not stopping.is_set():
            try:
                await bot.send_message(chat_id, text)
                self.messages_sent += 1
                return "sent"
            except RetryAfter as exc:
                delay = retry_after_seconds(exc)
                log.info("Telegram asks to wait %.0f s before posting results", delay)
            except (BadRequest, Forbidden) as exc:
                log.warning("chat %s does not take final results: %s", chat_id, exc.message)
                return "refused"
            except NetworkError as exc:
                self.error = str(exc)
                delay = self.network_retry
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                pass
        return None
