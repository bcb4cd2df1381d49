"""The fake Telegram Bot API, driven by python-telegram-bot's real client and by the control client."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import httpx
import pytest
from telegram import Bot, BotCommand, ReplyKeyboardMarkup, ReplyKeyboardRemove, Update
from telegram.error import BadRequest, RetryAfter
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

from survey_kit.faketelegram import FakeTelegramClient, FakeTelegramServer, NoReply

TOKEN = "123456:TEST-TOKEN"


def run(coro):
    return asyncio.run(coro)


def test_bot_gets_a_users_command_with_its_entity_and_confirms_it(fake, tg):
    tg.send_text(42, "/start", first_name="Ada", username="ada")

    async def poll():
        async with Bot(TOKEN, base_url=fake.bot_base_url) as bot:
            first = await bot.get_updates(timeout=5)
            again = await bot.get_updates(timeout=0)  # not confirmed yet: served again
            after_ack = await bot.get_updates(offset=first[-1].update_id + 1, timeout=0)
            return first, again, after_ack

    first, again, after_ack = run(poll())
    (update,) = first
    assert update.message.text == "/start"
    assert update.message.chat.id == 42 and update.message.from_user.first_name == "Ada"
    assert update.message.entities[0].type == "bot_command" and update.message.entities[0].length == 6
    assert [u.update_id for u in again] == [update.update_id]
    assert after_ack == ()


def test_long_poll_returns_as_soon_as_a_user_writes(fake, tg):
    async def poll():
        async with Bot(TOKEN, base_url=fake.bot_base_url) as bot:
            waiting = asyncio.create_task(bot.get_updates(timeout=30, read_timeout=40))
            await asyncio.sleep(0)  # let the request start before the user writes
            await asyncio.to_thread(tg.send_text, 7, "hello")
            return await asyncio.wait_for(waiting, 20)

    (update,) = run(poll())
    assert update.message.text == "hello" and update.message.entities == ()


def test_send_message_with_keyboards_is_visible_to_the_user(fake, tg):
    tg.send_text(42, "/survey")

    async def answer():
        async with Bot(TOKEN, base_url=fake.bot_base_url) as bot:
            await bot.send_message(42, "Pick one", reply_markup=ReplyKeyboardMarkup([["Apple Pie", "Other"]]))
            await bot.send_message(42, "<b>Thanks</b>", parse_mode="HTML", reply_markup=ReplyKeyboardRemove())

    run(answer())
    pick = tg.wait_for_reply(42)
    assert pick.text == "Pick one" and pick.keyboard == [["Apple Pie", "Other"]] and pick.options == [
        "Apple Pie", "Other"]
    thanks = tg.wait_for_reply(42)
    assert thanks.text == "<b>Thanks</b>" and thanks.parse_mode == "HTML" and thanks.removes_keyboard
    with pytest.raises(NoReply):
        tg.wait_for_reply(42, timeout=0.2)
    assert [m.text for m in tg.messages(42)] == ["Pick one", "<b>Thanks</b>"]


def test_telegram_errors_reach_the_bot_as_ptb_exceptions(fake, tg):
    tg.send_text(42, "hi")
    tg.rate_limit(42, count=2, retry_after=3)

    async def calls():
        async with Bot(TOKEN, base_url=fake.bot_base_url) as bot:
            errors = []
            for chat_id in (42, 42, 42, 99):
                try:
                    await bot.send_message(chat_id, "x")
                    errors.append(None)
                except RetryAfter as error:
                    errors.append(("retry", error.retry_after))
                except BadRequest as error:
                    errors.append(("bad", error.message))
            return errors

    assert run(calls()) == [("retry", 3), ("retry", 3), None, ("bad", "Chat not found")]


def test_bot_api_answers_in_telegrams_json_format(fake):
    with httpx.Client(base_url=f"{fake.bot_base_url}{TOKEN}") as http:
        unknown = http.post("/sendSticker", data={"chat_id": "1"})
        assert unknown.status_code == 404
        assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
        me = http.post("/getMe", json={})
        assert me.json()["ok"] is True and me.json()["result"]["is_bot"] is True
        empty = http.post("/sendMessage", json={"chat_id": 1})
        assert empty.status_code == 400 and empty.json()["description"] == "Bad Request: message text is empty"
        assert http.post("/deleteWebhook", data={"drop_pending_updates": "true"}).json() == {
            "ok": True, "result": True}
        assert http.get("/getWebhookInfo").json()["result"]["url"] == ""


def test_allowed_updates_filters_edits_and_sticks(fake, tg):
    message_id = tg.send_text(5, "Ada")

    async def poll():
        async with Bot(TOKEN, base_url=fake.bot_base_url) as bot:
            first = await bot.get_updates(timeout=0, allowed_updates=["message"])
            await asyncio.to_thread(tg.edit_message, 5, message_id, "Ada L.")
            await asyncio.to_thread(tg.send_sticker, 5)
            return first, await bot.get_updates(offset=first[-1].update_id + 1, timeout=0)

    first, later = run(poll())
    assert first[0].message.text == "Ada"
    # the edit was not allowed, the sticker was
    assert [u.message.sticker is not None for u in later] == [True]


def test_edits_photos_and_voice_arrive_as_telegram_updates(fake, tg):
    message_id = tg.send_text(5, "Ada")
    tg.edit_message(5, message_id, "Ada L.")
    tg.send_photo(5)
    tg.send_voice(5)

    async def poll():
        async with Bot(TOKEN, base_url=fake.bot_base_url) as bot:
            return await bot.get_updates(timeout=0)

    _, edit, photo, voice = run(poll())
    assert edit.edited_message.text == "Ada L." and edit.edited_message.message_id == message_id
    assert photo.message.photo and voice.message.voice.duration == 2
    with pytest.raises(ValueError, match="no user message 99"):
        tg.edit_message(5, 99, "x")


def test_a_ptb_application_converses_through_the_fake(fake, tg):
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.message.reply_text(f"Welcome, {update.effective_user.first_name}!")

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.message.reply_text(update.message.text.upper())

    async def converse():
        app = Application.builder().token(TOKEN).base_url(fake.bot_base_url).build()
        app.add_handler(CommandHandler("start", start))
        app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
        async with app:
            await app.bot.set_my_commands([BotCommand("start", "say hello")])
            await app.updater.start_polling(timeout=5)
            await app.start()
            welcome = await asyncio.to_thread(tg.ask, 1, "/start", first_name="Ada")
            shout = await asyncio.to_thread(tg.ask, 1, "pie please")
            await app.updater.stop()
            await app.stop()
        return welcome.text, shout.text

    assert run(converse()) == ("Welcome, Ada!", "PIE PLEASE")
    state = tg.state()
    assert state["commands"] == [{"command": "start", "description": "say hello"}]
    assert state["pending_updates"] == 0  # the updater confirmed what it handled when stopping
    assert state["bot_polling"] is True  # it polled a moment ago


def test_state_tells_whether_a_bot_polls(fake, tg):
    assert tg.state()["bot_polling"] is False


def test_state_survives_a_restart_with_a_data_dir(tmp_path):
    with FakeTelegramServer(data_dir=tmp_path) as fake:
        FakeTelegramClient(fake.api_url).send_text(3, "kept until confirmed")
    with FakeTelegramServer(data_dir=tmp_path) as fake:
        async def poll():
            async with Bot(TOKEN, base_url=fake.bot_base_url) as bot:
                return await bot.get_updates(timeout=0)

        (update,) = run(poll())
        assert update.message.text == "kept until confirmed"


def test_starts_again_on_its_port_while_its_closed_connections_linger(tmp_path):
    # `make demo` twice in a row: the first fake closed its connections (they stay in TIME_WAIT a minute)
    with FakeTelegramServer(data_dir=tmp_path) as fake:
        port = fake.port
        with httpx.Client() as http:  # the server closes first, so the lingering end is its own
            assert http.get(f"{fake.api_url}/healthz", headers={"Connection": "close"}).status_code == 200
    with FakeTelegramServer(port=port, data_dir=tmp_path) as again:
        assert httpx.get(f"{again.api_url}/healthz").status_code == 200


def test_process_serves_health_and_refuses_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = subprocess.run(
            [sys.executable, "-m", "survey_kit.faketelegram", "--port", str(port), "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )
    assert refused.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in refused.stderr

    not_loopback = subprocess.run([sys.executable, "-m", "survey_kit.faketelegram", "--host", "0.0.0.0"],
                                  capture_output=True, text=True, timeout=60)
    assert not_loopback.returncode == 2 and "not a loopback address" in not_loopback.stderr

    process = subprocess.Popen(
        [sys.executable, "-m", "survey_kit.faketelegram", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        api_url = line.rsplit(" ", 1)[-1].strip()
        with FakeTelegramClient(api_url) as client:
            client.wait_until_ready()
            assert httpx.get(f"{api_url}/healthz").json()["ok"] is True
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert (tmp_path / "faketelegram-state.json").exists()  # a terminated fake saves its state


def test_control_api_says_what_is_wrong_with_a_request(fake, tg):
    with httpx.Client(base_url=fake.api_url) as http:
        no_chat = http.post("/_fake/messages", json={"text": "hi"})
        assert no_chat.status_code == 400 and "'chat_id' must be an integer" in no_chat.json()["error"]
        no_content = http.post("/_fake/messages", json={"chat_id": 1})
        assert "give 'text', or 'kind' one of sticker, photo, voice" in no_content.json()["error"]
        bad_limit = http.post("/_fake/rate-limits", json={"chat_id": 1, "count": 0, "retry_after": 1})
        assert "at least 1" in bad_limit.json()["error"]
    with pytest.raises(ValueError, match="'text' must be a string"):
        tg.edit_message(1, 1, None)
