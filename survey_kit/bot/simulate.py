"""Simulated respondents: complete, real conversations with the running bot over the fake Telegram.

    report = simulate("http://127.0.0.1:8082", respondents=200, answers={"Apple Pie": 0.4})
    report["confirmed"], report["cancelled"]

Each respondent is a new chat that sends /survey and answers like a person would: it sometimes skips the
company or location, sometimes mistypes (a sticker instead of a name, an answer that is not an option, a
blank name) and is asked again, and sometimes gives up (/cancel on the way, /n at the end). Every reply of
the bot is checked against what it should have said; a respondent that gets anything else counts as failed.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..faketelegram import FakeTelegramClient, Message, NoReply
from . import texts

FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Linus"]
COMPANIES = ["Confluent", "Acme", "Initech", "Globex", "Umbrella", "Hooli"]
CITIES = ["Berlin", "Austin", "London", "Lagos", "Tokyo", "Lima", "Pune"]


class UnexpectedReply(Exception):
    """The bot said something other than the conversation calls for."""


def parse_answers(text: str) -> dict[str, float]:
    """'Apple Pie=0.4,Pecan Pie=0.2' -> {'Apple Pie': 0.4, 'Pecan Pie': 0.2}; options left out share the rest."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        option, sep, value = part.rpartition("=")
        if not sep or not option.strip():
            raise ValueError(f"--answers: {part!r} is not OPTION=SHARE (e.g. \"Apple Pie=0.4\")")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"--answers: the share of {option.strip()!r} is not a number: {value!r}") from None
        if not 0 <= share <= 1:
            raise ValueError(f"--answers: the share of {option.strip()!r} must be between 0 and 1, not {share}")
        weights[option.strip()] = share
    if sum(weights.values()) > 1 + 1e-9:
        raise ValueError(f"--answers: the shares add up to {sum(weights.values()):g}, more than 1")
    return weights


def pick_answer(rng: random.Random, options: list[str], answers: dict[str, float]) -> str:
    unknown = set(answers) - set(options)
    if unknown:
        raise ValueError(f"--answers names {sorted(unknown)}, which are not options of the survey: {options}")
    rest = [o for o in options if o not in answers]
    left = max(1.0 - sum(answers.values()), 0.0)
    weights = [answers.get(o, left / len(rest) if rest else 0.0) for o in options]
    if sum(weights) == 0:
        weights = [1.0] * len(options)
    return rng.choices(options, weights)[0]


@dataclass
class Behaviour:
    """How often simulated respondents stray from the straight path (shares between 0 and 1)."""

    cancel: float = 0.1  # gives up with /cancel before the end, or /n at the confirmation
    mistype: float = 0.2  # sends something unusable once, and is asked again
    skip: float = 0.3  # skips the company or the location


class Respondent:
    """One simulated person in one chat."""

    def __init__(self, tg: FakeTelegramClient, chat_id: int, rng: random.Random, behaviour: Behaviour,
                 answers: dict[str, float], survey_label: str | None):
        self.tg = tg
        self.chat_id = chat_id
        self.rng = rng
        self.behaviour = behaviour
        self.answers = answers
        self.survey_label = survey_label
        self.name = rng.choice(FIRST_NAMES)
        self.mistyped = False

    def say(self, text: str) -> Message:
        self.tg.send_text(self.chat_id, text, first_name=self.name)
        return self.tg.wait_for_reply(self.chat_id)

    def expect(self, reply: Message, *wanted: str) -> Message:
        if reply.text not in wanted:
            raise UnexpectedReply(f"chat {self.chat_id}: expected {wanted[0]!r}, got {reply.text!r}")
        return reply

    def chance(self, share: float) -> bool:
        return self.rng.random() < share

    def mistype(self, reply_to_expect: str, how: str) -> None:
        """Send one unusable answer and check that the bot asks again."""
        self.mistyped = True
        if how == "sticker":
            self.tg.send_sticker(self.chat_id, first_name=self.name)
            problem = texts.NOT_TEXT
        elif how == "blank":
            self.tg.send_text(self.chat_id, "   ", first_name=self.name)
            problem = texts.field_empty("name")
        else:
            self.tg.send_text(self.chat_id, "Cherry Pie Deluxe", first_name=self.name)
            problem = texts.PICK_OPTION
        self.expect(self.tg.wait_for_reply(self.chat_id), f"{problem}\n\n{reply_to_expect}")

    def run(self) -> str:
        """Go through the survey; returns the outcome: sent, saved, cancelled, discarded or refused."""
        reply = self.say("/survey")
        if reply.text == texts.CHOOSE_SURVEY:
            label = self.survey_label if self.survey_label in reply.options else reply.options[0]
            reply = self.say(label)
        if reply.text in (texts.NO_SURVEY, texts.STARTING, texts.ALL_ANSWERED) or reply.text.startswith(
                "You have already answered"):
            return "refused"
        if not reply.text.endswith(texts.NAME_QUESTION):
            raise UnexpectedReply(f"chat {self.chat_id}: expected the name question, got {reply.text!r}")
        give_up_at = self.rng.choice(["name", "company", "location", "response", "confirm"]) \
            if self.chance(self.behaviour.cancel) else None
        mistype_at = self.rng.choice(["name", "response"]) if self.chance(self.behaviour.mistype) else None

        if mistype_at == "name":
            self.mistype(texts.ASK_NAME, self.rng.choice(["sticker", "blank"]))
        if give_up_at == "name":
            return self.cancel()
        self.expect(self.say(self.name), texts.ASK_COMPANY)
        if give_up_at == "company":
            return self.cancel()
        company = "/skip" if self.chance(self.behaviour.skip) else self.rng.choice(COMPANIES)
        self.expect(self.say(company), texts.ASK_LOCATION)
        if give_up_at == "location":
            return self.cancel()
        location = "/skip" if self.chance(self.behaviour.skip) else self.rng.choice(CITIES)
        question = self.say(location)
        if not question.options:
            raise UnexpectedReply(f"chat {self.chat_id}: the answer question came without a keyboard")
        if mistype_at == "response":
            self.mistype(question.text, "not an option")
        if give_up_at == "response":
            return self.cancel()
        summary = self.say(pick_answer(self.rng, question.options, self.answers))
        if not summary.text.endswith(texts.CONFIRM_KEYS):
            raise UnexpectedReply(f"chat {self.chat_id}: expected the summary, got {summary.text!r}")
        if give_up_at == "confirm":
            self.expect(self.say("/n"), texts.DISCARDED)
            return "discarded"
        done = self.expect(self.say("/y"), texts.SENT, texts.SAVED)
        return "sent" if done.text == texts.SENT else "saved"

    def cancel(self) -> str:
        self.expect(self.say("/cancel"), texts.CANCELLED)
        return "cancelled"


def simulate(api_url: str, respondents: int, *, survey_label: str | None = None, rate: float | None = None,
             answers: dict[str, float] | None = None, behaviour: Behaviour | None = None,
             seed: int | None = None, workers: int = 16, reply_timeout: float = 30.0,
             progress=None) -> dict:
    """Drive `respondents` simulated people through the bot; returns what happened to them.

    `seed` makes what they do reproducible (answers, mistakes, who gives up), not who they are: each run
    is new people (chat ids). `rate`: new respondents per second (None: as fast as `workers` allow). `survey_label`: the survey to pick
    when the bot offers several (its summary, as on the keyboard). The report has `confirmed` (= sent +
    saved), `sent`, `saved` (kept in the bot's outbox), `cancelled` (/cancel or /n), `refused`, `failed`,
    `mistyped` and `seconds`.
    """
    if respondents < 1:
        raise ValueError(f"--respondents must be at least 1, not {respondents}")
    if rate is not None and rate <= 0:
        raise ValueError(f"--rate must be a positive number of respondents per second, not {rate}")
    rng = random.Random(seed)
    behaviour = behaviour or Behaviour()
    answers = answers or {}
    # New chat ids each run, seed or not: the bot remembers who answered, for good, and the fake Telegram
    # keeps its chats' messages (a workshop run again would read the last run's replies as this one's).
    first_chat = random.SystemRandom().randrange(10**9, 10**12)
    seeds = [rng.random() for _ in range(respondents)]  # drawn up front: respondents run in threads
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()

    def one(index: int) -> None:
        if rate is not None:
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the arrivals, as --rate asks
        person = Respondent(tg, first_chat + index, random.Random(seeds[index]), behaviour, answers, survey_label)
        try:
            outcome = person.run()
        except (UnexpectedReply, NoReply, ValueError) as exc:
            outcome = "failed"
            with lock:
                failures.append(str(exc))
        with lock:
            outcomes[outcome] += 1
            if person.mistyped:
                outcomes["mistyped"] += 1
        if progress is not None:
            progress()

    with FakeTelegramClient(api_url, timeout=reply_timeout) as tg, ThreadPoolExecutor(workers) as pool:
        try:
            # the fake Telegram is expected to be running already: a short look, so that someone who has not
            # started it is told so at once, not after the 10 s a freshly started server is given
            tg.wait_until_ready(timeout=2.0)
        except TimeoutError:
            raise ConnectionError(f"no fake Telegram answers at {api_url}: `survey-kit up` starts the embedded stack's "
                                  "(`survey-kit status` shows whether it runs)") from None
        if not tg.state()["bot_polling"]:
            raise ConnectionError(f"no bot is polling the fake Telegram at {api_url}: start it with "
                                  "`survey-kit bot` (or BotRunner().start() in a notebook)")
        list(pool.map(one, range(respondents)))

    report = {
        "respondents": respondents,
        "confirmed": outcomes["sent"] + outcomes["saved"],
        "sent": outcomes["sent"],
        "saved": outcomes["saved"],
        "cancelled": outcomes["cancelled"] + outcomes["discarded"],
        "refused": outcomes["refused"],
        "failed": outcomes["failed"],
        "mistyped": outcomes["mistyped"],
        "seconds": round(time.monotonic() - started, 2),
    }
    if failures:
        report["failures"] = failures[:10]
    return report
