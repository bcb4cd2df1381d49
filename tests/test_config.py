"""Settings: file, environment overrides, validation messages naming the key, secrets never shown."""

from __future__ import annotations

import pytest

from survey_kit.config import ConfigError, load_settings

CLOUD_YAML = """
kafka:
  bootstrap.servers: pkc-abc.europe-west1.gcp.confluent.cloud:9092
  security.protocol: SASL_SSL
  sasl.mechanisms: PLAIN
  sasl.username: KAFKAKEY
  sasl.password: kafka-secret-value
schema_registry:
  url: https://psrc-abc.europe-west1.gcp.confluent.cloud
  basic_auth_user_info: "SRKEY:registry-secret-value"
ksqldb:
  url: https://pksqlc-abc.europe-west1.gcp.confluent.cloud:443
  api_key: KSQLKEY
  api_secret: ksql-secret-value
telegram:
  token: "123456:telegram-secret-value"
  admin_chat_ids: [42, 43]
partitions: 3
"""
SECRETS = ("kafka-secret-value", "registry-secret-value", "ksql-secret-value", "telegram-secret-value")


def write(tmp_path, text):
    path = tmp_path / "survey-kit.yaml"
    path.write_text(text)
    return path


def test_defaults_mean_the_embedded_stack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.uses_embedded_kafka
    assert settings.topics.entries == "survey-entries"
    assert settings.topics.results_final == "survey-results-final"
    assert settings.partitions == 1
    assert settings.telegram.token is None


def test_confluent_cloud_file_is_read(tmp_path):
    settings = load_settings(write(tmp_path, CLOUD_YAML), env={})
    assert not settings.uses_embedded_kafka
    assert settings.kafka["sasl.password"] == "kafka-secret-value"
    assert settings.schema_registry.basic_auth_user_info.get_secret_value() == "SRKEY:registry-secret-value"
    assert settings.telegram.admin_chat_ids == [42, 43]
    assert settings.partitions == 3


def test_secrets_never_appear_in_reprs(tmp_path):
    settings = load_settings(write(tmp_path, CLOUD_YAML), env={})
    shown = repr(settings) + str(settings) + repr(settings.kafka) + str(settings.telegram)
    for secret in SECRETS:
        assert secret not in shown
    assert "KAFKAKEY" in shown  # non-secret values stay visible for debugging


def test_environment_overrides_the_file(tmp_path):
    env = {
        "SURVEY_KIT_KAFKA_SASL_USERNAME": "OTHERKEY",
        "SURVEY_KIT_TOPICS_ENTRIES": "pie-entries",
        "SURVEY_KIT_TELEGRAM_ADMIN_CHAT_IDS": "7, 8",
        "SURVEY_KIT_PARTITIONS": "6",
    }
    settings = load_settings(write(tmp_path, CLOUD_YAML), env=env)
    assert settings.kafka["sasl.username"] == "OTHERKEY"
    assert settings.topics.entries == "pie-entries"
    assert settings.telegram.admin_chat_ids == [7, 8]
    assert settings.partitions == 6


def test_environment_alone_configures_a_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={
        "SURVEY_KIT_KAFKA_BOOTSTRAP_SERVERS": "broker:9092",
        "SURVEY_KIT_SCHEMA_REGISTRY_URL": "http://registry:8081",
    })
    assert settings.kafka["bootstrap.servers"] == "broker:9092"


@pytest.mark.parametrize(
    "text, key",
    [
        ("topics:\n  entriez: x\n", "topics.entriez: unknown key"),
        ("partitions: many\n", "partitions:"),
        ("partitions: 0\n", "partitions:"),
        ("telegram:\n  admin_chat_ids: [abc]\n", "telegram.admin_chat_ids.0"),
        ("schema_registry: {url: http://x}\nsurprise: 1\n", "surprise: unknown key"),
        ("kafka:\n  bootstrap.servers: b:9092\n", "schema_registry.url is required"),
        # client properties with no cluster to use them on would otherwise mean the embedded stack, silently
        ("kafka:\n  bootstrap_servers: b:9092\n", "kafka.bootstrap_servers is set but not kafka.bootstrap.servers (did you mean kafka.bootstrap.servers?)"),
        ("kafka:\n  sasl.username: me\n", "kafka.sasl.username is set but not kafka.bootstrap.servers: set"),
        ("topics:\n  entries: 'bad name!'\n", "topics.entries"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text), env={})
    assert key in str(error.value)


def test_bad_secret_is_not_echoed_in_the_error(tmp_path):
    text = "telegram:\n  token: [telegram-secret-value]\n"
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text), env={})
    assert "telegram.token" in str(error.value)
    assert "telegram-secret-value" not in str(error.value)


def test_unknown_environment_variable_is_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="SURVEY_KIT_TOPIC_ENTRIES"):
        load_settings(env={"SURVEY_KIT_TOPIC_ENTRIES": "x"})


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_invalid_yaml_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "kafka: [unclosed\n"), env={})
