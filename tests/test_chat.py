"""Taking the survey yourself from a notebook: the chat widget, the real bot, the fake Telegram, Kafka."""

from __future__ import annotations

from dataclasses import replace

import pytest

from survey_kit.bot import texts
from survey_kit.bot.runner import BotRunner
from survey_kit.chat import ChatView
from survey_kit.consume import read_values
from survey_kit.surveys import Survey, create_survey
from tests.waiting import wait_for

PIE = Survey("1", "Which Thanksgiving Pie is your favorite?", "Thanksgiving Pie",
             ["Pumpkin Pie", "Pecan Pie", "Apple Pie", "Thanksgiving Leftover Pot Pie", "Other"])


@pytest.fixture
def bot(cluster, fake, tmp_path):
    create_survey(cluster, PIE)
    runner = BotRunner(cluster=cluster, data_dir=tmp_path / "bot", api_url=fake.api_url).start()
    try:
        assert runner.wait_until_ready(30)
        wait_for(lambda: runner.catalog.get("1") is not None, what="the survey in the catalog")
        yield runner
    finally:
        runner.stop()


def type_in(chat: ChatView, text: str) -> None:
    """What Enter in the text box does: its value changes (continuous_update is off)."""
    chat.text_box.value = text


def press(chat: ChatView, label: str) -> None:
    (button,) = [b for b in chat.keyboard.children if b.description == label]
    button.click()


def test_a_whole_survey_taken_in_the_chat_widget_reaches_survey_entries(cluster, fake, bot):
    chat = ChatView(fake.api_url, first_name="Ada")
    assert "send /survey to begin" in chat.history.value
    type_in(chat, "/survey")
    assert chat.text_box.value == ""  # cleared for the next message
    assert chat.transcript[-2:] == [("you", "/survey"), ("bot", texts.ask_name(PIE.question))]
    type_in(chat, "Ada")
    type_in(chat, "/skip")
    type_in(chat, "Berlin")
    assert chat.transcript[-1] == ("bot", PIE.question)
    assert [b.description for b in chat.keyboard.children] == PIE.options  # the bot's reply keyboard
    press(chat, "Apple Pie")
    assert chat.transcript[-2][1] == "Apple Pie"
    assert [b.description for b in chat.keyboard.children] == ["/y", "/n"]
    press(chat, "/y")
    assert chat.transcript[-1] == ("bot", texts.SENT)
    assert chat.keyboard.children == ()  # the bot removed its keyboard
    assert chat.status.value == ""
    # the history shows both sides, escaped
    assert "<b>you</b>: /survey" in chat.history.value and "Which Thanksgiving Pie" in chat.history.value

    wait_for(lambda: list(read_values(cluster, cluster.topics.entries)), what="the entry")
    assert [v for _, v in read_values(cluster, cluster.topics.entries)] == [{"survey_id": "1", "user_id": str(chat.chat_id), "name": "Ada", "company": None,
                       "location": "Berlin", "response": "Apple Pie"}]
    chat.close()


def test_two_chat_widgets_are_two_people(fake, bot):
    first, second = ChatView(fake.api_url), ChatView(fake.api_url)
    assert first.chat_id != second.chat_id
    first.send("/survey")
    assert second.send("/help")[0].text != first.transcript[-1][1]  # not in the first one's conversation


def test_no_fake_telegram_is_explained():
    with pytest.raises(ValueError, match=r"no fake Telegram to chat through: the embedded stack runs one"):
        ChatView(None)
    chat = ChatView("http://127.0.0.1:1")  # nothing listens there
    with pytest.raises(ConnectionError, match=r"cannot reach the fake Telegram at http://127.0.0.1:1 .*survey-kit status"):
        chat.send("/survey")
    type_in(chat, "/survey")  # from the widget: said on its status line, nothing raised into the kernel
    assert chat.status.value.startswith("<b>not sent</b>: cannot reach the fake Telegram")
    assert chat.transcript == []


def test_a_bot_that_does_not_answer_is_said_so(fake):
    chat = ChatView(fake.api_url, reply_wait_s=1)  # the fake runs, no bot polls it
    assert chat.send("/survey") == []
    assert chat.transcript == [("you", "/survey")]
    assert chat.status.value.startswith("the bot did not answer within 1 s: is it running?")
