"""ksqlDB REST entities as text, the way ksqlDB's own CLI shows them, for `survey-kit ksql run`.

    for line in entity_lines(client.execute("SHOW QUERIES; DESCRIBE survey_results_final;")):
        print(line)

Works on the answers of a real ksqlDB server and of the embedded engine alike
(they speak the same REST API); an entity of a type not known here is shown
as its JSON.
"""

from __future__ import annotations

import json
from typing import Any, Iterator


def entity_lines(entities: list[dict[str, Any]]) -> Iterator[str]:
    """The lines that show `entities` (the list `KsqlRestClient.execute` returns), one block per statement."""
    for index, entity in enumerate(entities):
        if index:
            yield ""
        kind = entity.get("@type")
        show = _SHOWN_BY.get(kind)
        yield from show(entity) if show else [json.dumps(entity, indent=2)]
        for warning in entity.get("warnings") or []:
            yield f"warning: {warning.get('message', warning)}"


def _status(entity: dict) -> Iterator[str]:
    status = entity.get("commandStatus") or {}
    yield status.get("message") or status.get("status") or entity.get("statementText", "")


def _sources(entity: dict) -> Iterator[str]:
    rows = entity.get("streams", []) + entity.get("tables", [])
    noun = "Stream" if entity["@type"] == "streams" else "Table"
    yield from _table([f"{noun} Name", "Kafka Topic", "Key Format", "Value Format", "Windowed"],
                      [[s["name"], s.get("topic", ""), s.get("keyFormat", ""), s.get("valueFormat", ""),
                        str(bool(s.get("isWindowed"))).lower()] for s in rows])


def _queries(entity: dict) -> Iterator[str]:
    yield from _table(["Query ID", "Status", "Sink Kafka Topic", "Query String"],
                      [[q.get("id", ""), q.get("state", ""), ", ".join(q.get("sinkKafkaTopics", [])),
                        _shortened(" ".join(q.get("queryString", "").split()))] for q in entity.get("queries", [])])


def _shortened(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _topics(entity: dict) -> Iterator[str]:
    yield from _table(["Kafka Topic", "Partitions"],
                      [[t["name"], str(len(t.get("replicaInfo", [])))] for t in entity.get("topics", [])])


def _description(entity: dict) -> Iterator[str]:
    source = entity.get("sourceDescription") or {}
    yield f"Name                 : {source.get('name', '')}"
    yield f"Type                 : {source.get('type', '')}"
    yield f"Kafka topic          : {source.get('topic', '')}"
    yield f"Key format           : {source.get('keyFormat', '')}"
    yield f"Value format         : {source.get('valueFormat', '')}"
    if source.get("windowType"):
        yield f"Window type          : {source['windowType']}"
    yield from _table(["Field", "Type"], [[f["name"], _field_type(f)] for f in source.get("fields", [])])
    for heading, queries in (("Queries that write to it", source.get("writeQueries")),
                             ("Queries that read from it", source.get("readQueries"))):
        if queries:
            yield f"{heading}: " + ", ".join(f"{q.get('id')} ({q.get('state', '')})" for q in queries)


def _query_description(entity: dict) -> Iterator[str]:
    query = entity.get("queryDescription") or {}
    yield f"ID                   : {query.get('id', '')}"
    yield f"Query type           : {query.get('queryType', '')}"
    yield f"SQL                  : {' '.join(str(query.get('statementText', '')).split())}"
    yield f"Sources              : {', '.join(query.get('sources') or [])}"
    yield f"Sinks                : {', '.join(query.get('sinks') or [])}"
    if query.get("state"):
        yield f"State                : {query['state']}"
    if query.get("executionPlan"):
        yield f"Execution plan       : {' '.join(str(query['executionPlan']).split())}"
    overridden = query.get("overriddenProperties") or {}
    yield "Overridden properties:"
    yield from _table(["Property", "Value"], [[str(k), str(v)] for k, v in sorted(overridden.items())])


def _field_type(field: dict) -> str:
    text = _type_text(field.get("schema") or {})
    if field.get("type") == "PRIMARY_KEY":
        return f"{text} (primary key)"
    if field.get("type") == "KEY":
        return f"{text} (key)"
    return text


def _type_text(schema: dict) -> str:
    """A SchemaInfo as ksqlDB writes the type: MAP<STRING, BIGINT>, ARRAY<INT>, STRUCT<A INT>, DECIMAL(4, 2)."""
    base, member = schema.get("type", ""), schema.get("memberSchema")
    if base == "MAP" and member:
        return f"MAP<STRING, {_type_text(member)}>"
    if base == "ARRAY" and member:
        return f"ARRAY<{_type_text(member)}>"
    if base == "STRUCT" and schema.get("fields"):
        return "STRUCT<" + ", ".join(f"{f['name']} {_type_text(f.get('schema') or {})}" for f in schema["fields"]) + ">"
    parameters = schema.get("parameters") or {}
    if base == "DECIMAL" and "precision" in parameters:
        return f"DECIMAL({parameters['precision']}, {parameters.get('scale', 0)})"
    return base


def _properties(entity: dict) -> Iterator[str]:
    yield from _table(["Property", "Value"],
                      [[p.get("name", ""), str(p.get("value", ""))] for p in entity.get("properties", [])])


def _table(header: list[str], rows: list[list[str]]) -> Iterator[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    line = "-" * (sum(widths) + 3 * (len(widths) - 1))
    yield " | ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip()
    yield line
    for row in rows:
        yield " | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
    if not rows:
        yield "(none)"


_SHOWN_BY = {
    "currentStatus": _status,
    "streams": _sources,
    "tables": _sources,
    "queries": _queries,
    "kafka_topics": _topics,
    "sourceDescription": _description,
    "queryDescription": _query_description,
    "properties": _properties,
}
