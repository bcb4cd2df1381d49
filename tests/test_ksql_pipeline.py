"""The talk's pipeline (ksql/*.sql) run through the engine core with the test driver, no broker."""

import io
import json
import struct
from pathlib import Path

import fastavro
import pytest

from survey_kit.ksql.driver import Driver
from survey_kit.ksql.engine import EMIT_FINAL_WALL_CLOCK, Engine
from survey_kit.ksql.formats import InMemorySchemaStore
from survey_kit.ksql.pipeline import read_pipeline
from survey_kit.ksql.types import KsqlError
from survey_kit.schemas import load_schema

KSQL_DIR = Path(__file__).resolve().parents[1] / "ksql"
HOUR = 3_600_000
MINUTE = 60_000
WINDOW = 48 * HOUR
GRACE = 10 * MINUTE


def avro(store, subject, schema_name, record) -> bytes:
    schema = load_schema(schema_name)
    schema_id = store.register(subject, schema)
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(schema)), record)
    return out.getvalue()


class Pipeline:
    """The pipeline applied to a fresh engine, and helpers to produce like the bot does."""

    def __init__(self, overrides=None, properties=None):
        self.store = InMemorySchemaStore()
        # the topics' value schemas are registered before the pipeline is applied (inference needs them)
        self.store.register("survey-entries-value", load_schema("survey-entries"))
        self.store.register("survey-questions-value", load_schema("survey-questions"))
        self.engine = Engine(schemas=self.store, properties=properties)
        for script in read_pipeline(KSQL_DIR, overrides):
            self.engine.execute(script.text)
        self.driver = Driver(self.engine)
        self.users = 0

    def question(self, survey_id, question, timestamp=0):
        value = avro(self.store, "survey-questions-value", "survey-questions", {
            "survey_id": survey_id, "question": question, "summary": question[:20],
            "options": ["Pumpkin Pie", "Pecan Pie", "Apple Pie"], "enabled": True,
        })
        self.driver.pipe("survey-questions", survey_id.encode(), value, timestamp)

    def entry(self, survey_id, response, timestamp, name="Ada", company=None, location="Lisbon"):
        self.users += 1
        value = avro(self.store, "survey-entries-value", "survey-entries", {
            "survey_id": survey_id, "user_id": f"user-{self.users}", "name": name,
            "company": company, "location": location, "response": response,
        })
        self.driver.pipe("survey-entries", survey_id.encode(), value, timestamp)

    def read(self, topic):
        return self.driver.read(topic)


@pytest.fixture
def pipeline():
    return Pipeline()


def test_sink_schemas_are_registered_when_the_pipeline_is_applied(pipeline):
    for topic in ("survey-respondents", "survey-responses", "survey-results-live", "survey-results-final"):
        assert pipeline.store.latest(f"{topic}-value") is not None, topic


def test_entries_split_into_respondents_and_responses(pipeline):
    pipeline.entry("1", "Apple Pie", 1000, name="Ada", company="ACME", location="Lisbon")
    pipeline.entry("1", "Pecan Pie", 2000, name="Bob", company=None, location=None)

    respondents = pipeline.read("survey-respondents")
    assert [r.value for r in respondents] == [
        {"user_id": "user-1", "name": "Ada", "company": "ACME", "location": "Lisbon"},
        {"user_id": "user-2", "name": "Bob", "company": None, "location": None},
    ]
    responses = pipeline.read("survey-responses")
    assert [r.value for r in responses] == [
        {"survey_id": "1", "user_id": "user-1", "response": "Apple Pie"},
        {"survey_id": "1", "user_id": "user-2", "response": "Pecan Pie"},
    ]
    assert [r.timestamp for r in responses] == [1000, 2000]
    # written with the talk's record names, nullable as ksqlDB writes every column
    respondent_schema = json.loads(pipeline.store.latest("survey-respondents-value")[1])
    assert (respondent_schema["namespace"], respondent_schema["name"]) == ("survey.bot", "surveyRespondent")
    assert [f["name"] for f in respondent_schema["fields"]] == ["user_id", "name", "company", "location"]


def test_live_results_count_every_response_per_survey_with_its_question(pipeline):
    pipeline.question("1", "Which Thanksgiving Pie is your favorite?")
    pipeline.question("2", "Which pie for breakfast?")
    pipeline.entry("1", "Apple Pie", 1000)
    pipeline.entry("2", "Pecan Pie", 1500)
    pipeline.entry("1", "Apple Pie", 2000)
    pipeline.entry("1", "Pumpkin Pie", 3000)

    live = pipeline.read("survey-results-live")
    assert [(r.key, r.value["RESULTS"]) for r in live] == [
        (("1",), {"Apple Pie": 1}),
        (("2",), {"Pecan Pie": 1}),
        (("1",), {"Apple Pie": 2}),
        (("1",), {"Apple Pie": 2, "Pumpkin Pie": 1}),
    ]
    assert live[-1].value["QUESTION"] == "Which Thanksgiving Pie is your favorite?"
    assert live[1].value["QUESTION"] == "Which pie for breakfast?"
    assert [r.timestamp for r in live] == [1000, 1500, 2000, 3000]
    results_schema = json.loads(pipeline.store.latest("survey-results-live-value")[1])
    assert results_schema["name"] == "KsqlDataSourceSchema"
    assert results_schema["fields"][1] == {"name": "RESULTS", "type": ["null", {"type": "map", "values": ["null", "long"]}], "default": None}


def test_an_entry_before_its_question_is_counted_and_the_question_fills_in_later(pipeline):
    pipeline.entry("7", "Apple Pie", 1000)
    pipeline.question("7", "Late question?")
    pipeline.entry("7", "Apple Pie", 2000)
    live = pipeline.read("survey-results-live")
    assert [(r.value["QUESTION"], r.value["RESULTS"]) for r in live] == [
        (None, {"Apple Pie": 1}),
        ("Late question?", {"Apple Pie": 2}),
    ]


def test_final_results_are_emitted_once_when_the_window_closes(pipeline):
    pipeline.question("1", "Which pie?")
    pipeline.entry("1", "Apple Pie", 1 * HOUR)
    pipeline.entry("1", "Pecan Pie", 47 * HOUR)
    pipeline.entry("1", "Apple Pie", WINDOW + 5 * MINUTE)  # next window; the first is still in its grace period
    assert pipeline.read("survey-results-final") == []

    pipeline.entry("1", "Pecan Pie", WINDOW - 1)  # late but within grace: counted in the first window
    pipeline.entry("1", "Apple Pie", WINDOW + GRACE)  # stream time reaches end + grace: the first window closes
    final = pipeline.read("survey-results-final")
    assert len(final) == 1
    assert (final[0].key, final[0].window_start, final[0].window_end) == (("1",), 0, WINDOW)
    assert final[0].value == {"QUESTION": "Which pie?", "RESULTS": {"Apple Pie": 1, "Pecan Pie": 2}}
    assert final[0].timestamp == WINDOW - 1  # the newest record time in the window, as ksqlDB
    # the windowed key is Kafka Streams' time-windowed key: key bytes then the 8-byte window start
    assert pipeline.driver.outputs["survey-results-final"][0].key == b"1" + struct.pack(">q", 0)

    pipeline.entry("1", "Pumpkin Pie", WINDOW - 2)  # after end + grace: dropped and counted
    pipeline.entry("1", "Apple Pie", WINDOW + GRACE + 1)
    assert pipeline.read("survey-results-final") == []
    metrics = pipeline.engine.query_metrics()
    assert any(m["late_records_dropped"] == 1 for q, m in metrics.items() if "FINAL" in q)


def test_the_window_is_a_variable_a_demo_overrides():
    demo = Pipeline(overrides={"results_window_size": "5 MINUTES", "results_window_grace": "30 SECONDS"})
    demo.entry("1", "Apple Pie", 1 * MINUTE)
    demo.entry("1", "Apple Pie", 5 * MINUTE + 30_000)
    final = demo.read("survey-results-final")
    assert [(r.window_start, r.window_end, r.value["RESULTS"]) for r in final] == [(0, 5 * MINUTE, {"Apple Pie": 1})]
    with pytest.raises(KsqlError, match="results_window_sise"):
        read_pipeline(KSQL_DIR, {"results_window_sise": "5 MINUTES"})


def test_the_scripts_sent_to_a_server_carry_the_window_as_literals():
    # ksqlDB's grammar takes no ${variable} as a WINDOW size, so the values are written in
    scripts = read_pipeline(KSQL_DIR, {"results_window_grace": "30 SECONDS"})
    assert all("${" not in script.text for script in scripts)
    assert "WINDOW TUMBLING (SIZE 48 HOURS, GRACE PERIOD 30 SECONDS)" in scripts[-1].text
    assert "${results_window_size}" in scripts[-1].path.read_text()


def test_wall_clock_closing_reports_a_survey_whose_last_vote_came_before_the_window_end():
    # stock ksqlDB never emits this window: no later record advances stream time
    stock = Pipeline()
    stock.entry("1", "Apple Pie", 1 * HOUR)
    stock.driver.punctuate(WINDOW + GRACE + 1)
    assert stock.read("survey-results-final") == []

    demo = Pipeline(properties={EMIT_FINAL_WALL_CLOCK: "true"})
    demo.entry("1", "Apple Pie", 1 * HOUR)
    demo.driver.punctuate(WINDOW + GRACE - 1)
    assert demo.read("survey-results-final") == []
    demo.driver.punctuate(WINDOW + GRACE)
    final = demo.read("survey-results-final")
    assert [(r.window_start, r.value["RESULTS"]) for r in final] == [(0, {"Apple Pie": 1})]
    # neither a later record for the closed window nor stream time passing emits it again
    demo.entry("1", "Pecan Pie", WINDOW - 1)
    demo.entry("1", "Apple Pie", WINDOW + GRACE + 5)
    demo.driver.punctuate(WINDOW + GRACE + 10)
    assert demo.read("survey-results-final") == []


def test_a_malformed_entry_goes_to_the_dead_letters_and_the_pipeline_goes_on(pipeline):
    pipeline.driver.pipe("survey-entries", b"1", b"not avro at all", 1000)
    pipeline.driver.pipe("survey-entries", b"1", b"\x00\x00\x00\x03\xe7garbage", 1001)  # unknown schema id 999
    pipeline.entry("1", "Apple Pie", 2000)
    assert len(pipeline.driver.dead_letters) == 2
    letter = json.loads(pipeline.driver.dead_letters[0].value)
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("survey-entries", 0, 0)
    assert "Avro" in letter["error"]
    assert "unknown Avro schema id 999" in json.loads(pipeline.driver.dead_letters[1].value)["error"]
    assert pipeline.engine.metrics.dead_letters == 2
    assert [r.value["RESULTS"] for r in pipeline.read("survey-results-live")] == [{"Apple Pie": 1}]


def test_applying_the_files_twice_is_harmless(pipeline):
    queries = set(pipeline.engine.queries)
    for script in read_pipeline(KSQL_DIR):
        pipeline.engine.execute(script.text)
    assert set(pipeline.engine.queries) == queries
    pipeline.entry("1", "Apple Pie", 1000)
    assert len(pipeline.read("survey-results-live")) == 1


def test_applying_the_files_again_with_other_properties_says_the_old_ones_stay(pipeline):
    # the pipeline was created closing final windows by stream time only; a workshop asks for wall-clock closing
    pipeline.engine.properties[EMIT_FINAL_WALL_CLOCK] = "true"
    messages = [r.message for script in read_pipeline(KSQL_DIR) for r in pipeline.engine.execute(script.text)]
    changed = [m for m in messages if "stays in force" in m]
    assert changed == ["Table SURVEY_RESULTS_FINAL already exists; nothing to do. Its query runs with "
                       "survey_kit.emit.final.wall.clock = false (this request: true), which stays in force: "
                       "DROP TABLE SURVEY_RESULTS_FINAL; first to change it."]
    query = pipeline.engine.queries[pipeline.engine.sources["SURVEY_RESULTS_FINAL"].written_by]
    assert query.wall_clock_close is False
    assert pipeline.engine.execute(f"EXPLAIN {query.query_id};")[0].rows[0]["overridden_properties"] == {}


def test_applying_the_files_again_with_another_window_says_the_old_one_stays():
    demo = Pipeline(overrides={"results_window_size": "30 SECONDS"})
    results = [demo.engine.execute(script.text) for script in read_pipeline(KSQL_DIR, {"results_window_size": "5 MINUTES"})]
    messages = [r.message for script_results in results for r in script_results]
    final = [m for m in messages if "SURVEY_RESULTS_FINAL" in m]
    assert final == ["Table SURVEY_RESULTS_FINAL already exists; nothing to do. It was created by a different "
                     "statement, which stays in force: DROP TABLE SURVEY_RESULTS_FINAL; first to replace it."]
    assert sum("different statement" in m for m in messages) == 1  # the other files are the same as applied
    assert "SIZE 30 SECONDS" in demo.engine.sources["SURVEY_RESULTS_FINAL"].statement


def test_the_results_window_comes_from_the_files_without_a_server():
    from survey_kit.cluster import Cluster
    from survey_kit.ksql.apply import results_window

    nowhere = Cluster("127.0.0.1:1", "http://127.0.0.1:1")  # no ksqlDB to DESCRIBE the table
    assert results_window(nowhere) == ("48 HOURS", "10 MINUTES")
    assert results_window(nowhere, "5 MINUTES") == ("5 MINUTES", "10 MINUTES")
    with pytest.raises(ValueError, match="window_size '5 minutez' is not a ksqlDB duration"):
        results_window(nowhere, "5 minutez")
