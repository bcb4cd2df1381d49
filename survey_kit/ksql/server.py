"""The embedded engine as a ksqlDB-compatible REST server.

    python -m survey_kit.ksql.server --host 127.0.0.1 --port 8088 --data-dir DIR \\
        --bootstrap-servers 127.0.0.1:9092 --schema-registry-url http://127.0.0.1:8081

It speaks the part of ksqlDB's REST API that `survey-kit ksql apply` and
ksqlDB's own clients use, so the same client code drives a real ksqlDB:

* `POST /ksql` `{"ksql": "...", "streamsProperties": {}, "sessionVariables": {}}`
  answers a list of ksqlDB entities (`currentStatus`, `streams`, `tables`,
  `queries`, `sourceDescription`, ...), or HTTP 400 with a `statement_error`;
* `GET /info`, `GET /healthcheck`, and `GET /` (200 once the engine runs).

The persistent queries run in a background thread (`runtime.EngineRuntime`,
worker 0) and, with `--workers` above 1, in worker processes (`workers.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from survey_kit.cluster import Cluster
from survey_kit.serde import RegistryUnavailable

from . import ast
from .engine import StatementResult
from .parser import split_statements
from .runtime import DEFAULT_COMMIT_INTERVAL_MS, EngineRuntime, RuntimeUnavailable, StatementFailed
from .types import KsqlError
from .workers import WorkerPool, combined_status, settle_heap

KSQLDB_VERSION = "0.29.0"  # the ksqlDB release whose REST answers this server imitates
CONTENT_TYPE = "application/vnd.ksql.v1+json"
ERROR_BAD_STATEMENT = 40001
ERROR_BAD_REQUEST = 40000
ERROR_UNAVAILABLE = 50303

log = logging.getLogger("survey_kit.ksql.server")


class KsqlResponse(JSONResponse):
    media_type = CONTENT_TYPE


def _error(status: int, code: int, message: str, statement: str | None = None, entities: list | None = None) -> KsqlResponse:
    body = {"@type": "statement_error" if statement is not None else "generic_error", "error_code": code, "message": message}
    if statement is not None:
        body["statementText"] = statement
        body["entities"] = entities or []
    return KsqlResponse(body, status_code=status)


# ---------------------------------------------------------------- entities


def _field(column, kind: str | None) -> dict:
    return {"name": column.name, "schema": _schema_info(column.type), **({"type": kind} if kind else {})}


def _schema_info(sql_type) -> dict:
    """A column type as ksqlDB's REST API describes it (its SchemaInfo): item / value type of ARRAY and MAP
    in memberSchema, STRUCT fields in fields, DECIMAL's precision and scale in parameters."""
    info = {"type": sql_type.base, "fields": None, "memberSchema": None}
    if sql_type.base in ("ARRAY", "MAP") and sql_type.item is not None:
        info["memberSchema"] = _schema_info(sql_type.item)
    elif sql_type.base == "STRUCT":
        info["fields"] = [{"name": name, "schema": _schema_info(field_type)} for name, field_type in sql_type.fields]
    elif sql_type.base == "DECIMAL":
        info["parameters"] = {"precision": sql_type.precision, "scale": sql_type.scale}
    return info


def _source_entity(runtime: EngineRuntime, name: str) -> dict:
    engine = runtime.engine
    source = engine.sources[name]
    writers = [source.written_by] if source.written_by in engine.queries else []
    readers = [q.query_id for q in engine.queries.values() if source.topic in q.source_topics]
    key_kind = "PRIMARY_KEY" if source.kind == "TABLE" else "KEY"
    return {
        "name": source.name,
        "windowType": source.window.kind if source.window else None,
        "readQueries": [{"id": q, "state": "RUNNING"} for q in readers],
        "writeQueries": [{"id": q, "state": "RUNNING"} for q in writers],
        "fields": [_field(c, key_kind) for c in source.key_columns] + [_field(c, None) for c in source.value_columns],
        "type": source.kind,
        "timestamp": "",
        "statistics": "",
        "errorStats": "",
        "extended": False,
        "keyFormat": source.key_format,
        "valueFormat": source.value_format,
        "topic": source.topic,
        "partitions": 0,
        "replication": 0,
        "statement": source.statement,
        "sourceConstraints": [],
    }


def _query_description(runtime: EngineRuntime, row: dict) -> dict:
    """ksqlDB's QueryDescription of one query (EXPLAIN <query id>): the fields a client reads."""
    sink = runtime.engine.sources.get(row["sink"])
    fields = ([_field(c, "KEY") for c in sink.key_columns] + [_field(c, None) for c in sink.value_columns]) if sink else []
    return {
        "id": row["id"],
        "statementText": row["statement"],
        "windowType": row["window"],
        "fields": fields,
        "sources": row["sources"],
        "sinks": [row["sink"]],
        "topology": "",
        "executionPlan": row["plan"],
        "overriddenProperties": row["overridden_properties"],
        "ksqlHostQueryStatus": {},
        "queryType": "PERSISTENT",
        "queryErrors": [],
        "tasksMetadata": [],
        "state": row["state"],
    }


def entity(runtime: EngineRuntime, statement: ast.Statement, result: StatementResult, sequence: int) -> dict:
    """The ksqlDB REST entity for one executed statement."""
    text = result.statement or statement.text
    if isinstance(statement, ast.Show):
        what = statement.what
        if what in ("STREAMS", "TABLES"):
            kind = what[:-1]
            items = [
                {"type": kind, "name": r["name"], "topic": r["topic"], "keyFormat": r["key_format"], "valueFormat": r["value_format"], "isWindowed": r["windowed"]}
                for r in result.rows
            ]
            return {"@type": what.lower(), "statementText": text, what.lower(): items, "warnings": []}
        if what == "QUERIES":
            queries = [
                {
                    "queryString": runtime.engine.sources[r["sink"]].statement if r["sink"] in runtime.engine.sources else "",
                    "sinks": [r["sink"]],
                    "sinkKafkaTopics": [r["sink_topic"]],
                    "id": r["id"],
                    "statusCount": {r["status"]: 1},
                    "queryType": "PERSISTENT",
                    "state": r["status"],
                }
                for r in result.rows
            ]
            return {"@type": "queries", "statementText": text, "queries": queries, "warnings": []}
        if what == "PROPERTIES":
            props = [{"name": r["property"], "scope": "KSQL", "value": r["value"]} for r in result.rows]
            return {"@type": "properties", "statementText": text, "properties": props, "overwrittenProperties": [], "defaultProperties": [], "warnings": []}
        if what == "VARIABLES":
            return {"@type": "variables", "statementText": text, "variables": result.rows, "warnings": []}
        return {"@type": "kafka_topics", "statementText": text, "topics": [{"name": r["topic"], "replicaInfo": [1]} for r in result.rows], "warnings": []}
    if isinstance(statement, ast.Describe):
        return {"@type": "sourceDescription", "statementText": text, "sourceDescription": _source_entity(runtime, statement.name), "warnings": []}
    if isinstance(statement, ast.Explain):
        return {"@type": "queryDescription", "statementText": text, "queryDescription": _query_description(runtime, result.rows[0]), "warnings": []}
    if isinstance(statement, (ast.CreateSource, ast.CreateAsSelect)):
        command_id = f"{statement.kind.lower()}/`{statement.name}`/create"
    elif isinstance(statement, ast.Drop):
        command_id = f"{statement.kind.lower()}/`{statement.name}`/drop"
    elif isinstance(statement, ast.Terminate):
        command_id = f"terminate/{statement.query_id}/execute"
    else:
        command_id = f"statement/{type(statement).__name__.lower()}/execute"
    query_id = None
    if isinstance(statement, ast.CreateAsSelect):
        query_id = runtime.engine.sources[statement.name].written_by if statement.name in runtime.engine.sources else None
    return {
        "@type": "currentStatus",
        "statementText": text,
        "commandId": command_id,
        "commandStatus": {"status": "SUCCESS", "message": result.message, "queryId": query_id},
        "commandSequenceNumber": sequence,
        "warnings": [],
    }


# ---------------------------------------------------------------- the app


def create_app(runtime: EngineRuntime, pool: WorkerPool | None = None) -> Starlette:
    """The REST app over a runtime and its other workers, if any (started and stopped with the app)."""

    def status() -> dict:
        return combined_status(runtime.status(), pool.statuses()) if pool is not None else runtime.status()

    def ksql(request_body: dict) -> KsqlResponse:
        text = request_body.get("ksql")
        if not isinstance(text, str) or not text.strip():
            return _error(400, ERROR_BAD_REQUEST, 'The request needs a "ksql" field with the statements to run, e.g. {"ksql": "SHOW STREAMS;"}')
        properties = request_body.get("streamsProperties") or {}
        variables = request_body.get("sessionVariables") or {}
        if not isinstance(properties, dict) or not isinstance(variables, dict):
            return _error(400, ERROR_BAD_REQUEST, '"streamsProperties" and "sessionVariables" must be JSON objects')
        try:
            # parse everything first: a syntax error anywhere runs nothing, as on ksqlDB
            split_statements(text)
            results = runtime.execute(text, properties, variables)
        except StatementFailed as exc:
            entities = _entities(runtime, exc.results)
            return _error(400, ERROR_BAD_STATEMENT, exc.message, exc.statement, entities)
        except KsqlError as exc:
            return _error(400, ERROR_BAD_STATEMENT, str(exc), text)
        except (RuntimeUnavailable, RegistryUnavailable) as exc:
            return _error(503, ERROR_UNAVAILABLE, str(exc))
        except Exception as exc:  # a defect: answer in ksqlDB's shape, keep the trace in the log
            log.exception("statement failed")
            return _error(500, 50000, f"The engine failed on this request: {exc}", text)
        return KsqlResponse(_entities(runtime, results))

    async def post_ksql(request: Request) -> KsqlResponse:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _error(400, ERROR_BAD_REQUEST, f"The request body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, ERROR_BAD_REQUEST, 'The request body must be a JSON object such as {"ksql": "SHOW STREAMS;"}')
        return await run_in_threadpool(ksql, body)

    async def info(request: Request) -> KsqlResponse:
        engine_status = status()
        return KsqlResponse({
            "KsqlServerInfo": {
                "version": KSQLDB_VERSION,
                "kafkaClusterId": runtime.cluster.bootstrap_servers,
                "ksqlServiceId": runtime.engine_id,
                "serverStatus": "RUNNING" if engine_status["ready"] else "STARTING",
            },
            "survey_kit": engine_status,
        })

    async def healthcheck(request: Request) -> KsqlResponse:
        engine_status = status()
        kafka = engine_status["ready"] and engine_status["outage"] is None
        body = {
            "isHealthy": kafka,
            "details": {
                "metastore": {"isHealthy": engine_status["ready"]},
                "kafka": {"isHealthy": kafka},
                "commandRunner": {"isHealthy": engine_status["ready"]},
            },
        }
        return KsqlResponse(body, status_code=200 if kafka else 503)

    async def ready(request: Request) -> KsqlResponse:
        if runtime.ready.is_set():
            return KsqlResponse({"status": "ready", "engine": runtime.engine_id})
        return KsqlResponse({"status": "starting", "engine": runtime.engine_id}, status_code=503)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        runtime.start()
        if pool is not None:
            pool.start()
        try:
            yield
        finally:
            if pool is not None:
                await run_in_threadpool(pool.stop, 15)
            await run_in_threadpool(runtime.stop, 10)

    return Starlette(
        routes=[
            Route("/ksql", post_ksql, methods=["POST"]),
            Route("/info", info, methods=["GET"]),
            Route("/healthcheck", healthcheck, methods=["GET"]),
            Route("/", ready, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _entities(runtime: EngineRuntime, results: list[tuple[ast.Statement, StatementResult]]) -> list[dict]:
    return [entity(runtime, statement, result, number) for number, (statement, result) in enumerate(results, start=1)]


# ---------------------------------------------------------------- process entry point


DEFAULT_WORKERS = 2  # the machines this runs on have two cores or more


def serve(cluster: Cluster, host: str = "127.0.0.1", port: int = 8088, data_dir: str | Path | None = None, engine_id: str = "survey_kit",
          commit_interval_ms: int = DEFAULT_COMMIT_INTERVAL_MS, workers: int = DEFAULT_WORKERS) -> int:
    """Run the engine and its REST API in the foreground until interrupted; 2 if the port is taken."""
    if workers < 1:
        print(f"error: --workers must be 1 or more (got {workers})", file=sys.stderr)
        return 2
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"error: the engine listens on loopback only (got --host {host}); use 127.0.0.1", file=sys.stderr)
        return 2
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no use
            probe.bind((host, port))
    except OSError:
        print(f"error: port {port} on {host} is in use: stop what runs there or pick another port (--port)", file=sys.stderr)
        return 2
    runtime = EngineRuntime(cluster, engine_id=engine_id, data_dir=data_dir, commit_interval_ms=commit_interval_ms, workers=workers)
    pool = WorkerPool(cluster, runtime, workers, commit_interval_ms) if workers > 1 else None
    settle_heap()
    print(f"ksql engine {engine_id} on http://{host}:{port} with {workers} worker process{'es' if workers > 1 else ''} "
          f"(Kafka {cluster.bootstrap_servers}, registry {cluster.schema_registry_url})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(runtime, pool), host=host, port=port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m survey_kit.ksql.server", description="The embedded ksqlDB-compatible engine and its REST API.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8088, help="port (default 8088, as ksqlDB)")
    parser.add_argument("--data-dir", type=Path, help="folder for the engine's copy of its statements")
    parser.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers, e.g. 127.0.0.1:9092")
    parser.add_argument("--schema-registry-url", required=True, help="Schema Registry URL, e.g. http://127.0.0.1:8081")
    parser.add_argument("--engine-id", default="survey_kit", help="names the engine's internal topics and transactions (default survey_kit)")
    parser.add_argument("--commit-interval-ms", type=int, default=DEFAULT_COMMIT_INTERVAL_MS,
                        help=f"how often outputs, state and offsets are committed while records keep coming (default "
                             f"{DEFAULT_COMMIT_INTERVAL_MS} ms, as ksqlDB's; caught up, within 10 ms of the last record)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"processes the queries are spread over (default {DEFAULT_WORKERS}; one core each)")
    parser.add_argument("--embedded", action=argparse.BooleanOptionalAction, default=True,
                        help="the broker is the embedded one (topics with one replica; default yes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    cluster = Cluster(bootstrap_servers=args.bootstrap_servers, schema_registry_url=args.schema_registry_url, embedded=args.embedded)
    return serve(cluster, args.host, args.port, args.data_dir, args.engine_id, args.commit_interval_ms, args.workers)


if __name__ == "__main__":
    sys.exit(main())
