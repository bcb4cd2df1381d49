"""The bot on the embedded Kafka stack: surveys from survey-questions, entries on survey-entries (Avro, with
an entry id header), who answered read back after a restart, live results, admin surveys on the topic."""

from __future__ import annotations

from dataclasses import replace

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from survey_kit.bot import texts
from survey_kit.bot.delivery import ENTRY_ID_HEADER
from survey_kit.bot.runner import BotRunner
from survey_kit.consume import read_messages, read_values
from survey_kit.surveys import Survey, create_survey, disable_survey, list_surveys
from tests.waiting import wait_for

PIE = Survey("1", "Which Thanksgiving Pie is your favorite?", "Thanksgiving Pie",
             ["Pumpkin Pie", "Pecan Pie", "Apple Pie", "Thanksgiving Leftover Pot Pie", "Other"])
ADMIN = 900

# survey-results-live as the ksql pipeline writes it (ksql/05_survey_results_live.sql).
LIVE_SCHEMA = """{"type": "record", "name": "KsqlDataSourceSchema", "namespace": "io.confluent.ksql.avro_schemas",
 "fields": [{"name": "QUESTION", "type": ["null", "string"], "default": null},
            {"name": "RESULTS", "type": ["null", {"type": "map", "values": ["null", "int"]}], "default": null}]}"""


@pytest.fixture
def start_bot(cluster, fake, tmp_path):
    runners = []

    def start(**options) -> BotRunner:
        settings = cluster.settings.model_copy(
            update={"telegram": cluster.settings.telegram.model_copy(update={"admin_chat_ids": [ADMIN]})})
        runner = BotRunner(cluster=replace(cluster, settings=settings), data_dir=tmp_path / "bot",
                           api_url=fake.api_url, **options).start()
        runners.append(runner)
        assert runner.wait_until_ready(30)
        return runner

    yield start
    for runner in runners:
        runner.stop()


def answer(tg, chat, name, response, survey_question=PIE.question):
    for text, reply in (("/survey", texts.ask_name(survey_question)), (name, texts.ASK_COMPANY),
                        ("/skip", texts.ASK_LOCATION), ("Berlin", survey_question)):
        tg.send_text(chat, text)
        assert tg.wait_for_reply(chat).text == reply
    tg.send_text(chat, response)
    tg.wait_for_reply(chat)
    tg.send_text(chat, "/y")
    return tg.wait_for_reply(chat).text


def entries(cluster):
    return [(m, v) for m, v in read_values(cluster, cluster.topics.entries)]


def test_confirmed_entries_reach_survey_entries_once_per_respondent(cluster, start_bot, tg):
    create_survey(cluster, PIE)
    runner = start_bot()
    wait_for(lambda: runner.catalog.get("1") is not None, what="the survey in the catalog")
    assert answer(tg, 5, "Ada", "Apple Pie") == texts.SENT
    assert answer(tg, 6, "Grace", "Pecan Pie") == texts.SENT
    records = entries(cluster)
    assert [v for _, v in records] == [
        {"survey_id": "1", "user_id": "5", "name": "Ada", "company": None, "location": "Berlin",
         "response": "Apple Pie"},
        {"survey_id": "1", "user_id": "6", "name": "Grace", "company": None, "location": "Berlin",
         "response": "Pecan Pie"},
    ]
    assert [m.key() for m, _ in records] == [b"1", b"1"]
    ids = [dict(m.headers())[ENTRY_ID_HEADER] for m, _ in records]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    status = runner.status()
    assert status["sent"] == 2 and status["delivered"] == 2 and status["outbox"] == 0

    runner.stop()
    restarted = start_bot()  # knows from survey-entries who answered
    tg.send_text(5, "/survey")
    assert tg.wait_for_reply(5).text == texts.already_answered("Thanksgiving Pie")
    assert restarted.status()["refused_repeat"] == 1
    tg.send_text(7, "/results")
    assert "2 answers in total." in tg.wait_for_reply(7).text


def test_surveys_follow_the_questions_topic(cluster, start_bot, tg):
    runner = start_bot()
    tg.send_text(5, "/survey")
    assert tg.wait_for_reply(5).text == texts.NO_SURVEY
    create_survey(cluster, PIE)
    wait_for(lambda: runner.catalog.get("1") is not None, what="the new survey")
    tg.send_text(5, "/survey")
    assert tg.wait_for_reply(5).text == texts.ask_name(PIE.question)
    tg.send_text(5, "/cancel")
    tg.wait_for_reply(5)
    disable_survey(cluster, "1")
    wait_for(lambda: not runner.catalog.get("1").enabled, what="the survey to be disabled")
    tg.send_text(5, "/survey")
    assert tg.wait_for_reply(5).text == texts.NO_SURVEY


def test_a_survey_read_while_the_registry_is_down_is_not_skipped(registry_cluster, own_registry):
    # The record is fine, only the Schema Registry is gone: the bot's table must wait for it, not skip the
    # survey (it would offer no survey until restarted)
    from survey_kit.bot.catalog import SurveyCatalog

    create_survey(registry_cluster, PIE)
    own_registry.stop_service("registry")
    catalog = SurveyCatalog()
    follower = catalog.follow(replace(registry_cluster))  # a new registry client: no schema cached yet
    try:
        wait_for(lambda: follower.error and "Schema Registry" in follower.error, what="the follower to name the registry")
        assert catalog.get("1") is None and not follower.caught_up.is_set()
        own_registry.start_service("registry")
        assert follower.caught_up.wait(30)
        assert catalog.get("1") == PIE and follower.error is None
    finally:
        follower.stop()


def test_admin_creates_and_closes_surveys_on_the_topic(cluster, start_bot, tg):
    start_bot()
    for text in ("/newsurvey", "tea", "How do you take your tea?", "Tea", "Plain\nWith milk", "/y"):
        tg.send_text(ADMIN, text)
        reply = tg.wait_for_reply(ADMIN)
    assert reply.text == texts.survey_created("tea")
    assert [s.survey_id for s in list_surveys(cluster)] == ["tea"]
    tg.send_text(5, "/closesurvey tea")
    assert tg.wait_for_reply(5).text == texts.NOT_ALLOWED
    tg.send_text(ADMIN, "/closesurvey tea")
    assert tg.wait_for_reply(ADMIN).text == texts.survey_closed("tea")
    assert list_surveys(cluster)[0].enabled is False


def test_results_come_from_the_live_results_topic(cluster, start_bot, tg):
    create_survey(cluster, PIE)
    runner = start_bot()
    tg.send_text(5, "/results 1")
    assert tg.wait_for_reply(5).text.startswith(
        'Results for "Thanksgiving Pie" (computed from survey-entries: no live results yet):')
    serializer = AvroSerializer(cluster.registry(), LIVE_SCHEMA)
    topic = cluster.topics.results_live
    value = serializer({"QUESTION": PIE.question, "RESULTS": {"Apple Pie": 3, "Other": 1}},
                       SerializationContext(topic, MessageField.VALUE))
    raw = Producer(cluster.producer_config())
    raw.produce(topic, key=b"1", value=value)
    raw.flush(10)
    wait_for(lambda: runner.results.live(PIE) is not None, what="the live results")
    tg.send_text(5, "/results 1")
    text = tg.wait_for_reply(5).text
    assert text.splitlines()[0] == 'Results for "Thanksgiving Pie" (live, from survey-results-live):'
    assert "Apple Pie                     ████████░░ 3 (75%)" in text and "4 answers in total." in text
    assert list(read_messages(cluster, topic))  # the record is where the pipeline would put it


def test_only_confirmed_answers_are_recorded_whatever_the_detours(cluster, start_bot, tg):
    cake = Survey("2", "Which cake do you bake most?", "Cakes", ["Carrot", "Cheesecake"])
    create_survey(cluster, PIE)
    create_survey(cluster, cake)
    create_survey(cluster, Survey("3", "Tea?", "Tea", ["Yes", "No"], enabled=False))
    runner = start_bot()
    wait_for(lambda: len(runner.catalog.all()) == 3, what="the three surveys")

    def say(chat, text, expected):
        tg.send_text(chat, text)
        assert tg.wait_for_reply(chat).text == expected

    # several surveys: the disabled one is not offered; detours: sticker, skips, an invalid option
    tg.send_text(5, "/survey")
    assert tg.wait_for_reply(5).options == ["Thanksgiving Pie", "Cakes"]
    say(5, "Cakes", texts.ask_name(cake.question))
    tg.send_sticker(5)
    assert tg.wait_for_reply(5).text == f"{texts.NOT_TEXT}\n\n{texts.ASK_NAME}"
    say(5, "Ada", texts.ASK_COMPANY)
    say(5, "/skip", texts.ASK_LOCATION)
    say(5, "/skip", cake.question)
    say(5, "Sponge", f"{texts.PICK_OPTION}\n\n{cake.question}")
    say(5, "Cheesecake", texts.summary("Cakes", "Ada", None, None, "Cheesecake"))
    say(5, "/y", texts.SENT)
    # one cancels on the way, one discards at the end
    tg.send_text(6, "/survey")
    tg.wait_for_reply(6)
    say(6, "Thanksgiving Pie", texts.ask_name(PIE.question))
    say(6, "Grace", texts.ASK_COMPANY)
    say(6, "/cancel", texts.CANCELLED)
    tg.send_text(7, "/survey")
    tg.wait_for_reply(7)
    for text in ("Cakes", "Alan", "ACME", "Leeds", "Carrot"):
        tg.send_text(7, text)
        tg.wait_for_reply(7)
    say(7, "/n", texts.DISCARDED)

    assert [v for _, v in entries(cluster)] == [
        {"survey_id": "2", "user_id": "5", "name": "Ada", "company": None, "location": None,
         "response": "Cheesecake"}]
