"""The order the bot handles updates in: chats concurrently, each chat's updates one at a time, in order.

    Application.builder().concurrent_updates(OneUpdatePerChat(16))

A ConversationHandler moves a chat to its next state only when the callback returns, after its reply was
sent. With plain concurrent updates, a message that arrives meanwhile (a respondent typing ahead, a client
sending queued messages at once, a double-tapped /y) is handled in the state before: the answer is taken
for the previous question, or the same entry is confirmed and sent twice. Handling one update per chat at
a time keeps every conversation as if its respondent waited for each reply, while one chat waiting for
Kafka holds up no other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

# Updates taken from Telegram and waiting for their chat's turn; beyond this, python-telegram-bot stops
# taking more from its queue.
_MAX_WAITING = 1024


class _ChatTurn:
    __slots__ = ("lock", "holders")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # FIFO: a chat's updates run in the order they arrived
        self.holders = 0


class OneUpdatePerChat(BaseUpdateProcessor):
    """Handles up to `max_running` updates at once, never two of the same chat; updates without a chat
    (none the bot asks for today) only count against `max_running`."""

    def __init__(self, max_running: int):
        super().__init__(max_concurrent_updates=_MAX_WAITING)
        if max_running < 1:
            raise ValueError(f"max_running must be a positive integer, not {max_running!r}")
        self._max_running = max_running
        self._running: asyncio.BoundedSemaphore | None = None
        self._turns: dict[int, _ChatTurn] = {}

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        assert self._running is not None, "the Application initializes its update processor first"
        chat = update.effective_chat if isinstance(update, Update) else None
        if chat is None:
            async with self._running:
                await coroutine
            return
        # Taken without awaiting, in the order python-telegram-bot started the updates' tasks.
        turn = self._turns.setdefault(chat.id, _ChatTurn())
        turn.holders += 1
        try:
            async with turn.lock, self._running:
                await coroutine
        finally:
            turn.holders -= 1
            if not turn.holders:  # forget idle chats: the bot may see many
                del self._turns[chat.id]

    async def initialize(self) -> None:
        """Made in the event loop that runs the bot (asyncio's locks belong to one loop); the chats' locks
        are made as chats send updates."""
        self._running = asyncio.BoundedSemaphore(self._max_running)

    async def shutdown(self) -> None:
        """Nothing to free: updates still running finish on their own."""
