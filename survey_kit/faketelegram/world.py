"""The state of the fake Telegram: one bot, its chats, the updates waiting for it and what it sent.

The world is what both sides of the fake act on: the Bot API side (the bot polls updates and sends messages)
and the control side (a test or `survey-kit simulate` acts as users and reads the bot's answers). It lives in
one asyncio event loop (the HTTP server's); waiting for new updates or new bot messages is done with
conditions, so long polling answers as soon as something arrives.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOT_USER = {
    "id": 7000000001,
    "is_bot": True,
    "first_name": "Survey Kit",
    "username": "survey_kit_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
    "can_connect_to_business": False,
    "has_main_web_app": False,
}

# Telegram sends these update types when a bot never chose its allowed_updates.
DEFAULT_UPDATE_TYPES = frozenset(
    {
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "inline_query",
        "chosen_inline_result",
        "callback_query",
        "shipping_query",
        "pre_checkout_query",
        "poll",
        "poll_answer",
        "my_chat_member",
        "chat_join_request",
    }
)

MAX_MESSAGE_LENGTH = 4096
_COMMAND = re.compile(r"^/[A-Za-z0-9_]{1,32}(@[A-Za-z0-9_]+)?")


class ApiError(Exception):
    """A Bot API error answered as Telegram does: HTTP status = error_code, with a description."""

    def __init__(self, error_code: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


@dataclass
class Chat:
    """A chat the bot can talk in, with every message in it (users' and the bot's) in order."""

    info: dict[str, Any]
    next_message_id: int = 1
    messages: list[dict[str, Any]] = field(default_factory=list)

    def take_message_id(self) -> int:
        message_id = self.next_message_id
        self.next_message_id += 1
        return message_id


@dataclass
class RateLimit:
    """The next `remaining` calls of `method` (for `chat_id`, or any chat if None) answer 429."""

    method: str
    chat_id: int | None
    remaining: int
    retry_after: int


class World:
    """Everything the fake Telegram knows. Methods are called from the server's event loop only."""

    def __init__(self) -> None:
        self.chats: dict[int, Chat] = {}
        self.updates: list[dict[str, Any]] = []
        self.next_update_id = 1
        self.allowed_updates: frozenset[str] = DEFAULT_UPDATE_TYPES
        self.commands: list[dict[str, str]] = []
        self.rate_limits: list[RateLimit] = []
        self.calls: dict[str, int] = {}
        self.closing = False
        self.polls_waiting = 0
        self.last_poll = float("-inf")  # time.monotonic() of the last getUpdates seen
        self.changed = asyncio.Condition()

    async def close(self) -> None:
        """End every long poll and wait now, so the server can shut down without waiting for them."""
        self.closing = True
        async with self.changed:
            self.changed.notify_all()

    # ---- the users' side -------------------------------------------------------------------------

    async def user_message(
        self,
        chat_id: int,
        content: dict[str, Any],
        *,
        user: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A user sends a message (content: text, sticker, photo, voice...) to the bot; returns the update."""
        chat = self._chat(chat_id, user)
        message = {
            "message_id": chat.take_message_id(),
            "from": self._user(chat_id, user),
            "chat": chat.info,
            "date": int(time.time()),
            **content,
        }
        text = content.get("text")
        if text is not None:
            command = _COMMAND.match(text)
            if command:
                message["entities"] = [{"offset": 0, "length": command.end(), "type": "bot_command"}]
        chat.messages.append({**message, "from_bot": False})
        return await self._add_update("message", message)

    async def user_edit(self, chat_id: int, message_id: int, text: str) -> dict[str, Any]:
        """A user edits one of their earlier text messages; the bot receives an edited_message update."""
        chat = self.chats.get(chat_id)
        original = None
        if chat is not None:
            original = next(
                (m for m in chat.messages if m["message_id"] == message_id and not m["from_bot"]), None
            )
        if original is None:
            raise ApiError(400, f"Bad Request: chat {chat_id} has no user message {message_id} to edit")
        original["text"] = text
        original["edit_date"] = int(time.time())
        edited = {k: v for k, v in original.items() if k != "from_bot"}
        return await self._add_update("edited_message", edited)

    def bot_messages(self, chat_id: int, after: int = 0) -> list[dict[str, Any]]:
        """The messages the bot sent to a chat with a message id greater than `after`."""
        chat = self.chats.get(chat_id)
        if chat is None:
            return []
        return [m for m in chat.messages if m["from_bot"] and m["message_id"] > after]

    async def wait_bot_messages(self, chat_id: int, after: int, timeout: float) -> list[dict[str, Any]]:
        """Like bot_messages, but waits up to `timeout` seconds for at least one to arrive."""
        async with self.changed:
            try:
                await asyncio.wait_for(
                    self.changed.wait_for(lambda: self.closing or bool(self.bot_messages(chat_id, after))), timeout
                )
            except TimeoutError:
                pass
        return self.bot_messages(chat_id, after)

    def limit_rate(self, method: str, chat_id: int | None, count: int, retry_after: int) -> None:
        self.rate_limits.append(RateLimit(method, chat_id, count, retry_after))

    # ---- the bot's side (Bot API methods) ----------------------------------------------------------

    async def get_updates(
        self, offset: int | None, limit: int, timeout: float, allowed_updates: list[str] | None
    ) -> list[dict[str, Any]]:
        """getUpdates: confirm updates below `offset`, then return waiting ones, long-polling if none."""
        self.last_poll = time.monotonic()
        if allowed_updates is not None:
            # As Telegram: an empty list means the default set; the choice sticks for later calls.
            self.allowed_updates = frozenset(allowed_updates) or DEFAULT_UPDATE_TYPES
        if offset is not None:
            if offset < 0:
                self.updates = self.updates[offset:]
            else:
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
        self.updates = [u for u in self.updates if _update_type(u) in self.allowed_updates]
        if not self.updates and timeout > 0:
            self.polls_waiting += 1
            try:
                async with self.changed:
                    await asyncio.wait_for(self.changed.wait_for(lambda: self.closing or bool(self.updates)), timeout)
            except TimeoutError:
                pass
            finally:
                self.polls_waiting -= 1
                self.last_poll = time.monotonic()
        return [u for u in self.updates if _update_type(u) in self.allowed_updates][:limit]

    async def send_message(
        self, chat_id: int, text: str, parse_mode: str | None, reply_markup: dict[str, Any] | None
    ) -> dict[str, Any]:
        """sendMessage: record the bot's message in the chat and return it as Telegram does."""
        self._check_rate_limit("sendMessage", chat_id)
        chat = self.chats.get(chat_id)
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        if not text or not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > MAX_MESSAGE_LENGTH:
            raise ApiError(400, "Bad Request: message is too long")
        if parse_mode is not None and parse_mode not in ("HTML", "Markdown", "MarkdownV2"):
            raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode!r}")
        _check_reply_markup(reply_markup)
        message = {
            "message_id": chat.take_message_id(),
            "from": BOT_USER,
            "chat": chat.info,
            "date": int(time.time()),
            "text": text,
        }
        chat.messages.append({**message, "from_bot": True, "parse_mode": parse_mode, "reply_markup": reply_markup})
        async with self.changed:
            self.changed.notify_all()
        if reply_markup and "inline_keyboard" in reply_markup:
            message["reply_markup"] = reply_markup  # Telegram echoes inline keyboards only
        return message

    def bot_polling(self, within: float = 5.0) -> bool:
        """Whether a bot is taking updates: polling right now, or did so in the last `within` seconds."""
        return self.polls_waiting > 0 or time.monotonic() - self.last_poll < within

    def count_call(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    # ---- persistence -------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the world to a JSON file, so a restarted fake keeps chats and unconfirmed updates."""
        state = {
            "chats": {str(cid): {"info": c.info, "next_message_id": c.next_message_id, "messages": c.messages}
                      for cid, c in self.chats.items()},
            "updates": self.updates,
            "next_update_id": self.next_update_id,
            "allowed_updates": sorted(self.allowed_updates),
            "commands": self.commands,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)

    def load(self, path: Path) -> None:
        state = json.loads(path.read_text())
        self.chats = {int(cid): Chat(c["info"], c["next_message_id"], c["messages"])
                      for cid, c in state["chats"].items()}
        self.updates = state["updates"]
        self.next_update_id = state["next_update_id"]
        self.allowed_updates = frozenset(state["allowed_updates"])
        self.commands = state["commands"]

    # ---- helpers -----------------------------------------------------------------------------------

    def _chat(self, chat_id: int, user: dict[str, Any] | None) -> Chat:
        chat = self.chats.get(chat_id)
        if chat is None:
            sender = self._user(chat_id, user)
            if sender["id"] == chat_id:
                info = {"id": chat_id, "type": "private", "first_name": sender["first_name"]}
                for key in ("last_name", "username"):
                    if key in sender:
                        info[key] = sender[key]
            else:
                info = {"id": chat_id, "type": "group", "title": f"Group {chat_id}"}
            chat = self.chats[chat_id] = Chat(info)
        return chat

    @staticmethod
    def _user(chat_id: int, user: dict[str, Any] | None) -> dict[str, Any]:
        user = dict(user or {})
        sender = {"id": user.pop("id", chat_id), "is_bot": False,
                  "first_name": user.pop("first_name", None) or f"User {chat_id}", "language_code": "en"}
        sender.update({k: v for k, v in user.items() if v is not None})
        return sender

    async def _add_update(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": self.next_update_id, kind: payload}
        self.next_update_id += 1
        if kind in self.allowed_updates:
            self.updates.append(update)
        async with self.changed:
            self.changed.notify_all()
        return update

    def _check_rate_limit(self, method: str, chat_id: int) -> None:
        for limit in self.rate_limits:
            if limit.method == method and limit.chat_id in (None, chat_id) and limit.remaining > 0:
                limit.remaining -= 1
                if limit.remaining == 0:
                    self.rate_limits.remove(limit)
                raise ApiError(
                    429,
                    f"Too Many Requests: retry after {limit.retry_after}",
                    {"retry_after": limit.retry_after},
                )


def _update_type(update: dict[str, Any]) -> str:
    return next(k for k in update if k != "update_id")


def _check_reply_markup(markup: dict[str, Any] | None) -> None:
    """Reject reply markups Telegram would reject, so the bot's keyboards are checked for real."""
    if markup is None:
        return
    if not isinstance(markup, dict):
        raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    if "keyboard" in markup:
        rows = markup["keyboard"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ApiError(400, "Bad Request: field \"keyboard\" must be an Array of Array")
        for row in rows:
            for button in row:
                label = button.get("text") if isinstance(button, dict) else button
                if not isinstance(label, str) or not label:
                    raise ApiError(400, "Bad Request: keyboard button text must be a non-empty String")
    elif "remove_keyboard" in markup:
        if markup["remove_keyboard"] is not True:
            raise ApiError(400, "Bad Request: remove_keyboard must be True")
    elif not {"inline_keyboard", "force_reply"} & markup.keys():
        raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
