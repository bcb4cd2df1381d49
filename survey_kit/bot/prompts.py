"""Asking and re-asking: every question the bot asks is remembered, so a bad answer gets it again.

A conversation state's question (and its reply keyboard) is stored in the user's data when asked; when an
answer is unusable (empty, too long, not an option, a sticker, an edit...) the bot says what was wrong and
asks the same question again, with the same keyboard.
"""

from __future__ import annotations

from telegram import ReplyKeyboardMarkup, ReplyKeyboardRemove, Update
from telegram.ext import ContextTypes

PROMPT_KEY = "prompt"


def keyboard(rows: list[list[str]] | None) -> ReplyKeyboardMarkup | ReplyKeyboardRemove:
    if not rows:
        return ReplyKeyboardRemove()
    return ReplyKeyboardMarkup(rows, one_time_keyboard=True, resize_keyboard=True)


async def ask(update: Update, context: ContextTypes.DEFAULT_TYPE, state: int, text: str,
              rows: list[list[str]] | None = None, prompt: str | None = None) -> int:
    """Send `text` (with a keyboard of `rows`), remember `prompt` (default: text) for re-asking; go to state."""
    context.user_data[PROMPT_KEY] = (prompt or text, rows)
    await update.effective_chat.send_message(text, reply_markup=keyboard(rows))
    return state


async def reask(update: Update, context: ContextTypes.DEFAULT_TYPE, problem: str = "") -> None:
    """Say what was wrong with the answer and ask the current question again (staying in the state)."""
    prompt, rows = context.user_data.get(PROMPT_KEY, ("", None))
    text = f"{problem}\n\n{prompt}".strip()
    await update.effective_chat.send_message(text, reply_markup=keyboard(rows))
    return None
