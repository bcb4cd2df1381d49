"""Run ksqlDB query-validation-test (QTT) files against the embedded engine.

Each case runs in-process like ksqlDB's own runner: the statements are executed,
the inputs are serialized with their source's formats and fed in order (outputs
of one query are fed on to the queries reading their topic), and the records
produced are compared, in order per topic, with the expected ones (key, value,
timestamp when given, window bounds when given). A case needing something
outside the engine's subset is reported as unsupported, never as passed.

    report = run_files(["../shared/qtt/histogram.json"])
    print(report.to_text())
"""

from __future__ import annotations

import decimal
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .driver import Driver
from .engine import Engine
from .formats import OUTSIDE_SUBSET_FORMATS, InMemorySchemaStore, kafka_encode
from .planner import DataSource
from .types import KsqlError, coerce

OUTSIDE_SUBSET = "outside the engine's subset"


@dataclass
class CaseResult:
    file: str
    name: str
    status: str  # passed | failed | unsupported
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class Report:
    cases: list[CaseResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for c in self.cases if c.status == status)

    @property
    def passed(self) -> int:
        return self.count("passed")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def unsupported(self) -> int:
        return self.count("unsupported")

    def for_file(self, name: str) -> "Report":
        return Report([c for c in self.cases if Path(c.file).name == name])

    def to_json(self) -> dict[str, Any]:
        return {"cases": [c.as_dict() for c in self.cases], "passed": self.passed, "failed": self.failed, "unsupported": self.unsupported}

    def to_text(self) -> str:
        lines = []
        for case in self.cases:
            detail = f"\n      {case.detail.replace(chr(10), chr(10) + '      ')}" if case.detail and case.status != "passed" else ""
            lines.append(f"{case.status.upper():11} {Path(case.file).name}: {case.name}{detail}")
        files = sorted({c.file for c in self.cases})
        for path in files:
            sub = Report([c for c in self.cases if c.file == path])
            lines.append(f"{Path(path).name}: {sub.passed} passed, {sub.failed} failed, {sub.unsupported} unsupported")
        lines.append(f"total: {self.passed} passed, {self.failed} failed, {self.unsupported} unsupported")
        return "\n".join(lines)


class _Unsupported(Exception):
    pass


class _Failed(Exception):
    pass


def run_files(paths, case: str | None = None) -> Report:
    """Run every case (or only those named `case`) of the given QTT files."""
    report = Report()
    for path in paths:
        try:
            tests = json.loads(Path(path).read_text())["tests"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a readable QTT file (a JSON object with a 'tests' list): {exc}") from None
        for test in tests:
            for name, statements in _expand_formats(test):
                if case is not None and case not in (name, test["name"]):
                    continue
                report.cases.append(run_case(str(path), name, test, statements))
    return report


def _expand_formats(test: dict):
    """(case name, statements) for each format a case lists, `{FORMAT}` replaced."""
    formats = test.get("format")
    if not formats:
        yield test["name"], test["statements"]
        return
    for fmt in formats:
        yield f"{test['name']} - {fmt}", [s.replace("{FORMAT}", fmt) for s in test["statements"]]


def run_case(file: str, name: str, test: dict, statements: list[str]) -> CaseResult:
    try:
        _run(test, statements)
    except _Unsupported as exc:
        return CaseResult(file, name, "unsupported", str(exc))
    except _Failed as exc:
        return CaseResult(file, name, "failed", str(exc))
    except Exception as exc:  # an engine defect: report it against the case, keep running the others
        return CaseResult(file, name, "failed", f"engine error: {type(exc).__name__}: {exc}")
    return CaseResult(file, name, "passed")


def _run(test: dict, statements: list[str]) -> None:
    for statement in statements:
        for fmt in OUTSIDE_SUBSET_FORMATS:
            if f"'{fmt}'" in statement.upper():
                raise _Unsupported(f"format {fmt} is {OUTSIDE_SUBSET}")
    schemas = InMemorySchemaStore()
    properties = {k: str(v) for k, v in test.get("properties", {}).items()}
    engine = Engine(schemas=schemas, properties=properties)
    expected_error = test.get("expectedException")
    try:
        # one script, a statement per line, as ksqlDB's runner submits them: errors name the same lines
        engine.execute("\n".join(s if s.rstrip().endswith(";") else s + ";" for s in statements))
    except KsqlError as exc:
        message = str(exc)
        if expected_error:
            # ksqlDB appends its own rendering of the statement; compare the error itself
            wanted = expected_error.get("message", "").split("\nStatement:")[0]
            if wanted in message:
                return
            if OUTSIDE_SUBSET in message:
                raise _Unsupported(message.split("\n")[0])
            raise _Failed(f"statement rejected with a different message.\nexpected: {wanted}\nactual:   {message}")
        if OUTSIDE_SUBSET in message:
            raise _Unsupported(message.split("\n")[0])
        raise _Failed(f"statement rejected: {message}")
    if expected_error:
        raise _Failed(f"expected the statements to be rejected with: {expected_error.get('message', expected_error.get('type'))}")

    actual = _feed(engine, test.get("inputs", []))
    _compare(engine, test.get("outputs", []), actual)


def _input_source(engine: Engine, topic: str) -> DataSource:
    candidates = [s for s in engine.sources.values() if s.topic == topic]
    if not candidates:
        raise _Failed(f"input topic {topic} is not the topic of any source")
    # prefer a source that is read by a query (and not the sink of one)
    read = {t for q in engine.queries.values() for t in q.source_topics}
    candidates.sort(key=lambda s: (s.written_by is not None, topic not in read))
    return candidates[0]


def _encode_input(engine: Engine, source: DataSource, record: dict) -> tuple[bytes | None, bytes | None]:
    serdes = engine.serdes(source.name)
    key = None
    if "key" in record and record["key"] is not None and source.key_columns:
        raw_key = record["key"]
        values = (raw_key,) if len(source.key_columns) == 1 else tuple(raw_key.get(c.name) for c in source.key_columns)
        values = tuple(coerce(v, c.type, c.name) for v, c in zip(values, source.key_columns))
        window = record.get("window")
        key = serdes.key.serialize(values, window["start"] if window else None)
    value = record.get("value")
    if value is None:
        return key, None
    fmt = source.value_format
    if fmt == "JSON":
        return key, json.dumps(value).encode()
    if fmt == "DELIMITED":
        return key, str(value).encode()
    if fmt == "KAFKA":
        column = source.value_columns[0]
        return key, kafka_encode(coerce(value, column.type, column.name), column.type)
    if fmt == "AVRO":
        upper = {k.upper(): v for k, v in value.items()}
        row = {c.name: coerce(upper.get(c.name.upper()), c.type, c.name) for c in source.value_columns}
        return key, serdes.value.serialize(row)
    raise _Unsupported(f"input value format {fmt} is {OUTSIDE_SUBSET}")


def _feed(engine: Engine, inputs: list[dict]) -> dict[str, list]:
    encoded = []
    for record in inputs:
        source = _input_source(engine, record["topic"])
        try:
            key, value = _encode_input(engine, source, record)
        except ValueError as exc:
            raise _Failed(f"cannot encode input {record}: {exc}") from None
        encoded.append((record["topic"], key, value, int(record.get("timestamp", 0))))
    driver = Driver(engine)
    for topic, key, value, timestamp in encoded:
        driver.pipe(topic, key, value, timestamp)
    driver.commit()
    return driver.outputs


def _normalize(value):
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _decode_output(engine: Engine, out) -> dict:
    sink = next((s for s in engine.sources.values() if s.topic == out.topic and s.written_by), None) or engine.source_for_topic(out.topic)
    serdes = engine.serdes(sink.name)
    key_values, window_start = serdes.key.deserialize(out.key)
    if sink.key_format == "DELIMITED" and len(key_values) > 1:
        key = out.key.decode() if out.key is not None else None
    elif len(key_values) == 1:
        key = key_values[0]
    else:
        key = dict(zip([c.name for c in sink.key_columns], key_values)) if key_values else None
    if out.value is None:
        value = None
    elif sink.value_format == "JSON":
        value = json.loads(out.value)
    elif sink.value_format == "DELIMITED":
        value = out.value.decode()
    elif sink.value_format == "KAFKA":
        value = serdes.value.deserialize(out.value)[sink.value_columns[0].name]
    else:
        value = serdes.value.deserialize(out.value)
    decoded = {"key": _normalize(key), "value": _normalize(value), "timestamp": out.timestamp}
    if window_start is not None:
        decoded["window"] = {"start": window_start, "end": window_start + sink.window.size_ms}
    return decoded


def _matches(expected: dict, actual: dict) -> bool:
    if _normalize(expected.get("key")) != actual["key"]:
        return False
    if _normalize(expected.get("value")) != actual["value"]:
        return False
    if "timestamp" in expected and expected["timestamp"] != actual["timestamp"]:
        return False
    if "window" in expected:
        window = actual.get("window")
        if window is None or (window["start"], window["end"]) != (expected["window"]["start"], expected["window"]["end"]):
            return False
    return True


def _show(record: dict) -> str:
    return json.dumps({k: record[k] for k in ("key", "value", "timestamp", "window") if k in record}, default=str)


def _compare(engine: Engine, expected_outputs: list[dict], produced: dict[str, list]) -> None:
    expected_by_topic: dict[str, list] = defaultdict(list)
    for record in expected_outputs:
        expected_by_topic[record["topic"]].append(record)
    topics = list(expected_by_topic)
    sinks = [q.plan.sink.topic for q in engine.queries.values()]
    if sinks and sinks[-1] not in topics:
        topics.append(sinks[-1])
    for topic in topics:
        expected = expected_by_topic.get(topic, [])
        actual = [_decode_output(engine, out) for out in produced.get(topic, [])]
        for index, wanted in enumerate(expected):
            if index >= len(actual):
                raise _Failed(f"topic {topic}: expected record #{index + 1} {_show(wanted)} but only {len(actual)} were produced")
            if not _matches(wanted, actual[index]):
                raise _Failed(f"topic {topic}: record #{index + 1} differs\nexpected: {_show(wanted)}\nactual:   {_show(actual[index])}")
        if len(actual) > len(expected):
            raise _Failed(f"topic {topic}: {len(actual) - len(expected)} unexpected extra record(s), first: {_show(actual[len(expected)])}")
