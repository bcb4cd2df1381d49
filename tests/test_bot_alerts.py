"""Final results posted to Telegram: each closed window once to subscribers and admin chats, across an
alerter restart, waiting out Telegram's 429."""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from survey_kit.bot import texts
from survey_kit.bot.alerts import AlertLog, FinalResultsAlerter
from survey_kit.bot.app import BotThread, build_application
from survey_kit.bot.catalog import SurveyCatalog
from survey_kit.bot.ledger import EntryLedger
from survey_kit.bot.results import ResultsBoard
from survey_kit.bot.services import BotServices
from survey_kit.bot.runner import STATE_DB, BotRunner
from survey_kit.bot.subscribers import Subscribers
from survey_kit.faketelegram import NoReply
from survey_kit.surveys import Survey, create_survey
from tests.waiting import wait_for

PIE = Survey("1", "Which Thanksgiving Pie is your favorite?", "Thanksgiving Pie", ["Apple Pie", "Pecan Pie"])
ADMIN, SILENT_ADMIN, SUBSCRIBER = 900, 901, 5

# survey-results-final as the ksql pipeline writes it (ksql/06_survey_results_final.sql): the key is the
# survey id followed by the window start (8 bytes, big-endian epoch milliseconds).
FINAL_SCHEMA = """{"type": "record", "name": "KsqlDataSourceSchema", "namespace": "io.confluent.ksql.avro_schemas",
 "fields": [{"name": "QUESTION", "type": ["null", "string"], "default": null},
            {"name": "RESULTS", "type": ["null", {"type": "map", "values": ["null", "int"]}], "default": null}]}"""

DAY1 = datetime(2026, 11, 23, tzinfo=UTC)
DAY3 = datetime(2026, 11, 25, tzinfo=UTC)


def publish_window(cluster, start: datetime, counts: dict[str, int]) -> None:
    topic = cluster.topics.results_final
    value = AvroSerializer(cluster.registry(), FINAL_SCHEMA)(
        {"QUESTION": PIE.question, "RESULTS": counts}, SerializationContext(topic, MessageField.VALUE))
    producer = Producer(cluster.producer_config())
    producer.produce(topic, key=b"1" + struct.pack(">q", int(start.timestamp() * 1000)), value=value)
    assert producer.flush(10) == 0


def final_text(start: datetime, apple: int, pecan: int) -> str:
    total = apple + pecan
    def bar(n):
        filled = int(n / total * 10 + 0.5)
        return f"{'█' * filled}{'░' * (10 - filled)} {n} ({n / total:.0%})"
    return "\n".join([
        f'Results for "Thanksgiving Pie" (final results of the window from {start:%Y-%m-%d %H:%M} UTC):',
        PIE.question,
        f"Apple Pie {bar(apple)}",
        f"Pecan Pie {bar(pecan)}",
        f"{total} answers in total.",
    ])


def test_each_window_is_posted_once_across_restarts(cluster, fake, tg, tmp_path):
    create_survey(cluster, PIE)
    settings = cluster.settings.model_copy(update={"telegram": cluster.settings.telegram.model_copy(
        update={"admin_chat_ids": [ADMIN, SILENT_ADMIN]})})
    options = dict(cluster=replace(cluster, settings=settings), data_dir=tmp_path / "bot", api_url=fake.api_url)

    runner = BotRunner(**options).start()
    try:
        tg.send_text(SUBSCRIBER, "/subscribe")
        assert tg.wait_for_reply(SUBSCRIBER).text == texts.SUBSCRIBED
        tg.send_text(ADMIN, "/start")  # SILENT_ADMIN never talked to the bot: Telegram refuses that chat
        tg.wait_for_reply(ADMIN)
        # More 429s than the bot's own retries absorb: the alerter waits them out itself.
        tg.rate_limit(SUBSCRIBER, count=5, retry_after=1)
        publish_window(cluster, DAY1, {"Apple Pie": 3, "Pecan Pie": 1})
        first = final_text(DAY1, 3, 1)
        assert tg.wait_for_reply(SUBSCRIBER).text == first
        assert tg.wait_for_reply(ADMIN).text == first
    finally:
        runner.stop()
    window = f"1@{int(DAY1.timestamp() * 1000)}"
    assert AlertLog(tmp_path / "bot" / STATE_DB).posted() == [(window, SUBSCRIBER), (window, ADMIN)]

    restarted = BotRunner(**options).start()
    try:
        publish_window(cluster, DAY3, {"Apple Pie": 1, "Pecan Pie": 1})
        # The next message after the first window is the second: the first is not posted again.
        second = final_text(DAY3, 1, 1)
        assert tg.wait_for_reply(SUBSCRIBER).text == second
        assert tg.wait_for_reply(ADMIN).text == second
        wait_for(lambda: restarted.status()["alerts_sent"] == 2)
    finally:
        restarted.stop()


def test_a_window_recorded_as_posted_is_not_posted_again_even_without_a_commit(cluster, fake, tg, tmp_path):
    """The bot died after posting to a chat but before committing: the alert log keeps the post from repeating."""
    create_survey(cluster, PIE)
    window = f"1@{int(DAY1.timestamp() * 1000)}"
    AlertLog(tmp_path / "bot" / STATE_DB).mark(window, SUBSCRIBER, "sent")
    settings = cluster.settings.model_copy(update={"telegram": cluster.settings.telegram.model_copy(
        update={"admin_chat_ids": [ADMIN]})})
    runner = BotRunner(cluster=replace(cluster, settings=settings), data_dir=tmp_path / "bot",
                       api_url=fake.api_url).start()
    try:
        for chat in (SUBSCRIBER, ADMIN):  # chats Telegram knows
            assert tg.ask(chat, "hello").text == texts.UNKNOWN_TEXT
        runner.services.subscribers.add(SUBSCRIBER)
        publish_window(cluster, DAY1, {"Apple Pie": 2, "Pecan Pie": 2})
        publish_window(cluster, DAY3, {"Apple Pie": 1, "Pecan Pie": 3})
        assert tg.wait_for_reply(ADMIN).text == final_text(DAY1, 2, 2)
        assert tg.wait_for_reply(ADMIN).text == final_text(DAY3, 1, 3)
        assert tg.wait_for_reply(SUBSCRIBER).text == final_text(DAY3, 1, 3)
    finally:
        runner.stop()


def test_a_final_result_read_while_the_registry_is_down_is_posted_once_it_answers(registry_cluster, own_registry, fake, tg, tmp_path):
    # The result is fine, only the Schema Registry is gone when the alerter reads it: skipping it (and
    # committing past it) would lose that window's message for good
    import io
    import json

    import fastavro
    from confluent_kafka.schema_registry import Schema

    cluster = registry_cluster
    create_survey(cluster, PIE)
    settings = cluster.settings.model_copy(update={"telegram": cluster.settings.telegram.model_copy(
        update={"admin_chat_ids": [ADMIN]})})
    runner = BotRunner(cluster=replace(cluster, settings=settings), data_dir=tmp_path / "bot", api_url=fake.api_url).start()
    try:
        assert runner.wait_until_ready(30)
        wait_for(lambda: runner.catalog.get("1") is not None)  # the message names the survey by its summary
        assert tg.ask(ADMIN, "hello").text == texts.UNKNOWN_TEXT
        topic = cluster.topics.results_final
        schema_id = cluster.registry().register_schema(f"{topic}-value", Schema(FINAL_SCHEMA, "AVRO"))
        payload = io.BytesIO()
        fastavro.schemaless_writer(payload, fastavro.parse_schema(json.loads(FINAL_SCHEMA)),
                                   {"QUESTION": PIE.question, "RESULTS": {"Apple Pie": 1, "Pecan Pie": 2}})
        own_registry.stop_service("registry")
        producer = Producer(cluster.producer_config())  # what a producer that knows the schema id writes
        producer.produce(topic, key=b"1" + struct.pack(">q", int(DAY1.timestamp() * 1000)),
                         value=b"\x00" + schema_id.to_bytes(4, "big") + payload.getvalue())
        assert producer.flush(10) == 0
        alerter = runner.alerter
        wait_for(lambda: alerter.error and "Schema Registry" in alerter.error)
        own_registry.start_service("registry")
        assert tg.wait_for_reply(ADMIN).text == final_text(DAY1, 1, 2)
    finally:
        runner.stop()


def test_final_results_wait_for_the_surveys_to_be_read(cluster, fake, tg, tmp_path):
    # After a restart, the windows that closed meanwhile are read at once. Posted before survey-questions
    # is read, a message would name the survey by its question and leave out the options nobody chose.
    create_survey(cluster, PIE)
    publish_window(cluster, DAY1, {"Apple Pie": 2})
    catalog = SurveyCatalog()  # as at start-up: not read yet
    ledger = EntryLedger()
    services = BotServices(catalog=catalog, ledger=ledger, deliver=None, subscribers=Subscribers(tmp_path / "s.db"),
                           results=ResultsBoard(ledger), surveys_admin=None, admin_chat_ids=frozenset({ADMIN}))
    alerter = FinalResultsAlerter(cluster, catalog, services.subscribers, AlertLog(tmp_path / "a.db"), frozenset({ADMIN}))
    app = build_application(services, "123:TEST", base_url=fake.bot_base_url)
    thread = BotThread(app, [lambda app, stopping: alerter.run(app.bot, stopping)]).start()
    try:
        assert tg.ask(ADMIN, "hello").text == texts.UNKNOWN_TEXT  # a chat Telegram knows
        with pytest.raises(NoReply):
            tg.wait_for_reply(ADMIN, timeout=2)
        follower = catalog.follow(cluster)
        try:
            assert tg.wait_for_reply(ADMIN).text == final_text(DAY1, 2, 0)
        finally:
            follower.stop()
    finally:
        thread.stop()
