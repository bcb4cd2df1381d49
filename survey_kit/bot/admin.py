"""Admin commands (chat ids from config): /newsurvey, a conversation creating a survey on survey-questions
with the same validation as `survey-kit survey create`, and /closesurvey ID. Others are told "not allowed"."""

from __future__ import annotations

import asyncio

from telegram import ReplyKeyboardRemove, Update
from telegram.ext import ContextTypes, ConversationHandler, MessageHandler

from ..surveys import Survey, SurveyError
from . import texts
from .conversation import NEW_TEXT, command, in_conversation_fallbacks
from .prompts import ask, reask
from .services import services

NEW_ID, NEW_QUESTION, NEW_SUMMARY, NEW_OPTIONS, NEW_CONFIRM = range(10, 15)
END = ConversationHandler.END


async def _refuse(update: Update) -> int:
    await update.message.reply_text(texts.NOT_ALLOWED)
    return END


async def new_survey(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    if not services(context).is_admin(update.effective_chat.id):
        return await _refuse(update)
    context.user_data.clear()
    return await ask(update, context, NEW_ID, texts.NEW_ASK_ID, prompt="Send the survey's id.")


async def new_id(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int | None:
    survey_id = update.message.text.strip()
    if not await services(context).caught_up():
        return await reask(update, context, texts.STILL_READING_SURVEYS)
    if services(context).catalog.get(survey_id) is not None:
        return await reask(update, context, f"Survey {survey_id} already exists; choose another id.")
    context.user_data["new"] = {"survey_id": survey_id}
    return await ask(update, context, NEW_QUESTION, texts.NEW_ASK_QUESTION)


async def new_question(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    context.user_data["new"]["question"] = update.message.text.strip()
    return await ask(update, context, NEW_SUMMARY, texts.NEW_ASK_SUMMARY)


async def new_summary(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    context.user_data["new"]["summary"] = update.message.text.strip()
    return await ask(update, context, NEW_OPTIONS, texts.NEW_ASK_OPTIONS)


async def new_options(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int | None:
    new = context.user_data["new"]
    options = [line.strip() for line in update.message.text.splitlines() if line.strip()]
    try:
        survey = Survey(new["survey_id"], new["question"], new["summary"], options).validate()
    except SurveyError as error:
        return await reask(update, context, f"{error}.")
    context.user_data["survey"] = survey
    preview = texts.new_survey_preview(survey.survey_id, survey.question, survey.summary, survey.options)
    return await ask(update, context, NEW_CONFIRM, preview, [["/y", "/n"]], prompt=texts.CONFIRM_KEYS)


async def new_create(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    survey: Survey = context.user_data.pop("survey")
    try:
        await asyncio.to_thread(services(context).surveys_admin.create, survey)
        text = texts.survey_created(survey.survey_id)
    except (SurveyError, ConnectionError) as error:
        text = texts.survey_not_created(str(error))
    context.user_data.clear()
    await update.message.reply_text(text, reply_markup=ReplyKeyboardRemove())
    return END


async def new_discard(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    context.user_data.clear()
    await update.message.reply_text(texts.CANCELLED, reply_markup=ReplyKeyboardRemove())
    return END


async def new_confirm_keys(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    return await reask(update, context)


def new_survey_conversation() -> ConversationHandler:
    return ConversationHandler(
        entry_points=[command("newsurvey", new_survey)],
        states={
            NEW_ID: [MessageHandler(NEW_TEXT, new_id)],
            NEW_QUESTION: [MessageHandler(NEW_TEXT, new_question)],
            NEW_SUMMARY: [MessageHandler(NEW_TEXT, new_summary)],
            NEW_OPTIONS: [MessageHandler(NEW_TEXT, new_options)],
            NEW_CONFIRM: [command("y", new_create), command("n", new_discard),
                          MessageHandler(NEW_TEXT, new_confirm_keys)],
        },
        fallbacks=in_conversation_fallbacks(),
        name="newsurvey",
    )


async def close_survey(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    svc = services(context)
    if not svc.is_admin(update.effective_chat.id):
        await _refuse(update)
        return
    if len(context.args) != 1:
        await update.message.reply_text(texts.CLOSE_USAGE)
        return
    survey_id = context.args[0]
    if not await svc.caught_up():
        await update.message.reply_text(texts.starting("closesurvey"))
        return
    if svc.catalog.get(survey_id) is None:
        await update.message.reply_text(texts.no_such_survey(survey_id, svc.catalog.all()))
        return
    try:
        await asyncio.to_thread(svc.surveys_admin.close, survey_id)
        text = texts.survey_closed(survey_id)
    except (SurveyError, ConnectionError) as error:
        text = f"Survey {survey_id} was not closed: {error}"
    await update.message.reply_text(text)


def admin_handlers():
    return [command("closesurvey", close_survey)]
