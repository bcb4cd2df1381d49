"""What the bot says. Kept in one place so the conversation reads as a script and tests can quote it."""

from __future__ import annotations

COMMANDS = [
    ("survey", "answer a survey"),
    ("results", "see the live results of a survey"),
    ("subscribe", "get each survey's final results when it closes"),
    ("unsubscribe", "stop getting final results"),
    ("cancel", "stop answering the current survey"),
    ("help", "show this list"),
]
ADMIN_COMMANDS = [
    ("newsurvey", "create a survey (admins)"),
    ("closesurvey", "stop offering a survey: /closesurvey ID (admins)"),
]

COMMAND_LIST = "\n".join(f"/{name} - {description}" for name, description in COMMANDS + ADMIN_COMMANDS)

WELCOME = "Hi! I run short surveys and share their results.\n\n" + COMMAND_LIST
HELP = "Here is what I can do:\n\n" + COMMAND_LIST


def unknown_command(command: str) -> str:
    return f"Sorry, I don't know {command}.\n\n{COMMAND_LIST}"


UNKNOWN_TEXT = "Send /survey to answer a survey, or /help to see what I can do."

def starting(command: str) -> str:
    return f"I am still starting up. Please send /{command} again in a moment."


STARTING = starting("survey")
STILL_READING_SURVEYS = "I am still reading the existing surveys. Please send the id again in a moment."
NO_SURVEY = "There is no open survey right now. Please try again later."
CHOOSE_SURVEY = "Which survey would you like to answer?"
CHOOSE_FROM_KEYBOARD = "Please pick one of the surveys on the keyboard."


def already_answered(summary: str) -> str:
    return f"You have already answered the survey \"{summary}\". Each person answers a survey once. Thank you!"


ALL_ANSWERED = "You have already answered every open survey. Thank you!"


NAME_QUESTION = "First, what is your name? (Send /cancel to stop at any time.)"


def ask_name(question: str) -> str:
    return f"Survey: {question}\n\n{NAME_QUESTION}"


ASK_NAME = "What is your name?"
ASK_COMPANY = "Which company do you work for? Send /skip to leave it out."
ASK_LOCATION = "Where are you based? Send /skip to leave it out."
PICK_OPTION = "Please pick one of the options on the keyboard."
CONFIRM_KEYS = "Send /y to submit your answer or /n to discard it."


def field_empty(field: str) -> str:
    return f"Your {field} can't be empty."


def field_too_long(field: str, limit: int) -> str:
    return f"Your {field} is too long: at most {limit} characters, please."


NOT_TEXT = "I can only read text messages."
EDIT_IGNORED = "I don't read edited messages; please send a new message instead."


def not_expected(command: str) -> str:
    return f"{command} is not expected here."


def summary(survey_summary: str, name: str, company: str | None, location: str | None, response: str) -> str:
    return (
        f"Please check your answer to \"{survey_summary}\":\n"
        f"Name: {name}\n"
        f"Company: {company or '(skipped)'}\n"
        f"Location: {location or '(skipped)'}\n"
        f"Answer: {response}\n\n" + CONFIRM_KEYS
    )


SENT = "Thank you! Your answer was sent."
SAVED = (
    "Thank you! Kafka is not reachable right now, so your answer is saved here "
    "and will be delivered as soon as it is."
)
DISCARDED = "Okay, your answer was discarded. Send /survey to start again."
CANCELLED = "Okay, cancelled. Send /survey to start again."
NOTHING_TO_CANCEL = "There is nothing to cancel. Send /survey to answer a survey."
SURVEY_GONE = "Sorry, this survey was closed in the meantime; your answer was not sent."

SUBSCRIBED = "Subscribed: you will get each survey's final results when its window closes."
ALREADY_SUBSCRIBED = "You are already subscribed."
UNSUBSCRIBED = "Unsubscribed: you will no longer get final results."
NOT_SUBSCRIBED = "You were not subscribed."

NOT_ALLOWED = "Sorry, only the survey admins can do that."
NEW_ASK_ID = "New survey. Send its id (for example: pie-2026). Send /cancel to stop."
NEW_ASK_QUESTION = "Send the question."
NEW_ASK_SUMMARY = "Send a short summary (a title for results)."
NEW_ASK_OPTIONS = "Send the options, one per line."


def new_survey_preview(survey_id: str, question: str, summary_text: str, options: list[str]) -> str:
    lines = "\n".join(f"- {option}" for option in options)
    return (
        f"Survey {survey_id}: {question}\nSummary: {summary_text}\nOptions:\n{lines}\n\n"
        "Send /y to create it or /n to discard it."
    )


def survey_created(survey_id: str) -> str:
    return f"Survey {survey_id} is created and open."


def survey_not_created(reason: str) -> str:
    return f"The survey was not created: {reason}"


def survey_closed(survey_id: str) -> str:
    return f"Survey {survey_id} is closed: it is no longer offered."


CLOSE_USAGE = "Usage: /closesurvey ID (the id of the survey to close)."


def no_such_survey(asked: str, surveys=()) -> str:
    """`asked` names no survey; `surveys` are those there are, listed as the id to send and the summary."""
    known = ", ".join(f"{s.survey_id} ({s.summary})" for s in surveys)
    return f"There is no survey \"{asked}\"." + (f" The surveys are: {known}." if known else "")


ERROR = "Sorry, something went wrong on my side. Please try again."
