"""The python-telegram-bot Application of the survey bot, and running it without owning the main thread.

    app = build_application(services, token, base_url=None)   # base_url: the fake Telegram's, if any
    thread = BotThread(app).start()                           # polls in its own thread and event loop
    ...
    thread.stop()
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

from telegram import BotCommand, Update
from telegram.error import InvalidToken, NetworkError
from telegram.ext import Application, ContextTypes

from . import texts
from .admin import admin_handlers, new_survey_conversation
from .commands import catch_all_handlers, standalone_handlers
from .conversation import survey_conversation
from .ordering import OneUpdatePerChat
from .ratelimit import RetryAfterWaits
from .services import SERVICES_KEY, BotServices

log = logging.getLogger(__name__)

Background = Callable[[Application, asyncio.Event], Awaitable[None]]


class BotStartError(ConnectionError):
    """The bot could not start: Telegram refused its token, could not be reached, or did not answer."""


def _start_failure(error: BaseException | None, timeout: float) -> str:
    if error is None:
        return f"Telegram did not answer within {timeout:g} s"
    if isinstance(error, InvalidToken):
        return "Telegram refused the bot's token: check telegram.token in survey-kit.yaml (the one @BotFather gave)"
    if isinstance(error, NetworkError):  # TimedOut too
        return f"Telegram could not be reached ({error.message})"
    return f"{type(error).__name__}: {error}"


async def _on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    # Only the exception is logged: the update holds respondents' names.
    log.error("handling an update failed", exc_info=context.error)
    if isinstance(update, Update) and update.effective_chat is not None:
        try:
            await update.effective_chat.send_message(texts.ERROR)
        except Exception:  # Telegram itself may be what failed
            log.warning("could not tell chat %s about the error", update.effective_chat.id)


async def _register_commands(app: Application) -> None:
    await app.bot.set_my_commands([BotCommand(name, description) for name, description in texts.COMMANDS])


def build_application(services: BotServices, token: str, base_url: str | None = None) -> Application:
    """The bot's Application: the admin conversation, the survey conversation, then plain commands."""
    builder = (Application.builder().token(token).concurrent_updates(OneUpdatePerChat(16))
               .rate_limiter(RetryAfterWaits()).post_init(_register_commands))
    if base_url:
        builder = builder.base_url(base_url)
    app = builder.build()
    app.bot_data[SERVICES_KEY] = services
    # Order matters: while a conversation is active its fallbacks answer every message.
    app.add_handler(new_survey_conversation())
    app.add_handler(survey_conversation())
    app.add_handlers(admin_handlers() + standalone_handlers() + catch_all_handlers())
    app.add_error_handler(_on_error)
    return app


async def serve(app: Application, stopping: asyncio.Event, background: list[Background] = (),
                ready: threading.Event | None = None, poll_timeout: int = 10,
                background_grace: float = 15.0) -> None:
    """Poll Telegram and handle updates until `stopping` is set (python-telegram-bot's recipe for running
    inside another event loop's thread: run_polling wants the main thread)."""
    async with app:
        if app.post_init is not None:  # run_polling would call it; we stand in for run_polling
            await app.post_init(app)
        await app.updater.start_polling(timeout=poll_timeout, allowed_updates=Update.ALL_TYPES)
        await app.start()
        tasks = [asyncio.create_task(job(app, stopping)) for job in background]
        if ready is not None:
            ready.set()
        try:
            await stopping.wait()
        finally:
            # Background jobs watch `stopping` and finish what they are doing (a post half-recorded would be
            # posted again after a restart); only one that does not finish in time is cancelled.
            if tasks:
                await asyncio.wait(tasks, timeout=background_grace)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await app.updater.stop()
            await app.stop()


class BotThread:
    """Runs `serve` in a background thread with its own event loop (works inside Jupyter's kernel)."""

    def __init__(self, app: Application, background: list[Background] = ()):
        self.app = app
        self.background = list(background)
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="survey-bot", daemon=True)

    def start(self, timeout: float = 30.0) -> BotThread:
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            self.stop()
            raise BotStartError(_start_failure(self.error, timeout)) from self.error
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self._ready.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            await serve(self.app, self._stopping, self.background, self._ready)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start() or status
            self.error = exc
            if self._ready.is_set():
                log.error("the bot stopped with an error", exc_info=exc)
            else:  # start() raises it, saying what to do
                log.debug("the bot did not start", exc_info=exc)
            self._ready.set()
