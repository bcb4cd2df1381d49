"""What the bot's handlers work with, gathered in one object stored in `application.bot_data`.

The handlers know nothing of Kafka: they see a catalog of surveys, a ledger of who answered, a `deliver`
coroutine, the subscribers, the results board and the surveys admin. `runner.py` wires these to Kafka; tests
may wire them to anything with the same methods.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from telegram.ext import ContextTypes

from ..surveys import Survey
from .catalog import SurveyCatalog
from .ledger import EntryLedger
from .subscribers import Subscribers

SERVICES_KEY = "survey_kit.services"


class SurveysAdmin(Protocol):
    """Creates and closes surveys (blocking calls; the handlers run them in a thread)."""

    def create(self, survey: Survey) -> Survey: ...

    def close(self, survey_id: str) -> Survey: ...


class ResultsSource(Protocol):
    def wait_until_read(self, timeout: float) -> bool: ...

    def text(self, survey: Survey) -> str: ...


@dataclass
class Counters:
    """What the bot did since it started (shown by BotRunner.status)."""

    conversations: int = 0
    confirmed: int = 0
    sent: int = 0
    saved_to_outbox: int = 0
    cancelled: int = 0
    refused_repeat: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass
class BotServices:
    catalog: SurveyCatalog
    ledger: EntryLedger
    deliver: Callable[[dict[str, Any]], Awaitable[bool]]  # True: acknowledged by Kafka; False: in the outbox
    subscribers: Subscribers
    results: ResultsSource
    surveys_admin: SurveysAdmin
    admin_chat_ids: frozenset[int] = frozenset()
    max_field_length: int = 100
    ready_wait: float = 10.0  # how long a command waits for the surveys and answers to be read from Kafka
    counters: Counters = field(default_factory=Counters)

    def is_admin(self, chat_id: int) -> bool:
        return chat_id in self.admin_chat_ids

    async def caught_up(self) -> bool:
        """Wait (up to `ready_wait`) until the surveys and who answered them have been read; False if not.

        Until then the bot would tell a user that no survey is open, or let them answer twice.
        """
        deadline = time.monotonic() + self.ready_wait
        for event in (self.catalog.ready, self.ledger.ready):
            if not await asyncio.to_thread(event.wait, max(deadline - time.monotonic(), 0)):
                return False
        return True


def services(context: ContextTypes.DEFAULT_TYPE) -> BotServices:
    return context.application.bot_data[SERVICES_KEY]
