"""The bot reads the result topics in the format the project's ksql pipeline (ksql/*.sql) writes: checked
by running the pipeline through the engine's test driver and parsing its raw output records."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime
from pathlib import Path

import fastavro

from survey_kit.bot.alerts import final_text, window_id
from survey_kit.bot.catalog import SurveyCatalog
from survey_kit.bot.results import format_results, parse_result
from survey_kit.ksql.driver import Driver
from survey_kit.ksql.engine import Engine
from survey_kit.ksql.formats import InMemorySchemaStore
from survey_kit.ksql.pipeline import read_pipeline
from survey_kit.schemas import load_schema
from survey_kit.surveys import Survey

KSQL_DIR = Path(__file__).resolve().parents[1] / "ksql"
PIE = Survey("1", "Which pie?", "Pies", ["Apple Pie", "Pecan Pie"])
WINDOW = 5 * 60_000


class Pipeline:
    def __init__(self):
        self.store = InMemorySchemaStore()
        for name in ("survey-entries", "survey-questions"):
            self.store.register(f"{name}-value", load_schema(name))
        self.engine = Engine(schemas=self.store)
        overrides = {"results_window_size": "5 MINUTES", "results_window_grace": "0 SECONDS"}
        for script in read_pipeline(KSQL_DIR, overrides):
            self.engine.execute(script.text)
        self.driver = Driver(self.engine)
        self.users = 0

    def encode(self, name: str, record: dict) -> bytes:
        schema = load_schema(name)
        out = io.BytesIO()
        out.write(b"\x00" + struct.pack(">I", self.store.register(f"{name}-value", schema)))
        fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(schema)), record)
        return out.getvalue()

    def question(self, survey: Survey) -> None:
        self.driver.pipe("survey-questions", survey.survey_id.encode(),
                         self.encode("survey-questions", survey.to_record()), 0)

    def entry(self, response: str, timestamp: int) -> None:
        self.users += 1
        value = self.encode("survey-entries", {"survey_id": "1", "user_id": str(self.users), "name": "Ada",
                                                "company": None, "location": None, "response": response})
        self.driver.pipe("survey-entries", b"1", value, timestamp)

    def raw(self, topic: str):
        """The output records as the bot's consumer gets them: raw key, Avro value decoded."""
        for record in self.driver.outputs[topic]:
            data = io.BytesIO(record.value)
            data.read(1)
            (schema_id,) = struct.unpack(">I", data.read(4))
            schema = fastavro.parse_schema(json.loads(self.store.schema_by_id(schema_id)))
            yield record.key, fastavro.schemaless_reader(data, schema)


def test_live_results_parse_to_the_latest_histogram_per_survey():
    pipeline = Pipeline()
    pipeline.question(PIE)
    for response, at in (("Apple Pie", 1_000), ("Pecan Pie", 2_000), ("Apple Pie", 3_000)):
        pipeline.entry(response, at)
    pipeline.driver.commit()
    results = [parse_result(key, value) for key, value in pipeline.raw("survey-results-live")]
    latest = results[-1]
    assert (latest.key, latest.question, latest.counts) == ("1", "Which pie?", {"Apple Pie": 2, "Pecan Pie": 1})
    assert format_results(PIE, latest.counts, "live").splitlines()[-1] == "3 answers in total."


def test_final_results_parse_with_their_window():
    pipeline = Pipeline()
    pipeline.question(PIE)
    pipeline.entry("Apple Pie", 1_000)
    pipeline.entry("Pecan Pie", 2_000)
    pipeline.entry("Pecan Pie", WINDOW + 1_000)  # stream time passes the first window's end: it closes
    (final,) = [parse_result(key, value, windowed=True) for key, value in pipeline.raw("survey-results-final")]
    assert final.key == "1" and final.counts == {"Apple Pie": 1, "Pecan Pie": 1}
    assert final.window_start == datetime(1970, 1, 1, tzinfo=UTC)
    assert window_id(final) == "1@0"
    assert final_text(final, SurveyCatalog([PIE])).splitlines()[0] == (
        'Results for "Pies" (final results of the window from 1970-01-01 00:00 UTC):')


def test_records_without_a_histogram_are_not_results():
    assert parse_result(b"1", None) is None
    assert parse_result(b"1", {"QUESTION": "q"}) is None
    assert parse_result(b"", {"RESULTS": {"a": 1}}) is None
