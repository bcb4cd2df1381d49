"""Apply the `ksql/` statement files to a ksqlDB server: a real one, or the embedded engine.

    with ksql_client(cluster) as client:
        for applied in apply_pipeline(client, "ksql", {"results_window_size": "5 MINUTES"}):
            print(applied.path.name, applied.message)

The files are sent in name order, with `overrides` replacing the values of
their DEFINEs (`pipeline.read_pipeline`), as one request: the queries are
then all created before any of them reads a record, so none misses records
the others see. The files use IF NOT EXISTS, so applying twice is harmless.

Schemas: `survey_entries` and `survey_questions` take their columns from the
value schemas registered for their topics. On the embedded stack,
`register_value_schemas` registers the project's schemas for them first (what
the bot's producers would register anyway); on a configured ksqlDB the
schemas must already be there, and a missing one is reported with what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from survey_kit.cluster import Cluster
from survey_kit.schemas import load_schema

from .parser import split_statements
from .pipeline import read_pipeline
from .rest import KsqlRestClient, KsqlServerError
from .types import KsqlError

# Statements a ksqlDB server answers without an entity (they hold for the request only).
_SILENT = {"DEFINE", "UNDEFINE", "SET", "UNSET"}


@dataclass(frozen=True)
class AppliedStatement:
    """One statement the server ran: its file, its text and the server's message."""

    path: Path
    statement: str
    message: str


class ApplyError(RuntimeError):
    """A statement was refused; the message names its file and the server's reason."""


def ksql_client(cluster: Cluster) -> KsqlRestClient:
    """A client for the configured ksqlDB server (`ksqldb.url`), else the embedded stack's engine."""
    settings = cluster.settings.ksqldb
    if settings.url:
        secret = settings.api_secret.get_secret_value() if settings.api_secret else None
        return KsqlRestClient(settings.url, settings.api_key, secret)
    if cluster.ksqldb_url:
        return KsqlRestClient(cluster.ksqldb_url)
    raise ConnectionError(
        "no ksqlDB server is configured and the embedded stack runs no ksql engine: start the stack with "
        "`survey-kit up`, or run `survey-kit engine` and set ksqldb.url (http://127.0.0.1:8088)"
    )


def register_value_schemas(cluster: Cluster) -> list[str]:
    """Register the project's value schemas for the entries and questions topics (idempotent); returns the subjects."""
    from confluent_kafka.schema_registry import Schema

    registry = cluster.registry()
    subjects = []
    for topic, schema_name in ((cluster.topics.entries, "survey-entries"), (cluster.topics.questions, "survey-questions")):
        subject = f"{topic}-value"
        registry.register_schema(subject, Schema(load_schema(schema_name), "AVRO"))
        subjects.append(subject)
    return subjects


def apply_pipeline(client: KsqlRestClient, directory: str | Path = "ksql", overrides: dict[str, str] | None = None,
                   properties: dict[str, str] | None = None) -> list[AppliedStatement]:
    """Run the statement files of `directory` on the server, in order; returns what each statement did.

    `properties` are sent as the request's streamsProperties (as the ksqlDB CLI's SET does), e.g.
    {"survey_kit.emit.final.wall.clock": "true"} for the embedded engine's demo.

    Raises ApplyError naming the file of the statement the server refused
    (the statements before it stay applied), KsqlError for unreadable files
    or unknown overrides, ConnectionError when the server does not answer.
    """
    scripts = read_pipeline(directory, overrides)
    expected: list[tuple[Path, str]] = []  # the statements answered with an entity, in order
    for script in scripts:
        for piece in split_statements(script.text):
            if piece.text.split(None, 1)[0].upper() not in _SILENT:
                expected.append((script.path, piece.text))
    try:
        entities = client.execute("\n".join(script.text for script in scripts), properties=properties)
    except KsqlServerError as exc:
        path = next((p for p, text in expected if _same(text, exc.statement)), None)
        where = f"{path.name}: " if path else ""
        hint = ""
        if "does not exist in the Schema Registry" in exc.message:
            hint = "\nRegister the topic's value schema first: produce one record with the survey bot or `survey-kit survey create`."
        raise ApplyError(f"{where}{exc.message}{hint}\nStatement: {exc.statement.strip()}") from None
    applied = []
    for (path, text), found in zip(expected, entities):
        applied.append(AppliedStatement(path, text, _message(found)))
    return applied


def _same(a: str, b: str) -> bool:
    return " ".join(a.rstrip(";").split()) == " ".join(b.rstrip(";").split())


def _message(found: dict) -> str:
    status = found.get("commandStatus")
    if status:
        return status.get("message", "")
    kind = found.get("@type", "")
    return f"{kind}" if kind else str(found)


__all__ = ["AppliedStatement", "ApplyError", "KsqlError", "apply_pipeline", "ksql_client", "register_value_schemas"]
