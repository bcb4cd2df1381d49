"""A local fake of the Telegram Bot API, so the survey bot runs and is tested without Telegram.

The bot reaches it through python-telegram-bot's own HTTP client (`base_url`), so the real client code runs;
programs act as users through `FakeTelegramClient`.
"""

from .api import create_app
from .client import FakeTelegramClient, Message, NoReply
from .server import FakeTelegramServer

__all__ = ["FakeTelegramClient", "FakeTelegramServer", "Message", "NoReply", "create_app"]
