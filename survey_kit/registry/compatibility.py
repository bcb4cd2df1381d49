"""Avro schema parsing and the compatibility rules of the registry, with reasons that name the field.

The verdict comes from the `avro` package's `ReaderWriterCompatibilityChecker` (the port of the Java
checker Confluent uses). That checker loses the field path when it looks inside a union, so
`incompatibilities` walks record fields itself only to say *where* the checker found a problem.
"""

from __future__ import annotations

import json

import avro.errors
import avro.schema
import fastavro
import fastavro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    SchemaType,
    lookup_writer_field,
    schema_name_equals,
)

LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE")


class InvalidSchema(ValueError):
    """The text is not a valid Avro schema; the message says why."""


def parse(schema_text: str) -> avro.schema.Schema:
    """Parse Avro schema JSON text, raising InvalidSchema with the parser's reason.

    fastavro, which confluent-kafka's serializers use, must accept it too: it also checks that
    field defaults match their types, which the `avro` parser lets through.
    """
    try:
        schema_json = json.loads(schema_text)
    except (TypeError, json.JSONDecodeError) as error:
        raise InvalidSchema(f"Invalid schema: not JSON ({error})") from None
    try:
        parsed = avro.schema.parse(schema_text)
        fastavro.parse_schema(schema_json)
    except (avro.errors.AvroException, fastavro.schema.SchemaParseException, ValueError, TypeError,
            KeyError) as error:
        raise InvalidSchema(f"Invalid schema: {error}") from None
    return parsed


def canonical_text(schema_text: str, normalize: bool = False) -> str:
    """The text the registry stores and compares: compact JSON, so whitespace never makes a new schema.

    With `normalize`, object keys are also sorted, so key order does not matter either.
    """
    return json.dumps(json.loads(schema_text), separators=(",", ":"), sort_keys=normalize, ensure_ascii=False)


def is_transitive(level: str) -> bool:
    """Whether `level` checks a new schema against every earlier version rather than only the latest."""
    return level.endswith("_TRANSITIVE")


def incompatibilities(new: avro.schema.Schema, old: avro.schema.Schema, level: str, old_label: str) -> list[str]:
    """Why `new` may not follow `old` under `level` (empty when it may).

    BACKWARD: consumers using the new schema must read data written with the old one.
    FORWARD: consumers still using the old schema must read data written with the new one.
    FULL: both. `old_label` names the old schema in the reasons (for example "version 2").
    """
    base = level.removesuffix("_TRANSITIVE")
    reasons = []
    if base in ("BACKWARD", "FULL"):
        reasons += [f"the new schema cannot read data written with {old_label}: {why}"
                    for why in _problems(reader=new, writer=old, reader_label="the new schema", writer_label=old_label)]
    if base in ("FORWARD", "FULL"):
        reasons += [f"{old_label} cannot read data written with the new schema: {why}"
                    for why in _problems(reader=old, writer=new, reader_label=old_label, writer_label="the new schema")]
    return reasons


def _problems(reader: avro.schema.Schema, writer: avro.schema.Schema, reader_label: str, writer_label: str,
              path: str = "") -> list[str]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is not SchemaCompatibilityType.incompatible:
        return []
    where = f"field '{path}'" if path else "the top-level schema"
    if reader.type == writer.type == SchemaType.RECORD:
        found = []
        if not schema_name_equals(reader, writer):
            found.append(f"{where} is record '{reader.fullname}' in {reader_label} "
                         f"but '{writer.fullname}' in {writer_label}")
        for index, reader_field in enumerate(reader.fields):
            field_path = f"{path}.{reader_field.name}" if path else reader_field.name
            writer_field = lookup_writer_field(writer, reader_field)
            if writer_field is None:
                # The checker reports a missing field at exactly this location of the record it compared.
                if f"/fields/{index}" in result.locations:
                    found.append(f"field '{field_path}' has no default value in {reader_label} "
                                 f"and is missing in {writer_label}")
            else:
                found += _problems(reader_field.type, writer_field.type, reader_label, writer_label, field_path)
        if found:
            return found
    return [f"{where}: {'; '.join(sorted(result.messages))}"]
