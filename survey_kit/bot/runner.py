"""Running the whole bot: its Kafka side (tables, delivery, alerts) and the Telegram side, in one object.

    runner = BotRunner().start()   # config from survey-kit.yaml / SURVEY_KIT_*, Kafka from `survey-kit up`
    runner.status()                # running?, counts, outbox size, surveys, errors
    runner.stop()

It runs in a background thread with its own event loop, so it works in a script, in a test, and inside a
running Jupyter kernel alike. With no Telegram token configured it talks to the stack's fake Telegram.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from telegram.error import InvalidToken
from telegram.ext import Application

from ..cluster import Cluster, connect
from ..config import ConfigError, Settings
from ..stack.state import home
from .alerts import AlertLog, FinalResultsAlerter
from .app import BotStartError, BotThread, build_application
from .catalog import KafkaSurveys, SurveyCatalog
from .delivery import EntryDelivery
from .follow import TopicFollower
from .ledger import EntryLedger
from .outbox import Outbox
from .results import ResultsBoard
from .services import BotServices
from .subscribers import Subscribers

log = logging.getLogger(__name__)

FAKE_TOKEN = "1:survey-kit-fake-telegram"  # the fake accepts any token
STATE_DB = "bot.sqlite"
OUTBOX_DB = "outbox.sqlite"


# Loggers that write request URLs, which hold the bot token.
_URL_LOGGERS = ("telegram.Bot", "telegram.ext.ExtBot", "httpx")


class _RedactToken(logging.Filter):
    """Replaces the bot token in log records with <token>."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "<token>"), None
        return True


def _keep_token_out_of_logs(token: str) -> None:
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactToken) and f.token == token for f in logger.filters):
            logger.addFilter(_RedactToken(token))
    # httpx logs every request URL at INFO: not worth an INFO line per poll.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def default_data_dir() -> Path:
    return home() / "bot"


class BotRunner:
    """The survey bot, started and stopped from Python.

    `cluster` defaults to `connect(settings)`; `data_dir` (outbox, subscribers, alert log) to
    ~/.survey-kit/bot; `api_url` to the fake Telegram of the stack when no token is configured.
    """

    def __init__(self, settings: Settings | None = None, *, cluster: Cluster | None = None,
                 data_dir: str | Path | None = None, api_url: str | None = None, alerts: bool = True,
                 ack_wait: float = 3.0, delivery_timeout: float = 120.0):
        self.cluster = cluster or connect(settings)
        self.settings = self.cluster.settings
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        token = self.settings.telegram.token
        if token is not None:
            self._token, self.api_url = token.get_secret_value(), api_url
        else:
            self._token, self.api_url = FAKE_TOKEN, api_url or self.cluster.telegram_api_url
            if not self.api_url:
                raise ConfigError(
                    "telegram.token is not set and no fake Telegram is running: start the stack with "
                    "`survey-kit up`, or set telegram.token (SURVEY_KIT_TELEGRAM_TOKEN) to use Telegram"
                )
        self.alerts = alerts
        self.ack_wait = ack_wait
        self.delivery_timeout = delivery_timeout
        self.catalog = SurveyCatalog()
        self.ledger = EntryLedger()
        self.results = ResultsBoard(self.ledger)
        self.outbox: Outbox | None = None
        self.delivery: EntryDelivery | None = None
        self.alerter: FinalResultsAlerter | None = None
        self.services: BotServices | None = None
        self.app: Application | None = None
        self._followers: list[TopicFollower] = []
        self._thread: BotThread | None = None
        self._stores: list[Any] = []
        self._outbox_left = 0

    @property
    def telegram(self) -> str:
        """Where the bot talks to (never the token)."""
        return f"fake Telegram at {self.api_url}" if self.api_url else "api.telegram.org"

    def start(self, timeout: float = 30.0) -> BotRunner:
        """Start following the topics, delivering the outbox, polling Telegram and alerting."""
        if self._thread is not None:
            raise RuntimeError("the bot is already running; stop() it first")
        _keep_token_out_of_logs(self._token)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.data_dir / OUTBOX_DB)
        subscribers = Subscribers(self.data_dir / STATE_DB)
        alert_log = AlertLog(self.data_dir / STATE_DB)
        self._stores = [self.outbox, subscribers, alert_log]
        self._followers = [
            self.catalog.follow(self.cluster),
            self.ledger.follow(self.cluster),
            self.results.follow(self.cluster),
        ]
        self.delivery = EntryDelivery(self.cluster, self.outbox, ack_wait=self.ack_wait,
                                      delivery_timeout=self.delivery_timeout).start()
        admins = frozenset(self.settings.telegram.admin_chat_ids)
        self.services = BotServices(
            catalog=self.catalog,
            ledger=self.ledger,
            deliver=self.delivery.deliver,
            subscribers=subscribers,
            results=self.results,
            surveys_admin=KafkaSurveys(self.cluster, self.catalog),
            admin_chat_ids=admins,
            max_field_length=self.settings.telegram.max_field_length,
        )
        background = []
        if self.alerts:
            self.alerter = FinalResultsAlerter(self.cluster, self.catalog, subscribers, alert_log, admins)
            background.append(lambda app, stopping: self.alerter.run(app.bot, stopping))
        base_url = f"{self.api_url}/bot" if self.api_url else None
        self.app = build_application(self.services, self._token, base_url=base_url)
        try:
            self._thread = BotThread(self.app, background).start(timeout)
        except BotStartError as exc:
            self._stop_kafka_side()
            if isinstance(exc.__cause__, InvalidToken):
                hint = ""
            elif self.api_url:
                hint = "; `survey-kit up` starts the fake Telegram (`survey-kit status` shows whether it runs)"
            else:
                hint = "; check the network connection"
            raise BotStartError(f"the bot did not start ({self.telegram}): {exc}{hint}") from exc.__cause__
        except Exception:
            self._stop_kafka_side()
            raise
        log.info("survey bot running (%s)", self.telegram)
        return self

    def wait_until_ready(self, timeout: float = 30.0) -> bool:
        """Wait until the surveys and the answers so far have been read from Kafka."""
        deadline = time.monotonic() + timeout
        for follower in self._followers[:2]:
            if not follower.caught_up.wait(max(deadline - time.monotonic(), 0)):
                return False
        return True

    def stop(self) -> None:
        """Stop polling, alerting and delivering; undelivered entries stay in the outbox for next time."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self._stop_kafka_side()

    def _stop_kafka_side(self) -> None:
        if self.delivery is not None:
            self.delivery.stop()
        for follower in self._followers:
            follower.stop()
        self._followers = []
        if self._stores and self.outbox is not None:
            self._outbox_left = len(self.outbox)  # status() still tells after the stores are closed
        for store in self._stores:
            store.close()
        self._stores = []

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.running

    def status(self) -> dict[str, Any]:
        """Whether it runs, what it did (conversations, entries sent, outbox size) and any Kafka errors."""
        counters = self.services.counters.as_dict() if self.services else {}
        errors = {f.topic: f.error for f in self._followers if f.error}
        outbox = len(self.outbox) if self.outbox is not None and self._stores else self._outbox_left
        if self.delivery is not None and self.delivery.last_error and outbox:
            errors["delivery"] = self.delivery.last_error
        if self.alerter and self.alerter.error:
            errors["alerts"] = self.alerter.error
        return {
            "running": self.running,
            "telegram": self.telegram,
            "bootstrap_servers": self.cluster.bootstrap_servers,
            "ready": all(f.caught_up.is_set() for f in self._followers[:2]) if self._followers else False,
            "surveys_open": [s.survey_id for s in self.catalog.enabled()],
            **counters,
            "delivered": self.delivery.delivered if self.delivery else 0,
            "outbox": outbox,
            "alerts_sent": self.alerter.messages_sent if self.alerter else 0,
            "errors": errors,
        }

    def __enter__(self) -> BotRunner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<BotRunner {'running' if self.running else 'stopped'} on {self.telegram}>"
