"""Connect to wherever the data lives: a real Kafka cluster by configuration, else the embedded stack.

>>> cluster = connect()                      # survey-kit.yaml / SURVEY_KIT_* or the stack of `up`
>>> producer = Producer(cluster.producer_config())
>>> registry = cluster.registry()            # a confluent-kafka SchemaRegistryClient

Every Kafka client in survey-kit takes its configuration from a :class:`Cluster`, so the same code
runs on the embedded stack and on Confluent Cloud.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from .config import Settings, load_settings
from .stack import EmbeddedStack, StackError, running_stack

# Tansu makes a consumer-group join wait about session.timeout.ms / 2 (see the broker notes);
# librdkafka's 45 s default would stall every group consumer for 23 s.
_EMBEDDED_CONSUMER_DEFAULTS = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
# Tansu drops idle connections after ~10 s; librdkafka would log each drop on stderr.
_EMBEDDED_CLIENT_DEFAULTS = {"log.connection.close": "false"}


@dataclass(frozen=True)
class Cluster:
    """Addresses and client settings of one Kafka cluster and the services around it."""

    bootstrap_servers: str
    schema_registry_url: str
    settings: Settings = field(default_factory=Settings)
    embedded: bool = True
    telegram_api_url: str | None = None  # the fake Telegram Bot API; None means api.telegram.org
    ksqldb_url: str | None = None

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka properties shared by producers, consumers and admin clients."""
        # librdkafka's informational logs (level 6) land in notebooks' stderr; warnings and errors still do.
        config: dict[str, Any] = {"log_level": 4, **self.settings.kafka}
        config["bootstrap.servers"] = self.bootstrap_servers
        if self.embedded:
            config.update(_EMBEDDED_CLIENT_DEFAULTS)
        config.update(overrides)
        return config

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """Properties for a producer (idempotent unless overridden)."""
        return self.client_config(**{"enable.idempotence": True, **overrides})

    def consumer_config(self, group_id: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Properties for a consumer; without a group id it can only ``assign()`` partitions."""
        config = self.client_config()
        if self.embedded:
            config.update(_EMBEDDED_CONSUMER_DEFAULTS)
        # librdkafka insists on a group.id even for assign()-only consumers; they never join it.
        config["group.id"] = group_id or "survey-kit-reader"
        config.update({"enable.auto.commit": False, "auto.offset.reset": "earliest"})
        config.update(overrides)
        return config

    def admin_config(self, **overrides: Any) -> dict[str, Any]:
        return self.client_config(**overrides)

    def request_admin(self) -> RequestAdmin:
        """An admin client for one-off requests (create topics, list them) whose failure is one error."""
        return RequestAdmin(self)

    def registry_config(self) -> dict[str, Any]:
        """Configuration for confluent-kafka's SchemaRegistryClient."""
        config: dict[str, Any] = {"url": self.schema_registry_url}
        auth = self.settings.schema_registry.basic_auth_user_info
        if auth is not None:
            config["basic.auth.user.info"] = auth.get_secret_value()
        return config

    @cached_property
    def _registry(self) -> SchemaRegistryClient:
        return SchemaRegistryClient(self.registry_config())

    def registry(self) -> SchemaRegistryClient:
        """The Schema Registry client of this cluster (one per Cluster, it caches schemas)."""
        return self._registry

    @property
    def topics(self):
        """The topic names (settings.topics)."""
        return self.settings.topics


def from_stack(stack: EmbeddedStack, settings: Settings | None = None) -> Cluster:
    """A Cluster for an embedded stack (one started by ``up`` or by ``with EmbeddedStack()``)."""
    settings = settings or Settings()
    addresses = stack.addresses
    return Cluster(
        bootstrap_servers=addresses["bootstrap_servers"],
        schema_registry_url=addresses["schema_registry_url"],
        settings=settings,
        embedded=True,
        telegram_api_url=addresses.get("telegram_api_url") if settings.telegram.token is None else None,
        ksqldb_url=settings.ksqldb.url or addresses.get("ksqldb_url"),
    )


def connect(settings: Settings | None = None) -> Cluster:
    """The cluster the configuration names, or else the embedded stack started by ``survey-kit up``."""
    settings = settings or load_settings()
    if not settings.uses_embedded_kafka:
        stack = running_stack() if settings.telegram.token is None else None
        return Cluster(
            bootstrap_servers=settings.kafka["bootstrap.servers"],
            schema_registry_url=settings.schema_registry.url,
            settings=settings,
            embedded=False,
            telegram_api_url=stack.telegram_api_url if stack else None,
            ksqldb_url=settings.ksqldb.url,
        )
    stack = running_stack()
    if stack is None:
        raise StackError(
            "no Kafka is configured and no embedded stack is running: start one with `survey-kit up` "
            "(or `make up`), or set kafka.bootstrap.servers in survey-kit.yaml"
        )
    return from_stack(stack, settings)


def connect_or_start(settings: Settings | None = None) -> tuple[Cluster, EmbeddedStack | None]:
    """The configured cluster or the running stack; failing both, a new embedded stack of its own.

    Returns the cluster and the stack it started (None if it started nothing): stop that stack when
    done. Notebooks use it so they run against whatever is there, and still run when nothing is.
    """
    settings = settings or load_settings()
    try:
        return connect(settings), None
    except StackError:
        stack = EmbeddedStack().start()
        return from_stack(stack, settings), stack


REFUSED_FOR_S = 3.0  # how long only refused connections mean nothing listens there (see RequestAdmin.metadata)


def _refused(error: KafkaError) -> bool:
    """A connection refused, or librdkafka's summary that every broker is down (which follows those)."""
    return error.code() == KafkaError._ALL_BROKERS_DOWN or "Connection refused" in error.str()


class RequestAdmin:
    """An AdminClient that does not log connection failures but keeps them for the error message.

    While a broker is down librdkafka logs every connection attempt on stderr, some twenty a second, for
    as long as a request waits: a command line reporting it would bury its one error under hundreds of
    lines. Those errors come to `error_cb` instead, and `reason()` names the last one.

        admin = cluster.request_admin()
        admin.client.list_topics(timeout=10)   # KafkaException: "... Broker transport failure"
        admin.reason()     # "; last: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused ..."
    """

    def __init__(self, cluster: Cluster):
        self._errors: list[KafkaError] = []
        # log_level 2: librdkafka's critical messages only; its errors still reach error_cb
        self.client = AdminClient(cluster.admin_config(error_cb=self._errors.append, log_level=2))

    def metadata(self, timeout: float, refused_for: float = REFUSED_FOR_S):
        """The cluster's metadata (`list_topics`), within `timeout` s; KafkaException if there is none.

        Gives up after `refused_for` s when every attempt so far was refused: nothing listens at that
        address (a stack not started, a wrong port), and waiting the whole timeout would not change that.
        """
        deadline = time.monotonic() + timeout
        refused_since = None
        while True:
            try:
                return self.client.list_topics(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            except KafkaException:
                now = time.monotonic()
                self.client.poll(0)  # serves error_cb
                if self._errors and all(_refused(e) for e in self._errors):
                    refused_since = refused_since or now
                if now >= deadline or (refused_since is not None and now - refused_since >= refused_for):
                    raise

    def reason(self) -> str:
        """The last error the client met other than "all brokers are down", as '; last: ...', or ''."""
        self.client.poll(0)  # error_cb is served by poll()
        errors = [e for e in self._errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
        if not errors:
            return ""
        hint = " (nothing listens there: is the broker running, and is kafka.bootstrap.servers right?)" if all(map(_refused, errors)) else ""
        return f"; last: {errors[-1].str()}{hint}"
