"""No confirmed entry is lost: with the broker down, confirmations go to the outbox (also across a bot
restart) and all arrive, once each and in order, when the broker is back.

The broker is frozen (SIGSTOP) rather than killed: a killed embedded broker loses its topics (memory
storage), and the stack cannot restart it on the same port while the old connections linger (TIME_WAIT).
For the bot both are the same outage: nothing answers.
"""

from __future__ import annotations

import pytest

from survey_kit.bot import texts
from survey_kit.bot.delivery import ENTRY_ID_HEADER
from survey_kit.bot.outbox import Outbox
from survey_kit.bot.runner import OUTBOX_DB, BotRunner
from survey_kit.cluster import from_stack
from survey_kit.consume import read_values
from survey_kit.faketelegram import FakeTelegramClient, FakeTelegramServer
from survey_kit.stack import EmbeddedStack
from survey_kit.surveys import Survey, create_survey
from survey_kit.topics import create_topics
from tests.waiting import wait_for

PIE = Survey("1", "Which Thanksgiving Pie is your favorite?", "Thanksgiving Pie", ["Apple Pie", "Pecan Pie"])


def converse(tg, chat, name, response):
    for text in ("/survey", name, "/skip", "/skip", response, "/y"):
        tg.send_text(chat, text)
        reply = tg.wait_for_reply(chat)
    return reply.text


@pytest.fixture
def own_stack(tmp_path):
    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        yield stack


def test_entries_confirmed_while_the_broker_is_down_arrive_after_it_is_back(own_stack, tmp_path):
    cluster = from_stack(own_stack)
    create_topics(cluster)
    create_survey(cluster, PIE)
    bot_dir = tmp_path / "bot"
    with FakeTelegramServer() as fake, FakeTelegramClient(fake.api_url, timeout=30) as tg:
        options = dict(cluster=cluster, data_dir=bot_dir, api_url=fake.api_url, alerts=False,
                       ack_wait=5.0, delivery_timeout=2.0)
        runner = BotRunner(**options).start()
        assert runner.wait_until_ready(30)
        assert converse(tg, 1, "Before", "Apple Pie") == texts.SENT

        own_stack.pause_service("broker")
        assert converse(tg, 2, "Ada", "Pecan Pie") == texts.SAVED
        assert converse(tg, 3, "Grace", "Apple Pie") == texts.SAVED
        assert runner.status()["outbox"] == 2 and runner.status()["saved_to_outbox"] == 2
        runner.stop()  # a restart while Kafka is still down
        assert len(Outbox(bot_dir / OUTBOX_DB)) == 2

        restarted = BotRunner(**options).start()  # the outbox is read back from disk
        own_stack.resume_service("broker")
        try:
            wait_for(lambda: restarted.status()["outbox"] == 0, timeout=60, what="the outbox to be delivered", interval=0.2)
            records = list(read_values(cluster, cluster.topics.entries))
        finally:
            restarted.stop()
    # A produce that timed out on the bot's side may still have reached the frozen broker's socket, and the
    # restarted bot produces its outbox again: such an entry arrives twice, with the same entry id.
    by_entry_id = {}
    for message, value in records:
        by_entry_id.setdefault(dict(message.headers())[ENTRY_ID_HEADER], []).append(value)
    assert all(len({repr(v) for v in copies}) == 1 for copies in by_entry_id.values())
    delivered = sorted((copies[0]["user_id"], copies[0]["name"], copies[0]["response"])
                       for copies in by_entry_id.values())
    assert delivered == [("1", "Before", "Apple Pie"), ("2", "Ada", "Pecan Pie"), ("3", "Grace", "Apple Pie")]
    first_seen = list(dict.fromkeys(v["user_id"] for _, v in records))
    assert first_seen == ["1", "2", "3"]  # in the order they were confirmed
