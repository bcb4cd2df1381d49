"""Apply the `ksql/` statement files to a ksqlDB server: a real one, or the embedded engine.

    with ksql_client(cluster) as client:
        for applied in apply_pipeline(client, "ksql", {"results_window_size": "5 MINUTES"}):
            print(applied.path.name, applied.message)

The files are sent in name order, with `overrides` replacing the values of
their DEFINEs (`pipeline.read_pipeline`), as one request: the queries are
then all created before any of them reads a record, so none misses records
the others see. The files use IF NOT EXISTS, so applying twice is harmless.

Schemas: `survey_entries` and `survey_questions` take their columns from the
value schemas registered for their topics. `register_value_schemas` registers
the project's schemas for the topics that have none yet (what the bot's
producers would register with their first record), on the embedded stack's
registry or the configured one, so the pipeline can be applied to a fresh
cluster; a subject that exists is left as it is. A schema still missing is
reported with what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from survey_kit.cluster import Cluster
from survey_kit.schemas import load_schema

from . import ast
from .operators import EMIT_FINAL_WALL_CLOCK
from .parser import parse_statement, split_statements
from .pipeline import PIPELINE_DIR, read_pipeline
from .planner import _parse_duration_text
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
    """Register the project's value schemas for the entries and questions topics where none is; returns the subjects registered.

    A subject that has a schema already keeps it (a newer version of a user's own is not replaced).
    """
    from confluent_kafka.schema_registry import Schema

    registry = cluster.registry()
    existing = set(registry.get_subjects())
    registered = []
    for topic, schema_name in ((cluster.topics.entries, "survey-entries"), (cluster.topics.questions, "survey-questions")):
        subject = f"{topic}-value"
        if subject not in existing:
            registry.register_schema(subject, Schema(load_schema(schema_name), "AVRO"))
            registered.append(subject)
    return registered


def apply_pipeline(client: KsqlRestClient, directory: str | Path = PIPELINE_DIR, overrides: dict[str, str] | None = None,
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
            hint = ("\nRegister the topic's value schema first. `survey-kit ksql apply` registers the survey topics' "
                    "schemas in the Schema Registry of schema_registry.url: is ksqlDB configured with that registry?")
        statement = f"\nStatement: {exc.statement.strip()}" if exc.statement.strip() else ""  # none: the server was no ksqlDB
        raise ApplyError(f"{where}{exc.message}{hint}{statement}") from None
    applied = []
    for (path, text), found in zip(expected, entities):
        applied.append(AppliedStatement(path, text, _message(found)))
    return applied


RESULTS_TABLE = "survey_results_final"


def results_window(cluster: Cluster, size: str | None = None, grace: str | None = None) -> tuple[str, str]:
    """The final results' tumbling window (size, grace), e.g. ("48 HOURS", "10 MINUTES"), as analyses need it.

    As deployed (DESCRIBE survey_results_final on the configured ksqlDB or the embedded engine), else as
    the ksql/ files define it. `size` / `grace` given: checked against the deployed pipeline, since results
    recomputed with another window than the one that made them would disagree everywhere; ValueError
    says which differs and what to do.
    """
    deployed = _deployed_window(cluster)
    fallback = deployed or _window_of(read_pipeline(PIPELINE_DIR)[-1].text, "ksql/")
    chosen = []
    for name, given, known in (("window_size", size, fallback[0]), ("grace", grace, fallback[1])):
        if given is None:
            chosen.append(known.text)
            continue
        if _millis(given, name) != known.millis and deployed is not None:
            raise ValueError(f"{name} {given!r} is not the deployed pipeline's ({known.text}, in "
                             f"{RESULTS_TABLE}): leave the parameter out to use it, or apply the pipeline "
                             f"with this window (drop {RESULTS_TABLE} first)")
        chosen.append(given)
    return chosen[0], chosen[1]


def closes_by_wall_clock(cluster: Cluster) -> bool | None:
    """Whether the deployed survey_results_final also closes its windows by wall-clock time (the embedded
    engine's `survey_kit.emit.final.wall.clock`, as set when the table was created); False: by stream time
    only, as ksqlDB does (a window closes when an entry at or after its end + grace arrives); None: not
    deployed, or no server to ask.

    The query's overridden properties come from EXPLAIN (ksqlDB's and the engine's alike).
    """
    try:
        with ksql_client(cluster) as client:
            writers = client.execute(f"DESCRIBE {RESULTS_TABLE};")[0]["sourceDescription"].get("writeQueries") or []
            if not writers:
                return None
            query = client.execute(f"EXPLAIN {writers[0]['id']};")[0]["queryDescription"]
    except (ConnectionError, KsqlServerError):
        return None
    return str((query.get("overriddenProperties") or {}).get(EMIT_FINAL_WALL_CLOCK, "false")).lower() == "true"


def _deployed_window(cluster: Cluster) -> tuple[ast.Duration, ast.Duration] | None:
    try:
        with ksql_client(cluster) as client:
            found = client.execute(f"DESCRIBE {RESULTS_TABLE};")[0]
    except (ConnectionError, KsqlServerError):  # no server, or no such table yet
        return None
    try:
        return _window_of(found["sourceDescription"]["statement"], RESULTS_TABLE)
    except KsqlError:  # a statement this grammar cannot read (another ksqlDB version): as if not described
        return None


def _window_of(statement: str, where: str) -> tuple[ast.Duration, ast.Duration]:
    pieces = split_statements(statement.rstrip().rstrip(";") + ";")  # DESCRIBE gives it without its ';'
    created = parse_statement(pieces[-1])
    window = created.query.window if isinstance(created, ast.CreateAsSelect) else None
    if window is None or window.kind != "TUMBLING" or window.grace is None:
        raise KsqlError(f"{where}: the final results are not a TUMBLING window with a GRACE PERIOD")
    return window.size, window.grace


def _millis(duration: str, name: str) -> int:
    try:
        return _parse_duration_text(duration)
    except KsqlError:  # its message names WINDOW_SIZE, a WITH property: say which parameter it was
        raise ValueError(f"{name} {duration!r} is not a ksqlDB duration such as '48 HOURS'") from None


def _same(a: str, b: str) -> bool:
    return " ".join(a.rstrip(";").split()) == " ".join(b.rstrip(";").split())


def _message(found: dict) -> str:
    status = found.get("commandStatus")
    if status:
        return status.get("message", "")
    kind = found.get("@type", "")
    return f"{kind}" if kind else str(found)


__all__ = ["AppliedStatement", "ApplyError", "KsqlError", "apply_pipeline", "closes_by_wall_clock", "ksql_client",
           "register_value_schemas", "results_window"]
