"""Wire formats: how rows become Kafka key and value bytes, and back (ksqlDB-compatible).

Value formats JSON, AVRO (Confluent wire format through a schema store),
KAFKA (one primitive column) and DELIMITED; key formats KAFKA, JSON and
DELIMITED, optionally time-windowed (key bytes + 8-byte big-endian window start,
as Kafka Streams writes a time-windowed key).

A schema store is injected, so this module does no I/O itself: use
`InMemorySchemaStore` in tests and `RegistrySchemaStore` around a
confluent-kafka `SchemaRegistryClient` at runtime.
"""

from __future__ import annotations

import csv
import decimal
import io
import json
import struct
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import cavro
import fastavro

from .flat_avro import flat_record_copier, flat_record_reader, flat_record_writer
from .types import KsqlError, SqlType, coerce

AVRO_NAMESPACE = "io.confluent.ksql.avro_schemas"
AVRO_RECORD_NAME = "KsqlDataSourceSchema"

VALUE_FORMATS = {"JSON", "AVRO", "KAFKA", "DELIMITED"}
KEY_FORMATS = {"KAFKA", "JSON", "DELIMITED", "AVRO", "NONE"}
OUTSIDE_SUBSET_FORMATS = {"PROTOBUF", "PROTOBUF_NOSR", "JSON_SR"}


class RecordError(ValueError):
    """A record that cannot be read with its declared format; it goes to the dead letters."""


@dataclass(frozen=True)
class Column:
    name: str
    type: SqlType


# ---------------------------------------------------------------- schema stores


class SchemaStore(Protocol):
    def register(self, subject: str, schema: str) -> int: ...

    def schema_by_id(self, schema_id: int) -> str: ...

    def latest(self, subject: str) -> tuple[int, str] | None: ...


class InMemorySchemaStore:
    """A schema registry held in memory (ids from 1), for tests and the QTT runner."""

    def __init__(self):
        self._by_id: dict[int, str] = {}
        self._subjects: dict[str, list[int]] = {}

    def register(self, subject: str, schema: str) -> int:
        canonical = json.dumps(json.loads(schema), sort_keys=True)
        for schema_id, text in self._by_id.items():
            if text == canonical:
                break
        else:
            schema_id = len(self._by_id) + 1
            self._by_id[schema_id] = canonical
        versions = self._subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def schema_by_id(self, schema_id: int) -> str:
        if schema_id not in self._by_id:
            raise KeyError(f"schema id {schema_id} is not registered")
        return self._by_id[schema_id]

    def latest(self, subject: str) -> tuple[int, str] | None:
        versions = self._subjects.get(subject)
        return (versions[-1], self._by_id[versions[-1]]) if versions else None


class RegistrySchemaStore:
    """Adapts a confluent-kafka SchemaRegistryClient (of the registry at `url`) to the engine's schema store.

    An id the registry does not have is a LookupError (the record's fault: a dead letter); a registry
    that cannot be asked is `serde.RegistryUnavailable`, which the runtime waits out from its last commit.
    """

    def __init__(self, client, url: str):
        self.client = client
        self.url = url

    def register(self, subject: str, schema: str) -> int:
        from confluent_kafka.schema_registry import Schema

        return self._ask(f"registering a schema under {subject}", self.client.register_schema, subject, Schema(schema, "AVRO"))

    def schema_by_id(self, schema_id: int) -> str:
        from survey_kit.serde import fetch_schema

        return fetch_schema(self.client, schema_id, self.url).schema_str

    def latest(self, subject: str) -> tuple[int, str] | None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self._ask(f"for the latest schema of {subject}", self.client.get_latest_version, subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:  # the registry's own answer: no such subject
                return None
            raise
        return registered.schema_id, registered.schema.schema_str

    def _ask(self, asking: str, request, *args):
        from survey_kit.serde import registry_unavailable

        try:
            return request(*args)
        except Exception as exc:
            failure = registry_unavailable(exc, self.url, asking)
            if failure is not None:
                raise failure from None
            raise


# ---------------------------------------------------------------- Avro schemas


def avro_type_to_sql(avro_type) -> SqlType:
    """The ksqlDB column type of an Avro type (unions with null become the non-null type)."""
    if isinstance(avro_type, list):
        non_null = [t for t in avro_type if t != "null"]
        if len(non_null) != 1:
            raise KsqlError(f"Avro union {avro_type} has no ksqlDB type (only [null, T] unions are)")
        return avro_type_to_sql(non_null[0])
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        logical = avro_type.get("logicalType")
        if logical == "decimal":
            return SqlType("DECIMAL", precision=avro_type["precision"], scale=avro_type.get("scale", 0))
        if logical == "timestamp-millis" and kind == "long":
            return SqlType("TIMESTAMP")
        if logical == "date" and kind == "int":
            return SqlType("DATE")
        if logical == "time-millis" and kind == "int":
            return SqlType("TIME")
        if kind == "array":
            return SqlType("ARRAY", item=avro_type_to_sql(avro_type["items"]))
        if kind == "map":
            return SqlType("MAP", key=SqlType("STRING"), item=avro_type_to_sql(avro_type["values"]))
        if kind == "record":
            return SqlType("STRUCT", fields=tuple((f["name"].upper(), avro_type_to_sql(f["type"])) for f in avro_type["fields"]))
        if kind == "enum":
            return SqlType("STRING")
        return avro_type_to_sql(kind)
    mapping = {"string": "STRING", "int": "INT", "long": "BIGINT", "double": "DOUBLE", "float": "DOUBLE", "boolean": "BOOLEAN", "bytes": "BYTES"}
    if avro_type not in mapping:
        raise KsqlError(f"Avro type {avro_type} has no ksqlDB type")
    return SqlType(mapping[avro_type])


def columns_from_avro(schema_text: str) -> list[Column]:
    """Value columns inferred from a registered Avro record schema (names upper-cased, as ksqlDB)."""
    schema = json.loads(schema_text)
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise KsqlError("Schema inference needs an Avro record schema for the value")
    return [Column(f["name"].upper(), avro_type_to_sql(f["type"])) for f in schema["fields"]]


def sql_type_to_avro(sql_type: SqlType, name: str):
    """The (nullable) Avro type ksqlDB writes for a column type."""
    base = sql_type.base
    simple = {"STRING": "string", "INT": "int", "BIGINT": "long", "DOUBLE": "double", "BOOLEAN": "boolean", "BYTES": "bytes"}
    if base in simple:
        inner: Any = simple[base]
    elif base == "DECIMAL":
        inner = {"type": "bytes", "logicalType": "decimal", "precision": sql_type.precision, "scale": sql_type.scale}
    elif base == "TIMESTAMP":
        inner = {"type": "long", "logicalType": "timestamp-millis"}
    elif base == "DATE":
        inner = {"type": "int", "logicalType": "date"}
    elif base == "TIME":
        inner = {"type": "int", "logicalType": "time-millis"}
    elif base == "ARRAY":
        inner = {"type": "array", "items": sql_type_to_avro(sql_type.item, name)}
    elif base == "MAP":
        if sql_type.key.base != "STRING":
            raise KsqlError(f"Avro only supports MAPs with STRING keys (column {name} is {sql_type}).")
        inner = {"type": "map", "values": sql_type_to_avro(sql_type.item, name)}
    elif base == "STRUCT":
        inner = {
            "type": "record",
            "name": f"{AVRO_RECORD_NAME}_{name}",
            "namespace": AVRO_NAMESPACE,
            "fields": [{"name": n, "type": sql_type_to_avro(t, f"{name}_{n}"), "default": None} for n, t in sql_type.fields],
        }
    else:
        raise KsqlError(f"Type {sql_type} cannot be written as AVRO")
    return ["null", inner]


def avro_value_schema(columns: list[Column], full_name: str | None = None) -> dict:
    """The value schema ksqlDB registers for a sink: nullable fields, KsqlDataSourceSchema record."""
    namespace, _, name = (full_name or f"{AVRO_NAMESPACE}.{AVRO_RECORD_NAME}").rpartition(".")
    schema = {"type": "record", "name": name, "fields": [{"name": c.name, "type": sql_type_to_avro(c.type, c.name), "default": None} for c in columns]}
    if namespace:
        schema["namespace"] = namespace
    return schema


def _to_avro_value(value, sql_type: SqlType):
    if value is None:
        return None
    if sql_type.base == "MAP":
        return {k: _to_avro_value(v, sql_type.item) for k, v in value.items()}
    if sql_type.base == "ARRAY":
        return [_to_avro_value(v, sql_type.item) for v in value]
    if sql_type.base == "STRUCT":
        return {n: _to_avro_value(value.get(n), t) for n, t in sql_type.fields}
    return value


def _logical_types_as_plain(schema):
    """`schema` with its logical types read as the plain values they are, decimals aside: the engine holds a
    TIMESTAMP as epoch milliseconds, a DATE as days since the epoch and a TIME as milliseconds of the day (as
    ksqlDB's JSON and KAFKA formats carry them), not as the datetimes Avro libraries make of them; other
    logical types (uuid, micros) are columns of their plain type, as ksqlDB infers them."""
    if isinstance(schema, list):
        return [_logical_types_as_plain(member) for member in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("logicalType") not in (None, "decimal") and isinstance(schema.get("type"), str):
        return schema["type"]
    if schema.get("type") == "record":
        return {**schema, "fields": [{**field, "type": _logical_types_as_plain(field["type"])} for field in schema.get("fields", [])]}
    if schema.get("type") == "array":
        return {**schema, "items": _logical_types_as_plain(schema["items"])}
    if schema.get("type") == "map":
        return {**schema, "values": _logical_types_as_plain(schema["values"])}
    if isinstance(schema.get("type"), (dict, list)):
        return {**schema, "type": _logical_types_as_plain(schema["type"])}
    return schema


def _from_avro_value(value, sql_type: SqlType):
    if value is None:
        return None
    if sql_type.base == "MAP" and isinstance(value, list):
        return {e["key"]: _from_avro_value(e["value"], sql_type.item) for e in value}
    return value


# ---------------------------------------------------------------- value formats


class ValueFormat:
    """Serialize a row's value columns to bytes and back."""

    name = ""

    def __init__(self, columns: list[Column], topic: str):
        self.columns = columns
        self.topic = topic

    def serialize(self, row: dict | None) -> bytes | None:
        raise NotImplementedError

    def deserialize(self, data: bytes | None) -> dict | None:
        raise NotImplementedError

    def copier(self, source: ValueFormat, columns: list[str]) -> Callable[[bytes], bytes | None] | None:
        """A function writing this format's value straight from the bytes of a `source` value (see
        `AvroFormat.copier`); None: this format writes only rows."""
        return None

    def _coerce_all(self, by_upper_name: dict) -> dict:
        return {c.name: coerce(by_upper_name.get(c.name.upper()), c.type, c.name) for c in self.columns}


def _json_default(value):
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JsonFormat(ValueFormat):
    name = "JSON"

    def serialize(self, row):
        if row is None:
            return None
        return json.dumps({c.name: row.get(c.name) for c in self.columns}, default=_json_default, separators=(",", ":")).encode()

    def deserialize(self, data):
        if data is None:
            return None
        try:
            decoded = json.loads(data, parse_float=decimal.Decimal if any(c.type.base == "DECIMAL" for c in self.columns) else float)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"value is not valid JSON: {exc}") from None
        if decoded is None:
            return None
        if not isinstance(decoded, dict):
            if len(self.columns) == 1:
                decoded = {self.columns[0].name: decoded}
            else:
                raise RecordError(f"JSON value is a {type(decoded).__name__}, expected an object with fields {[c.name for c in self.columns]}")
        try:
            return self._coerce_all({str(k).upper(): v for k, v in decoded.items()})
        except ValueError as exc:
            raise RecordError(str(exc)) from None


class DelimitedFormat(ValueFormat):
    name = "DELIMITED"

    def serialize(self, row):
        if row is None:
            return None
        return delimited_line([row.get(c.name) for c in self.columns]).encode()

    def deserialize(self, data):
        if data is None:
            return None
        try:
            fields = next(csv.reader([data.decode()]), [])
        except (UnicodeDecodeError, csv.Error) as exc:
            raise RecordError(f"value is not valid DELIMITED text: {exc}") from None
        if len(fields) != len(self.columns):
            raise RecordError(f"Unexpected field count, csvFields:{len(fields)} schemaFields:{len(self.columns)}")
        try:
            return {c.name: None if f == "" else coerce(f, c.type, c.name) for c, f in zip(self.columns, fields)}
        except ValueError as exc:
            raise RecordError(str(exc)) from None


def _quote_needed(text: str, first: bool) -> bool:
    """Apache Commons CSV's minimal quoting, which ksqlDB's DELIMITED format uses."""
    if text == "":
        return first
    c = text[0]
    if first and not (c.isascii() and c.isalnum()):
        return True
    if c <= "#":
        return True
    if any(ch in text for ch in ',"\r\n'):
        return True
    return text[-1] <= " "


def delimited_line(values) -> str:
    """One DELIMITED record: NULL is empty, text quoted where Commons CSV would quote it."""
    fields = []
    for i, value in enumerate(values):
        if value is None:
            fields.append("")
            continue
        text = _text(value)
        fields.append('"' + text.replace('"', '""') + '"' if _quote_needed(text, i == 0) else text)
    return ",".join(fields)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_KAFKA_STRUCTS = {"INT": ">i", "BIGINT": ">q", "DOUBLE": ">d"}


def kafka_encode(value, sql_type: SqlType) -> bytes | None:
    if value is None:
        return None
    if sql_type.base in _KAFKA_STRUCTS:
        return struct.pack(_KAFKA_STRUCTS[sql_type.base], value)
    if sql_type.base == "STRING":
        return value.encode()
    if sql_type.base == "BYTES":
        return bytes(value)
    raise KsqlError(f"The 'KAFKA' format does not support type '{sql_type}'")


def kafka_decode(data: bytes | None, sql_type: SqlType):
    if data is None:
        return None
    if sql_type.base in _KAFKA_STRUCTS:
        fmt = _KAFKA_STRUCTS[sql_type.base]
        if len(data) != struct.calcsize(fmt):
            raise RecordError(f"Size of data received by deserializer is not {struct.calcsize(fmt)} ({len(data)} bytes) for {sql_type}")
        return struct.unpack(fmt, data)[0]
    if sql_type.base == "STRING":
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise RecordError(f"not UTF-8 text: {exc}") from None
    if sql_type.base == "BYTES":
        return data
    raise KsqlError(f"The 'KAFKA' format does not support type '{sql_type}'")


def check_kafka_type(sql_type: SqlType, what: str) -> None:
    if sql_type.base not in ("INT", "BIGINT", "DOUBLE", "STRING", "BYTES"):
        raise KsqlError(f"The 'KAFKA' format does not support type '{sql_type.base}', column: {what}")


class KafkaFormat(ValueFormat):
    name = "KAFKA"

    def __init__(self, columns, topic):
        super().__init__(columns, topic)
        if len(columns) > 1:
            raise KsqlError(f"The 'KAFKA' format only supports a single field. Got: {[c.name for c in columns]}")
        for c in columns:
            check_kafka_type(c.type, c.name)

    def serialize(self, row):
        if row is None or not self.columns:
            return None
        return kafka_encode(row.get(self.columns[0].name), self.columns[0].type)

    def deserialize(self, data):
        if data is None:
            return None
        if not self.columns:
            return {}
        return {self.columns[0].name: kafka_decode(data, self.columns[0].type)}


# ---------------------------------------------------------------- Avro codecs
#
# cavro (Cython) encodes and decodes these small flat records in about half of fastavro's time
# per call. It is used wherever it was checked to give fastavro's bytes and values
# (tests/test_ksql_avro_codec.py); fastavro stays for the rest, decided once per schema.
# On invalid data the two can differ: cavro refuses a negative union branch index (fastavro
# counts it from the end) and a negative time-millis/micros (fastavro wraps it round the day),
# so such records go to the dead letters; an int written with a varint longer than 5 bytes
# is accepted by both, fastavro giving a value beyond 32 bits and cavro its low 32 bits.

# the logical types cavro decodes to the same values as fastavro, with the Avro type each applies to
# (cavro reads local-timestamp-* as plain ints where fastavro gives naive datetimes)
_SAME_LOGICAL_TYPES = {
    "decimal": ("bytes", "fixed"),
    "timestamp-millis": ("long",),
    "timestamp-micros": ("long",),
    "time-micros": ("long",),
    "time-millis": ("int",),
    "date": ("int",),
    "uuid": ("string",),
}


def _cavro_reads_like_fastavro(schema) -> bool:
    """Whether cavro decodes data written with `schema` to the values fastavro gives.

    Arrays and maps are left to fastavro: cavro misreads blocks with a negative item count
    (followed by the block's byte size), which the Avro spec allows and some non-Java writers
    produce. Logical types outside the checked list are left to fastavro too.
    """
    if isinstance(schema, str):
        return True
    if isinstance(schema, list):
        return all(_cavro_reads_like_fastavro(member) for member in schema)
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    logical = schema.get("logicalType")
    if logical is not None:
        if kind not in _SAME_LOGICAL_TYPES.get(logical, ()):
            return False
        if logical == "decimal" and "precision" not in schema:
            return False  # fastavro cannot read it at all, cavro reads the bytes: keep fastavro's error
    if kind in ("array", "map"):
        return False
    if kind == "record":
        return all(_cavro_reads_like_fastavro(field.get("type")) for field in schema.get("fields", []))
    if isinstance(kind, (dict, list)):
        return _cavro_reads_like_fastavro(kind)
    return True


def _cavro_schema(schema) -> cavro.Schema | None:
    """cavro's parsed `schema`, or None where cavro refuses a schema fastavro accepts.

    cavro checks names, defaults and types more strictly than fastavro (a record name with a
    dash, an "error" type, a union default that does not match the first member): such schemas
    keep fastavro, which the engine has always read and written them with.
    """
    try:
        # records come back as dicts (rows), not cavro Record objects; parse_json=False: a bare
        # "string" schema is the type, not JSON text
        return cavro.Schema(schema, parse_json=False, record_decodes_to_dict=True)
    except Exception:  # cavro raises its own, TypeError and ValueError for the schemas it refuses
        return None


def avro_encoder(schema) -> tuple[Callable[[Any], bytes], bool]:
    """A function writing a value of `schema` as Avro binary, and whether it needs rows converted by `_to_avro_value`.

    cavro writes every schema the engine registers (nullable unions of primitives, decimals,
    timestamps, arrays, maps, records) byte for byte as fastavro does; it reads a record's fields
    from the dict, writes a missing field as its default (NULL) and ignores other keys, and
    takes tuples for arrays, so rows need no conversion. fastavro needs nested values converted.
    """
    parsed = _cavro_schema(schema)
    if parsed is not None:
        # a record of primitive columns (most outputs) is written by a function made for its schema,
        # ~3x faster than cavro, which it hands any value it does not write itself
        return flat_record_writer(schema, parsed.binary_encode) or parsed.binary_encode, False
    fastavro_schema = fastavro.parse_schema(schema)

    def encode(value) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, fastavro_schema, value)
        return out.getvalue()

    return encode, True


def avro_decoder(writer) -> Callable[[bytes], Any]:
    """A function reading Avro binary written with `writer` (parsed JSON) to Python values, as fastavro reads it."""
    parsed = _cavro_schema(writer) if _cavro_reads_like_fastavro(writer) else None
    if parsed is not None:
        return parsed.binary_decode
    fastavro_schema = fastavro.parse_schema(writer)
    return lambda payload: fastavro.schemaless_reader(io.BytesIO(payload), fastavro_schema, None)


def _renaming_decoder(writer: dict, renames: list[tuple[str, str]]) -> Callable[[bytes], dict] | None:
    """A cavro function reading `writer` records straight into rows: the columns in order, each from its field.

    Schema resolution against a reader schema whose fields are the columns, each with its writer
    field as alias, skips the other fields and names the values as the columns, at no cost over
    a plain decode. None where that cannot be done the same as renaming fastavro's dict.
    """
    if not _cavro_reads_like_fastavro(writer):
        return None
    names = [field["name"].upper() for field in writer["fields"]]
    if len(set(names)) != len(names):
        return None  # fields differing only in case: the column's field is picked by the read plan
    types = {field["name"]: field["type"] for field in writer["fields"]}
    reader = {key: writer[key] for key in ("type", "name", "namespace") if key in writer}
    reader["fields"] = [{"name": column, "aliases": [field], "type": types[field]} for column, field in renames]
    writer_schema = _cavro_schema(writer)
    reader_schema = _cavro_schema(reader)  # None when a column name is no Avro name, or a named type is used before its definition
    if writer_schema is None or reader_schema is None:
        return None
    try:
        return reader_schema.reader_for_writer(writer_schema).binary_decode
    except Exception:  # cavro could not resolve the two schemas: rename fastavro-style instead
        return None


_SCHEMA_ID = struct.Struct(">I")
_UNKNOWN = object()


class AvroFormat(ValueFormat):
    """Confluent Avro: magic byte 0, 4-byte schema id, Avro binary."""

    name = "AVRO"

    def __init__(self, columns, topic, store: SchemaStore | None, full_name: str | None = None):
        super().__init__(columns, topic)
        if store is None:
            raise KsqlError("AVRO format needs a schema registry: configure one for the engine")
        self.store = store
        self.full_name = full_name
        # per writer schema id: decode function, read plan, renames (see _reader)
        self._readers: dict[int, tuple[Callable[[bytes], Any], list | None, list | None]] = {}
        self._writer_id: int | None = None
        self._header = b""  # magic byte and writer schema id, once registered
        self._use_writer(avro_value_schema(columns, full_name))

    def _use_writer(self, schema) -> None:
        self._encode, convert = avro_encoder(schema)
        # only nested types need converting between rows and Avro records, and only for fastavro
        self._nested = [(c.name, c.type) for c in self.columns if c.type.base in ("MAP", "ARRAY", "STRUCT")] if convert else []

    def writer_schema(self) -> dict:
        return avro_value_schema(self.columns, self.full_name)

    def register_schema(self, subject_suffix: str = "value", bare: bool = False) -> int:
        """Register the schema this format writes (ksqlDB does so when the query is created)."""
        if self._writer_id is None:
            schema = sql_type_to_avro(self.columns[0].type, self.columns[0].name) if bare else self.writer_schema()
            self._writer_id = self.store.register(f"{self.topic}-{subject_suffix}", json.dumps(schema))
            self._use_writer(schema)
            self._header = b"\x00" + _SCHEMA_ID.pack(self._writer_id)
        return self._writer_id

    def serialize(self, row, subject_suffix: str = "value", bare: bool = False):
        if row is None:
            return None
        if bare:
            column = self.columns[0]
            record = _to_avro_value(row.get(column.name), column.type)
        elif self._nested:
            record = {c.name: row.get(c.name) for c in self.columns}
            for name, sql_type in self._nested:
                record[name] = _to_avro_value(record[name], sql_type)
        else:
            # the encoder reads exactly the schema's fields from the row (a missing one is written
            # as its default, NULL, as row.get would give), so no copy is needed
            record = row
        if self._writer_id is None:
            self.register_schema(subject_suffix, bare)
        try:
            return self._header + self._encode(record)
        except Exception as exc:  # cavro and fastavro raise several types for a value of the wrong type
            raise ValueError(f"cannot write this row to {self.topic} as Avro: {exc}") from None

    def _reader(self, schema_id: int) -> tuple[Callable[[bytes], Any], list | None, list | None]:
        """How to read values written with schema `schema_id`: a decode function, then either nothing more
        (it gives the row), the plain renames of fields to columns if that is all it takes, or how each
        column is read from the decoded record."""
        written, plan, renames = self._read_plan(schema_id)
        if renames is not None:
            decode_rows = _renaming_decoder(written, renames)
            if decode_rows is not None:
                # a record of primitive fields (the survey's entries) is read by a function made for its
                # schema, ~1.7x faster than cavro, which it hands any payload it does not read itself
                return flat_record_reader(written, renames, decode_rows) or decode_rows, None, None
        return avro_decoder(written), plan, renames

    def copier(self, source: ValueFormat, columns: list[str]) -> Callable[[bytes], bytes | None] | None:
        """A function writing this format's value straight from the bytes of a value of `source` whose columns
        `columns` are this format's columns, in order; None when `source` is not Avro.

        The function copies the fields' bytes (`flat_avro.flat_record_copier`)
        and gives None for a value it leaves to `deserialize` and `serialize`:
        one that is not Confluent Avro of a known schema, one written with a
        schema whose fields are not primitives of the same types as this
        format's, or one that the flat reader would not read itself.
        """
        if not isinstance(source, AvroFormat):
            return None
        header = b"\x00" + _SCHEMA_ID.pack(self.register_schema())
        output = self.writer_schema()
        copiers: dict[bytes, Callable | None] = {}  # by the source value's magic byte and schema id

        def copier_for(written_header: bytes) -> Callable | None:
            """The copy function for values with this header; `_UNKNOWN` (not kept) for a header of no schema."""
            if len(written_header) < 5 or written_header[0] != 0:
                return _UNKNOWN
            try:
                written, _, renames = source._read_plan(_SCHEMA_ID.unpack_from(written_header, 1)[0])
            except RecordError:
                return _UNKNOWN  # no such schema (yet): `deserialize` says so
            field_of = dict(renames or ())
            if not all(column in field_of for column in columns):
                return None
            return flat_record_copier(written, output, [field_of[column] for column in columns])

        def copy(data: bytes) -> bytes | None:
            written_header = data[:5]
            try:
                copy_fields = copiers[written_header]
            except KeyError:
                copy_fields = copier_for(written_header)
                if copy_fields is _UNKNOWN:
                    return None
                copiers[written_header] = copy_fields
            if copy_fields is None:
                return None
            fields = copy_fields(data, 5)
            return None if fields is None else header + fields

        return copy

    def _read_plan(self, schema_id: int) -> tuple[Any, list, list | None]:
        """The schema `schema_id` (as the engine reads it), how each column is read from its records (column,
        field name or None, whether converted), and the (column, field name) renames when that is all it takes."""
        try:
            writer = json.loads(self.store.schema_by_id(schema_id))
        except LookupError as exc:  # no such id: the record's fault (RegistryUnavailable is not a LookupError: it propagates)
            raise RecordError(f"unknown Avro schema id {schema_id}: {exc}") from None
        fields = {f["name"].upper(): f for f in writer.get("fields", [])} if isinstance(writer, dict) and writer.get("type") == "record" else None
        plan = []
        for column in self.columns:
            if fields is None:
                plan.append((column, None, True))
                continue
            field = fields.get(column.name.upper())
            if field is None:
                plan.append((column, None, False))
                continue
            try:
                same_type = avro_type_to_sql(field["type"]) == column.type and column.type.base not in ("MAP", "STRUCT")
            except KsqlError:
                same_type = False
            plan.append((column, field["name"], not same_type))
        # a writer schema whose every column is there with the column's type is read by renaming
        # fields only (the common case: no per-column coercion, no per-record planning)
        renames = [(column.name, field_name) for column, field_name, convert in plan] if not any(convert or field_name is None for _, field_name, convert in plan) else None
        return _logical_types_as_plain(writer), plan, renames  # the same bytes, read as the engine holds them

    def deserialize(self, data):
        if data is None:
            return None
        if len(data) < 5 or data[0] != 0:
            raise RecordError("value is not Confluent Avro (no magic byte 0 and schema id)")
        schema_id = _SCHEMA_ID.unpack_from(data, 1)[0]
        reader = self._readers.get(schema_id)
        if reader is None:
            reader = self._readers[schema_id] = self._reader(schema_id)
        decode, plan, renames = reader
        payload = data[5:]
        if type(payload) is not bytes:
            payload = bytes(payload)  # cavro reads bytes only
        try:
            decoded = decode(payload)
        except Exception as exc:  # cavro and fastavro raise many types for truncated or garbled data
            raise RecordError(f"cannot decode Avro value with schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        if plan is None:
            return decoded
        if renames is not None and type(decoded) is dict:
            return {name: decoded[field_name] for name, field_name in renames}
        if not isinstance(decoded, dict):
            if len(self.columns) == 1:
                return {self.columns[0].name: coerce(_from_avro_value(decoded, self.columns[0].type), self.columns[0].type, self.columns[0].name)}
            raise RecordError("Avro value is not a record")
        row = {}
        try:
            for column, field_name, convert in plan:
                if field_name is None:
                    raise RecordError(f"Avro record (schema id {schema_id}) lacks field {column.name}")
                value = decoded[field_name]
                row[column.name] = coerce(_from_avro_value(value, column.type), column.type, column.name) if convert else value
        except ValueError as exc:
            raise RecordError(str(exc)) from None
        return row


def value_format(name: str, columns: list[Column], topic: str, store: SchemaStore | None, avro_full_name: str | None = None) -> ValueFormat:
    name = name.upper()
    if name == "JSON":
        return JsonFormat(columns, topic)
    if name == "DELIMITED":
        return DelimitedFormat(columns, topic)
    if name == "KAFKA":
        return KafkaFormat(columns, topic)
    if name == "AVRO":
        return AvroFormat(columns, topic, store, avro_full_name)
    raise KsqlError(f"Value format {name} is outside the engine's subset (JSON, AVRO, KAFKA, DELIMITED).")


# ---------------------------------------------------------------- key formats


class KeyFormat:
    """Serialize key columns (a tuple of values) to key bytes, optionally time-windowed."""

    def __init__(self, name: str, columns: list[Column], windowed: bool = False, topic: str = "", store: SchemaStore | None = None):
        self.name = name.upper()
        self.columns = columns
        self.windowed = windowed
        self._avro = None
        if self.name == "AVRO":
            # one key column is written as a bare Avro value, several as a record (as ksqlDB)
            self._avro = AvroFormat(columns, topic, store) if len(columns) > 1 else None
            self._avro_single = (
                AvroFormat([Column("K", columns[0].type)], topic, store) if len(columns) == 1 else None
            )
        if self.name not in KEY_FORMATS:
            raise KsqlError(f"Key format {self.name} is outside the engine's subset (KAFKA, JSON, DELIMITED).")
        if self.name == "DELIMITED":
            for c in columns:
                if c.type.base in ("ARRAY", "MAP", "STRUCT"):
                    raise KsqlError(f"The 'DELIMITED' format does not support type '{c.type.base}', column: `{c.name}`")
        if self.name == "AVRO":
            for c in columns:
                if c.type.base in ("ARRAY", "MAP", "STRUCT"):
                    raise KsqlError(f"AVRO keys of type {c.type.base} are outside the engine's subset (column {c.name}).")
        if self.name == "KAFKA":
            if len(columns) > 1:
                raise KsqlError(
                    "The 'KAFKA' format only supports a single field. Got: "
                    + str([f"`{c.name}` {c.type}" for c in columns]).replace("'", "")
                )
            for c in columns:
                check_kafka_type(c.type, c.name)
        self._string_key = self.name == "KAFKA" and len(columns) == 1 and columns[0].type.base == "STRING"

    def serialize(self, key: tuple, window_start: int | None = None) -> bytes | None:
        if self._string_key and not self.windowed:
            # the common KAFKA STRING key: what _serialize_plain does, without its dispatch
            value = key[0]
            return None if value is None else value.encode()
        data = self._serialize_plain(key)
        if self.windowed and window_start is not None:
            return (data or b"") + struct.pack(">q", window_start)
        return data

    def _serialize_plain(self, key: tuple) -> bytes | None:
        if not self.columns or all(v is None for v in key):
            return None
        if self.name == "KAFKA":
            return kafka_encode(key[0], self.columns[0].type)
        if self.name == "AVRO":
            return self._avro_key_bytes(key)
        if self.name == "JSON":
            if len(self.columns) == 1:
                return json.dumps(key[0], default=_json_default).encode()
            return json.dumps({c.name: v for c, v in zip(self.columns, key)}, default=_json_default).encode()
        return delimited_line(key).encode()

    def _avro_key_bytes(self, key: tuple) -> bytes | None:
        if self._avro is not None:
            return self._avro.serialize(dict(zip([c.name for c in self.columns], key)), subject_suffix="key")
        return self._avro_single.serialize({"K": key[0]}, subject_suffix="key", bare=True)

    def deserialize(self, data: bytes | None) -> tuple[tuple, int | None]:
        """Return (key values, window start or None)."""
        window_start = None
        if self.windowed and data is not None:
            if len(data) < 8:
                raise RecordError("windowed key shorter than its 8-byte window start")
            data, window_start = data[:-8], struct.unpack(">q", data[-8:])[0]
        if not self.columns:
            return (), window_start
        if data is None:
            return tuple(None for _ in self.columns), window_start
        try:
            if self.name == "KAFKA":
                return (kafka_decode(data, self.columns[0].type),), window_start
            if self.name == "AVRO":
                if self._avro is not None:
                    row = self._avro.deserialize(data)
                    return tuple(row[c.name] for c in self.columns), window_start
                return (self._avro_single.deserialize(data)["K"],), window_start
            if self.name == "JSON":
                decoded = json.loads(data)
                if len(self.columns) == 1:
                    return (coerce(decoded, self.columns[0].type, self.columns[0].name),), window_start
                upper = {str(k).upper(): v for k, v in decoded.items()}
                return tuple(coerce(upper.get(c.name.upper()), c.type, c.name) for c in self.columns), window_start
            fields = next(csv.reader([data.decode()]), [])
            return tuple(None if f == "" else coerce(f, c.type, c.name) for c, f in zip(self.columns, fields)), window_start
        except RecordError:
            raise
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise RecordError(f"cannot read key: {exc}") from None
