"""`survey-kit ksql apply` and `survey-kit engine`, as a user runs them, against an engine process.

The statement files name the default topics, so this module runs a stack of its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from survey_kit.cluster import from_stack
from survey_kit.ksql.rest import KsqlRestClient
from survey_kit.stack import EmbeddedStack
from survey_kit.stack.processes import free_port
from survey_kit.topics import create_topics

from .test_ksql_runtime import KSQL_DIR, EngineProcess

CLI = [sys.executable, "-m", "survey_kit.cli"]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A stack, topics but no schemas yet, and an engine: what `ksql apply` meets on a fresh cluster."""
    data = tmp_path_factory.mktemp("apply")
    with EmbeddedStack(data_dir=data / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        create_topics(cluster)
        engine = EngineProcess(stack, data / "engine").start()
        try:
            yield stack, cluster, engine, data
        finally:
            engine.stop()


def run_cli(deployment, *args, ksqldb_url=None, cwd=None, stdin=None):
    stack, cluster, engine, data = deployment
    config = data / "survey-kit.yaml"
    config.write_text(
        "kafka:\n"
        f"  bootstrap.servers: {stack.bootstrap_servers}\n"
        "schema_registry:\n"
        f"  url: {stack.schema_registry_url}\n"
        "ksqldb:\n"
        f"  url: {ksqldb_url or engine.url}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEY_KIT_")}
    env["SURVEY_KIT_HOME"] = str(data)
    return subprocess.run(CLI + ["--config", str(config), *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=cwd or Path(KSQL_DIR).parent, input=stdin)


def test_apply_on_a_fresh_cluster_then_again_is_harmless(deployment):
    stack, cluster, engine, data = deployment
    # nothing produced yet: apply registers the schemas the streams infer their columns from
    assert not {"survey-entries-value", "survey-questions-value"} & set(cluster.registry().get_subjects())
    first = run_cli(deployment, "ksql", "apply", "--define", "results_window_size=5 MINUTES",
                    "--set", "survey_kit.emit.final.wall.clock=true")
    assert first.returncode == 0, first.stderr
    assert "schema registered for survey-entries-value" in first.stdout
    assert "schema registered for survey-questions-value" in first.stdout
    assert "03_survey_respondents.sql: Created query with ID CSAS_SURVEY_RESPONDENTS_0" in first.stdout
    assert "06_survey_results_final.sql: Created query with ID CTAS_SURVEY_RESULTS_FINAL_3" in first.stdout

    second = run_cli(deployment, "ksql", "apply", "--define", "results_window_size=5 MINUTES")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already exists") == 6, second.stdout
    # the same statements without wall-clock closing: the running query keeps closing by wall clock, and says so
    assert ("Its query runs with survey_kit.emit.final.wall.clock = true (this request: false), which stays in "
            "force: DROP TABLE SURVEY_RESULTS_FINAL; first to change it.") in " ".join(second.stdout.split())
    assert second.stdout.count("stays in force") == 1
    assert "schema registered" not in second.stdout  # a subject that has a schema keeps it
    assert cluster.registry().get_versions("survey-entries-value") == [1]
    with engine.client() as client:
        assert len(client.execute("SHOW QUERIES;")[0]["queries"]) == 4
        description = client.execute("DESCRIBE survey_results_final;")[0]["sourceDescription"]
    assert description["windowType"] == "TUMBLING"
    assert "5 MINUTES" in description["statement"]  # the override, not the file's 48 HOURS
    recorded = [c for c in engine_commands(engine) if "survey_results_final" in c["statement"]]
    # the request's properties, and the worker process the engine placed the query on
    assert recorded[0]["streamsProperties"] == {"survey_kit.emit.final.wall.clock": "true", "survey_kit.worker": "1"}


def test_a_schema_missing_for_a_stream_says_what_to_do(deployment, tmp_path):
    # a pipeline over a topic nobody registered a schema for (the survey topics' schemas apply registers)
    stack, cluster, engine, data = deployment
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    admin.create_topics([NewTopic("other-entries", 1)])["other-entries"].result(15)
    (tmp_path / "01_other.sql").write_text("CREATE STREAM IF NOT EXISTS other WITH (kafka_topic = 'other-entries', value_format = 'AVRO');\n")
    result = run_cli(deployment, "ksql", "apply", str(tmp_path))
    assert result.returncode == 1
    assert "01_other.sql" in result.stderr
    assert "Register the topic's value schema first" in result.stderr and "schema_registry.url" in result.stderr
    assert "Traceback" not in result.stderr


def test_apply_from_another_directory_applies_the_survey_pipeline(deployment):
    stack, cluster, engine, data = deployment
    elsewhere = data / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    result = run_cli(deployment, "ksql", "apply", "--define", "results_window_size=5 MINUTES", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already exists") == 6, result.stdout

    wrong = run_cli(deployment, "ksql", "apply", "pipline", cwd=elsewhere)
    assert wrong.returncode == 1
    assert "pipline is not a directory of ksql statement files" in wrong.stderr
    assert str(KSQL_DIR) in wrong.stderr  # where the survey pipeline is


def test_ksql_run_shows_what_the_server_answers(deployment):
    result = run_cli(deployment, "ksql", "run", "SHOW QUERIES; DESCRIBE survey_results_live; SHOW STREAMS;")
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    live = [line for line in lines if line.startswith("CTAS_SURVEY_RESULTS_LIVE_2 | RUNNING | survey-results-live | "
                                                      "CREATE TABLE IF NOT EXISTS survey_results_live WITH (")]
    assert len(live) == 1 and live[0].endswith("...")  # a long statement is shortened to keep a line per query
    assert "SURVEY_ID | STRING (primary key)" in lines
    assert "RESULTS | MAP<STRING, BIGINT>" in lines  # the histogram's type, as ksqlDB describes it
    assert "Queries that write to it: CTAS_SURVEY_RESULTS_LIVE_2 (RUNNING)" in lines
    assert "SURVEY_RESPONSES | survey-responses | KAFKA | AVRO | false" in lines

    alone = run_cli(deployment, "ksql", "run", "SET 'auto.offset.reset' = 'earliest';")
    assert alone.returncode == 0 and "SET and DEFINE hold only for the statements sent with them" in alone.stdout

    from_stdin = run_cli(deployment, "ksql", "run", "-", "--json", stdin="LIST TOPICS;\n")
    assert from_stdin.returncode == 0, from_stdin.stderr
    topics = json.loads(from_stdin.stdout)[0]
    assert topics["@type"] == "kafka_topics"
    assert "survey-entries" in {topic["name"] for topic in topics["topics"]}


def test_explain_shows_the_properties_a_query_was_created_with(deployment):
    stack, cluster, engine, data = deployment
    result = run_cli(deployment, "ksql", "run", "EXPLAIN CTAS_SURVEY_RESULTS_FINAL_3;")
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "ID : CTAS_SURVEY_RESULTS_FINAL_3" in lines
    assert "Sources : SURVEY_ENTRIES, SURVEY_QUESTIONS" in lines
    assert "survey_kit.emit.final.wall.clock | true" in lines
    with engine.client() as client:
        live = client.execute("EXPLAIN ctas_survey_results_live_2;")[0]["queryDescription"]
    assert live["sinks"] == ["SURVEY_RESULTS_LIVE"] and live["queryType"] == "PERSISTENT"
    assert "survey_kit.emit.final.wall.clock" in live["overriddenProperties"]  # sent with the same request
    # what the workshop notebook asks before waiting for final results
    from survey_kit.ksql.apply import closes_by_wall_clock

    assert closes_by_wall_clock(dataclasses.replace(cluster, ksqldb_url=engine.url)) is True
    assert closes_by_wall_clock(cluster) is None  # no server to ask
    unknown = run_cli(deployment, "ksql", "run", "EXPLAIN CTAS_NO_SUCH_QUERY;")
    assert unknown.returncode == 1 and "Query with id:CTAS_NO_SUCH_QUERY does not exist" in unknown.stderr


@pytest.mark.parametrize(("statements", "message"), [
    ("DESCRIBE no_such_table;", "Could not find STREAM/TABLE 'NO_SUCH_TABLE'"),
    ("SELECT * FROM survey_results_live EMIT CHANGES;", "Unsupported statement 'SELECT' at line 1, column 1"),
    ("SET 'ksql.streams.cache.max.bytes.buffering' = 'lots';", "Invalid value lots for configuration ksql.streams.cache.max.bytes.buffering"),
    ("  ", "no statements given"),
])
def test_ksql_run_refusals_are_one_line(deployment, statements, message):
    result = run_cli(deployment, "ksql", "run", statements)
    assert result.returncode in (1, 2)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def engine_commands(engine) -> list[dict]:
    """The statements the engine recorded (its local copy of the command topic)."""
    backup = next(engine.data_dir.glob("*_command.jsonl"))
    return [json.loads(line) for line in backup.read_text().splitlines()]


@pytest.mark.parametrize(("define", "message"), [
    ("no_such_variable=1", "No statement file defines the variable(s) no_such_variable"),
    ("results_window_size", "--define expects NAME=VALUE"),
])
def test_bad_defines_are_refused_with_a_message(deployment, define, message):
    result = run_cli(deployment, "ksql", "apply", "--define", define)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_apply_without_a_server_says_so(deployment):
    result = run_cli(deployment, "ksql", "apply", ksqldb_url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach ksqlDB" in result.stderr and "Traceback" not in result.stderr


def test_a_ksqldb_url_that_is_another_server_says_so(deployment):
    # the Schema Registry's address given as ksqldb.url (an easy slip: both are http on Confluent Cloud); it
    # answered its own 404, printed as if ksqlDB had refused the statement
    stack, cluster, engine, data = deployment
    for command in (["ksql", "apply"], ["ksql", "run", "SHOW STREAMS;"]):
        result = run_cli(deployment, *command, ksqldb_url=stack.schema_registry_url)
        assert result.returncode == 1
        assert result.stderr.strip() == (f"survey-kit: error: the server at {stack.schema_registry_url} answered HTTP 404 to "
                                          "POST /ksql, not as ksqlDB does: check that ksqldb.url in survey-kit.yaml is a "
                                          "ksqlDB server's address")


def test_engine_on_a_port_in_use_exits_2(deployment):
    stack, cluster, engine, data = deployment
    result = run_cli(deployment, "engine", "--port", str(engine.port), "--data-dir", str(data / "second"))
    assert result.returncode == 2
    assert f"port {engine.port}" in result.stderr and "in use" in result.stderr


def test_status_asks_the_configured_ksqldb(deployment):
    stack, cluster, engine, data = deployment
    queries = len(KsqlRestClient(engine.url).execute("SHOW QUERIES;")[0]["queries"])
    result = run_cli(deployment, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ksqlDB           {engine.url} answers: {queries} quer{'y' if queries == 1 else 'ies'} running" in result.stdout

    wrong = run_cli(deployment, "status", ksqldb_url=stack.schema_registry_url)
    assert wrong.returncode == 1
    assert f"ksqlDB           {stack.schema_registry_url} does not answer: the server at" in wrong.stdout
    assert "Kafka            " in wrong.stdout and "Kafka            " + stack.bootstrap_servers + " answers" in wrong.stdout
