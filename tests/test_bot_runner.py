"""BotRunner: started from inside a running event loop (as in a Jupyter kernel), status and counts, and
what it logs (never the token; no names, companies or locations at INFO)."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone

import psutil
import pytest
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from survey_kit.bot import texts
from survey_kit.bot.app import BotStartError
from survey_kit.bot.generator import plan_entries, write_entries
from survey_kit.bot.runner import BotRunner
from survey_kit.cluster import from_stack
from survey_kit.config import ConfigError
from survey_kit.faketelegram import FakeTelegramClient, FakeTelegramServer
from survey_kit.stack import EmbeddedStack
from survey_kit.surveys import Survey, create_survey
from survey_kit.topics import create_topics

PIE = Survey("1", "Which Thanksgiving Pie is your favorite?", "Thanksgiving Pie", ["Apple Pie", "Pecan Pie"])
TOKEN = "424242:SECRET-token-value"


def test_runner_works_inside_a_running_event_loop(cluster, tmp_path):
    create_survey(cluster, PIE)

    async def notebook_cell():
        # A Jupyter kernel runs cells inside its own event loop, as here.
        with FakeTelegramServer() as fake, FakeTelegramClient(fake.api_url, timeout=20) as tg:
            runner = BotRunner(cluster=cluster, data_dir=tmp_path, api_url=fake.api_url).start()
            try:
                assert runner.wait_until_ready(30)
                replies = []
                for text in ("/survey", "Ada", "/skip", "/skip", "Pecan Pie", "/y"):
                    replies.append((await asyncio.to_thread(tg.ask, 5, text)).text)
                return replies[-1], runner.status()
            finally:
                runner.stop()
                assert not runner.running
                assert runner.status()["confirmed"] == 1 and runner.status()["outbox"] == 0

    last, status = asyncio.run(notebook_cell())
    assert last == texts.SENT
    assert status["running"] is True and status["ready"] is True
    assert status["conversations"] == 1 and status["confirmed"] == 1 and status["sent"] == 1
    assert status["delivered"] == 1 and status["outbox"] == 0 and status["surveys_open"] == ["1"]
    assert status["errors"] == {}


def test_the_token_and_respondents_details_stay_out_of_the_log(cluster, tmp_path, caplog):
    create_survey(cluster, PIE)
    telegram = cluster.settings.telegram.model_copy(update={"token": SecretStr(TOKEN)})
    cluster = replace(cluster, settings=cluster.settings.model_copy(update={"telegram": telegram}))
    caplog.set_level(logging.DEBUG)
    with FakeTelegramServer() as fake, FakeTelegramClient(fake.api_url, timeout=20) as tg:
        runner = BotRunner(cluster=cluster, data_dir=tmp_path, api_url=fake.api_url).start()
        try:
            assert "SECRET" not in repr(runner) and "SECRET" not in str(runner.status())
            # No wait_until_ready: the bot itself waits for the surveys to be read before answering /survey.
            replies = [tg.ask(5, text).text for text in ("/survey", "Zebulon", "Quuxcorp", "Atlantis", "Apple Pie", "/y")]
            assert replies[-1] in (texts.SENT, texts.SAVED)  # saved: Kafka took longer than ack_wait to answer
        finally:
            runner.stop()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "SECRET" not in logged and "424242" not in logged
    at_info = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "entry confirmed" in at_info
    for detail in ("Zebulon", "Quuxcorp", "Atlantis"):
        assert detail not in at_info


def broker_connections(bootstrap_servers: str) -> list:
    port = int(bootstrap_servers.rsplit(":", 1)[1])
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]


def test_a_stopped_bot_and_its_commands_let_go_of_the_broker(tmp_path):
    # In a notebook, a producer left open keeps its connections and threads, and once the stack is stopped
    # prints "Connect to ... failed" on stderr every second, until Python's garbage collector finds it.
    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        create_topics(cluster)
        gc.disable()  # the collector would close such a producer at some point; the code must
        try:
            create_survey(cluster, PIE)
            write_entries(cluster, plan_entries(PIE, 3, start=datetime.now(timezone.utc), seed=1))
            assert broker_connections(cluster.bootstrap_servers) == []
            with FakeTelegramServer() as fake:
                runner = BotRunner(cluster=cluster, data_dir=tmp_path / "bot", api_url=fake.api_url).start()
                assert runner.wait_until_ready(30)
                assert broker_connections(cluster.bootstrap_servers) != []
                runner.stop()
            assert broker_connections(cluster.bootstrap_servers) == []
        finally:
            gc.enable()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_telegram_that_does_not_answer_is_named_with_what_to_do(cluster, tmp_path, caplog):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a fake Telegram that is not running
    with pytest.raises(BotStartError, match=r"fake Telegram at http://127\.0\.0\.1:\d+\): Telegram could not be reached .*"
                                            r"`survey-kit up` starts the fake Telegram"):
        BotRunner(cluster=cluster, data_dir=tmp_path, api_url=url).start(timeout=20)
    # one message, not a traceback in the log as if the bot had crashed
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@contextmanager
def telegram_refusing_every_token():
    """An HTTP server answering every Bot API call as Telegram does for a revoked or mistyped token."""
    async def unauthorized(request):
        return JSONResponse({"ok": False, "error_code": 401, "description": "Unauthorized"}, status_code=401)

    app = Starlette(routes=[Route("/{path:path}", unauthorized, methods=["GET", "POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_refused_token_is_named(cluster, tmp_path):
    telegram = cluster.settings.telegram.model_copy(update={"token": SecretStr(TOKEN)})
    cluster = replace(cluster, settings=cluster.settings.model_copy(update={"telegram": telegram}))
    with telegram_refusing_every_token() as url, pytest.raises(BotStartError) as refused:
        BotRunner(cluster=cluster, data_dir=tmp_path, api_url=url).start(timeout=20)
    assert "Telegram refused the bot's token: check telegram.token in survey-kit.yaml" in str(refused.value)
    assert "SECRET" not in str(refused.value) and "network" not in str(refused.value)


def test_without_token_or_fake_telegram_the_runner_says_what_to_do(cluster):
    with pytest.raises(ConfigError, match="survey-kit up"):
        BotRunner(cluster=replace(cluster, telegram_api_url=None))
