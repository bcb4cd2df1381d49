"""The ksql engine's Avro codec (cavro, and fastavro where cavro differs) gives fastavro's bytes and values.

fastavro is the reference: for every column type the engine writes, AvroFormat's output must be
the bytes fastavro writes, and reading must give the values fastavro reads, for the engine's own
schemas and for other producers' (extra, missing, renamed fields, logical types). Bad bytes must
become RecordErrors, which send the record to the dead letters.
"""

import datetime
import decimal
import io
import json
import random
import struct

import cavro
import fastavro
import pytest

from survey_kit.ksql import flat_avro
from survey_kit.ksql.formats import (
    AvroFormat,
    Column,
    InMemorySchemaStore,
    KeyFormat,
    RecordError,
    _renaming_decoder,
    avro_decoder,
    avro_encoder,
    avro_value_schema,
)
from survey_kit.ksql.types import BIGINT, BOOLEAN, BYTES, DOUBLE, INT, STRING, TIMESTAMP, SqlType, coerce
from survey_kit.schemas import load_schema

ROWS = 300


def decimal_type(precision, scale):
    return SqlType("DECIMAL", precision=precision, scale=scale)


def array(item):
    return SqlType("ARRAY", item=item)


def map_of(item):
    return SqlType("MAP", key=STRING, item=item)


def struct_of(**fields):
    return SqlType("STRUCT", fields=tuple(fields.items()))


# ------------------------------------------------------------------ generated values

TEXTS = ["", "a", "Köln", "中文字符", "😀 emoji", "e\u0301", "x" * 63, "y" * 64, "ü" * 100, "z" * 8191, "w" * 8192, "long " * 20_000]
INTS = [0, 1, -1, 63, -64, 64, -65, 8191, 8192, 2**31 - 1, -(2**31)]
LONGS = INTS + [2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, -(2**63)]
FLOATS = [0.0, -0.0, 0.1, -2.5, 1e300, -1e-300, 5e-324, 1.7976931348623157e308, float("inf"), float("-inf"), float("nan")]


def random_value(rng: random.Random, sql_type: SqlType, depth: int = 0):
    """A value of `sql_type` as the engine holds it (None sometimes)."""
    if rng.random() < 0.15:
        return None
    base = sql_type.base
    if base == "BOOLEAN":
        return rng.random() < 0.5
    if base == "INT":
        return rng.choice(INTS) if rng.random() < 0.5 else rng.randrange(-(2**31), 2**31)
    if base == "BIGINT":
        return rng.choice(LONGS) if rng.random() < 0.5 else rng.randrange(-(2 ** rng.randrange(1, 64)), 2 ** rng.randrange(1, 64))
    if base == "DOUBLE":
        return rng.choice(FLOATS) if rng.random() < 0.5 else rng.uniform(-1e9, 1e9)
    if base == "STRING":
        return rng.choice(TEXTS) if rng.random() < 0.5 else "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0xD7FF)])) for _ in range(rng.randrange(0, 150)))
    if base == "BYTES":
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 63, 64, 200])))
    if base == "DECIMAL":
        digits = rng.randrange(-(10**sql_type.precision) + 1, 10**sql_type.precision)
        return decimal.Decimal(digits).scaleb(-sql_type.scale)
    if base == "TIMESTAMP":
        return rng.choice([0, -1, 1_700_000_000_123, rng.randrange(-(2**40), 2**42)])
    if base == "ARRAY":
        return [random_value(rng, sql_type.item, depth + 1) for _ in range(rng.choice([0, 1, 3, 70]))]
    if base == "MAP":
        return {rng.choice(TEXTS[:6]) + str(i): random_value(rng, sql_type.item, depth + 1) for i in range(rng.choice([0, 1, 4, 70]))}
    if base == "STRUCT":
        value = {name: random_value(rng, field_type, depth + 1) for name, field_type in sql_type.fields}
        if rng.random() < 0.3:
            value.pop(rng.choice(list(value)))  # a missing field is written as NULL
        if rng.random() < 0.3:
            value["NOT_A_FIELD"] = 1  # keys that are no field are ignored
        return value
    raise AssertionError(f"no generator for {sql_type}")


def random_row(rng: random.Random, columns: list[Column]) -> dict:
    row = {c.name: random_value(rng, c.type) for c in columns}
    if rng.random() < 0.2:
        row.pop(rng.choice(columns).name)  # a missing column is written as NULL
    if rng.random() < 0.2:
        row["OTHER_COLUMN"] = "ignored"
    return row


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN and dict order counting (repr shows both)."""
    return type(a) is type(b) and repr(a) == repr(b)


# ------------------------------------------------------------------ fastavro, the reference


def as_fastavro_record(value, sql_type: SqlType):
    """The record fastavro needs for a row value: nested structs with exactly their fields."""
    if value is None:
        return None
    if sql_type.base == "ARRAY":
        return [as_fastavro_record(v, sql_type.item) for v in value]
    if sql_type.base == "MAP":
        return {k: as_fastavro_record(v, sql_type.item) for k, v in value.items()}
    if sql_type.base == "STRUCT":
        return {n: as_fastavro_record(value.get(n), t) for n, t in sql_type.fields}
    return value


def fastavro_bytes(schema, value) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def fastavro_value(schema, payload: bytes):
    return fastavro.schemaless_reader(io.BytesIO(payload), fastavro.parse_schema(schema), None)


def confluent(schema_id: int, payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + payload


def as_engine_value(value, sql_type: SqlType):
    """fastavro's value as the engine holds it: a TIMESTAMP is epoch milliseconds, not a datetime."""
    if sql_type.base == "TIMESTAMP" and isinstance(value, datetime.datetime):
        return (value - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) // datetime.timedelta(milliseconds=1)
    return value


def uses_cavro(function) -> bool:
    return isinstance(getattr(function, "__self__", None), cavro.Schema)


def is_flat_writer(function) -> bool:
    return function.__module__ == flat_avro.__name__


FLAT = {"boolean", "int", "bigint", "double", "string", "survey respondent"}  # records of primitive columns


# ------------------------------------------------------------------ what the engine writes

COLUMN_SETS = {
    "boolean": [Column("B", BOOLEAN)],
    "int": [Column("I", INT)],
    "bigint": [Column("L", BIGINT)],
    "double": [Column("D", DOUBLE)],
    "string": [Column("S", STRING)],
    "bytes": [Column("Y", BYTES)],
    "decimal": [Column("C", decimal_type(4, 2)), Column("C2", decimal_type(38, 10)), Column("C3", decimal_type(5, 0))],
    "timestamp": [Column("T", TIMESTAMP)],
    "array": [Column("A", array(STRING)), Column("A2", array(BIGINT)), Column("A3", array(array(DOUBLE)))],
    "map": [Column("M", map_of(BIGINT)), Column("M2", map_of(STRING)), Column("M3", map_of(map_of(decimal_type(6, 3))))],
    "struct": [
        Column("R", struct_of(A=STRING, B=BIGINT, C=struct_of(D=DOUBLE, E=array(STRING)))),
        Column("R2", array(struct_of(K=STRING, V=map_of(INT)))),
        Column("R3", map_of(struct_of(X=BOOLEAN, Y=BYTES))),
    ],
    "all flat": [Column(n, t) for n, t in [("B", BOOLEAN), ("I", INT), ("L", BIGINT), ("D", DOUBLE), ("S", STRING), ("Y", BYTES), ("T", TIMESTAMP)]],
    "survey respondent": [Column(n, STRING) for n in ("user_id", "name", "company", "location")],
    "survey histogram": [Column("QUESTION", STRING), Column("RESULTS", map_of(BIGINT))],
}


@pytest.mark.parametrize("kind", list(COLUMN_SETS))
def test_rows_are_written_as_fastavro_writes_them(kind):
    columns = COLUMN_SETS[kind]
    store = InMemorySchemaStore()
    fmt = AvroFormat(columns, f"out-{kind}", store, "survey.bot.Out" if kind.startswith("survey") else None)
    rng = random.Random(kind)
    for _ in range(ROWS):
        row = random_row(rng, columns)
        data = fmt.serialize(row)
        schema = json.loads(store.schema_by_id(fmt.register_schema()))
        record = {c.name: as_fastavro_record(row.get(c.name), c.type) for c in columns}
        assert data == confluent(fmt.register_schema(), fastavro_bytes(schema, record)), row


@pytest.mark.parametrize("kind", list(COLUMN_SETS))
def test_written_rows_read_back_as_fastavro_reads_them(kind):
    columns = COLUMN_SETS[kind]
    store = InMemorySchemaStore()
    fmt = AvroFormat(columns, f"out-{kind}", store)
    rng = random.Random(kind + " read")
    for _ in range(ROWS):
        data = fmt.serialize(random_row(rng, columns))
        schema = json.loads(store.schema_by_id(fmt.register_schema()))
        decoded = fastavro_value(schema, data[5:])
        # MAP and STRUCT columns are coerced to the column type (as any read of them is)
        expected = {c.name: coerce(decoded[c.name], c.type, c.name) if c.type.base in ("MAP", "STRUCT") else as_engine_value(decoded[c.name], c.type) for c in columns}
        assert same(fmt.deserialize(data), expected)


@pytest.mark.parametrize("kind", list(COLUMN_SETS))
def test_the_engine_writes_flat_records_with_a_compiled_writer_and_the_others_with_cavro(kind):
    schema = avro_value_schema(COLUMN_SETS[kind], "survey.bot.Out")
    encode, _ = avro_encoder(schema)
    assert is_flat_writer(encode) if kind in FLAT else uses_cavro(encode)


def test_the_survey_pipelines_records_read_with_cavro_and_written_with_a_compiled_writer():
    entries = json.loads(load_schema("survey-entries"))
    assert uses_cavro(avro_decoder(entries))
    for name in ("survey-respondents", "survey-responses"):
        bot_schema = json.loads(load_schema(name))
        # the engine writes them as ksqlDB does: every field nullable, under the bot schema's name
        nullable = avro_value_schema([Column(f["name"], STRING) for f in bot_schema["fields"]], f"{bot_schema['namespace']}.{bot_schema['name']}")
        assert is_flat_writer(avro_encoder(nullable)[0])


# ------------------------------------------------------------------ what other producers write

N = ["null"]
ENTRY = json.loads(load_schema("survey-entries"))


def random_entry(rng: random.Random) -> dict:
    text = lambda: rng.choice(TEXTS) if rng.random() < 0.7 else str(rng.random())  # noqa: E731
    return {
        "survey_id": text(),
        "user_id": text(),
        "name": text(),
        "company": rng.choice([None, text()]),
        "location": rng.choice([None, text()]),
        "response": text(),
    }


def entries_format(store: InMemorySchemaStore) -> tuple[AvroFormat, int]:
    schema_id = store.register("survey-entries-value", json.dumps(ENTRY))
    columns = [Column(f["name"].upper(), STRING) for f in ENTRY["fields"]]
    return AvroFormat(columns, "survey-entries", store), schema_id


def test_survey_entries_read_as_fastavro_reads_them_with_columns_upper_cased():
    store = InMemorySchemaStore()
    fmt, schema_id = entries_format(store)
    rng = random.Random(7)
    for _ in range(1000):
        entry = random_entry(rng)
        payload = fastavro_bytes(ENTRY, entry)
        row = fmt.deserialize(confluent(schema_id, payload))
        expected = {name.upper(): value for name, value in fastavro_value(ENTRY, payload).items()}
        assert same(row, expected)
        assert list(row) == [c.name for c in fmt.columns]


# a producer's schema with fields the stream has no column for, of every kind cavro skips,
# around the columns, and a field named in another case
WIDE = {
    "type": "record",
    "name": "Wide",
    "namespace": "other.producer",
    "fields": [
        {"name": "skipped_record", "type": ["null", {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}, {"name": "y", "type": ["null", "string"]}]}]},
        {"name": "Id", "type": "string"},
        {"name": "skipped_enum", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}},
        {"name": "amount", "type": ["null", "long"]},
        {"name": "skipped_fixed", "type": {"type": "fixed", "name": "Four", "size": 4}},
        {"name": "skipped_bytes", "type": "bytes"},
        {"name": "price", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 2}]},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "again", "type": ["null", "Inner"]},
        {"name": "ratio", "type": "float"},
        {"name": "flag", "type": "boolean"},
    ],
}
WIDE_COLUMNS = [Column("ID", STRING), Column("AMOUNT", BIGINT), Column("PRICE", decimal_type(8, 2)), Column("AT", TIMESTAMP), Column("RATIO", DOUBLE), Column("FLAG", BOOLEAN)]


def random_wide(rng: random.Random) -> dict:
    return {
        "skipped_record": rng.choice([None, {"x": rng.choice(LONGS), "y": rng.choice([None, *TEXTS[:5]])}]),
        "Id": rng.choice(TEXTS),
        "skipped_enum": rng.choice(["RED", "GREEN"]),
        "amount": rng.choice([None, *LONGS]),
        "skipped_fixed": bytes(rng.randrange(256) for _ in range(4)),
        "skipped_bytes": bytes(rng.randrange(256) for _ in range(rng.randrange(300))),
        "price": rng.choice([None, decimal.Decimal(rng.randrange(-(10**8) + 1, 10**8)).scaleb(-2)]),
        "at": rng.randrange(-(2**40), 2**42),
        "again": rng.choice([None, {"x": -5, "y": "z"}]),
        "ratio": rng.choice(FLOATS),
        "flag": rng.random() < 0.5,
    }


def test_a_producers_wider_schema_reads_the_columns_as_fastavro_does():
    store = InMemorySchemaStore()
    schema_id = store.register("wide-value", json.dumps(WIDE))
    fmt = AvroFormat(WIDE_COLUMNS, "wide", store)
    rng = random.Random(11)
    for _ in range(ROWS):
        payload = fastavro_bytes(WIDE, random_wide(rng))
        decoded = fastavro_value(WIDE, payload)
        expected = {c.name: as_engine_value(decoded[{f["name"].upper(): f["name"] for f in WIDE["fields"]}[c.name]], c.type) for c in WIDE_COLUMNS}
        assert same(fmt.deserialize(confluent(schema_id, payload)), expected)


def test_fields_of_another_type_are_coerced_to_the_columns_type():
    writer = {"type": "record", "name": "Old", "fields": [{"name": "n", "type": "int"}, {"name": "s", "type": "string"}, {"name": "d", "type": ["null", "int"]}]}
    store = InMemorySchemaStore()
    schema_id = store.register("t-value", json.dumps(writer))
    fmt = AvroFormat([Column("S", STRING), Column("N", BIGINT), Column("D", DOUBLE)], "t", store)
    rng = random.Random(3)
    for _ in range(ROWS):
        record = {"n": rng.choice(INTS), "s": rng.choice(TEXTS), "d": rng.choice([None, *INTS])}
        row = fmt.deserialize(confluent(schema_id, fastavro_bytes(writer, record)))
        assert same(row, {"S": record["s"], "N": record["n"], "D": None if record["d"] is None else float(record["d"])})


def test_a_writer_schema_without_a_column_is_a_record_error():
    writer = {"type": "record", "name": "Old", "fields": [{"name": "ID", "type": "string"}]}
    store = InMemorySchemaStore()
    schema_id = store.register("t-value", json.dumps(writer))
    fmt = AvroFormat([Column("ID", STRING), Column("NEW", STRING)], "t", store)
    with pytest.raises(RecordError, match="lacks field NEW"):
        fmt.deserialize(confluent(schema_id, fastavro_bytes(writer, {"ID": "a"})))


LOGICAL_WRITERS = [
    ({"type": "int", "logicalType": "date"}, [0, -1, 19_000, 2_932_896, -719_162]),
    ({"type": "int", "logicalType": "time-millis"}, [0, 3_723_004, 86_399_999]),
    ({"type": "long", "logicalType": "time-micros"}, [0, 3_723_004_005, 86_399_999_999]),
    ({"type": "long", "logicalType": "timestamp-micros"}, [0, -1, 1_700_000_000_123_456]),
    ({"type": "long", "logicalType": "local-timestamp-millis"}, [0, -1, 1_700_000_000_123]),  # fastavro's naive datetime kept
    ({"type": "string", "logicalType": "uuid"}, ["6ba7b810-9dad-11d1-80b4-00c04fd430c8"]),
    ({"type": "fixed", "name": "Dec", "size": 6, "logicalType": "decimal", "precision": 12, "scale": 3}, [decimal.Decimal("-123456789.012"), decimal.Decimal("0.001")]),
    ({"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}, ["A", "C"]),
    ({"type": "array", "items": ["null", "long"]}, [[], [1, None, -(2**63)]]),
    ({"type": "map", "values": "string"}, [{}, {"k": "v", "ü": ""}]),
]


@pytest.mark.parametrize("writer, values", LOGICAL_WRITERS, ids=[str(w.get("logicalType", w["type"])) for w, _ in LOGICAL_WRITERS])
def test_other_avro_types_decode_to_fastavros_values(writer, values):
    for schema in (writer, ["null", writer]):
        decode = avro_decoder(schema)
        for value in values:
            payload = fastavro_bytes(schema, value)
            assert same(decode(payload), fastavro_value(schema, payload))


def test_arrays_and_maps_in_blocks_with_negative_counts_are_read():
    """The Avro spec lets a writer give a block's item count negated, followed by its size in bytes."""
    questions = json.loads(load_schema("survey-questions"))
    store = InMemorySchemaStore()
    schema_id = store.register("survey-questions-value", json.dumps(questions))
    columns = [Column(f["name"].upper(), t) for f, t in zip(questions["fields"], [STRING, STRING, STRING, array(STRING), BOOLEAN])]
    fmt = AvroFormat(columns, "survey-questions", store)
    # survey_id "s", question "q?", summary "", options: one block of -2 items (4 bytes), then the end, enabled
    payload = b"\x02s" + b"\x04q?" + b"\x00" + b"\x03\x08" + b"\x02a\x02b" + b"\x00" + b"\x01"
    assert fastavro_value(questions, payload)["options"] == ["a", "b"]
    assert fmt.deserialize(confluent(schema_id, payload)) == {"SURVEY_ID": "s", "QUESTION": "q?", "SUMMARY": "", "OPTIONS": ["a", "b"], "ENABLED": True}


def test_a_schema_cavro_refuses_is_read_and_written_with_fastavro():
    odd = {"type": "record", "name": "not-an-avro-name", "fields": [{"name": "v", "type": ["null", "long"], "default": 5}]}
    encode, _ = avro_encoder(odd)
    assert not uses_cavro(encode)
    assert encode({"v": 3}) == fastavro_bytes(odd, {"v": 3})
    assert avro_decoder(odd)(fastavro_bytes(odd, {"v": 3})) == {"v": 3}


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize("key_type", [STRING, INT, BIGINT, DOUBLE, BOOLEAN, decimal_type(10, 2), BYTES, TIMESTAMP])
def test_avro_keys_are_written_and_read_as_fastavro_does(key_type):
    store = InMemorySchemaStore()
    single = KeyFormat("AVRO", [Column("K", key_type)], topic="single", store=store)
    double = KeyFormat("AVRO", [Column("K1", key_type), Column("K2", STRING)], windowed=True, topic="double", store=store)
    rng = random.Random(str(key_type))
    for _ in range(ROWS):
        value = random_value(rng, key_type)
        data = single.serialize((value,))
        if value is None:
            assert data is None
            continue
        schema_id = struct.unpack(">I", data[1:5])[0]
        schema = json.loads(store.schema_by_id(schema_id))
        assert data == confluent(schema_id, fastavro_bytes(schema, value))
        expected = as_engine_value(fastavro_value(schema, data[5:]), key_type)
        assert same(single.deserialize(data), ((expected,), None))

        other = rng.choice(TEXTS[:6])
        data = double.serialize((value, other), window_start=1_700_000_000_000)
        schema_id = struct.unpack(">I", data[1:5])[0]
        schema = json.loads(store.schema_by_id(schema_id))
        assert data[:-8] == confluent(schema_id, fastavro_bytes(schema, {"K1": value, "K2": other}))
        assert same(double.deserialize(data), ((value, other), 1_700_000_000_000))


# ------------------------------------------------------------------ bad bytes and bad rows


def test_truncated_values_are_record_errors():
    store = InMemorySchemaStore()
    fmt, schema_id = entries_format(store)
    data = confluent(schema_id, fastavro_bytes(ENTRY, random_entry(random.Random(1)) | {"company": "ACME", "location": "Köln"}))
    for end in range(len(data)):
        with pytest.raises(RecordError) as error:
            fmt.deserialize(data[:end])
        assert ("not Confluent Avro" if end < 5 else f"cannot decode Avro value with schema id {schema_id}") in str(error.value)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\x02s\x02u\x02n\x04\x02c\x00\x02r", "union branch 2 of 2"),
        (b"\x02s\x02u\x04\xff\xfe\x00\x00\x02r", "invalid UTF-8"),
        (b"\x02s\x02u\x02n\x00\x00\xfe\xff\xff\xff\x0fr", "length beyond the data"),
        (b"\x02s\x02u\x02n\x00\x00\x03r", "negative length"),
    ],
    ids=lambda p: p if isinstance(p, str) else "",
)
def test_garbled_values_are_record_errors(payload, reason):
    store = InMemorySchemaStore()
    fmt, schema_id = entries_format(store)
    with pytest.raises(RecordError, match=f"cannot decode Avro value with schema id {schema_id}"):
        fmt.deserialize(confluent(schema_id, payload))


def damaged(rng: random.Random, originals: list[bytes], count: int):
    """`count` copies of the originals, each with one to three bytes changed, cut off or inserted."""
    for _ in range(count):
        payload = bytearray(rng.choice(originals))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(payload) + 1)
            change = rng.randrange(3)
            if change == 0 and at < len(payload):
                payload[at] = rng.randrange(256)
            elif change == 1:
                del payload[at:]
            else:
                payload.insert(at, rng.randrange(256))
        yield bytes(payload)


def test_randomly_damaged_values_read_as_fastavro_reads_them_or_are_record_errors():
    store = InMemorySchemaStore()
    fmt, schema_id = entries_format(store)
    rng = random.Random(5)
    originals = [fastavro_bytes(ENTRY, random_entry(rng)) for _ in range(50)]
    for payload in damaged(rng, originals, 20_000):
        try:
            expected = {name.upper(): value for name, value in fastavro_value(ENTRY, payload).items()}
        except Exception:
            expected = RecordError
        try:
            row = fmt.deserialize(confluent(schema_id, payload))
        except RecordError as error:
            # fastavro reads a negative union branch index as counting from the end; cavro rightly refuses it
            assert expected is RecordError or "is not valid for a union" in str(error), payload
            continue
        assert same(row, expected), payload


def test_an_unknown_schema_id_is_a_record_error():
    fmt, _ = entries_format(InMemorySchemaStore())
    with pytest.raises(RecordError, match="unknown Avro schema id 77"):
        fmt.deserialize(confluent(77, b"\x02s"))


def test_a_value_that_is_not_confluent_avro_is_a_record_error():
    fmt, _ = entries_format(InMemorySchemaStore())
    for data in (b"", b"\x00\x00", b"\x01\x00\x00\x00\x01\x02s", b'{"survey_id": "s"}'):
        with pytest.raises(RecordError, match="not Confluent Avro"):
            fmt.deserialize(data)


@pytest.mark.parametrize("column, value", [(Column("N", INT), "seven"), (Column("N", INT), 2**31), (Column("S", STRING), 5), (Column("C", decimal_type(4, 2)), decimal.Decimal("1.234")), (Column("M", map_of(BIGINT)), {"a": "b"})])
def test_a_row_value_of_the_wrong_type_is_refused_with_the_topic_named(column, value):
    fmt = AvroFormat([column], "sink-topic", InMemorySchemaStore())
    with pytest.raises(ValueError, match="cannot write this row to sink-topic as Avro"):
        fmt.serialize({column.name: value})


class _Text(str):
    pass


FLAT_TYPES = ["string", "long", "int", "double", "boolean"]
# every type's values and others': each writes as cavro writes it or fails as cavro fails
FLAT_VALUES = [None, True, False, *LONGS, 2**63, -(2**63) - 1, *FLOATS, *TEXTS[:10], "\ud800", _Text("sub"), b"bytes", [1], {"a": 1}]


@pytest.mark.parametrize("avro_type", [*FLAT_TYPES, *(["null", t] for t in FLAT_TYPES), *([t, "null"] for t in FLAT_TYPES)], ids=str)
def test_the_compiled_writer_writes_each_value_as_cavro_does_or_fails_as_it_fails(avro_type):
    schema = {"type": "record", "name": "Out", "fields": [{"name": "a", "type": "string"}, {"name": "V", "type": avro_type}]}
    library = cavro.Schema(schema, parse_json=False).binary_encode
    write = flat_avro.flat_record_writer(schema, library)
    assert write is not None
    for value in FLAT_VALUES:
        record = {"a": "x", "V": value}
        try:
            expected = library(record)
        except Exception as exc:  # noqa: BLE001 -- whatever cavro raises, the writer raises the same
            with pytest.raises(type(exc)):
                write(record)
        else:
            assert write(record) == expected, value
    # a missing field is written as cavro writes it (its default), extra keys are ignored
    for record in ({"a": "x"}, {"a": "x", "V": None, "other": 1}):
        try:
            expected = library(record)
        except Exception as exc:  # noqa: BLE001
            with pytest.raises(type(exc)):
                write(record)
        else:
            assert write(record) == expected


NOT_FLAT = [
    {"type": "record", "name": "R", "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}]},
    {"type": "record", "name": "R", "fields": [{"name": "y", "type": ["null", "bytes"]}]},
    {"type": "record", "name": "R", "fields": [{"name": "m", "type": ["null", {"type": "map", "values": "long"}]}]},
    {"type": "record", "name": "R", "fields": [{"name": "u", "type": ["null", "string", "long"]}]},
    {"type": "record", "name": "R", "fields": []},
    "string",
]


@pytest.mark.parametrize("schema", NOT_FLAT, ids=["logical type", "bytes", "map", "three-member union", "no fields", "not a record"])
def test_schemas_that_are_not_flat_records_get_no_compiled_writer(schema):
    assert flat_avro.flat_record_writer(schema, lambda record: b"") is None


def test_schemas_that_are_not_flat_records_get_no_compiled_reader():
    for schema in NOT_FLAT:
        fields = schema.get("fields", []) if isinstance(schema, dict) else []
        assert flat_avro.flat_record_reader(schema, [(f["name"], f["name"]) for f in fields], lambda payload: {}) is None


# every flat type, a nullable one of each (null first and last), a field that is skipped
READER_SCHEMA = {"type": "record", "name": "In", "fields": [
    *({"name": t, "type": t} for t in FLAT_TYPES),
    *({"name": f"null_{t}", "type": ["null", t]} for t in FLAT_TYPES),
    *({"name": f"{t}_null", "type": [t, "null"]} for t in FLAT_TYPES),
    {"name": "skipped", "type": ["null", "string"]},
]}
READ_NAMES = [(f["name"].upper(), f["name"]) for f in READER_SCHEMA["fields"] if f["name"] != "skipped"]


def reader_and_library() -> tuple:
    """The compiled reader and cavro's, renaming the same fields, as the engine pairs them (its fallback)."""
    library = _renaming_decoder(READER_SCHEMA, READ_NAMES)
    return flat_avro.flat_record_reader(READER_SCHEMA, READ_NAMES, library), library


def random_flat_record(rng: random.Random) -> dict:
    value = {"string": lambda: rng.choice(TEXTS[:-1]), "long": lambda: rng.choice(LONGS), "int": lambda: rng.choice(INTS),
             "double": lambda: rng.choice(FLOATS[:-1]), "boolean": lambda: rng.random() < 0.5}
    record = {t: value[t]() for t in FLAT_TYPES}
    record.update({f"null_{t}": rng.choice([None, value[t]()]) for t in FLAT_TYPES})
    record.update({f"{t}_null": rng.choice([None, value[t]()]) for t in FLAT_TYPES})
    record["skipped"] = rng.choice([None, rng.choice(TEXTS)])
    return record


def read_or_error(read, payload: bytes):
    try:
        return read(payload)
    except Exception as exc:  # noqa: BLE001 -- compared: the same type either way
        return type(exc)


def test_the_compiled_reader_reads_every_flat_type_as_cavro_does_renamed_and_skipping_the_rest():
    read, library = reader_and_library()
    assert read is not None
    writer = cavro.Schema(READER_SCHEMA, parse_json=False)
    rng = random.Random(3)
    for _ in range(2_000):
        record = random_flat_record(rng)
        payload = writer.binary_encode(record)
        row = read(payload)
        assert list(row) == [key for key, _ in READ_NAMES]  # the keys in order, the skipped field left out
        assert row == library(payload) == {key: record[name] for key, name in READ_NAMES}


def test_the_compiled_reader_reads_damaged_payloads_as_cavro_does_or_fails_as_it_fails():
    read, library = reader_and_library()
    writer = cavro.Schema(READER_SCHEMA, parse_json=False)
    rng = random.Random(11)
    originals = [writer.binary_encode(random_flat_record(rng)) for _ in range(50)]
    for payload in damaged(rng, originals, 20_000):
        expected = read_or_error(library, payload)
        got = read_or_error(read, payload)
        assert got == expected or same(got, expected), payload


def test_the_survey_entries_are_read_with_a_compiled_reader():
    store = InMemorySchemaStore()
    fmt, schema_id = entries_format(store)
    decode, _, _ = fmt._reader(schema_id)
    assert decode.__module__ == flat_avro.__name__


# ------------------------------------------------------------------ copying columns without decoding them

# a producer's record of every flat field kind, nullable or not, the null first or last
PRIMITIVES = {
    "type": "record",
    "name": "Primitives",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": ["null", "int"]},
        {"name": "l", "type": ["long", "null"]},
        {"name": "d", "type": "double"},
        {"name": "t", "type": ["null", "string"]},
        {"name": "skipped", "type": ["string", "null"]},
    ],
}
# what a projection writes from it: ksqlDB's nullable fields, in another order, one field twice; one
# field that may not be null (no sink of the engine has one, other writers' schemas may)
PROJECTED = {
    "type": "record",
    "name": "Projected",
    "fields": [{"name": name, "type": ["null", kind]} for name, kind in
               [("T", "string"), ("L", "long"), ("D", "double"), ("S", "string"), ("S2", "string"), ("B", "boolean")]]
               + [{"name": "I", "type": "int"}],
}
PICKS = ["t", "l", "d", "s", "s", "b", "i"]


def random_primitives(rng: random.Random) -> dict:
    text = lambda: rng.choice(TEXTS[:-3]) if rng.random() < 0.7 else str(rng.random())  # noqa: E731
    return {
        "s": text(), "b": rng.random() < 0.5, "i": rng.choice([None, *INTS]), "l": rng.choice([None, *LONGS]),
        "d": rng.choice(FLOATS), "t": rng.choice([None, text()]), "skipped": rng.choice([None, text()]),
    }


def longer_varint(payload: bytes) -> bytes:
    """`payload` with its first varint (the first string's length) written one byte longer than needed."""
    return bytes([payload[0] | 0x80, 0x00]) + payload[1:] if payload[0] < 0x80 else payload


def test_a_copied_record_is_the_bytes_reading_and_writing_it_give_or_is_left_to_them():
    copy = flat_avro.flat_record_copier(PRIMITIVES, PROJECTED, PICKS)
    rng = random.Random(3)
    originals = [fastavro_bytes(PRIMITIVES, random_primitives(rng)) for _ in range(300)]
    # a NaN with other bits than Python's own, and text whose length takes two bytes
    originals.append(fastavro_bytes(PRIMITIVES, random_primitives(rng) | {"i": 5}).replace(struct.pack("<d", 0.0), b"\x01\x00\x00\x00\x00\x00\xf8\x7f", 1))
    longer = [longer_varint(p) for p in originals if p[0] < 0x80]
    payloads = originals + longer + list(damaged(rng, originals, 5_000))
    copied = set()
    for payload in payloads:
        result = copy(b"\x00header" + payload, 7)
        try:
            values = fastavro_value(PRIMITIVES, payload)
            flat_avro.flat_record_reader(PRIMITIVES, [(f["name"], f["name"]) for f in PRIMITIVES["fields"]], fallback=_unread)(payload)
        except Exception:
            assert result is None, payload  # what the flat reader leaves to the library is left to the caller
            continue
        projected = {field["name"]: values[pick] for field, pick in zip(PROJECTED["fields"], PICKS)}
        if values["i"] is None:
            assert result is None  # a null for a field that may not be null: the caller's writer refuses it
            continue
        if result is not None:
            copied.add(payload)
            assert result == fastavro_bytes(PROJECTED, projected), payload
    # records as a writer writes them are copied (but for a null I); with a longer varint, left to the caller
    assert copied >= {p for p in originals if fastavro_value(PRIMITIVES, p)["i"] is not None}
    assert not copied & set(longer) and len(longer) > 100


def _unread(payload):
    raise ValueError("left to the library")


def test_a_copier_is_made_only_for_fields_of_the_same_type():
    assert flat_avro.flat_record_copier(PRIMITIVES, PROJECTED, PICKS) is not None
    wider = {**PROJECTED, "fields": [{"name": "L", "type": ["null", "double"]}]}  # a long is no double's bytes
    assert flat_avro.flat_record_copier(PRIMITIVES, wider, ["l"]) is None
    assert flat_avro.flat_record_copier(PRIMITIVES, {**PROJECTED, "fields": PROJECTED["fields"][:1]}, ["nothing"]) is None
    nested = {**PROJECTED, "fields": [{"name": "A", "type": {"type": "array", "items": "string"}}]}
    assert flat_avro.flat_record_copier(PRIMITIVES, nested, ["s"]) is None
