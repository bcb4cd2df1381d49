"""The survey conversation: /survey -> (which survey) -> name -> company -> location -> answer -> /y or /n.

This is the talk's ConversationHandler (slide 33) with its gaps filled: surveys come from the catalog instead
of a hard-coded regex, every state re-asks on unusable input instead of ignoring it, a respondent answers each
survey once, and /y reports "sent" only when Kafka acknowledged the entry (or says it is safely queued).
"""

from __future__ import annotations

import logging

from telegram import ReplyKeyboardRemove, Update
from telegram.ext import BaseHandler, CommandHandler, ContextTypes, ConversationHandler, MessageHandler, filters

from ..surveys import Survey, match_typed
from . import texts
from .prompts import ask, reask
from .services import services

log = logging.getLogger(__name__)

CHOOSE, NAME, COMPANY, LOCATION, RESPONSE, CONFIRM = range(6)
END = ConversationHandler.END

# Only new messages: an edit is not an answer (edits are answered by `edited`).
NEW_TEXT = filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND


def command(name: str | list[str], callback) -> CommandHandler:
    """A command handler that ignores edited messages (an edit into "/y" must not confirm anything)."""
    return CommandHandler(name, callback, filters=filters.UpdateType.MESSAGE)


def _user_id(update: Update) -> str:
    # As in the talk, a respondent is identified by their chat id.
    return str(update.effective_chat.id)


def _current_survey(context: ContextTypes.DEFAULT_TYPE) -> Survey | None:
    survey = services(context).catalog.get(context.user_data.get("survey_id", ""))
    return survey if survey is not None and survey.enabled else None


def _labels(surveys: list[Survey]) -> dict[str, str]:
    """Keyboard label -> survey id: the summary, with the id added where summaries repeat."""
    summaries = [s.summary for s in surveys]
    return {
        (s.summary if summaries.count(s.summary) == 1 else f"{s.summary} ({s.survey_id})"): s.survey_id
        for s in surveys
    }


async def survey_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    svc = services(context)
    context.user_data.clear()
    if not await svc.caught_up():
        await update.message.reply_text(texts.STARTING)
        return END
    open_surveys = svc.catalog.enabled()
    if not open_surveys:
        await update.message.reply_text(texts.NO_SURVEY, reply_markup=ReplyKeyboardRemove())
        return END
    user_id = _user_id(update)
    unanswered = [s for s in open_surveys if not svc.ledger.has_answered(s.survey_id, user_id)]
    if not unanswered:
        svc.counters.add("refused_repeat")
        text = texts.already_answered(open_surveys[0].summary) if len(open_surveys) == 1 else texts.ALL_ANSWERED
        await update.message.reply_text(text, reply_markup=ReplyKeyboardRemove())
        return END
    svc.counters.add("conversations")
    if len(unanswered) == 1:
        return await _begin(update, context, unanswered[0])
    labels = _labels(unanswered)
    context.user_data["choices"] = labels
    return await ask(update, context, CHOOSE, texts.CHOOSE_SURVEY, [[label] for label in labels])


async def choose(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int | None:
    choices = context.user_data.get("choices", {})
    survey_id = choices.get(match_typed(update.message.text, choices))
    if survey_id is None:
        return await reask(update, context, texts.CHOOSE_FROM_KEYBOARD)
    survey = services(context).catalog.get(survey_id)
    if survey is None or not survey.enabled:
        await update.message.reply_text(texts.SURVEY_GONE, reply_markup=ReplyKeyboardRemove())
        return END
    return await _begin(update, context, survey)


async def _begin(update: Update, context: ContextTypes.DEFAULT_TYPE, survey: Survey) -> int:
    context.user_data["survey_id"] = survey.survey_id
    return await ask(update, context, NAME, texts.ask_name(survey.question), prompt=texts.ASK_NAME)


async def _field_value(update: Update, context: ContextTypes.DEFAULT_TYPE, field: str) -> str | None:
    """The stripped text of a free-text answer, or None after re-asking if it is empty or too long."""
    text = update.message.text.strip()
    limit = services(context).max_field_length
    if not text:
        await reask(update, context, texts.field_empty(field))
        return None
    if len(text) > limit:
        await reask(update, context, texts.field_too_long(field, limit))
        return None
    return text


async def name(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int | None:
    value = await _field_value(update, context, "name")
    if value is None:
        return None
    context.user_data["name"] = value
    return await ask(update, context, COMPANY, texts.ASK_COMPANY)


async def company(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int | None:
    value = await _field_value(update, context, "company")
    if value is None:
        return None
    context.user_data["company"] = value
    return await ask(update, context, LOCATION, texts.ASK_LOCATION)


async def skip_company(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    context.user_data["company"] = None
    return await ask(update, context, LOCATION, texts.ASK_LOCATION)


async def location(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int | None:
    value = await _field_value(update, context, "location")
    if value is None:
        return None
    context.user_data["location"] = value
    return await _ask_response(update, context)


async def skip_location(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    context.user_data["location"] = None
    return await _ask_response(update, context)


async def _ask_response(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    survey = _current_survey(context)
    if survey is None:
        return await _survey_gone(update, context)
    return await ask(update, context, RESPONSE, survey.question, [[option] for option in survey.options])


async def response(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int | None:
    survey = _current_survey(context)
    if survey is None:
        return await _survey_gone(update, context)
    answer = match_typed(update.message.text, survey.options)
    if answer is None:
        return await reask(update, context, texts.PICK_OPTION)
    context.user_data["response"] = answer
    data = context.user_data
    summary = texts.summary(survey.summary, data["name"], data["company"], data["location"], answer)
    return await ask(update, context, CONFIRM, summary, [["/y", "/n"]], prompt=texts.CONFIRM_KEYS)


async def confirm(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    svc = services(context)
    survey = _current_survey(context)
    if survey is None:
        return await _survey_gone(update, context)
    user_id = _user_id(update)
    if svc.ledger.has_answered(survey.survey_id, user_id):
        svc.counters.add("refused_repeat")
        await update.message.reply_text(texts.already_answered(survey.summary), reply_markup=ReplyKeyboardRemove())
        return END
    data = context.user_data
    entry = {
        "survey_id": survey.survey_id,
        "user_id": user_id,
        "name": data["name"],
        "company": data["company"],
        "location": data["location"],
        "response": data["response"],
    }
    sent = await svc.deliver(entry)
    svc.ledger.record(survey.survey_id, user_id, entry["response"])
    svc.counters.add("confirmed")
    svc.counters.add("sent" if sent else "saved_to_outbox")
    log.info("survey %s: entry confirmed (%s)", survey.survey_id, "sent" if sent else "in the outbox")
    await update.message.reply_text(texts.SENT if sent else texts.SAVED, reply_markup=ReplyKeyboardRemove())
    data.clear()
    return END


async def discard(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    services(context).counters.add("cancelled")
    context.user_data.clear()
    await update.message.reply_text(texts.DISCARDED, reply_markup=ReplyKeyboardRemove())
    return END


async def cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    services(context).counters.add("cancelled")
    context.user_data.clear()
    await update.message.reply_text(texts.CANCELLED, reply_markup=ReplyKeyboardRemove())
    return END


async def _survey_gone(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    context.user_data.clear()
    await update.effective_chat.send_message(texts.SURVEY_GONE, reply_markup=ReplyKeyboardRemove())
    return END


# ---- answers that fit no state: say why, ask again ----------------------------------------------------


async def not_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    return await reask(update, context, texts.NOT_TEXT)


async def edited(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    return await reask(update, context, texts.EDIT_IGNORED)


async def help_in_conversation(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.message.reply_text(texts.HELP)
    return await reask(update, context)


async def unexpected_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    return await reask(update, context, texts.not_expected(update.message.text.split()[0]))


async def confirm_keys(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    return await reask(update, context)


def in_conversation_fallbacks() -> list[BaseHandler]:
    """What every state of a conversation answers besides its own handlers (shared with /newsurvey)."""
    return [
        command("cancel", cancel),
        MessageHandler(filters.UpdateType.EDITED_MESSAGE, edited),
        command("help", help_in_conversation),
        MessageHandler(filters.UpdateType.MESSAGE & filters.COMMAND, unexpected_command),
        MessageHandler(filters.UpdateType.MESSAGE & ~filters.TEXT, not_text),
    ]


def survey_conversation() -> ConversationHandler:
    return ConversationHandler(
        entry_points=[command("survey", survey_command)],
        states={
            CHOOSE: [MessageHandler(NEW_TEXT, choose)],
            NAME: [MessageHandler(NEW_TEXT, name)],
            COMPANY: [command("skip", skip_company), MessageHandler(NEW_TEXT, company)],
            LOCATION: [command("skip", skip_location), MessageHandler(NEW_TEXT, location)],
            RESPONSE: [MessageHandler(NEW_TEXT, response)],
            CONFIRM: [command("y", confirm), command("n", discard), MessageHandler(NEW_TEXT, confirm_keys)],
        },
        fallbacks=in_conversation_fallbacks(),
        name="survey",
    )
