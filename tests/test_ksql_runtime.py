"""The ksql engine on the embedded broker: the talk's pipeline end to end, exactly once, outages.

The pipeline files name the default topics (survey-entries, ...), so these tests run on stacks of
their own rather than the session's shared one. The engine runs as its own process (`python -m
survey_kit.ksql.server`), as `survey-kit up` starts it, so a test can SIGKILL it.
"""

from __future__ import annotations

import gc
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from survey_kit.cluster import from_stack
from survey_kit.consume import read_messages
from survey_kit.ksql.apply import apply_pipeline, register_value_schemas
from survey_kit.ksql.driver import Driver
from survey_kit.ksql.engine import Engine
from survey_kit.ksql.formats import RegistrySchemaStore
from survey_kit.ksql.pipeline import read_pipeline
from survey_kit.ksql.rest import KsqlRestClient, KsqlServerError
from survey_kit.ksql import runtime as runtime_module
from survey_kit.ksql.runtime import Command, EngineRuntime, in_timestamp_order
from survey_kit.serde import avro_producer
from survey_kit.stack import EmbeddedStack
from survey_kit.stack.processes import free_port
from survey_kit.topics import create_topics

KSQL_DIR = Path(__file__).resolve().parents[1] / "ksql"
MINUTE = 60_000
SHORT_WINDOW = {"results_window_size": "1 MINUTE", "results_window_grace": "0 SECONDS"}
QUESTIONS = {"1": "Which pie?", "2": "Which drink?"}
OPTIONS = {"1": ["Pumpkin Pie", "Pecan Pie", "Apple Pie"], "2": ["Tea", "Coffee"]}

pytestmark = pytest.mark.timeout(300)


def wait_for(condition, timeout=60.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class EngineProcess:
    """`python -m survey_kit.ksql.server` against a stack, started and killed by the test."""

    def __init__(self, stack: EmbeddedStack, data_dir: Path, commit_interval_ms: int | None = None):
        self.stack = stack
        self.commit_interval_ms = commit_interval_ms
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = data_dir / "engine.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> EngineProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "survey_kit.ksql.server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--bootstrap-servers", self.stack.bootstrap_servers,
                 "--schema-registry-url", self.stack.schema_registry_url,
                 # None: the engine's default, as `survey-kit up` runs it
                 *(["--commit-interval-ms", str(self.commit_interval_ms)] if self.commit_interval_ms else [])],
                stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_for(self.ready, 60, "the engine to answer GET / with 200")
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"the engine exited: {self.log.read_text()[-3000:]}"
        try:
            return httpx.get(self.url + "/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def info(self) -> dict:
        return httpx.get(self.url + "/info", timeout=5).json()["survey_kit"]

    def client(self) -> KsqlRestClient:
        return KsqlRestClient(self.url)


class Survey:
    """Produces questions and entries as the bot does (string keys, Avro values through the registry)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.entries = avro_producer(cluster, "survey-entries")
        self.questions = avro_producer(cluster, "survey-questions")

    def question(self, survey_id: str, timestamp: int = 1) -> None:
        self.questions.produce(cluster_topic(self.cluster, "questions"), key=survey_id, timestamp=timestamp, value={
            "survey_id": survey_id, "question": QUESTIONS[survey_id], "summary": QUESTIONS[survey_id][:10],
            "options": OPTIONS[survey_id], "enabled": True,
        })
        self.questions.flush()

    def entry(self, survey_id: str, user: int, response: str, timestamp: int) -> None:
        self.entries.produce(cluster_topic(self.cluster, "entries"), key=survey_id, timestamp=timestamp, value={
            "survey_id": survey_id, "user_id": f"user-{user}", "name": f"Name {user}", "company": None,
            "location": "Lisbon" if user % 2 else None, "response": response,
        })

    def flush(self) -> None:
        self.entries.flush()


def cluster_topic(cluster, name: str) -> str:
    return getattr(cluster.topics, name)


def committed(cluster, topic: str) -> list:
    """The records of `topic` that committed transactions wrote (read_committed), in order."""
    return [(m.key(), m.value(), m.timestamp()[1]) for m in read_messages(cluster, topic, **{"isolation.level": "read_committed"})]


def decoded(cluster, topic: str) -> list[tuple[bytes, dict | None]]:
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    deserialize = AvroDeserializer(SchemaRegistryClient(cluster.registry_config()))
    context = SerializationContext(topic, MessageField.VALUE)
    return [(key, deserialize(value, context) if value is not None else None) for key, value, _ in committed(cluster, topic)]


def latest_per_key(records):
    table = {}
    for key, value in records:
        table[key] = value
    return table


# ---------------------------------------------------------------- the pipeline on a running engine


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A stack of its own, the engine process, the pipeline applied (short windows)."""
    data = tmp_path_factory.mktemp("engine")
    with EmbeddedStack(data_dir=data / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        create_topics(cluster)
        register_value_schemas(cluster)
        engine = EngineProcess(stack, data / "engine").start()
        try:
            with engine.client() as client:
                apply_pipeline(client, KSQL_DIR, SHORT_WINDOW)
            yield stack, cluster, engine
        finally:
            engine.stop()
            gc.collect()  # the tests' Avro producers, before their broker stops (see conftest.stack)


def test_the_talks_pipeline_runs_on_the_broker(running):
    stack, cluster, engine = running
    survey = Survey(cluster)
    survey.question("1")
    # three votes in the first minute, one in the second: the first window closes with it
    for user, (response, ts) in enumerate([("Apple Pie", 1_000), ("Pecan Pie", 2_000), ("Apple Pie", 3_000), ("Apple Pie", MINUTE + 500)]):
        survey.entry("1", user, response, ts)
    survey.flush()

    respondents = wait_for(lambda: len(decoded(cluster, "survey-respondents")) >= 4 and decoded(cluster, "survey-respondents"), what="respondents")
    assert [v for _, v in respondents] == [
        {"user_id": f"user-{u}", "name": f"Name {u}", "company": None, "location": "Lisbon" if u % 2 else None} for u in range(4)
    ]
    # a projection keeps each entry's timestamp (its ROWTIME), as ksqlDB does
    assert [ts for _, _, ts in committed(cluster, "survey-respondents")] == [1_000, 2_000, 3_000, MINUTE + 500]
    responses = wait_for(lambda: len(decoded(cluster, "survey-responses")) >= 4 and decoded(cluster, "survey-responses"), what="responses")
    # survey_entries declares no key column, so (as on ksqlDB) its projections carry no key
    assert [(k, v["survey_id"], v["response"]) for k, v in responses] == [
        (None, "1", "Apple Pie"), (None, "1", "Pecan Pie"), (None, "1", "Apple Pie"), (None, "1", "Apple Pie"),
    ]

    live = wait_for(lambda: (t := latest_per_key(decoded(cluster, "survey-results-live"))) and t[b"1"]["RESULTS"] == {"Apple Pie": 3, "Pecan Pie": 1} and t, what="the live histogram")
    assert live[b"1"]["QUESTION"] == "Which pie?"

    final = wait_for(lambda: decoded(cluster, "survey-results-final"), what="the final histogram")
    assert len(final) == 1
    key, value = final[0]
    assert key == b"1" + (0).to_bytes(8, "big")  # Kafka Streams' windowed key: key bytes, window start
    assert value["RESULTS"] == {"Apple Pie": 2, "Pecan Pie": 1}
    assert value["QUESTION"] == "Which pie?"
    # a window's result carries the timestamp of its latest record, as Kafka Streams' suppress emits it
    assert [ts for _, _, ts in committed(cluster, "survey-results-final")] == [3_000]


def test_a_malformed_entry_becomes_a_dead_letter_and_the_query_goes_on(running):
    stack, cluster, engine = running
    from confluent_kafka import Producer

    producer = Producer(cluster.producer_config())
    producer.produce("survey-entries", key=b"2", value=b"not avro at all", timestamp=5_000)
    producer.produce("survey-entries", key=b"2", value=b"\x00\x00\x00\x7f\xffgarbage", timestamp=5_000)  # unknown schema id
    producer.flush()
    survey = Survey(cluster)
    survey.entry("2", 100, "Tea", 6_000)
    survey.flush()

    letters = wait_for(lambda: len(committed(cluster, "ksql-dead-letters")) >= 2 and committed(cluster, "ksql-dead-letters"), what="dead letters")
    bodies = [json.loads(value) for _, value, _ in letters]
    assert {b["topic"] for b in bodies} == {"survey-entries"}
    assert all(b["partition"] == 0 and isinstance(b["offset"], int) and b["error"] for b in bodies)
    assert "magic byte" in bodies[0]["error"]
    assert "schema id 2147483647" in bodies[1]["error"] or "unknown Avro schema id" in bodies[1]["error"]
    wait_for(lambda: any(v["user_id"] == "user-100" for _, v in decoded(cluster, "survey-respondents")), what="the entry after the bad ones")
    assert engine.info()["dead_letters"] >= 2


def test_an_entry_read_while_the_registry_is_down_is_processed_once_it_answers_not_dead_lettered(running):
    # The entry's writer schema is new to the engine and the registry is down when the engine reads it: the
    # record is fine, so it must wait for the registry (from the last commit), not become a dead letter.
    import fastavro
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import Schema

    from survey_kit.schemas import load_schema

    stack, cluster, engine = running
    evolved = json.loads(load_schema("survey-entries"))
    evolved["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})
    schema_id = SchemaRegistryClient(cluster.registry_config()).register_schema("survey-entries-value", Schema(json.dumps(evolved), "AVRO"))
    entry = {"survey_id": "2", "user_id": "user-300", "name": "Name 300", "company": None, "location": None,
             "response": "Tea", "channel": "web"}
    payload = io.BytesIO()
    fastavro.schemaless_writer(payload, fastavro.parse_schema(evolved), entry)
    letters_before = len(committed(cluster, "ksql-dead-letters"))
    stack.stop_service("registry")
    try:
        producer = Producer(cluster.producer_config())  # the bytes a producer that knows the schema id writes
        producer.produce("survey-entries", key=b"2", value=b"\x00" + schema_id.to_bytes(4, "big") + payload.getvalue(), timestamp=8_000)
        producer.flush()
        outage = wait_for(lambda: engine.info().get("outage"), 30, "the engine to notice the registry's outage")
        assert "Schema Registry" in outage and stack.schema_registry_url in outage
    finally:
        stack.start_service("registry")
    respondents = wait_for(lambda: [v for _, v in decoded(cluster, "survey-respondents") if v["user_id"] == "user-300"], 90, "the entry after the outage")
    assert len(respondents) == 1  # once, though the engine went back to its last commit
    assert len(committed(cluster, "ksql-dead-letters")) == letters_before
    wait_for(lambda: engine.info().get("outage") is None, 30, "the engine to say the outage is over")
    assert "the Schema Registry at" in engine.log.read_text() and "answers again" in engine.log.read_text()


def test_applying_twice_is_harmless(running):
    stack, cluster, engine = running
    with engine.client() as client:
        applied = apply_pipeline(client, KSQL_DIR, SHORT_WINDOW)
        assert all("already exists" in a.message for a in applied), [a.message for a in applied]
        queries = client.execute("SHOW QUERIES;")[0]["queries"]
    assert sorted(q["id"] for q in queries) == [
        "CSAS_SURVEY_RESPONDENTS_0", "CSAS_SURVEY_RESPONSES_1", "CTAS_SURVEY_RESULTS_FINAL_3", "CTAS_SURVEY_RESULTS_LIVE_2",
    ]


def test_rest_answers_as_ksqldb(running):
    stack, cluster, engine = running
    with engine.client() as client:
        streams = client.execute("SHOW STREAMS;")[0]
        assert streams["@type"] == "streams"
        assert {s["name"] for s in streams["streams"]} >= {"SURVEY_ENTRIES", "SURVEY_RESPONDENTS", "SURVEY_RESPONSES"}
        tables = client.execute("SHOW TABLES;")[0]
        assert {t["name"] for t in tables["tables"]} >= {"SURVEY_QUESTIONS", "SURVEY_RESULTS_LIVE", "SURVEY_RESULTS_FINAL"}
        description = client.execute("DESCRIBE survey_results_live;")[0]
        assert description["@type"] == "sourceDescription"
        assert description["sourceDescription"]["topic"] == "survey-results-live"
        assert [f["name"] for f in description["sourceDescription"]["fields"]] == ["SURVEY_ID", "QUESTION", "RESULTS"]
        with pytest.raises(KsqlServerError) as error:
            client.execute("CREATE STREAM broken WITH (kafka_topic='survey-entries', value_format='AVRO') AS SELEKT * FROM survey_entries;")
        assert error.value.error_code == 40001
        assert "line 1" in error.value.message.lower()
        with pytest.raises(KsqlServerError) as missing:
            client.execute("CREATE STREAM nowhere (id STRING KEY, v INT) WITH (kafka_topic='no-such-topic', value_format='JSON');")
        assert "PARTITIONS" in missing.value.message

    answer = httpx.post(engine.url + "/ksql", json={"ksql": "SHOW STREAMS; DESCRIBE no_such_thing;"})
    assert answer.status_code == 400
    body = answer.json()
    assert body["@type"] == "statement_error" and body["error_code"] == 40001
    assert "no_such_thing" in body["statementText"].lower()
    assert body["entities"][0]["@type"] == "streams"  # what ran before the failing statement
    assert httpx.post(engine.url + "/ksql", content=b"{not json").status_code == 400
    assert "ksql" in httpx.post(engine.url + "/ksql", json={}).json()["message"]
    info = httpx.get(engine.url + "/info").json()
    assert info["KsqlServerInfo"]["serverStatus"] == "RUNNING"
    assert httpx.get(engine.url + "/healthcheck").json()["isHealthy"] is True


def test_the_queries_run_in_two_worker_processes_and_one_reads_kafka_for_both(running):
    stack, cluster, engine = running
    # the projections, which copy values, on worker 0; the live and final histograms on worker 1 (which
    # follows the statements worker 0 recorded, a moment later)
    wait_for(lambda: [(w["worker"], w["queries"]) for w in engine.info()["workers"]] == [(0, 2), (1, 2)],
             30, "each worker to run two queries")
    workers = engine.info()["workers"]
    # worker 0's queries read survey-entries, worker 1's survey-entries and survey-questions (a partition
    # each); only worker 0 fetches, for both
    assert [w["assigned_partitions"] for w in workers] == [1, 2]
    assert [w["fetching_partitions"] for w in workers] == [2, 0]
    with engine.client() as client:  # every worker knows the whole pipeline; statements see all of it
        assert len(client.execute("SHOW QUERIES;")[0]["queries"]) == 4


def test_a_killed_server_takes_its_workers_with_it(tmp_path):
    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        engine = EngineProcess(stack, tmp_path / "engine").start()
        try:
            worker = wait_for(lambda: engine.info()["workers"][1].get("pid"), what="worker 1 to report")
            engine.kill()
            wait_for(lambda: not Path(f"/proc/{worker}").exists(), 30, "worker 1 to exit after the server was killed")
        finally:
            engine.stop()


def question_then_entries(cluster, entries: int) -> None:
    """On new topics: survey 1's question, then `entries` entries answering it, timestamped after it."""
    create_topics(cluster)
    register_value_schemas(cluster)
    survey = Survey(cluster)
    survey.question("1", timestamp=1)
    for user in range(entries):
        survey.entry("1", user, OPTIONS["1"][user % 3], 1_000 + user)
        if user % 50_000 == 49_999:
            survey.flush()  # the producer holds at most 100,000
    survey.flush()


def test_a_pipeline_applied_to_existing_topics_joins_every_entry_to_its_question(tmp_path):
    """The queries read both topics from their beginning; whichever a fetch returns first, records are
    processed in timestamp order (as Kafka Streams does), so the earlier question joins every entry."""
    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        question_then_entries(cluster, 200)
        engine = EngineProcess(stack, tmp_path / "engine").start()
        try:
            with engine.client() as client:
                apply_pipeline(client, KSQL_DIR, SHORT_WINDOW)
            live = wait_for(lambda: (t := latest_per_key(decoded(cluster, "survey-results-live"))) and sum(t[b"1"]["RESULTS"].values()) == 200 and t,
                            what="the live histogram of the 200 entries")
            assert live[b"1"]["QUESTION"] == "Which pie?"
        finally:
            engine.stop()


def test_a_backlog_waits_paused_for_the_other_partitions_so_every_entry_joins_its_question(tmp_path, monkeypatch):
    """After an assignment worker 0 holds what a partition delivers until every partition was heard from,
    at most `_HOLD_AFTER_ASSIGNMENT`. The partition that delivered is paused meanwhile: fetched on, a
    backlog of entries took every fetch of the embedded broker, in memory, until the hold ran out, and
    entries then went ahead of their question. Here worker 1 subscribes after worker 0 began, so worker
    0 is assigned anew to read the backlog again for it, as in the engine's worker pool."""
    # a hold shorter than the question takes to come without the pause (over 0.5 s: the test then fails),
    # and 5-10 times what it takes with it (~0.05-0.1 s; once over 0.2 s in a CI run, the hold this had)
    monkeypatch.setattr(runtime_module, "_HOLD_AFTER_ASSIGNMENT", 0.5)
    entries = 400_000
    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        question_then_entries(cluster, entries)
        leader = EngineRuntime(cluster, engine_id="backlog", workers=2)
        follower = EngineRuntime(cluster, engine_id="backlog", worker=1, workers=2)
        # what the worker pool passes between the processes (workers.py), here between two threads
        leader.on_recorded = follower.commands_recorded
        leader.on_forward = lambda worker, generation, chunks: follower.feed(generation, chunks)
        follower.on_subscribe = lambda generation, positions: leader.follower_subscribed(1, generation, positions)
        leader.start()
        try:
            assert leader.ready.wait(60)
            leader.execute("\n".join(script.text for script in read_pipeline(KSQL_DIR, SHORT_WINDOW)))
            wait_for(lambda: leader.status()["records_in"] > 0, 30, "worker 0 to start on the backlog")
            follower.start()  # the live and final histograms: worker 1 needs the backlog from its start
            # worker 0's projections read the entries; worker 1's histograms the entries and the question
            for runtime, records in ((leader, entries), (follower, entries + 1)):
                wait_for(lambda: runtime.status()["records_in"] >= records, 60, "the workers to read the backlog")
                wait_for(lambda: runtime.status()["uncommitted"] == 0, 10, "the workers to commit")
            live = [value for key, value in decoded(cluster, "survey-results-live") if key == b"1"]
            assert sum(live[-1]["RESULTS"].values()) == entries
            assert [value["QUESTION"] for value in live if value["QUESTION"] != "Which pie?"] == []
        finally:
            follower.stop()
            leader.stop()


def test_records_are_processed_in_timestamp_order_across_partitions():
    runs = {("survey-entries", 0): [("survey-entries", 0, 0, 1_000), ("survey-entries", 0, 1, 2_000), ("survey-entries", 0, 2, 5)],
            ("survey-questions", 0): [("survey-questions", 0, 0, 1), ("survey-questions", 0, 1, 1_500)]}
    order = [(where[0], [record[3] for record in chunk]) for where, chunk in in_timestamp_order(runs)]
    # the late entry (timestamp 5) stays in its partition's offset order
    assert order == [("survey-questions", [1]), ("survey-entries", [1_000]), ("survey-questions", [1_500]), ("survey-entries", [2_000, 5])]


def test_the_engine_survives_a_hung_broker(running):
    stack, cluster, engine = running
    survey = Survey(cluster)
    stack.pause_service("broker")
    try:
        deadline = time.monotonic() + 8  # a hung broker for a while: the engine must not give up
        while time.monotonic() < deadline:
            assert engine.proc.poll() is None
            time.sleep(0.2)
    finally:
        stack.resume_service("broker")
    survey.entry("2", 200, "Coffee", 7_000)
    survey.flush()
    wait_for(lambda: any(v["user_id"] == "user-200" for _, v in decoded(cluster, "survey-respondents")), 90, "the entry after the outage")
    assert engine.proc.poll() is None


# ---------------------------------------------------------------- exactly once under SIGKILL


def reference_outputs(cluster, entries, questions):
    """What an uninterrupted run writes: the same statements and records through the engine core."""
    engine = Engine(schemas=RegistrySchemaStore(SchemaRegistryClient(cluster.registry_config()), cluster.schema_registry_url))
    for script in read_pipeline(KSQL_DIR, SHORT_WINDOW):
        engine.execute(script.text)
    driver = Driver(engine)
    for key, value, timestamp in questions:
        driver.pipe("survey-questions", key, value, timestamp)
    for key, value, timestamp in entries:
        driver.pipe("survey-entries", key, value, timestamp)
    return driver.outputs


def kill_the_engine(engine: EngineProcess) -> None:
    engine.kill()
    engine.start()


def kill_worker_1(engine: EngineProcess) -> None:
    """SIGKILL worker 1 alone; the server starts it again (a second later) and it reports in."""
    pid = engine.info()["workers"][1]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (w := engine.info()["workers"][1]).get("pid") not in (None, pid) and w["ready"], 60, "worker 1 to be started again")


def run_with_kills(cluster, engine: EngineProcess, rng: random.Random, kill=kill_the_engine) -> list:
    """Apply the pipeline, feed entries for ~20 s while `kill`ing (SIGKILL) at random moments; the entries."""
    with engine.client() as client:
        apply_pipeline(client, KSQL_DIR, SHORT_WINDOW)
    survey = Survey(cluster)
    # the questions first, and joined (an entry fetched before its question joins none; LATEST_BY_OFFSET
    # skips that null), so the results do not depend on which topic the engine fetched first
    for survey_id in QUESTIONS:
        survey.question(survey_id)

    def joined():
        for survey_id in QUESTIONS:
            survey.entry(survey_id, 0, OPTIONS[survey_id][0], 1)  # timestamp 0 would mean "now"
        survey.flush()
        time.sleep(0.5)
        live = latest_per_key(decoded(cluster, "survey-results-live"))
        return len(live) == 2 and all(v["QUESTION"] for v in live.values())

    wait_for(joined, what="the questions to be joined")

    def produce_entries(total=4_000):  # a steady flow for ~20 s, so kills land in the middle of transactions
        rng = random.Random(11)
        producer = Survey(cluster)
        for user in range(1, total + 1):
            survey_id = rng.choice("12")
            # about 20 one-minute windows; timestamps mostly increase, some arrive late
            timestamp = max(1, user * 300 + rng.choice([0, 0, 0, -5_000, -70_000]))
            producer.entry(survey_id, user, rng.choice(OPTIONS[survey_id]), timestamp)
            if user % 50 == 0:
                producer.flush()
                time.sleep(0.25)
        producer.flush()

    flow = threading.Thread(target=produce_entries)
    flow.start()
    kills = 0
    while flow.is_alive():
        time.sleep(rng.uniform(0.2, 2.0))
        kill(engine)
        kills += 1
    flow.join()
    assert kills >= 3
    entries = committed(cluster, "survey-entries")
    wait_for(lambda: len(committed(cluster, "survey-respondents")) >= len(entries), 180, "every entry to be processed")
    # worker 1 runs the histograms: the live one has counted every entry once it caught up
    wait_for(lambda: sum(sum(((v or {}).get("RESULTS") or {}).values()) for v in latest_per_key(decoded(cluster, "survey-results-live")).values())
             >= len(entries), 180, "every entry to be processed by worker 1")
    time.sleep(1.0)  # a duplicate, if there were any, would have been committed by now
    assert engine.info()["recoveries"] == 1
    return entries


@pytest.mark.parametrize("kill", [kill_the_engine, kill_worker_1], ids=["the engine", "worker 1 alone"])
def test_sigkill_at_random_moments_changes_nothing(tmp_path, kill):
    """Killed as a whole, the engine starts from what it committed. Worker 1 killed alone starts again
    from its own commits while worker 0 goes on: worker 0 reads again what worker 1 needs and hands it on."""
    rng = random.Random(7)
    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        create_topics(cluster)
        register_value_schemas(cluster)
        # long transactions: a kill then mostly lands in one, with outputs and state changes to throw away
        engine = EngineProcess(stack, tmp_path / "engine", commit_interval_ms=700).start()
        try:
            entries = run_with_kills(cluster, engine, rng, kill)
        finally:
            engine.stop()

        questions = committed(cluster, "survey-questions")
        expected = reference_outputs(cluster, entries, questions)
        for topic in ("survey-respondents", "survey-responses", "survey-results-final"):
            got = committed(cluster, topic)
            want = [(o.key, o.value, o.timestamp) for o in expected[topic]]
            assert len(got) == len(want), f"{topic}: {len(got)} records, an uninterrupted run writes {len(want)}"
            assert got == want, topic
        assert len(committed(cluster, "survey-results-final")) > 10
        # the live table may coalesce updates (record cache) but ends with the same row per key
        live = latest_per_key((k, v) for k, v, _ in committed(cluster, "survey-results-live"))
        want_live = latest_per_key((o.key, o.value) for o in expected["survey-results-live"])
        assert live == want_live


# ---------------------------------------------------------------- the broker going away


def test_a_restarted_embedded_broker_loses_its_topics_and_the_engine_carries_on(tmp_path):
    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        create_topics(cluster)
        register_value_schemas(cluster)
        engine = EngineProcess(stack, tmp_path / "engine").start()
        try:
            with engine.client() as client:
                apply_pipeline(client, KSQL_DIR, SHORT_WINDOW)
            survey = Survey(cluster)
            survey.entry("1", 1, "Apple Pie", 1_000)
            survey.flush()
            wait_for(lambda: decoded(cluster, "survey-respondents"), what="the first entry")

            stack.stop_service("broker")  # memory storage: every topic is gone
            time.sleep(3)
            assert engine.proc.poll() is None
            # the stack checks the port with a plain bind, which fails while the old broker's
            # connections linger in TIME_WAIT (up to a minute)
            wait_for(lambda: start_again(stack, "broker"), 90, "the broker's port to be free again")
            create_topics(cluster)
            survey = Survey(cluster)
            survey.question("1")
            survey.entry("1", 2, "Pecan Pie", 2_000)
            survey.flush()

            respondents = wait_for(lambda: decoded(cluster, "survey-respondents"), 90, "an entry after the restart")
            assert [v["user_id"] for _, v in respondents] == ["user-2"]
            responses = wait_for(lambda: decoded(cluster, "survey-responses"), 30, "the entry's response")
            assert [v["user_id"] for _, v in responses] == ["user-2"]
            # worker 1 may have been inside a transaction or a read when the broker went: librdkafka then
            # waits out its timeouts before the worker rebuilds
            live = wait_for(lambda: latest_per_key(decoded(cluster, "survey-results-live")), 150, "worker 1's live histogram after the restart")
            assert live[b"1"]["RESULTS"] == {"Pecan Pie": 1}  # counted from nothing: the old entries are gone
            with engine.client() as client:  # the queries were re-recorded in the new command topic
                assert len(client.execute("SHOW QUERIES;")[0]["queries"]) == 4
        finally:
            engine.stop()
        # each of the engine's processes (worker 0, the server, and worker 1) said so once
        log = engine.log.read_text()

        def said(what: str) -> list[bool]:
            return sorted(" worker-1 " in line for line in log.splitlines() if what in line)

        assert said("is unreachable or failing") == [False, True], log[-3000:]
        assert said("answers again") == [False, True], log[-3000:]


def start_again(stack, service: str) -> bool:
    from survey_kit.stack import StackError

    try:
        stack.start_service(service)
        return True
    except StackError as exc:
        if "already in use" not in str(exc):
            raise
        time.sleep(1)
        return False


def read_all(bootstrap_servers: str, topic: str, isolation: str) -> list[bytes]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "quirks", "isolation.level": isolation,
                         "enable.partition.eof": True, "log.connection.close": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = []
    try:
        while (message := consumer.poll(5)) is not None and message.error() is None:
            values.append(message.value())
    finally:
        consumer.close()
    return values


def test_broker_quirk_read_committed_shows_aborted_and_fenced_transactions(stack):
    """What the runtime's checkpoints work around (Tansu 0.6): read_committed shows the records of an
    aborted transaction, and those of an unfinished one once a new producer with its transactional.id
    fences it (a restarted engine). Kafka hides both. The broker notes say aborted records are hidden:
    that holds only when the records never left the producer (aborted before a flush).

    When this fails, the broker got it right: the runtime still works (it then skips nothing).
    """
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"quirk-{os.getpid()}-{time.monotonic_ns()}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()

    def producer():
        made = Producer({"bootstrap.servers": stack.bootstrap_servers, "transactional.id": topic})
        made.init_transactions(10)
        return made

    first = producer()
    first.begin_transaction()
    first.produce(topic, b"aborted")
    first.flush()
    first.abort_transaction()
    first.begin_transaction()
    first.produce(topic, b"unfinished when its producer died")
    first.flush()
    assert read_all(stack.bootstrap_servers, topic, "read_committed") == [b"aborted"]  # Kafka: []
    producer()  # the next instance fences the first
    assert read_all(stack.bootstrap_servers, topic, "read_committed") == [b"aborted", b"unfinished when its producer died"]  # Kafka: []


def test_wall_clock_closes_a_final_window_without_later_records(running):
    """The opt-in survey_kit.emit.final.wall.clock: the last window of a quiet survey still reports."""
    stack, cluster, engine = running
    with engine.client() as client:
        client.execute(
            "CREATE TABLE quiet_final WITH (kafka_topic='quiet-final', value_format='JSON') AS "
            "SELECT survey_id, HISTOGRAM(response) AS results FROM survey_entries "
            "WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 0 SECONDS) WHERE survey_id = 'quiet' GROUP BY survey_id EMIT FINAL;",
            properties={"survey_kit.emit.final.wall.clock": "true"},
        )
    survey = Survey(cluster)
    survey.entry("quiet", 300, "Apple Pie", 10_000)  # long past: its window ended when the epoch was a minute old
    survey.flush()
    final = wait_for(lambda: committed(cluster, "quiet-final"), 30, "the quiet window to close by wall clock")
    assert len(final) == 1
    assert json.loads(final[0][1])["RESULTS"] == {"Apple Pie": 1}


def test_a_statement_worker_0_did_not_pass_on_reaches_worker_1_from_the_command_topic(tmp_path):
    """Worker 0 passes each statement it records to the other workers; one it did not (no worker pool
    here) is found by worker 1's look at the command topic, which runs beside its loop."""
    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        create_topics(cluster)
        register_value_schemas(cluster)
        leader = EngineRuntime(cluster, engine_id="missed", workers=2).start()
        follower = EngineRuntime(cluster, engine_id="missed", worker=1, workers=2, command_topic_interval_s=1.0).start()
        try:
            assert leader.ready.wait(60) and follower.ready.wait(60)
            pipeline = read_pipeline(KSQL_DIR)
            for script in pipeline[:3]:  # the entries stream, the questions table, respondents: placed on worker 0
                leader.execute(script.text)
            leader.execute(pipeline[4].text)  # the live histogram: placed on worker 1, which nobody told
            wait_for(lambda: "SURVEY_RESULTS_LIVE" in follower.engine.sources, 30, "worker 1 to read the statements from the command topic")
            wait_for(lambda: [q.plan.sink.name for q in follower.engine.running_queries()] == ["SURVEY_RESULTS_LIVE"], 10,
                     "worker 1 to run the query placed on it")
            assert [q.plan.sink.name for q in leader.engine.running_queries()] == ["SURVEY_RESPONDENTS"]
        finally:
            follower.stop()
            leader.stop()


def test_what_a_read_of_the_command_topic_found_before_a_rebuild_is_not_applied_after_it(tmp_path):
    """A restarted embedded broker comes back without its topics: statements a background read found in the
    old command topic are not the new topic's, and a worker that rebuilt since drops them."""
    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        create_topics(cluster)
        register_value_schemas(cluster)
        follower = EngineRuntime(cluster, engine_id="stale", worker=1, workers=2).start()
        try:
            assert follower.ready.wait(60)
            stream, table = (Command(script.text.strip().rstrip(";"), {}).encode() for script in read_pipeline(KSQL_DIR)[:2])  # as recorded: no ';'
            follower._recorded.put((follower._rebuilds - 1, [(0, stream)]))  # read before the last rebuild
            wait_for(follower._recorded.empty, 10, "the worker to take the stale read")
            follower._recorded.put((follower._rebuilds, [(0, table)]))  # the new topic's first statement: applied
            wait_for(lambda: "SURVEY_QUESTIONS" in follower.engine.sources, 10, "the statement read since the rebuild")
            assert "SURVEY_ENTRIES" not in follower.engine.sources  # had the stale one been applied, offset 0 was taken
        finally:
            follower.stop()


def test_statements_are_rebuilt_in_order_from_a_command_topic_with_several_partitions(tmp_path):
    """A restarted embedded broker creates the command topic with 4 partitions when a client still asks
    about it before the engine creates it (tests/test_broker_quirks.py): the statements stay in the order
    they ran, so an engine rebuilt from them runs every query."""
    from confluent_kafka.admin import AdminClient, NewTopic

    with EmbeddedStack(data_dir=tmp_path / "stack", services=("broker", "registry")) as stack:
        cluster = from_stack(stack)
        create_topics(cluster)
        register_value_schemas(cluster)
        first = EngineRuntime(cluster, engine_id="scattered")
        admin = AdminClient(cluster.admin_config())
        admin.create_topics([NewTopic(first.command_topic, 4, 1)])[first.command_topic].result()
        first.start()
        try:
            assert first.ready.wait(60)
            for script in read_pipeline(KSQL_DIR):
                first.execute(script.text)
        finally:
            first.stop()
        rebuilt = EngineRuntime(cluster, engine_id="scattered").start()
        try:
            assert rebuilt.ready.wait(60)
            assert sorted(q.plan.sink.name for q in rebuilt.engine.running_queries()) == [
                "SURVEY_RESPONDENTS", "SURVEY_RESPONSES", "SURVEY_RESULTS_FINAL", "SURVEY_RESULTS_LIVE"]
        finally:
            rebuilt.stop()
