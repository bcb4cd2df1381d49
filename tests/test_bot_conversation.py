"""Whole survey conversations through the fake Telegram Bot API with the real python-telegram-bot
Application; Kafka is replaced by in-memory services here (tests/test_bot_kafka.py has the real thing)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from confluent_kafka import Message

from survey_kit.bot import texts
from survey_kit.bot.app import BotThread, build_application
from survey_kit.bot.catalog import SurveyCatalog
from survey_kit.bot.ledger import EntryLedger
from survey_kit.bot.results import ResultsBoard
from survey_kit.bot.services import BotServices
from survey_kit.bot.subscribers import Subscribers
from survey_kit.faketelegram import NoReply
from survey_kit.surveys import Survey, SurveyError, match_typed

PIE = Survey("1", "Which Thanksgiving Pie is your favorite?", "Thanksgiving Pie",
             ["Pumpkin Pie", "Pecan Pie", "Apple Pie", "Thanksgiving Leftover Pot Pie", "Other"])
CAKE = Survey("2", "Which cake do you bake most?", "Cakes", ["Carrot", "Cheesecake"])
ADMIN = 900


class MemorySurveys:
    """Creates and closes surveys in the catalog only (the Kafka version is KafkaSurveys)."""

    def __init__(self, catalog: SurveyCatalog):
        self.catalog = catalog

    def create(self, survey: Survey) -> Survey:
        self.catalog.put(survey.validate())
        return survey

    def close(self, survey_id: str) -> Survey:
        survey = self.catalog.get(survey_id)
        if survey is None:
            raise SurveyError(f"there is no survey {survey_id!r}")
        closed = replace(survey, enabled=False)
        self.catalog.put(closed)
        return closed


class Bot:
    """The bot with in-memory services, running against a fake Telegram."""

    def __init__(self, tmp_path, surveys, kafka_up=True, read=True, ready_wait=10.0):
        self.entries: list[dict] = []
        self.kafka_up = kafka_up
        self.delivery_delay = 0.0  # seconds Kafka takes to acknowledge
        self.catalog = SurveyCatalog(surveys)
        self.ledger = EntryLedger()
        self.ledger.ready.set()
        if not read:  # as at start-up, while the followers still read the topics
            self.catalog.ready.clear()
            self.ledger.ready.clear()

        async def deliver(entry: dict) -> bool:
            await asyncio.sleep(self.delivery_delay)
            self.entries.append(entry)
            return self.kafka_up

        self.services = BotServices(
            catalog=self.catalog,
            ledger=self.ledger,
            deliver=deliver,
            subscribers=Subscribers(tmp_path / "bot.sqlite"),
            results=ResultsBoard(self.ledger),
            surveys_admin=MemorySurveys(self.catalog),
            admin_chat_ids=frozenset({ADMIN}),
            max_field_length=20,
            ready_wait=ready_wait,
        )


@pytest.fixture
def run_bot(fake, tmp_path):
    threads = []

    def start(surveys=(PIE,), **options) -> Bot:
        bot = Bot(tmp_path, list(surveys), **options)
        app = build_application(bot.services, "123:TEST", base_url=fake.bot_base_url)
        threads.append(BotThread(app).start())
        return bot

    yield start
    for thread in threads:
        thread.stop()


def expect(tg, chat, text):
    """The bot's next message to the chat, checked to be exactly `text`."""
    reply = tg.wait_for_reply(chat)
    assert reply.text == text
    return reply


def answer_pie(tg, chat, name="Ada", company="Confluent", location="Berlin", answer="Apple Pie"):
    tg.send_text(chat, "/survey", first_name=name)
    expect(tg, chat, texts.ask_name(PIE.question))
    tg.send_text(chat, name)
    expect(tg, chat, texts.ASK_COMPANY)
    tg.send_text(chat, company)
    expect(tg, chat, texts.ASK_LOCATION)
    tg.send_text(chat, location)
    expect(tg, chat, PIE.question)
    tg.send_text(chat, answer)
    return tg.wait_for_reply(chat)


def test_start_help_and_unknown_commands_list_the_commands(run_bot, tg):
    run_bot()
    tg.send_text(1, "/start")
    expect(tg, 1, texts.WELCOME)
    tg.send_text(1, "/help")
    expect(tg, 1, texts.HELP)
    tg.send_text(1, "/frobnicate now")
    expect(tg, 1, texts.unknown_command("/frobnicate"))
    tg.send_text(1, "hello?")
    expect(tg, 1, texts.UNKNOWN_TEXT)
    assert [c["command"] for c in tg.state()["commands"]] == [name for name, _ in texts.COMMANDS]


def test_commands_sent_while_the_bot_reads_its_topics_wait_for_them(run_bot, tg):
    # Right after a start, surveys and answers are still being read from Kafka: "no open survey" or a
    # second answer would be wrong, so the bot waits for them, then answers.
    bot = run_bot(read=False)
    tg.send_text(1, "/survey")
    tg.send_text(2, "/results")
    with pytest.raises(NoReply):
        tg.wait_for_reply(1, timeout=1)
    bot.ledger.ready.set()
    with pytest.raises(NoReply):
        tg.wait_for_reply(1, timeout=0.5)  # the surveys are still being read
    bot.catalog.ready.set()
    expect(tg, 1, texts.ask_name(PIE.question))
    assert tg.wait_for_reply(2).text.startswith('Results for "Thanksgiving Pie"')


def test_a_bot_that_cannot_read_its_topics_says_to_try_again(run_bot, tg):
    run_bot(read=False, ready_wait=0.5)
    tg.send_text(1, "/survey")
    expect(tg, 1, texts.STARTING)
    tg.send_text(1, "/results")
    expect(tg, 1, texts.starting("results"))
    tg.send_text(ADMIN, "/closesurvey 1")
    expect(tg, ADMIN, texts.starting("closesurvey"))


def test_a_complete_survey_is_confirmed_and_delivered(run_bot, tg):
    bot = run_bot()
    confirm = answer_pie(tg, 5)
    assert confirm.text == texts.summary("Thanksgiving Pie", "Ada", "Confluent", "Berlin", "Apple Pie")
    assert confirm.keyboard == [["/y", "/n"]]
    tg.send_text(5, "/y")
    done = expect(tg, 5, texts.SENT)
    assert done.removes_keyboard
    assert bot.entries == [{"survey_id": "1", "user_id": "5", "name": "Ada", "company": "Confluent",
                            "location": "Berlin", "response": "Apple Pie"}]
    assert bot.services.counters.confirmed == 1 and bot.services.counters.sent == 1


def test_the_answer_keyboard_offers_exactly_the_options_and_others_are_refused(run_bot, tg):
    bot = run_bot()
    tg.send_text(5, "/survey")
    tg.wait_for_reply(5)
    tg.send_text(5, "Ada")
    tg.wait_for_reply(5)
    tg.send_text(5, "/skip")
    expect(tg, 5, texts.ASK_LOCATION)
    tg.send_text(5, "/skip")
    keyboard = expect(tg, 5, PIE.question)
    assert keyboard.options == PIE.options
    tg.send_text(5, "Cherry Pie")
    again = expect(tg, 5, f"{texts.PICK_OPTION}\n\n{PIE.question}")
    assert again.options == PIE.options
    tg.send_text(5, "Pecan Pie")
    expect(tg, 5, texts.summary("Thanksgiving Pie", "Ada", None, None, "Pecan Pie"))
    tg.send_text(5, "sure")
    expect(tg, 5, texts.CONFIRM_KEYS)
    tg.send_text(5, "/y")
    expect(tg, 5, texts.SENT)
    assert bot.entries[0]["company"] is None and bot.entries[0]["location"] is None
    assert bot.entries[0]["response"] == "Pecan Pie"


def test_an_option_typed_in_another_case_or_spacing_counts_as_the_option(run_bot, tg):
    bot = run_bot()
    tg.send_text(5, "/survey")
    tg.wait_for_reply(5)
    for text in ("Ada", "/skip", "/skip"):
        tg.send_text(5, text)
        tg.wait_for_reply(5)
    tg.send_text(5, "pecan   PIE ")
    expect(tg, 5, texts.summary("Thanksgiving Pie", "Ada", None, None, "Pecan Pie"))
    tg.send_text(5, "/y")
    expect(tg, 5, texts.SENT)
    assert bot.entries[0]["response"] == "Pecan Pie"  # the survey's spelling: the histogram counts one option


def test_a_typed_text_that_matches_several_options_loosely_matches_none():
    # a survey read from Kafka is not validated: its options may differ in case only
    sloppy = Survey("3", "Tea?", "Tea", ["Yes", "YES", "No"])
    assert match_typed("YES", sloppy.options) == "YES"
    assert match_typed("yes", sloppy.options) is None
    assert match_typed("  no ", sloppy.options) == "No"
    assert match_typed("Nope", sloppy.options) is None


def test_cancel_and_n_abandon_without_an_entry(run_bot, tg):
    bot = run_bot()
    tg.send_text(5, "/survey")
    tg.wait_for_reply(5)
    tg.send_text(5, "Ada")
    expect(tg, 5, texts.ASK_COMPANY)
    tg.send_text(5, "/cancel")
    expect(tg, 5, texts.CANCELLED)
    tg.send_text(5, "Confluent")  # the conversation is over: this is a stray text now
    expect(tg, 5, texts.UNKNOWN_TEXT)
    answer_pie(tg, 5)
    tg.send_text(5, "/n")
    expect(tg, 5, texts.DISCARDED)
    tg.send_text(5, "/cancel")
    expect(tg, 5, texts.NOTHING_TO_CANCEL)
    assert bot.entries == [] and bot.services.counters.cancelled == 2


def test_bad_input_is_answered_with_a_reask(run_bot, tg):
    run_bot()
    tg.send_text(5, "/survey")
    tg.wait_for_reply(5)
    tg.send_text(5, "   ")
    expect(tg, 5, f"{texts.field_empty('name')}\n\n{texts.ASK_NAME}")
    tg.send_text(5, "A" * 21)
    expect(tg, 5, f"{texts.field_too_long('name', 20)}\n\n{texts.ASK_NAME}")
    tg.send_sticker(5)
    expect(tg, 5, f"{texts.NOT_TEXT}\n\n{texts.ASK_NAME}")
    tg.send_photo(5)
    expect(tg, 5, f"{texts.NOT_TEXT}\n\n{texts.ASK_NAME}")
    name_id = tg.send_text(5, "Ada")
    expect(tg, 5, texts.ASK_COMPANY)
    tg.edit_message(5, name_id, "Grace")
    expect(tg, 5, f"{texts.EDIT_IGNORED}\n\n{texts.ASK_COMPANY}")
    tg.send_voice(5)
    expect(tg, 5, f"{texts.NOT_TEXT}\n\n{texts.ASK_COMPANY}")
    tg.send_text(5, "/y")
    expect(tg, 5, f"{texts.not_expected('/y')}\n\n{texts.ASK_COMPANY}")
    tg.send_text(5, "/help")
    expect(tg, 5, texts.HELP)
    expect(tg, 5, texts.ASK_COMPANY)
    tg.send_text(5, "/skip")
    expect(tg, 5, texts.ASK_LOCATION)


def test_a_respondent_answers_each_survey_once(run_bot, tg):
    bot = run_bot()
    bot.ledger.record("1", "6", "Other")  # an answer read from survey-entries, e.g. before a restart
    tg.send_text(6, "/survey")
    expect(tg, 6, texts.already_answered("Thanksgiving Pie"))
    answer_pie(tg, 5)
    tg.send_text(5, "/y")
    expect(tg, 5, texts.SENT)
    tg.send_text(5, "/survey")
    expect(tg, 5, texts.already_answered("Thanksgiving Pie"))
    assert len(bot.entries) == 1


def test_several_surveys_are_offered_and_answered_ones_left_out(run_bot, tg):
    bot = run_bot(surveys=(PIE, CAKE))
    tg.send_text(5, "/survey")
    choice = expect(tg, 5, texts.CHOOSE_SURVEY)
    assert choice.options == ["Thanksgiving Pie", "Cakes"]
    tg.send_text(5, "Pies")
    expect(tg, 5, f"{texts.CHOOSE_FROM_KEYBOARD}\n\n{texts.CHOOSE_SURVEY}")
    tg.send_text(5, "  cakes ")  # typed, not tapped
    expect(tg, 5, texts.ask_name(CAKE.question))
    for text in ("Ada", "/skip", "/skip"):
        tg.send_text(5, text)
        tg.wait_for_reply(5)
    tg.send_text(5, "Carrot")
    tg.wait_for_reply(5)
    tg.send_text(5, "/y")
    expect(tg, 5, texts.SENT)
    tg.send_text(5, "/survey")  # only the pie survey is left: no choice to make
    expect(tg, 5, texts.ask_name(PIE.question))
    assert bot.entries[0]["survey_id"] == "2"


def test_disabled_surveys_are_not_offered(run_bot, tg):
    run_bot(surveys=(replace(PIE, enabled=False), CAKE))
    tg.send_text(5, "/survey")
    expect(tg, 5, texts.ask_name(CAKE.question))
    tg.send_text(5, "/cancel")
    tg.wait_for_reply(5)


def test_a_survey_closed_during_a_conversation_is_not_answered(run_bot, tg):
    bot = run_bot()
    tg.send_text(5, "/survey")
    tg.wait_for_reply(5)
    tg.send_text(5, "Ada")
    expect(tg, 5, texts.ASK_COMPANY)
    bot.services.surveys_admin.close("1")
    tg.send_text(5, "/skip")
    expect(tg, 5, texts.ASK_LOCATION)
    tg.send_text(5, "/skip")
    expect(tg, 5, texts.SURVEY_GONE)
    assert bot.entries == []


def test_no_open_survey_gets_a_clear_message(run_bot, tg):
    run_bot(surveys=(replace(PIE, enabled=False),))
    tg.send_text(5, "/survey")
    expect(tg, 5, texts.NO_SURVEY)


def test_an_entry_kept_in_the_outbox_is_reported_as_saved(run_bot, tg):
    bot = run_bot(kafka_up=False)
    answer_pie(tg, 5)
    tg.send_text(5, "/y")
    expect(tg, 5, texts.SAVED)
    assert bot.services.counters.saved_to_outbox == 1 and len(bot.entries) == 1


def test_results_are_computed_from_entries_when_there_are_no_live_results(run_bot, tg):
    bot = run_bot()
    for user, answer in (("1", "Apple Pie"), ("2", "Apple Pie"), ("3", "Pecan Pie"), ("4", "Other")):
        bot.ledger.record("1", user, answer)
    tg.send_text(5, "/results")
    reply = tg.wait_for_reply(5)
    assert reply.text.splitlines() == [
        'Results for "Thanksgiving Pie" (computed from survey-entries: no live results yet):',
        PIE.question,
        "Pumpkin Pie                   ░░░░░░░░░░ 0 (0%)",
        "Pecan Pie                     ███░░░░░░░ 1 (25%)",
        "Apple Pie                     █████░░░░░ 2 (50%)",
        "Thanksgiving Leftover Pot Pie ░░░░░░░░░░ 0 (0%)",
        "Other                         ███░░░░░░░ 1 (25%)",
        "4 answers in total.",
    ]
    tg.send_text(5, "/results thanksgiving  pie")  # by its summary, as typed
    assert tg.wait_for_reply(5).text == reply.text
    tg.send_text(5, "/results Which pie?")
    expect(tg, 5, 'There is no survey "Which pie?". The surveys are: 1 (Thanksgiving Pie).')


def test_results_asked_while_the_live_results_are_read_wait_for_them(run_bot, tg):
    # right after a start the bot may have read the entries but not yet survey-results-live: it waits for
    # them instead of answering "no live results yet"
    bot = run_bot(ready_wait=3)
    board = bot.services.results
    board.ready.clear()
    bot.ledger.record("1", "1", "Apple Pie")
    tg.send_text(5, "/results")
    with pytest.raises(NoReply):
        tg.wait_for_reply(5, timeout=0.5)
    board.apply_record(Message(topic="survey-results-live", key=b"1"), {"QUESTION": PIE.question, "RESULTS": {"Pecan Pie": 3}})
    board.ready.set()
    reply = tg.wait_for_reply(5)
    assert reply.text.splitlines()[0] == 'Results for "Thanksgiving Pie" (live, from survey-results-live):'
    assert "3 answers in total." in reply.text


def test_results_that_cannot_be_read_are_waited_for_once_then_computed(run_bot, tg):
    bot = run_bot(ready_wait=1)
    bot.services.results.ready.clear()  # never read: no pipeline writes survey-results-live
    tg.send_text(5, "/results")
    assert "(computed from survey-entries: no live results yet)" in tg.wait_for_reply(5).text
    bot.services.ready_wait = 600  # were it waited for again, no answer would come in time
    tg.send_text(5, "/results")
    assert "(computed from survey-entries" in tg.wait_for_reply(5, timeout=15).text


def test_subscribe_and_unsubscribe(run_bot, tg):
    bot = run_bot()
    tg.send_text(5, "/subscribe")
    expect(tg, 5, texts.SUBSCRIBED)
    tg.send_text(5, "/subscribe")
    expect(tg, 5, texts.ALREADY_SUBSCRIBED)
    assert bot.services.subscribers.chat_ids() == [5]
    tg.send_text(5, "/unsubscribe")
    expect(tg, 5, texts.UNSUBSCRIBED)
    tg.send_text(5, "/unsubscribe")
    expect(tg, 5, texts.NOT_SUBSCRIBED)
    assert bot.services.subscribers.chat_ids() == []


def test_admins_create_and_close_surveys_others_are_not_allowed(run_bot, tg):
    bot = run_bot()
    tg.send_text(5, "/newsurvey")
    expect(tg, 5, texts.NOT_ALLOWED)
    tg.send_text(5, "/closesurvey 1")
    expect(tg, 5, texts.NOT_ALLOWED)

    tg.send_text(ADMIN, "/newsurvey")
    expect(tg, ADMIN, texts.NEW_ASK_ID)
    tg.send_text(ADMIN, "1")
    expect(tg, ADMIN, "Survey 1 already exists; choose another id.\n\nSend the survey's id.")
    tg.send_text(ADMIN, "coffee")
    expect(tg, ADMIN, texts.NEW_ASK_QUESTION)
    tg.send_text(ADMIN, "How do you take your coffee?")
    expect(tg, ADMIN, texts.NEW_ASK_SUMMARY)
    tg.send_text(ADMIN, "Coffee")
    expect(tg, ADMIN, texts.NEW_ASK_OPTIONS)
    tg.send_text(ADMIN, "Black")
    expect(tg, ADMIN, "survey coffee: give at least two options (got 1).\n\n" + texts.NEW_ASK_OPTIONS)
    tg.send_text(ADMIN, "Black\nWith milk\n")
    expect(tg, ADMIN, texts.new_survey_preview("coffee", "How do you take your coffee?", "Coffee",
                                               ["Black", "With milk"]))
    tg.send_text(ADMIN, "/y")
    expect(tg, ADMIN, texts.survey_created("coffee"))
    assert bot.catalog.get("coffee").options == ["Black", "With milk"]

    tg.send_text(ADMIN, "/closesurvey 1")
    expect(tg, ADMIN, texts.survey_closed("1"))
    tg.send_text(ADMIN, "/closesurvey nope")
    expect(tg, ADMIN, 'There is no survey "nope". The surveys are: 1 (Thanksgiving Pie), coffee (Coffee).')
    tg.send_text(5, "/survey")
    expect(tg, 5, texts.ask_name("How do you take your coffee?"))


def test_replies_answered_429_are_sent_after_retry_after(run_bot, tg):
    run_bot()
    tg.send_text(5, "/help")
    expect(tg, 5, texts.HELP)
    tg.rate_limit(5, count=2, retry_after=1)
    tg.send_text(5, "/start")
    expect(tg, 5, texts.WELCOME)
    assert tg.state()["calls"]["sendMessage"] == 4  # 1 + the two refused + the one that got through


def test_the_bot_answers_nothing_twice(run_bot, tg):
    run_bot()
    tg.send_text(5, "/start")
    tg.wait_for_reply(5)
    with pytest.raises(NoReply):
        tg.wait_for_reply(5, timeout=0.3)


def test_messages_sent_without_waiting_for_replies_are_answered_in_order(run_bot, tg):
    # A respondent typing ahead (or a client replaying queued messages) must get the same conversation
    # as one who waits: each message is handled in the state the previous one left. Sent before the bot
    # starts, they reach it in one getUpdates answer, so it has them all at once.
    for text in ["/survey", "Ada", "Confluent", "Berlin", "Apple Pie", "/y"]:
        tg.send_text(5, text, first_name="Ada")
    bot = run_bot()
    expect(tg, 5, texts.ask_name(PIE.question))
    expect(tg, 5, texts.ASK_COMPANY)
    expect(tg, 5, texts.ASK_LOCATION)
    expect(tg, 5, PIE.question)
    expect(tg, 5, texts.summary("Thanksgiving Pie", "Ada", "Confluent", "Berlin", "Apple Pie"))
    expect(tg, 5, texts.SENT)
    assert [entry["response"] for entry in bot.entries] == ["Apple Pie"]


def test_a_double_tapped_y_sends_one_entry(run_bot, tg):
    bot = run_bot()
    answer_pie(tg, 5)
    bot.delivery_delay = 0.5  # the second /y arrives while the first one's entry is being sent
    tg.send_text(5, "/y")
    tg.send_text(5, "/y")
    expect(tg, 5, texts.SENT)
    expect(tg, 5, texts.unknown_command("/y"))  # the conversation had ended: no second entry
    assert len(bot.entries) == 1 and bot.services.counters.confirmed == 1


def test_other_chats_are_answered_while_one_chat_waits_for_kafka(run_bot, tg):
    # Serializing a chat's updates must not serialize the bot: a slow delivery holds only its own chat.
    bot = run_bot()
    answer_pie(tg, 5)
    bot.delivery_delay = 3.0
    tg.send_text(5, "/y")
    tg.send_text(6, "/help")
    assert expect(tg, 6, texts.HELP)
    assert not bot.entries  # chat 5's delivery is still going on
    expect(tg, 5, texts.SENT)
