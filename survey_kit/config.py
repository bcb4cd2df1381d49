"""Settings: where Kafka, the Schema Registry, ksqlDB and Telegram are, and what the topics are called.

One :class:`Settings` object, loaded by :func:`load_settings` from an optional YAML file
(``survey-kit.yaml`` in the working directory, or a path given with ``--config`` /
``SURVEY_KIT_CONFIG``) and then from ``SURVEY_KIT_*`` environment variables, which win.

With no Kafka configured, every tool uses the embedded stack started by ``survey-kit up``.
To use Confluent Cloud, put the client properties Confluent gives you under ``kafka:``::

    kafka:
      bootstrap.servers: pkc-xxxxx.europe-west1.gcp.confluent.cloud:9092
      security.protocol: SASL_SSL
      sasl.mechanisms: PLAIN
      sasl.username: API_KEY
      sasl.password: API_SECRET
    schema_registry:
      url: https://psrc-xxxxx.europe-west1.gcp.confluent.cloud
      basic_auth_user_info: SR_KEY:SR_SECRET
    ksqldb:
      url: https://pksqlc-xxxxx.europe-west1.gcp.confluent.cloud:443
      api_key: KSQL_KEY
      api_secret: KSQL_SECRET
    telegram:
      token: "123456:ABC..."
      admin_chat_ids: [12345678]

Environment variables: ``SURVEY_KIT_<SECTION>_<FIELD>`` (``SURVEY_KIT_TELEGRAM_TOKEN``,
``SURVEY_KIT_TOPICS_ENTRIES``, ``SURVEY_KIT_PARTITIONS``, ...); Kafka properties as
``SURVEY_KIT_KAFKA_<PROPERTY>`` with dots written as underscores
(``SURVEY_KIT_KAFKA_BOOTSTRAP_SERVERS``); lists comma-separated.

Secrets (passwords, API secrets, the bot token) are held as :class:`pydantic.SecretStr` and never
appear in reprs, logs or error messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_CONFIG_FILE = "survey-kit.yaml"
ENV_PREFIX = "SURVEY_KIT_"
# Variables of ours that are not settings.
_NON_SETTING_ENV = {"SURVEY_KIT_CONFIG", "SURVEY_KIT_HOME", "SURVEY_KIT_HEADLESS"}  # HEADLESS: survey_kit.widgets
# librdkafka properties whose values are secrets.
_SECRET_WORDS = ("password", "secret", "token")


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key and says how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SchemaRegistrySettings(_Section):
    """A Confluent Schema Registry; no url means the embedded one."""

    url: str | None = None
    basic_auth_user_info: SecretStr | None = None  # "KEY:SECRET", as Confluent Cloud issues them


class KsqlDbSettings(_Section):
    """A ksqlDB server; no url means the embedded engine."""

    url: str | None = None
    api_key: str | None = None
    api_secret: SecretStr | None = None


class TelegramSettings(_Section):
    """The Telegram bot; no token means the local fake Telegram Bot API of the embedded stack."""

    token: SecretStr | None = None
    admin_chat_ids: list[int] = Field(default_factory=list)
    max_field_length: int = Field(default=100, ge=1, le=4096)

    @field_validator("admin_chat_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class TopicSettings(_Section):
    """Names of the topics of the data path."""

    entries: str = "survey-entries"
    respondents: str = "survey-respondents"
    responses: str = "survey-responses"
    questions: str = "survey-questions"
    results_live: str = "survey-results-live"
    results_final: str = "survey-results-final"

    @field_validator("*")
    @classmethod
    def _valid_topic_name(cls, value: str) -> str:
        if not value or len(value) > 249 or not all(c.isalnum() or c in "._-" for c in value):
            raise ValueError("a topic name is 1-249 characters of letters, digits, '.', '_' and '-'")
        return value


class KafkaProperties(Mapping):
    """librdkafka client properties, read-only; secret values are masked in every repr."""

    def __init__(self, properties: Mapping[str, Any]):
        self._properties: dict[str, str] = {}
        for key, value in properties.items():
            if not isinstance(key, str) or not key or " " in key:
                raise ValueError(f"{key!r} is not a Kafka client property name")
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, bool):
                value = "true" if value else "false"
            if not isinstance(value, (str, int, float)):
                raise ValueError(f"kafka.{key} must be a string or a number, not {type(value).__name__}")
            self._properties[key] = str(value)

    def __getitem__(self, key: str) -> str:
        return self._properties[key]

    def __iter__(self):
        return iter(self._properties)

    def __len__(self) -> int:
        return len(self._properties)

    def __repr__(self) -> str:
        shown = {k: ("**********" if _is_secret(k) else v) for k, v in self._properties.items()}
        return f"KafkaProperties({shown})"

    __str__ = __repr__


def _is_secret(property_name: str) -> bool:
    return any(word in property_name.lower() for word in _SECRET_WORDS)


class Settings(_Section):
    """Everything survey-kit needs to know about its surroundings.

    ``kafka`` empty means the embedded stack; otherwise it holds librdkafka client properties and
    ``schema_registry.url`` must be set too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    kafka: KafkaProperties = Field(default_factory=lambda: KafkaProperties({}))
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    ksqldb: KsqlDbSettings = Field(default_factory=KsqlDbSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    partitions: int = Field(default=1, ge=1, le=1000)

    @field_validator("kafka", mode="before")
    @classmethod
    def _kafka_properties(cls, value: Any) -> KafkaProperties:
        if isinstance(value, KafkaProperties):
            return value
        if value is None:
            return KafkaProperties({})
        if not isinstance(value, Mapping):
            raise ValueError("kafka must be a mapping of client properties, e.g. bootstrap.servers: HOST:9092")
        return KafkaProperties(value)

    @property
    def uses_embedded_kafka(self) -> bool:
        """True when no Kafka cluster is configured, so the embedded stack is used."""
        return "bootstrap.servers" not in self.kafka


def settings_file(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """The settings file `load_settings` reads for these arguments, as an absolute path (None: no file).

    For handing the same settings to another process that may run elsewhere (a notebook's kernel runs
    in notebooks/, where ./survey-kit.yaml is not the user's).
    """
    env = os.environ if env is None else env
    explicit = path if path is not None else env.get("SURVEY_KIT_CONFIG")
    if explicit:
        return Path(explicit).resolve()
    default = Path(DEFAULT_CONFIG_FILE)
    return default.resolve() if default.is_file() else None


def load_settings(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load the settings: the YAML file (if any), then ``SURVEY_KIT_*`` environment overrides.

    ``path`` defaults to ``$SURVEY_KIT_CONFIG`` or, if present, ``./survey-kit.yaml``; a path that was
    asked for explicitly must exist. Raises :class:`ConfigError` naming the offending key.
    """
    env = os.environ if env is None else env
    file = settings_file(path, env)
    data: dict[str, Any] = {}
    source = "defaults"
    if file is not None:
        if not file.is_file():  # only a file asked for by name can be missing
            raise ConfigError(f"config file {file} does not exist: create it or drop --config/SURVEY_KIT_CONFIG")
        data, source = _read_yaml(file), str(file)
    _apply_env(data, env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    if settings.kafka and settings.uses_embedded_kafka:
        # client properties without a cluster would be silently dropped for the embedded stack
        names = ", ".join(f"kafka.{name}" for name in settings.kafka)
        hint = " (did you mean kafka.bootstrap.servers?)" if any(n.replace("_", ".").startswith("bootstrap") for n in settings.kafka) else ""
        raise ConfigError(
            f"{source}: {names} is set but not kafka.bootstrap.servers{hint}: set kafka.bootstrap.servers to your "
            "cluster's HOST:PORT, or remove the kafka section to use the embedded stack"
        )
    if not settings.uses_embedded_kafka and not settings.schema_registry.url:
        raise ConfigError(
            f"{source}: schema_registry.url is required when kafka.bootstrap.servers is set "
            "(the embedded registry only serves the embedded broker)"
        )
    return settings


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file} must be a mapping of sections (kafka, schema_registry, topics, ...)")
    return data


_SECTIONS = {
    "schema_registry": SchemaRegistrySettings,
    "ksqldb": KsqlDbSettings,
    "telegram": TelegramSettings,
    "topics": TopicSettings,
}


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    """Merge SURVEY_KIT_* variables into the file's data; an unknown variable is an error."""
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in _NON_SETTING_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        if rest == "partitions":
            data["partitions"] = value
            continue
        if rest.startswith("kafka_"):
            prop = rest[len("kafka_"):].replace("_", ".")
            data.setdefault("kafka", {})
            if not isinstance(data["kafka"], dict):
                raise ConfigError("kafka must be a mapping of client properties")
            data["kafka"][prop] = value
            continue
        for section, model in _SECTIONS.items():
            if rest.startswith(section + "_") and rest[len(section) + 1:] in model.model_fields:
                data.setdefault(section, {})
                if not isinstance(data[section], dict):
                    raise ConfigError(f"{section} must be a mapping")
                data[section][rest[len(section) + 1:]] = value
                break
        else:
            raise ConfigError(
                f"environment variable {name} is not a survey-kit setting; "
                "see the survey_kit.config docstring for the names"
            )


def _describe(exc: ValidationError, source: str) -> str:
    """Name each bad key without echoing its value (it may be a secret)."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key (check its spelling)")
        elif error["type"] == "missing":
            problems.append(f"{key}: required")
        else:
            problems.append(f"{key}: {error['msg']}")
    return f"invalid configuration in {source}: " + "; ".join(problems)
