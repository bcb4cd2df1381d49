"""Taking the survey yourself from a notebook: the chat widget, the real bot, the fake Telegram, Kafka."""

from __future__ import annotations

import queue
import time
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


def _run_cell(client, code: str) -> str:
    """Execute `code` in the kernel; what it printed (AssertionError with the traceback if it failed)."""
    printed: list[str] = []

    def output(message):
        if message["msg_type"] == "stream":
            printed.append(message["content"]["text"])
        elif message["msg_type"] == "error":
            printed.append("\n".join(message["content"]["traceback"]))

    reply = client.execute_interactive(code, output_hook=output, timeout=60)
    assert reply["content"]["status"] == "ok", "".join(printed)
    return "".join(printed)


def test_the_chat_answers_while_the_live_view_runs_in_the_same_kernel(cluster, fake, bot, tmp_path):
    """The workshop's live part awaits `view.run_async`: what an attendee types in the chat meanwhile reaches
    the bot then, message after message. (A cell that blocks holds every widget event back until it ends.)
    A real kernel runs the cells; the test sends what JupyterLab sends on Enter in the chat's text box (a
    widget state update) and, as ipywidgets' frontend does, sends the next one only once the kernel said
    idle for the previous one."""
    from jupyter_client.manager import start_new_kernel

    (tmp_path / "topics.json").write_text(cluster.settings.topics.model_dump_json())  # the test's own topic names
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        text_box = _run_cell(client, "from pathlib import Path\n"
                                     "from survey_kit.chat import ChatView\n"
                                     "from survey_kit.cluster import Cluster\n"
                                     "from survey_kit.config import Settings, TopicSettings\n"
                                     "from survey_kit.widgets import LiveSurveyView\n"
                                     f"topics = TopicSettings.model_validate_json(Path({str(tmp_path / 'topics.json')!r}).read_text())\n"
                                     f"cluster = Cluster({cluster.bootstrap_servers!r}, {cluster.schema_registry_url!r}, Settings(topics=topics))\n"
                                     f"chat = ChatView({fake.api_url!r}, first_name='Ada')\n"
                                     "view = LiveSurveyView(cluster, survey_id='1')\n"
                                     "print(chat.text_box.model_id)").strip()
        started = time.monotonic()
        live_part = client.execute("print('live part running', flush=True)\n"
                                   "counts = await view.run_async(duration_s=60, until=lambda v: len(chat.transcript) >= 4)")
        _wait_for_iopub(client, live_part, "stream")  # the cell runs: what comes now arrives while it does
        for text in ("/survey", "Ada"):
            message = client.session.msg("comm_msg", {"comm_id": text_box, "data": {
                "method": "update", "state": {"value": text}, "buffer_paths": []}})
            client.shell_channel.send(message)
            _wait_for_iopub(client, message["header"]["msg_id"], "status", "idle")
        while True:
            try:
                reply = client.get_shell_msg(timeout=40)
            except queue.Empty:
                pytest.fail("the live part did not end: the chat's messages did not reach the bot while it ran")
            if reply["parent_header"].get("msg_id") == live_part:
                break
        assert reply["content"]["status"] == "ok"
        assert time.monotonic() - started < 40  # ended by the bot's answers, not by the 60 s
        assert _run_cell(client, "print(chat.transcript)") == f"{[('you', '/survey'), ('bot', texts.ask_name(PIE.question)), ('you', 'Ada'), ('bot', texts.ASK_COMPANY)]}\n"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _wait_for_iopub(client, parent_id: str, msg_type: str, state: str | None = None, timeout: float = 30) -> None:
    """Until the kernel publishes a `msg_type` message (`status` with execution state `state`) for `parent_id`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if time.monotonic() > deadline:
                raise queue.Empty
            message = client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"the kernel published no {state or ''} {msg_type} for message {parent_id} within {timeout} s")
        if (message["parent_header"].get("msg_id") == parent_id and message["msg_type"] == msg_type
                and (state is None or message["content"].get("execution_state") == state)):
            return
