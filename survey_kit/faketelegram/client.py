"""Acting as Telegram users against the fake Telegram: send messages to the bot, read what it answered."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Message:
    """A message the bot sent to a chat, as the user sees it (text and the reply keyboard shown with it)."""

    chat_id: int
    message_id: int
    text: str
    parse_mode: str | None
    keyboard: list[list[str]] | None
    removes_keyboard: bool

    @property
    def options(self) -> list[str]:
        """The reply keyboard's buttons in reading order (empty without a keyboard)."""
        return [label for row in self.keyboard or [] for label in row]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        markup = data.get("reply_markup") or {}
        keyboard = None
        if "keyboard" in markup:
            keyboard = [[b["text"] if isinstance(b, dict) else b for b in row] for row in markup["keyboard"]]
        return cls(
            chat_id=data["chat"]["id"],
            message_id=data["message_id"],
            text=data["text"],
            parse_mode=data.get("parse_mode"),
            keyboard=keyboard,
            removes_keyboard=bool(markup.get("remove_keyboard")),
        )


class NoReply(AssertionError):
    """The bot did not answer in time."""


class FakeTelegramClient:
    """Drives the fake Telegram's control API (see survey_kit.faketelegram.api).

        tg = FakeTelegramClient("http://127.0.0.1:8081")
        tg.send_text(42, "/start", first_name="Ada")
        print(tg.wait_for_reply(42).text)

    `wait_for_reply` returns the bot's messages one at a time in order: each call returns the oldest one this
    client has not returned yet, waiting for it if needed. The client can be shared by threads, each chat
    being driven by one thread at a time.
    """

    def __init__(self, api_url: str, *, timeout: float = 10.0):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.api_url, timeout=httpx.Timeout(timeout + 60.0))
        self._seen: dict[int, int] = {}
        self._lock = threading.Lock()

    # ---- acting as users -----------------------------------------------------------------------------

    def send_text(self, chat_id: int, text: str, *, first_name: str | None = None,
                  last_name: str | None = None, username: str | None = None) -> int:
        """A user sends a text (commands included) to the bot; returns the message id."""
        return self._send(chat_id, {"text": text}, first_name, last_name, username)

    def send_sticker(self, chat_id: int, *, first_name: str | None = None) -> int:
        return self._send(chat_id, {"kind": "sticker"}, first_name)

    def send_photo(self, chat_id: int, *, first_name: str | None = None) -> int:
        return self._send(chat_id, {"kind": "photo"}, first_name)

    def send_voice(self, chat_id: int, *, first_name: str | None = None) -> int:
        return self._send(chat_id, {"kind": "voice"}, first_name)

    def edit_message(self, chat_id: int, message_id: int, text: str) -> None:
        """The user edits one of their earlier messages; the bot gets an edited_message update."""
        self._post("/_fake/edits", {"chat_id": chat_id, "message_id": message_id, "text": text})

    def ask(self, chat_id: int, text: str, *, timeout: float | None = None, **user: str) -> Message:
        """Send a text and return the bot's next message."""
        self.send_text(chat_id, text, **user)
        return self.wait_for_reply(chat_id, timeout)

    # ---- reading the bot's answers -------------------------------------------------------------------

    def messages(self, chat_id: int) -> list[Message]:
        """Every message the bot sent to the chat so far."""
        return self._bot_messages(chat_id, after=0, timeout=0)

    def wait_for_reply(self, chat_id: int, timeout: float | None = None) -> Message:
        """The bot's next message to the chat not returned before; NoReply if none comes within timeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                after = self._seen.get(chat_id, 0)
            remaining = deadline - time.monotonic()
            found = self._bot_messages(chat_id, after=after, timeout=max(remaining, 0))
            if found:
                with self._lock:
                    self._seen[chat_id] = found[0].message_id
                return found[0]
            if remaining <= 0:
                raise NoReply(f"the bot sent nothing to chat {chat_id} within {timeout:g} s")

    def skip_replies(self, chat_id: int) -> None:
        """Forget the bot's messages so far: the next wait_for_reply returns only newer ones."""
        existing = self.messages(chat_id)
        if existing:
            with self._lock:
                self._seen[chat_id] = existing[-1].message_id

    # ---- controlling the fake ------------------------------------------------------------------------

    def rate_limit(self, chat_id: int | None, count: int, retry_after: int, method: str = "sendMessage") -> None:
        """The next `count` calls of `method` for the chat (any chat if None) answer 429 retry_after."""
        self._post("/_fake/rate-limits",
                   {"chat_id": chat_id, "count": count, "retry_after": retry_after, "method": method})

    def state(self) -> dict[str, Any]:
        """Pending updates, whether a bot is polling, known chats, calls per Bot API method and the bot's
        registered commands."""
        return self._get("/_fake/state")

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Wait for the server to answer its health check (after starting it as a process)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fake Telegram at {self.api_url} did not answer within {timeout:g} s")
            time.sleep(0.05)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FakeTelegramClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- HTTP --------------------------------------------------------------------------------------

    def _send(self, chat_id: int, content: dict[str, Any], first_name: str | None = None,
              last_name: str | None = None, username: str | None = None) -> int:
        body = {"chat_id": chat_id, "first_name": first_name, "last_name": last_name, "username": username,
                **content}
        update = self._post("/_fake/messages", body)
        return update["message"]["message_id"]

    def _bot_messages(self, chat_id: int, after: int, timeout: float) -> list[Message]:
        data = self._get(f"/_fake/chats/{chat_id}/bot-messages", params={"after": after, "timeout": timeout})
        return [Message.from_json(m) for m in data["messages"]]

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(self._http.post(path, json=body))

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._check(self._http.get(path, params=params))

    @staticmethod
    def _check(response: httpx.Response) -> Any:
        if response.status_code != 200:
            try:
                detail = response.json().get("error", response.text)
            except ValueError:
                detail = response.text
            raise ValueError(f"fake Telegram refused the request: {detail}")
        return response.json()
