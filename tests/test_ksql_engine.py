"""The engine core: statements, errors, formats, joins, state and caching (no broker)."""

import datetime
import io
import json
import random
import struct
from pathlib import Path

import fastavro
import pytest

from survey_kit.ksql import Driver, Engine, InMemorySchemaStore, KsqlError
from survey_kit.ksql.engine import DEFAULT_DEAD_LETTER_TOPIC
from survey_kit.ksql.functions import HISTOGRAM_LIMIT
from survey_kit.ksql.pipeline import read_pipeline
from survey_kit.schemas import load_schema

USERS = "CREATE STREAM users (id STRING KEY, name STRING, city STRING, age INT) WITH (kafka_topic='users', value_format='JSON');"


def pipe_json(driver, topic, key, value, timestamp=0, partition=0):
    driver.pipe(topic, key.encode() if key is not None else None, json.dumps(value).encode() if value is not None else None, timestamp, partition)


def test_a_syntax_error_names_the_line_and_column_as_ksqldb_does():
    engine = Engine()
    engine.execute(USERS)
    with pytest.raises(KsqlError) as rejected:
        engine.execute("-- comment line\nCREATE STREAM x AS SELECT name FROM users\n  QUALIFY city;")
    line, detail, statement = str(rejected.value).split("\n", 2)
    assert line == "line 3:11: Syntax Error"
    assert detail.startswith("mismatched input 'city' expecting {") and "'WHERE'" in detail and "'EMIT'" in detail
    assert statement.startswith("Statement at line 2, column 1: CREATE STREAM x AS SELECT name")
    # one token that would have let the parse go on is named, as ANTLR (ksqlDB's parser) names it
    with pytest.raises(KsqlError, match=r"^line 1:65: Syntax Error\nmissing '\)' at ','\n"):
        engine.execute("CREATE TABLE t AS SELECT COUNT(*) FROM users GROUP BY age, (city, name);")
    with pytest.raises(KsqlError, match=r"^line 1:49: Syntax Error\ntoken recognition error at: '#'\n"):
        engine.execute("CREATE STREAM y AS SELECT name FROM users WHERE #;")


@pytest.mark.parametrize("condition, kept", [
    ("age > 18", ["Ada"]), ("age < 18", ["Kid"]), ("age >= 18", ["Ada", "Teen"]), ("age <= 18", ["Kid", "Teen"]),
    ("age = 18", ["Teen"]), ("age != 18", ["Ada", "Kid"]), ("age <> 18", ["Ada", "Kid"]), ("18<age", ["Ada"]),
])
def test_where_keeps_the_records_each_comparison_keeps(condition, kept):
    # "<" and ">" also bracket ARRAY<...> and friends: alone, as comparisons, they were once syntax errors
    engine = Engine()
    engine.execute(USERS)
    engine.execute(f"CREATE STREAM kept AS SELECT id, name FROM users WHERE {condition};")
    driver = Driver(engine)
    for user, (name, age) in enumerate([("Ada", 36), ("Kid", 9), ("Teen", 18)]):
        pipe_json(driver, "users", f"u{user}", {"name": name, "city": "Lisbon", "age": age})
    assert [r.value["NAME"] for r in driver.read("KEPT")] == kept


def test_a_function_given_an_argument_of_another_type_is_rejected_with_what_it_takes():
    # ksqlDB finds no variant of UCASE for an INT and rejects the statement; run, each record would fail
    engine = Engine()
    engine.execute(USERS)
    with pytest.raises(KsqlError, match=r"Function 'UCASE' does not accept parameters \(INT\): it takes UCASE\(STRING\)\. "
                                        r"Convert argument 1 first, e.g\. with CAST\(\.\.\. AS STRING\)"):
        engine.execute("CREATE STREAM loud AS SELECT id, UCASE(age) AS a FROM users;")
    with pytest.raises(KsqlError, match=r"it takes SUBSTRING\(STRING, INT\[, INT\]\)"):
        engine.execute("CREATE STREAM part AS SELECT id, SUBSTRING(name, 'x') AS a FROM users;")
    # a NULL literal fits any parameter, numbers of every kind fit ABS
    engine.execute("CREATE STREAM ok AS SELECT id, MASK(name, NULL, 'y') AS m, ABS(age) AS a, ABS(CAST(age AS DOUBLE)) AS d,"
                   " UCASE(CAST(age AS STRING)) AS t FROM users;")
    driver = Driver(engine)
    pipe_json(driver, "users", "u1", {"name": "Ada 2", "city": "Lisbon", "age": -36})
    assert [r.value for r in driver.read("OK")] == [{"M": "Ayy-n", "A": 36, "D": 36.0, "T": "-36"}]


@pytest.mark.parametrize("statement, error", [
    # each would otherwise run and quietly drop or fail every record
    ("CREATE STREAM s AS SELECT id, name FROM users WHERE age;",
     r"Type error in WHERE expression: Should evaluate to boolean but is AGE \(INT\) instead\."),
    ("CREATE TABLE t AS SELECT city, COUNT(*) AS n FROM users GROUP BY city HAVING COUNT(*);",
     r"Type error in HAVING expression: Should evaluate to boolean but is COUNT\(\*\) \(BIGINT\) instead\."),
    ("CREATE TABLE t AS SELECT city, COUNT(*) AS n FROM users WINDOW TUMBLING (SIZE 0 SECONDS) GROUP BY city;",
     r"Window size must be larger than zero: TUMBLING \(SIZE 0 SECONDS\) at line 1, column \d+\. Give a SIZE of at least 1 MILLISECOND\."),
    ("SET 'ksql.streams.cache.max.bytes.buffering' = 'lots';",
     r"Invalid value lots for configuration ksql.streams.cache.max.bytes.buffering: Not a number of type LONG"),
    ("SET 'survey_kit.emit.final.wall.clock' = 'yes';",
     r"Invalid value yes for configuration survey_kit.emit.final.wall.clock: Expected value to be either true or false\."),
])
def test_a_statement_that_could_only_drop_or_fail_its_records_is_rejected(statement, error):
    engine = Engine()
    engine.execute(USERS)
    with pytest.raises(KsqlError, match=error):
        engine.execute(statement)
    assert not engine.queries and engine.properties.get("ksql.streams.cache.max.bytes.buffering") != "lots"


PARSE_IN_A_NEW_PROCESS = (
    "from survey_kit.ksql.parser import parse_statement, split_statements; "
    "print(type(parse_statement(split_statements('SHOW STREAMS;')[0])).__name__)"
)


@pytest.mark.parametrize("damage", ["garbage in the cache file", "the cache folder is a file"])
def test_the_grammar_cache_never_stops_parsing(tmp_path, damage):
    # every process loads the parser's tables from the user's cache: a damaged one is rebuilt, an unusable
    # place skipped
    import os
    import subprocess
    import sys

    cache_file = tmp_path / "survey-kit" / "ksql-grammar.lark-cache"
    if damage == "garbage in the cache file":
        cache_file.parent.mkdir()
        cache_file.write_bytes(b"not a lark cache\n\x80\x04garbage")
        cache_home = tmp_path
    else:
        cache_home = tmp_path / "a-file"
        cache_home.write_text("")
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    for _ in range(2):  # the second run reads what the first one wrote, if it could write
        done = subprocess.run([sys.executable, "-c", PARSE_IN_A_NEW_PROCESS], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "Show" and "Traceback" not in done.stderr
    if damage == "garbage in the cache file":
        assert not cache_file.read_bytes().startswith(b"not a lark cache")  # rewritten


def test_statements_outside_the_subset_are_rejected_with_the_construct_and_position():
    engine = Engine()
    engine.execute(USERS)
    with pytest.raises(KsqlError, match=r"Unsupported statement 'INSERT' at line 1, column 1"):
        engine.execute("INSERT INTO users SELECT * FROM users;")
    with pytest.raises(KsqlError, match=r"HOPPING windows are outside the engine's subset \(TUMBLING\) \(at line 2, column 3\)"):
        engine.execute("CREATE TABLE t AS SELECT city, COUNT(*) FROM users\n  WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 10 SECONDS) GROUP BY city;")
    with pytest.raises(KsqlError, match="PARTITION BY is outside"):
        engine.execute("CREATE STREAM s AS SELECT * FROM users PARTITION BY city;")
    with pytest.raises(KsqlError, match="format PROTOBUF|Format PROTOBUF"):
        engine.execute("CREATE STREAM p (a INT) WITH (kafka_topic='p', value_format='PROTOBUF');")


def test_define_substitutes_variables_and_an_undefined_one_is_an_error():
    engine = Engine()
    engine.execute("DEFINE topic = 'people'; DEFINE fmt = 'JSON';")
    engine.execute("CREATE STREAM people (id STRING KEY, name STRING) WITH (kafka_topic='${topic}', value_format='${FMT}');")
    assert engine.sources["PEOPLE"].topic == "people"
    engine.execute("UNDEFINE topic;")
    with pytest.raises(KsqlError, match="Variable 'topic' is not defined"):
        engine.execute("CREATE STREAM again WITH (kafka_topic='${topic}', value_format='JSON');")


def test_projection_filter_and_scalar_functions():
    engine = Engine()
    engine.execute(USERS)
    engine.execute(
        "CREATE STREAM adults AS SELECT id, UCASE(name) AS loud, LCASE(city) AS quiet, MASK(name) AS masked,"
        " CONCAT(TRIM(name), '@', city) AS handle, CAST(age AS STRING) AS age_text, ROWTIME AS seen"
        " FROM users WHERE age >= 18 EMIT CHANGES;"
    )
    driver = Driver(engine)
    pipe_json(driver, "users", "u1", {"name": " Ada ", "city": "Lisbon", "age": 36}, timestamp=5)
    pipe_json(driver, "users", "u2", {"name": "Kid", "city": "Porto", "age": 9}, timestamp=6)
    pipe_json(driver, "users", "u3", None, timestamp=7)  # a null value is no event on a stream
    out = driver.read("ADULTS")
    assert [(r.key, r.value, r.timestamp) for r in out] == [
        (("u1",), {"LOUD": " ADA ", "QUIET": "lisbon", "MASKED": "-Xxx-", "HANDLE": "Ada@Lisbon", "AGE_TEXT": "36", "SEEN": 5}, 5)
    ]


def test_stream_table_joins_on_the_table_key():
    engine = Engine()
    engine.execute("CREATE STREAM votes (voter STRING, survey STRING, answer STRING) WITH (kafka_topic='votes', value_format='JSON');")
    engine.execute("CREATE TABLE surveys (id STRING PRIMARY KEY, title STRING) WITH (kafka_topic='surveys', value_format='JSON');")
    engine.execute("CREATE STREAM inner_votes AS SELECT v.survey, s.title, v.answer FROM votes v JOIN surveys s ON v.survey = s.id;")
    engine.execute("CREATE STREAM left_votes AS SELECT v.survey, s.title, v.answer FROM votes v LEFT JOIN surveys s ON v.survey = s.id;")
    driver = Driver(engine)
    pipe_json(driver, "votes", None, {"voter": "a", "survey": "1", "answer": "yes"})
    pipe_json(driver, "surveys", "1", {"title": "Pie?"})
    pipe_json(driver, "votes", None, {"voter": "b", "survey": "1", "answer": "no"})
    pipe_json(driver, "surveys", "1", None)  # the survey is deleted
    pipe_json(driver, "votes", None, {"voter": "c", "survey": "1", "answer": "maybe"})
    assert [(r.key, r.value) for r in driver.read("INNER_VOTES")] == [(("1",), {"S_TITLE": "Pie?", "V_ANSWER": "no"})]
    assert [r.value["S_TITLE"] for r in driver.read("LEFT_VOTES")] == [None, "Pie?", None]


def test_table_aggregation_retracts_updated_and_deleted_rows():
    engine = Engine()
    engine.execute("CREATE TABLE people (id STRING PRIMARY KEY, city STRING) WITH (kafka_topic='people', value_format='JSON');")
    engine.execute("CREATE TABLE per_city AS SELECT city, COUNT(*) AS n FROM people GROUP BY city;")
    driver = Driver(engine)
    pipe_json(driver, "people", "1", {"city": "Lisbon"})
    pipe_json(driver, "people", "2", {"city": "Lisbon"})
    pipe_json(driver, "people", "1", {"city": "Porto"})
    pipe_json(driver, "people", "2", None)
    assert [(r.key[0], r.value["N"]) for r in driver.read("PER_CITY")] == [
        ("Lisbon", 1), ("Lisbon", 2), ("Lisbon", 1), ("Porto", 1), ("Lisbon", 0)
    ]


def test_histogram_keeps_at_most_1000_distinct_values():
    engine = Engine()
    engine.execute("CREATE STREAM words (w STRING) WITH (kafka_topic='words', value_format='JSON');")
    engine.execute("CREATE TABLE h AS SELECT 'all' AS k, HISTOGRAM(w) AS counts FROM words GROUP BY 'all';")
    driver = Driver(engine)
    for i in range(HISTOGRAM_LIMIT + 5):
        pipe_json(driver, "words", None, {"w": f"w{i}"})
    pipe_json(driver, "words", None, {"w": "w0"})
    last = driver.read("H")[-1].value["COUNTS"]
    assert len(last) == HISTOGRAM_LIMIT
    assert last["w0"] == 2 and f"w{HISTOGRAM_LIMIT}" not in last


def test_windowed_keys_and_delimited_and_kafka_formats():
    engine = Engine()
    engine.execute("CREATE STREAM clicks (page STRING KEY, ms BIGINT) WITH (kafka_topic='clicks', value_format='DELIMITED');")
    engine.execute("CREATE TABLE per_minute WITH (value_format='KAFKA') AS SELECT page, COUNT(*) AS n FROM clicks WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY page;")
    driver = Driver(engine)
    driver.pipe("clicks", b"home", b"12", 61_000)
    driver.pipe("clicks", b"home", b"7", 119_999)
    raw = driver.outputs["PER_MINUTE"]  # the sink topic defaults to the upper-cased name, as in ksqlDB
    assert raw[-1].key == b"home" + struct.pack(">q", 60_000)
    assert raw[-1].value == struct.pack(">q", 2)
    assert [(r.window_start, r.window_end, r.value) for r in driver.read("PER_MINUTE")] == [(60_000, 120_000, {"N": 1}), (60_000, 120_000, {"N": 2})]


def test_malformed_records_become_counted_dead_letters():
    engine = Engine(schemas=InMemorySchemaStore())
    engine.execute(USERS)
    engine.execute("CREATE STREAM copy AS SELECT * FROM users;")
    driver = Driver(engine)
    driver.pipe("users", b"u1", b"{not json", 1)
    pipe_json(driver, "users", "u2", {"name": "Ada", "age": "not a number"})
    pipe_json(driver, "users", "u3", {"name": "Bob", "age": 3})
    errors = [json.loads(d.value) for d in driver.dead_letters]
    assert [(e["topic"], e["offset"]) for e in errors] == [("users", 0), ("users", 1)]
    assert "not valid JSON" in errors[0]["error"] and "AGE" in errors[1]["error"]
    assert engine.metrics.dead_letters == 2
    assert [r.key for r in driver.read("COPY")] == [("u3",)]


def test_record_cache_coalesces_updates_per_key_until_commit():
    engine = Engine(properties={"ksql.streams.cache.max.bytes.buffering": "10000000"})
    engine.execute(USERS)
    engine.execute("CREATE TABLE per_city AS SELECT city, COUNT(*) AS n FROM users GROUP BY city;")
    driver = Driver(engine)
    for i, city in enumerate(["Lisbon", "Porto", "Lisbon", "Lisbon"]):
        pipe_json(driver, "users", f"u{i}", {"name": "x", "city": city, "age": 1})
    assert driver.read("PER_CITY") == []
    driver.commit()
    assert sorted((r.key[0], r.value["N"]) for r in driver.read("PER_CITY")) == [("Lisbon", 3), ("Porto", 1)]


def test_state_restored_from_the_changelog_continues_exactly():
    statements = USERS + "CREATE TABLE per_city AS SELECT city, COUNT(*) AS n, MAX(age) AS oldest FROM users GROUP BY city;"
    records = [("u%d" % i, {"name": "x", "city": ["A", "B"][i % 2], "age": i}) for i in range(10)]

    uninterrupted = Engine()
    uninterrupted.execute(statements)
    reference = Driver(uninterrupted)
    for key, value in records:
        pipe_json(reference, "users", key, value)

    first = Engine()
    first.execute(statements)
    first_driver = Driver(first)
    for key, value in records[:6]:
        pipe_json(first_driver, "users", key, value)
    changelog = first.drain_changes()
    assert changelog and first.drain_changes() == []  # drained once

    restarted = Engine()
    restarted.execute(statements)
    restarted.apply_changes(json.loads(json.dumps(changelog)))  # as written to and read from a topic
    second_driver = Driver(restarted)
    for key, value in records[6:]:
        pipe_json(second_driver, "users", key, value)
    combined = first_driver.read("PER_CITY") + second_driver.read("PER_CITY")
    assert [(r.key, r.value) for r in combined] == [(r.key, r.value) for r in reference.read("PER_CITY")]

    snapshot_engine = Engine()
    snapshot_engine.execute(statements)
    snapshot_engine.restore(uninterrupted.snapshot())
    assert snapshot_engine.snapshot() == uninterrupted.snapshot()


def test_show_describe_drop_and_terminate():
    engine = Engine()
    engine.execute(USERS)
    engine.execute("CREATE STREAM names AS SELECT id, name FROM users;")
    assert [r["name"] for r in engine.execute("SHOW STREAMS;")[0].rows] == ["USERS", "NAMES"]
    queries = engine.execute("SHOW QUERIES;")[0].rows
    assert [q["id"] for q in queries] == ["CSAS_NAMES_0"]
    described = engine.execute("DESCRIBE names;")[0]
    assert [r["field"] for r in described.rows] == ["ID", "NAME"] and "CSAS_NAMES_0" in described.message
    explained = engine.execute("EXPLAIN csas_names_0;")[0].rows[0]
    assert (explained["id"], explained["sources"], explained["sink"]) == ("CSAS_NAMES_0", ["USERS"], "NAMES")
    assert explained["overridden_properties"] == {}  # created with the engine's own properties
    with pytest.raises(KsqlError, match="The following queries read from this source: \\[CSAS_NAMES_0\\]"):
        engine.execute("DROP STREAM users;")
    engine.execute("TERMINATE CSAS_NAMES_0;")
    assert engine.source_topics() == []
    result = engine.execute("DROP STREAM users DELETE TOPIC;")[0]
    assert result.rows == [{"deleted_topic": "users"}]
    assert "USERS" not in engine.sources
    engine.execute("SET 'ksql.streams.cache.max.bytes.buffering' = '0';")
    assert engine.execute("SHOW PROPERTIES;")[0].rows == [{"property": "ksql.streams.cache.max.bytes.buffering", "value": "0"}]


def test_stream_time_is_kept_per_input_partition():
    engine = Engine()
    engine.execute("CREATE STREAM votes (survey STRING KEY, answer STRING) WITH (kafka_topic='votes', value_format='JSON', partitions=2);")
    engine.execute(
        "CREATE TABLE final_counts AS SELECT survey, COUNT(*) AS n FROM votes"
        " WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY survey EMIT FINAL;"
    )
    driver = Driver(engine)
    pipe_json(driver, "votes", "a", {"answer": "x"}, timestamp=1_000, partition=0)
    pipe_json(driver, "votes", "b", {"answer": "x"}, timestamp=2_000, partition=1)
    pipe_json(driver, "votes", "b", {"answer": "y"}, timestamp=12_000, partition=1)  # closes partition 1's window only
    assert [(r.key, r.value) for r in driver.read("FINAL_COUNTS")] == [(("b",), {"N": 1})]
    pipe_json(driver, "votes", "a", {"answer": "y"}, timestamp=10_000, partition=0)
    assert [(r.key, r.window_start, r.value) for r in driver.read("FINAL_COUNTS")] == [(("a",), 0, {"N": 1})]


def test_a_result_that_cannot_be_written_becomes_a_dead_letter_not_a_crash():
    engine = Engine()
    engine.execute("CREATE STREAM words (w STRING) WITH (kafka_topic='words', value_format='JSON');")
    engine.execute("CREATE STREAM loud WITH (value_format='KAFKA') AS SELECT UCASE(w) AS u FROM words;")
    driver = Driver(engine)
    driver.pipe("words", None, b'{"w": "\\ud800 pie"}', 0)  # JSON may escape half a surrogate pair: no UTF-8 for it
    pipe_json(driver, "words", None, {"w": "pie"})
    assert "CSAS_LOUD_0 failed on this record: UnicodeEncodeError" in json.loads(driver.dead_letters[0].value)["error"]
    assert [r.value for r in driver.read("LOUD")] == [{"U": "PIE"}]


def test_integers_overflow_and_narrow_as_java_does():
    # ksqlDB computes INT and BIGINT with Java's int and long: results stay in their type's range (the Avro
    # sink's int and long hold them)
    engine = Engine(schemas=InMemorySchemaStore())
    engine.execute("CREATE STREAM nums (id STRING KEY, a INT, l BIGINT, d DOUBLE, s STRING) WITH (kafka_topic='nums', value_format='JSON');")
    engine.execute("CREATE STREAM out WITH (value_format='AVRO') AS SELECT id, a * a AS square, a / -1 AS negated, l * 4 AS times4,"
                   " CAST(l AS INT) AS low, CAST(d AS INT) AS whole, CAST(s AS INT) AS parsed FROM nums;")
    engine.execute("CREATE TABLE totals AS SELECT id, SUM(a) AS total FROM nums GROUP BY id;")
    driver = Driver(engine)
    pipe_json(driver, "nums", "k", {"a": 100_000, "l": 2**62, "d": 1e20, "s": "99999999999"})
    pipe_json(driver, "nums", "k", {"a": -(2**31), "l": 2**32 + 5, "d": -7.9, "s": " 12 "})
    assert [r.value for r in driver.read("OUT")] == [
        {"SQUARE": 1_410_065_408, "NEGATED": -100_000, "TIMES4": 0, "LOW": 0, "WHOLE": 2**31 - 1, "PARSED": None},
        {"SQUARE": 0, "NEGATED": -(2**31), "TIMES4": 17_179_869_204, "LOW": 5, "WHOLE": -7, "PARSED": 12},
    ]
    assert [r.value["TOTAL"] for r in driver.read("TOTALS")] == [100_000, -(2**31) + 100_000]
    assert driver.dead_letters == []


def test_changelog_values_survive_json_with_decimals():
    statements = (
        "CREATE STREAM prices (item STRING KEY, price DECIMAL(6,2)) WITH (kafka_topic='prices', value_format='JSON');"
        "CREATE TABLE top AS SELECT item, MAX(price) AS best, SUM(price) AS total FROM prices GROUP BY item;"
    )
    first = Engine()
    first.execute(statements)
    driver = Driver(first)
    pipe_json(driver, "prices", "pie", {"price": 1.25})
    changelog = json.loads(json.dumps(first.drain_changes()))
    restarted = Engine()
    restarted.execute(statements)
    restarted.apply_changes(changelog)
    second = Driver(restarted)
    pipe_json(second, "prices", "pie", {"price": 2.5})
    assert [r.value for r in second.read("TOP")] == [{"BEST": 2.5, "TOTAL": 3.75}]


# ---------------------------------------------------------------- batches

KSQL_DIR = Path(__file__).resolve().parents[1] / "ksql"
RESPONSES = ["Pumpkin Pie", "Pecan Pie", "Apple Pie"]


def test_avro_dates_times_and_other_logical_types_are_columns_of_ksqldbs_types():
    # as ksqlDB infers them: date DATE (days), time-millis TIME (ms of the day), timestamp-millis TIMESTAMP (epoch
    # ms); uuid and micros their plain type. A row carries those numbers, so a projection writes them back
    writer = {"type": "record", "name": "visit", "fields": [
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at", "type": ["null", {"type": "int", "logicalType": "time-millis"}]},
        {"name": "seen", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "exact", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "visitor", "type": {"type": "string", "logicalType": "uuid"}},
    ]}
    store = InMemorySchemaStore()
    schema_id = store.register("visits-value", json.dumps(writer))
    engine = Engine(schemas=store)
    engine.execute("CREATE STREAM visits WITH (kafka_topic='visits', value_format='AVRO');")
    assert engine.execute("DESCRIBE visits;")[0].rows == [
        {"field": "DAY", "type": "DATE"}, {"field": "AT", "type": "TIME"}, {"field": "SEEN", "type": "TIMESTAMP"},
        {"field": "EXACT", "type": "BIGINT"}, {"field": "VISITOR", "type": "STRING"},
    ]
    engine.execute("CREATE STREAM copied AS SELECT day, at, seen, exact, visitor FROM visits;")
    record = {"day": datetime.date(2026, 12, 7), "at": datetime.time(10, 0, 1, 500_000), "seen": datetime.datetime(2026, 12, 7, tzinfo=datetime.timezone.utc),
              "exact": 1_796_601_600_000_001, "visitor": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}
    payload = io.BytesIO()
    fastavro.schemaless_writer(payload, fastavro.parse_schema(writer), record)
    driver = Driver(engine)
    driver.pipe("visits", None, b"\x00" + struct.pack(">I", schema_id) + payload.getvalue(), 1)
    assert driver.dead_letters == []
    assert [r.value for r in driver.read("COPIED")] == [{"DAY": 20_794, "AT": 36_001_500, "SEEN": 1_796_601_600_000, "EXACT": 1_796_601_600_000_001,
                                                         "VISITOR": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}]
    written = {f["name"]: f["type"][1] for f in json.loads(store.latest("COPIED-value")[1])["fields"]}
    assert written["DAY"] == {"type": "int", "logicalType": "date"} and written["AT"] == {"type": "int", "logicalType": "time-millis"}


def test_times_cast_to_and_from_text_and_compare_with_it():
    # ksqlDB writes a TIMESTAMP as text in ISO form to the millisecond (UTC), reads ISO text back, and reads
    # text compared with a time as one; a DATE is a day, a TIME a time of day
    engine = Engine()
    engine.execute("CREATE STREAM visits (id STRING KEY, seen TIMESTAMP, day DATE, at TIME, text STRING) WITH (kafka_topic='visits', value_format='JSON');")
    engine.execute("CREATE STREAM shown AS SELECT id, CAST(seen AS STRING) AS seen_text, CAST(day AS STRING) AS day_text, CAST(at AS STRING) AS at_text,"
                   " CAST(text AS TIMESTAMP) AS parsed, CAST(seen AS DATE) AS seen_day, CAST(day AS TIMESTAMP) AS midnight FROM visits;")
    engine.execute("CREATE STREAM late AS SELECT id, seen FROM visits WHERE seen > '2026-12-07T10:00:00' AND day IN ('2026-12-07', '2026-12-25');")
    engine.execute("CREATE STREAM morning AS SELECT id, at FROM visits WHERE at BETWEEN '09:00' AND '12:00';")
    driver = Driver(engine)
    ten = 1_796_637_600_000  # 2026-12-07T10:00:00Z
    pipe_json(driver, "visits", "a", {"seen": ten + 10, "day": 20_794, "at": 36_001_500, "text": "2026-12-07T10:00:00.010"})
    pipe_json(driver, "visits", "b", {"seen": ten, "day": 20_794, "at": 7 * 3_600_000, "text": "not a time"})
    assert [r.value for r in driver.read("SHOWN")] == [
        {"SEEN_TEXT": "2026-12-07T10:00:00.010", "DAY_TEXT": "2026-12-07", "AT_TEXT": "10:00:01.5", "PARSED": ten + 10,
         "SEEN_DAY": 20_794, "MIDNIGHT": 20_794 * 86_400_000},
        {"SEEN_TEXT": "2026-12-07T10:00:00.000", "DAY_TEXT": "2026-12-07", "AT_TEXT": "07:00:00", "PARSED": None,
         "SEEN_DAY": 20_794, "MIDNIGHT": 20_794 * 86_400_000},
    ]
    assert [r.key for r in driver.read("LATE")] == [("a",)] and [r.key for r in driver.read("MORNING")] == [("a",)]
    with pytest.raises(KsqlError, match=r"Cannot compare TIMESTAMP to INT in \(SEEN > 5\)"):
        engine.execute("CREATE STREAM bad AS SELECT id, seen FROM visits WHERE seen > 5;")
    with pytest.raises(KsqlError, match=r"Cannot compare DATE to INT in"):
        engine.execute("CREATE STREAM bad AS SELECT id, day FROM visits WHERE day BETWEEN 1 AND 2;")


def survey_pipeline_engine(caching: bool) -> Engine:
    """The talk's pipeline (ksql/) with one-minute windows, the record cache on or off."""
    store = InMemorySchemaStore()
    store.register("survey-entries-value", load_schema("survey-entries"))
    store.register("survey-questions-value", load_schema("survey-questions"))
    engine = Engine(schemas=store, properties={"ksql.streams.cache.max.bytes.buffering": "10000000" if caching else "0"})
    for script in read_pipeline(KSQL_DIR, {"results_window_size": "1 MINUTES", "results_window_grace": "10 SECONDS"}):
        engine.execute(script.text)
    return engine


def avro_value(engine: Engine, topic: str, schema_name: str, value: dict) -> bytes:
    schema_id, schema = engine.schemas.latest(f"{topic}-value")
    out = io.BytesIO(b"\x00" + struct.pack(">I", schema_id))
    out.seek(5)
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(schema)), value)
    return out.getvalue()


def survey_records(engine: Engine, count: int) -> list[tuple]:
    """Questions and entries over 2 partitions: out of order, late, for unknown surveys, null and unreadable values."""
    rng = random.Random(11)
    records, offsets = [], {}

    def add(topic, partition, timestamp, key, value):
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        records.append((topic, partition, offset, timestamp, key, value))

    for i in range(count):
        timestamp = i * 1_000 + rng.randrange(-40_000, 5_000)  # late beyond the grace now and then
        survey = str(rng.randrange(5))
        if i % 50 == 0:  # survey 4 never gets a question: its entries join nothing (LEFT JOIN)
            question = {"survey_id": survey, "question": f"Question {survey} v{i}?", "summary": "Q", "options": [], "enabled": True}
            add("survey-questions", 0, timestamp, survey.encode(), None if survey == "4" else avro_value(engine, "survey-questions", "survey-questions", question))
        entry = {"survey_id": survey, "user_id": str(i), "name": f"user {i}", "company": None, "location": "Lisbon", "response": rng.choice(RESPONSES)}
        value = avro_value(engine, "survey-entries", "survey-entries", entry)
        if i % 97 == 0:
            value = None  # no event on a stream
        elif i % 89 == 0:
            value = b"not avro"  # a dead letter
        add("survey-entries", rng.randrange(2), timestamp, survey.encode(), value)
    return records


AGGREGATES = (
    "CREATE STREAM votes (survey STRING KEY, answer STRING, weight INT) WITH (kafka_topic='votes', value_format='JSON', partitions=2);"
    "CREATE TABLE popular AS SELECT answer, COUNT(*) AS n, SUM(weight) AS total FROM votes GROUP BY answer HAVING COUNT(*) % 3 <> 1;"
    "CREATE TABLE per_minute AS SELECT survey, HISTOGRAM(answer) AS answers, MAX(weight) AS heaviest FROM votes"
    " WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 5 SECONDS) GROUP BY survey;"
    "CREATE TABLE ballots (id STRING PRIMARY KEY, survey STRING, answer STRING) WITH (kafka_topic='ballots', value_format='JSON');"
    "CREATE TABLE tally AS SELECT answer, COUNT(*) AS n, HISTOGRAM(survey) AS surveys FROM ballots GROUP BY answer;"
)


def aggregate_engine(caching: bool) -> Engine:
    """Stream aggregation with HAVING, an EMIT CHANGES window, a table aggregation with retractions."""
    engine = Engine(properties={"ksql.streams.cache.max.bytes.buffering": "10000000" if caching else "0"})
    engine.execute(AGGREGATES)
    return engine


def aggregate_records(engine: Engine, count: int) -> list[tuple]:
    """Votes (out of order, late, null keys and answers) and, every 40 of them, a burst of 10 ballots (updates and deletes)."""
    rng = random.Random(5)
    records = []
    for i in range(count):
        timestamp = i * 2_000 + rng.randrange(-20_000, 1_000)
        value = {"answer": rng.choice(["yes", "no", "maybe", None]), "weight": rng.randrange(10)}
        key = rng.choice(["a", "b", None])
        records.append(("votes", rng.randrange(2), i, timestamp, key.encode() if key else None, json.dumps(value).encode()))
        if i % 40 == 39:
            for j in range(10):
                ballot = {"survey": rng.choice(["a", "b", None]), "answer": rng.choice(["yes", "no", None])} if rng.random() > 0.2 else None
                records.append(("ballots", 0, i * 10 + j, timestamp, str(rng.randrange(8)).encode(), json.dumps(ballot).encode() if ballot else None))
    return records


@pytest.mark.parametrize("caching", [True, False], ids=["record cache on", "record cache off"])
@pytest.mark.parametrize("make_engine, make_records, topics", [
    (survey_pipeline_engine, survey_records, {"survey-respondents", "survey-responses", "survey-results-live", "survey-results-final", DEFAULT_DEAD_LETTER_TOPIC}),
    (aggregate_engine, aggregate_records, {"POPULAR", "PER_MINUTE", "TALLY"}),
], ids=["survey pipeline", "aggregations"])
def test_process_batch_writes_each_topic_what_process_writes_record_by_record(make_engine, make_records, topics, caching):
    one_by_one, batched = make_engine(caching), make_engine(caching)
    records = make_records(one_by_one, 1_500)
    by_topic = {"one by one": {}, "batched": {}}

    def collect(name, outputs):
        for out in outputs:
            by_topic[name].setdefault(out.topic, []).append((out.key, out.value, out.timestamp))

    for start in range(0, len(records), 100):  # a commit every 100 records
        chunk = records[start:start + 100]
        for record in chunk:
            collect("one by one", one_by_one.process(*record))
        collect("one by one", one_by_one.flush())
        collect("batched", batched.process_batch(chunk))
        collect("batched", batched.flush())
        assert batched.drain_changes() == one_by_one.drain_changes()

    assert by_topic["batched"] == by_topic["one by one"]
    assert batched.snapshot() == one_by_one.snapshot()
    assert batched.query_metrics() == one_by_one.query_metrics()
    assert set(by_topic["batched"]) == topics


def test_an_aggregate_adds_a_batch_of_values_as_it_adds_them_one_by_one():
    from survey_kit.ksql.functions import make_aggregate
    from survey_kit.ksql.types import BIGINT, STRING

    words = [f"w{i % (HISTOGRAM_LIMIT + 7)}" if i % 5 else None for i in range(3 * HISTOGRAM_LIMIT)]
    numbers = [i if i % 4 else None for i in range(50)]
    cases = [
        (make_aggregate("HISTOGRAM", STRING, False, []), words),
        (make_aggregate("LATEST_BY_OFFSET", STRING, False, []), words + [None, None]),  # NULLs ignored: the last word
        (make_aggregate("LATEST_BY_OFFSET", STRING, False, [False]), words + [None]),  # NULLs kept: NULL
        (make_aggregate("COUNT", BIGINT, False, []), numbers),
        (make_aggregate("COUNT", None, True, []), numbers),
        (make_aggregate("SUM", BIGINT, False, []), numbers),
        (make_aggregate("MAX", BIGINT, False, []), numbers),
    ]
    for aggregate, values in cases:
        one_by_one = aggregate.init()
        for value in values:
            one_by_one = aggregate.add(aggregate.copy(one_by_one), value)
        at_once = aggregate.add_all(aggregate.init(), tuple(values))
        assert at_once == one_by_one, aggregate.name


def test_the_projections_copy_what_reading_and_writing_each_entry_gives_and_each_bad_entry_is_one_dead_letter():
    """The respondents and responses projections copy the entries' fields as bytes (they decode none):
    every output is the record a reader and writer of the Avro schemas make of the entry, for text of
    every kind, lengths in longer varints than needed, bytes left over; an entry that cannot be read is
    one dead letter, though four queries read it."""
    engine = survey_pipeline_engine(caching=False)
    assert [q.copies_values for q in engine.queries.values()] == [True, True, False, False]
    entry_id, entry_schema = engine.schemas.latest("survey-entries-value")
    entry_schema = fastavro.parse_schema(json.loads(entry_schema))
    texts = ["Ann", "Köln", "中文", "😀", "e\u0301", "x" * 63, "y" * 64, "ü" * 300, ""]
    rng = random.Random(2)
    payloads = []
    for i in range(300):
        entry = {"survey_id": rng.choice(texts), "user_id": str(i), "name": rng.choice(texts), "company": rng.choice([None, *texts]),
                 "location": rng.choice([None, *texts]), "response": rng.choice(texts)}
        out = io.BytesIO()
        fastavro.schemaless_writer(out, entry_schema, entry)
        payloads.append(out.getvalue())
    payloads += [bytes([p[0] | 0x80, 0]) + p[1:] for p in payloads[:20] if p[0] < 0x80]  # a longer varint: read as it is
    payloads += [p + b"\x00" for p in payloads[:5]]  # bytes left over: the library reads the fields and ignores them
    payloads += [b"\x02s\x02u\x04\xff\xfe\x00\x00\x02r", payloads[0][:-1]]  # not UTF-8, truncated: dead letters
    header = b"\x00" + struct.pack(">I", entry_id)
    records = [("survey-entries", 0, offset, 1_000 + offset, None, header + payload) for offset, payload in enumerate(payloads)]
    records.append(("survey-entries", 0, len(records), 5_000, None, b"not avro"))

    outputs = engine.process_batch(records)

    sinks = {topic: engine.schemas.latest(f"{topic}-value") for topic in ("survey-respondents", "survey-responses")}
    expected = {topic: [] for topic in sinks}
    unreadable = []
    for _, _, offset, timestamp, _, value in records:
        try:
            entry = fastavro.schemaless_reader(io.BytesIO(value[5:]), entry_schema, None) if value[:5] == header else None
        except Exception:
            entry = None
        if entry is None:
            unreadable.append(offset)
            continue
        for topic, (sink_id, sink_schema) in sinks.items():
            schema = json.loads(sink_schema)
            out = io.BytesIO(b"\x00" + struct.pack(">I", sink_id))
            out.seek(5)
            fastavro.schemaless_writer(out, fastavro.parse_schema(schema), {f["name"]: entry[f["name"]] for f in schema["fields"]})
            expected[topic].append((None, out.getvalue(), timestamp))
    for topic in sinks:
        assert [(o.key, o.value, o.timestamp) for o in outputs if o.topic == topic] == expected[topic]
    assert unreadable == [len(payloads) - 2, len(payloads) - 1, len(payloads)]
    letters = [json.loads(o.value) for o in outputs if o.topic == DEFAULT_DEAD_LETTER_TOPIC]
    assert [letter["offset"] for letter in letters] == unreadable
    assert engine.metrics.dead_letters == 3
