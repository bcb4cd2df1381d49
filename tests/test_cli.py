"""The survey-kit command against the session's stack: topics, surveys, and its error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from survey_kit.faketelegram import FakeTelegramServer
from survey_kit.surveys import Survey, create_survey, list_surveys

CLI = [sys.executable, "-m", "survey_kit.cli"]


@pytest.fixture
def run(cluster, tmp_path):
    """Run the CLI pointed at the test's cluster through a config file, as a user would."""
    topics = cluster.topics.model_dump()
    config = tmp_path / "survey-kit.yaml"
    config.write_text(
        "kafka:\n"
        f"  bootstrap.servers: {cluster.bootstrap_servers}\n"
        "schema_registry:\n"
        f"  url: {cluster.schema_registry_url}\n"
        "topics:\n" + "".join(f"  {field}: {name}\n" for field, name in topics.items())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEY_KIT_")}
    env["SURVEY_KIT_HOME"] = str(tmp_path)

    def run_cli(*args):
        return subprocess.run(CLI + ["--config", str(config), *args], env=env, capture_output=True, text=True, timeout=60)

    return run_cli


def test_topics_create_reports_existing_topics(run, cluster):
    result = run("topics", "create")
    assert result.returncode == 0, result.stderr
    assert f"exists   {cluster.topics.entries} (1 partitions)" in result.stdout


def test_survey_create_list_disable(run, cluster):
    created = run("survey", "create", "--id", "1", "--question", "Which Thanksgiving Pie is your favorite?",
                  "--summary", "Thanksgiving Pie", "--option", "Pumpkin Pie", "--option", "Apple Pie")
    assert created.returncode == 0, created.stderr
    listed = run("survey", "list")
    assert "Which Thanksgiving Pie is your favorite?" in listed.stdout and "enabled" in listed.stdout
    assert run("survey", "disable", "1").returncode == 0
    assert list_surveys(cluster)[0].enabled is False


def test_invalid_survey_is_refused_with_a_message(run, cluster):
    result = run("survey", "create", "--id", "1", "--question", "Pie?", "--summary", "Pie", "--option", "Apple")
    assert result.returncode == 1
    assert "at least two options" in result.stderr and "Traceback" not in result.stderr
    assert list_surveys(cluster) == []


def test_schema_registry_that_is_down_is_named(cluster, tmp_path):
    # the broker answers, the registry does not: the message must not blame Kafka, and must say what to check
    config = tmp_path / "no-registry.yaml"
    config.write_text(f"kafka:\n  bootstrap.servers: {cluster.bootstrap_servers}\nschema_registry:\n  url: http://127.0.0.1:1\n"
                      "topics:\n" + "".join(f"  {field}: {name}\n" for field, name in cluster.topics.model_dump().items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEY_KIT_")}
    result = subprocess.run(CLI + ["--config", str(config), "survey", "create", "--id", "1", "--question", "Pie?",
                                   "--summary", "Pie", "--option", "Apple", "--option", "Pecan"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "writing or reading Avro through the Schema Registry failed: " in line and "Connection refused" in line
    assert "schema_registry.url" in line and "Kafka error" not in line
    assert list_surveys(cluster) == []  # nothing half-published


def test_survey_list_through_a_registry_that_does_not_answer_blames_the_registry_not_the_records(cluster, tmp_path):
    # a port where nothing listens, and an HTTP server that is no Schema Registry: both were a traceback
    # saying the record "is not a valid Avro record"
    create_survey(cluster, Survey("1", "Pie?", "Pie", ["Apple", "Pecan"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEY_KIT_")}
    with FakeTelegramServer() as not_a_registry:
        for url in ("http://127.0.0.1:1", not_a_registry.api_url):
            config = tmp_path / "wrong-registry.yaml"
            config.write_text(f"kafka:\n  bootstrap.servers: {cluster.bootstrap_servers}\nschema_registry:\n  url: {url}\n"
                              "topics:\n" + "".join(f"  {field}: {name}\n" for field, name in cluster.topics.model_dump().items()))
            result = subprocess.run(CLI + ["--config", str(config), "survey", "list"], env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 1
            (line,) = result.stderr.splitlines()
            assert line.startswith(f"survey-kit: error: the Schema Registry at {url} did not answer for schema id ")
            assert "schema_registry.url" in line and "not a valid Avro record" not in line


def test_broker_that_is_down_is_reported(tmp_path):
    config = tmp_path / "down.yaml"
    config.write_text("kafka:\n  bootstrap.servers: 127.0.0.1:1\nschema_registry:\n  url: http://127.0.0.1:1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEY_KIT_")}
    for command, message in ((["survey", "list"], "cannot reach Kafka at 127.0.0.1:1"),
                             (["topics", "create"], "cannot create topics on 127.0.0.1:1")):
        result = subprocess.run(CLI + ["--config", str(config), *command], env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1
        # one line that says why, not librdkafka's log of every connection attempt meanwhile
        (line,) = result.stderr.splitlines()
        assert message in line and "Connection refused" in line


def test_generate_writes_entries_with_chosen_timestamps(run, cluster):
    from survey_kit.frames import read_topic
    from survey_kit.surveys import Survey, create_survey

    create_survey(cluster, Survey("1", "Pie?", "Pie", ["Apple", "Pecan"]))
    result = run("generate", "--survey", "1", "--count", "20", "--start", "2026-11-25T10:00:00+00:00",
                 "--interval", "60", "--late", "3", "--late-by", "600", "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert "20 entries written" in result.stdout
    entries = read_topic(cluster, cluster.topics.entries, progress=False)
    assert len(entries) == 20 and set(entries["response"]) <= {"Apple", "Pecan"}
    assert entries["entry_id"].notna().all() and entries["entry_id"].is_unique
    start_ms = 1_795_600_800_000  # 2026-11-25T10:00:00Z
    offsets = sorted((entries["timestamp_ms"] - start_ms) // 60_000)
    # 17 on time at their minute, 3 shifted 10 minutes earlier (possibly before the start)
    assert sum(1 for m in offsets if m < 0) <= 3 and max(offsets) <= 19
    assert (entries["timestamp_ms"].diff().dropna() < 0).any()  # late ones arrive out of order


def test_generate_for_an_unknown_survey_says_so(run):
    result = run("generate", "--survey", "nope", "--count", "5")
    assert result.returncode != 0
    assert "no survey 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_status_with_kafka_configured_checks_the_configured_services(run, cluster):
    result = run("status")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Kafka            {cluster.bootstrap_servers} answers: 1 broker; the survey topics are there"
    assert lines[1].startswith(f"Schema Registry  {cluster.schema_registry_url} answers: ")
    assert lines[2].startswith("ksqlDB           not configured: set ksqldb.url")
    # the test's own status: no "no embedded stack is running (start it with `survey-kit up`)"
    assert "survey-kit up" not in result.stdout


def test_status_names_what_does_not_answer(run, cluster, tmp_path):
    config = tmp_path / "survey-kit.yaml"
    config.write_text(config.read_text().replace(cluster.schema_registry_url, "http://127.0.0.1:9"))
    result = run("status", "--json")
    assert result.returncode == 1
    services = json.loads(result.stdout)["services"]
    assert services["kafka"]["answers"] is True
    assert services["schema_registry"]["answers"] is False
    assert "Connection refused" in services["schema_registry"]["detail"]
    assert "schema_registry.url" in services["schema_registry"]["detail"]
