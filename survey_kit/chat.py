"""Take the survey yourself, in the notebook: a Telegram chat with the bot, on the local fake Telegram.

Workshop attendees have no Telegram for the bot: on the embedded stack it talks to the fake Telegram
(`survey_kit.faketelegram`), and this widget is one of its users, as a phone would be one of Telegram's:

>>> chat = ChatView(cluster.telegram_api_url, first_name="Ada")
>>> chat                    # type into the box (Enter sends), or press the buttons of the bot's keyboard
>>> chat.send("/survey")    # the same from code: the bot's replies (faketelegram Messages)

A real Telegram bot token means real Telegram users instead: there is no fake to chat through then.
"""

from __future__ import annotations

import html
import random

import httpx
import ipywidgets as widgets
from IPython.display import display

from .faketelegram import FakeTelegramClient, Message, NoReply

# a reply may come in more than one message: after the first, this long for another
_MORE_REPLIES_S = 0.3


class ChatView:
    """One user's chat with the survey bot: the transcript, a text box, and the bot's reply keyboard as buttons.

    `send(text)` sends as that user and waits (up to `reply_wait_s`) for the bot's answer, which it shows
    and returns. Each view is a new user (its own chat id) unless `chat_id` says which.
    """

    def __init__(self, telegram_api_url: str | None, first_name: str = "You", chat_id: int | None = None,
                 reply_wait_s: float = 10.0):
        if not telegram_api_url:
            raise ValueError("no fake Telegram to chat through: the embedded stack runs one (`survey-kit up`); "
                             "with a real bot token, chat with the bot in Telegram itself")
        self.telegram_api_url = telegram_api_url
        self.first_name = first_name
        # far from the simulated respondents' ids (10**9 to 10**12), so no simulated person shares the chat
        self.chat_id = chat_id if chat_id is not None else random.SystemRandom().randrange(10**12, 10**13)
        self.reply_wait_s = reply_wait_s
        self.transcript: list[tuple[str, str]] = []  # (who, text): "you" or "bot"
        self._client = FakeTelegramClient(telegram_api_url, timeout=reply_wait_s)

        self.history = widgets.HTML()
        self.text_box = widgets.Text(placeholder="a message to the bot, e.g. /survey", continuous_update=False,
                                     layout=widgets.Layout(width="28em"))
        self.send_button = widgets.Button(description="send", icon="paper-plane")
        self.keyboard = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.status = widgets.HTML()
        # continuous_update=False: the value changes on Enter (or on leaving the box), not per key
        self.text_box.observe(lambda change: self._send_from_box(), names="value")
        self.send_button.on_click(lambda button: self._send_from_box())
        self.widget = widgets.VBox([self.history, self.keyboard, widgets.HBox([self.text_box, self.send_button]), self.status])
        self._render()

    def send(self, text: str) -> list[Message]:
        """Send `text` to the bot as this chat's user; the bot's replies (none if it did not answer in time).

        Raises ConnectionError if the fake Telegram does not answer.
        """
        try:
            self._client.send_text(self.chat_id, text, first_name=self.first_name)
        except httpx.TransportError as exc:
            raise ConnectionError(f"cannot reach the fake Telegram at {self.telegram_api_url} ({exc}): "
                                  "is the stack running? (`survey-kit status`)") from None
        self.transcript.append(("you", text))
        replies = []
        try:
            replies.append(self._client.wait_for_reply(self.chat_id, self.reply_wait_s))
            while True:
                replies.append(self._client.wait_for_reply(self.chat_id, _MORE_REPLIES_S))
        except NoReply:
            pass
        self.transcript += [("bot", reply.text) for reply in replies]
        self.status.value = "" if replies else (
            f"the bot did not answer within {self.reply_wait_s:g} s: is it running? (`bot.status()` in the "
            "notebook that started it, or `survey-kit bot`)")
        keyboards = [reply for reply in replies if reply.keyboard is not None or reply.removes_keyboard]
        if keyboards:
            self._show_keyboard(keyboards[-1].options)
        self._render()
        return replies

    def close(self) -> None:
        self._client.close()

    def _send_from_box(self) -> None:
        text = self.text_box.value
        if not text:
            return  # the box was just cleared (that changes its value too)
        self.text_box.value = ""
        self._send_from_widget(text)

    def _send_from_widget(self, text: str) -> None:
        # a button's handler has nowhere to raise to: the status line says what went wrong
        try:
            self.send(text)
        except ConnectionError as exc:
            self.status.value = f"<b>not sent</b>: {html.escape(str(exc))}"

    def _show_keyboard(self, options: list[str]) -> None:
        buttons = []
        for option in options:
            button = widgets.Button(description=option, layout=widgets.Layout(width="auto"))
            button.on_click(lambda _, option=option: self._send_from_widget(option))
            buttons.append(button)
        self.keyboard.children = buttons

    def _render(self) -> None:
        lines = [f"<div style='text-align:{'right' if who == 'you' else 'left'}'><b>{who}</b>: "
                 f"{html.escape(text).replace(chr(10), '<br>')}</div>" for who, text in self.transcript]
        self.history.value = "".join(lines) or f"<i>a chat with the survey bot, as {html.escape(self.first_name)}: send /survey to begin</i>"

    def _ipython_display_(self) -> None:
        display(self.widget)
