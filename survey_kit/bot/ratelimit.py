"""Honouring Telegram's flood control: a request answered 429 is sent again after `retry_after`.

Plugged into python-telegram-bot as its rate limiter (`ApplicationBuilder.rate_limiter`), so every reply of
the bot gets through a short 429 instead of being lost (which would leave a respondent without an answer,
e.g. without the "sent" after /y). Long waits are not absorbed: the error goes to the caller.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter

log = logging.getLogger(__name__)


def retry_after_seconds(exc: RetryAfter) -> float:
    # PTB 22 holds retry_after as a timedelta (its public attribute is an int, deprecated, until v23).
    retry_after = getattr(exc, "_retry_after", None) or exc.retry_after
    return retry_after.total_seconds() if hasattr(retry_after, "total_seconds") else float(retry_after)


class RetryAfterWaits(BaseRateLimiter[None]):
    """Retries a request up to `max_retries` times when Telegram asks to wait at most `max_wait` seconds."""

    def __init__(self, max_retries: int = 3, max_wait: float = 30.0):
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.waits = 0

    async def initialize(self) -> None:
        pass  # nothing to set up: no shared state besides counters

    async def shutdown(self) -> None:
        pass

    async def process_request(self, callback, args, kwargs, endpoint: str, data: dict[str, Any],
                              rate_limit_args: None) -> Any:
        attempt = 0
        while True:
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as exc:
                delay = retry_after_seconds(exc)
                attempt += 1
                if attempt > self.max_retries or delay > self.max_wait:
                    raise
                self.waits += 1
                log.info("Telegram asks to wait %.0f s before %s; waiting", delay, endpoint)
                await asyncio.sleep(delay)
