"""The commands outside a survey conversation: /start, /help, /results, /subscribe, /unsubscribe, and the
answers to anything else (unknown commands, stray texts, edits)."""

from __future__ import annotations

import asyncio

from telegram import ReplyKeyboardRemove, Update
from telegram.ext import BaseHandler, ContextTypes, MessageHandler, filters

from . import texts
from .conversation import command
from .services import services


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.message.reply_text(texts.WELCOME, reply_markup=ReplyKeyboardRemove())


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.message.reply_text(texts.HELP)


async def results(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/results [ID or summary]: the histogram of one survey, or of every open survey."""
    svc = services(context)
    if not await svc.caught_up():
        await update.message.reply_text(texts.starting("results"))
        return
    if context.args:
        asked = " ".join(context.args)
        survey = svc.catalog.named(asked)
        if survey is None:
            await update.message.reply_text(texts.no_such_survey(asked, svc.catalog.all()))
            return
        surveys = [survey]
    else:
        surveys = svc.catalog.enabled()
    if not surveys:
        await update.message.reply_text(texts.NO_SURVEY)
        return
    # right after a start the live results may still be being read: the computed ones would say "no live results"
    await asyncio.to_thread(svc.results.wait_until_read, svc.ready_wait)
    for survey in surveys:
        await update.message.reply_text(svc.results.text(survey))


async def subscribe(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    added = services(context).subscribers.add(update.effective_chat.id)
    await update.message.reply_text(texts.SUBSCRIBED if added else texts.ALREADY_SUBSCRIBED)


async def unsubscribe(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    removed = services(context).subscribers.remove(update.effective_chat.id)
    await update.message.reply_text(texts.UNSUBSCRIBED if removed else texts.NOT_SUBSCRIBED)


async def nothing_to_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.message.reply_text(texts.NOTHING_TO_CANCEL, reply_markup=ReplyKeyboardRemove())


async def unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.message.reply_text(texts.unknown_command(update.message.text.split()[0]))


async def edited_outside(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.edited_message.reply_text(texts.EDIT_IGNORED)


async def stray_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.message.reply_text(texts.UNKNOWN_TEXT)


def standalone_handlers() -> list[BaseHandler]:
    """In order: the first that matches answers; the catch-alls come last."""
    return [
        command("start", start),
        command("help", help_command),
        command("results", results),
        command("subscribe", subscribe),
        command("unsubscribe", unsubscribe),
        command("cancel", nothing_to_cancel),
    ]


def catch_all_handlers() -> list[BaseHandler]:
    return [
        MessageHandler(filters.UpdateType.EDITED_MESSAGE, edited_outside),
        MessageHandler(filters.UpdateType.MESSAGE & filters.COMMAND, unknown_command),
        MessageHandler(filters.UpdateType.MESSAGE, stray_message),
    ]
