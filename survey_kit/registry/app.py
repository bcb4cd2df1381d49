"""The Confluent Schema Registry REST API subset, as a Starlette app over the SQLite store.

It answers what confluent-kafka's `SchemaRegistryClient`, `AvroSerializer` and `AvroDeserializer`
ask: register/lookup a schema in a subject, schemas by id or guid, subjects and versions (soft and
permanent deletes), compatibility checks and the compatibility config. Shapes and error codes follow
Confluent's API reference, so the same client code works against Confluent Cloud.

Handlers are async and call the store synchronously: each request's store work is a few
milliseconds of SQLite, and running it on the event loop keeps one writer at a time without extra
machinery. The store's own lock and transactions keep it correct if it is ever called from threads.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import compatibility
from .compatibility import InvalidSchema
from .store import Store, StoredSchema, SubjectVersion

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
SCHEMA_TYPES = ["AVRO"]
_MAX_VERSION = 2**31 - 1


class RegistryError(Exception):
    """An error answered in Confluent's shape: {"error_code": 40401, "message": "..."}."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def _subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def _version_not_found(subject: str, version: int | str) -> RegistryError:
    return RegistryError(404, 40402, f"Version {version} not found under subject '{subject}'.")


def _schema_not_found(message: str) -> RegistryError:
    return RegistryError(404, 40403, message)


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status, media_type=MEDIA_TYPE)


# --- request parsing --------------------------------------------------------------------------


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter; the Python client sends both `true` and `True`."""
    value = request.query_params.get(name)
    if value is None or value.lower() == "false":
        return False
    if value.lower() == "true":
        return True
    raise RegistryError(400, 400, f"Query parameter '{name}' must be true or false, not '{value}'.")


def _page(request: Request, items: Sequence) -> list:
    """Apply the `offset` and `limit` query parameters (a negative limit means all)."""
    bounds = {}
    for name, default in (("offset", 0), ("limit", -1)):
        raw = request.query_params.get(name, str(default))
        try:
            bounds[name] = int(raw)
        except ValueError:
            raise RegistryError(400, 400, f"Query parameter '{name}' must be an integer, not '{raw}'.") from None
    items = list(items)[max(bounds["offset"], 0):]
    return items if bounds["limit"] < 0 else items[:bounds["limit"]]


def _version_param(request: Request) -> int | None:
    """The {version} path part: a number from 1, or `latest` / -1 (returned as None)."""
    raw = request.path_params["version"]
    if raw in ("latest", "-1"):
        return None
    try:
        version = int(raw)
    except ValueError:
        version = 0
    if not 1 <= version <= _MAX_VERSION:
        raise RegistryError(422, 42202, f"The specified version '{raw}' is not a valid version id. "
                                        f"Allowed values are between [1, {_MAX_VERSION}] and the string \"latest\".")
    return version


async def _body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RegistryError(400, 400, f"The request body is not valid JSON: {error}.") from None
    if not isinstance(body, dict):
        raise RegistryError(400, 400, "The request body must be a JSON object.")
    return body


async def _schema_from_body(request: Request) -> tuple[str, Any]:
    """The schema text of a register/lookup/compatibility request and its parsed Avro form."""
    body = await _body(request)
    schema_type = body.get("schemaType") or "AVRO"
    if schema_type not in SCHEMA_TYPES:
        raise RegistryError(422, 42201, f"Schema type '{schema_type}' is not supported: "
                                        "this registry stores AVRO schemas only.")
    if body.get("references"):
        raise RegistryError(422, 42201, "Schema references are not supported by this registry; "
                                        "inline the referenced types into the schema.")
    for unsupported in ("metadata", "ruleSet"):
        if body.get(unsupported):
            raise RegistryError(422, 42201, f"Schema '{unsupported}' is not supported by this registry.")
    text = body.get("schema")
    if not isinstance(text, str) or not text.strip():
        raise RegistryError(422, 42201, "Invalid schema: the request needs a 'schema' field holding the "
                                        "schema's JSON text.")
    try:
        parsed = compatibility.parse(text)
    except InvalidSchema as error:
        raise RegistryError(422, 42201, str(error)) from None
    return compatibility.canonical_text(text, normalize=_flag(request, "normalize")), parsed


# Like Confluent, answers leave out "schemaType" for AVRO, the type clients assume by default,
# and the only one this registry stores.


def _version_json(found: SubjectVersion) -> dict:
    return {"subject": found.subject, "version": found.version, "id": found.schema_id, "guid": found.guid,
            "schema": found.schema}


def _stored_schema_json(found: StoredSchema) -> dict:
    return {"schema": found.schema, "guid": found.guid}


def _resolve(store: Store, subject: str, version: int | None, include_deleted: bool = False) -> SubjectVersion:
    """The given version (None: the latest) of a subject, or the Confluent not-found error."""
    versions = store.versions(subject, include_deleted)
    if not versions:
        raise _subject_not_found(subject)
    if version is None:
        return versions[-1]
    for found in versions:
        if found.version == version:
            return found
    raise _version_not_found(subject, version)


def _incompatibilities(new: Any, olds: list[SubjectVersion], level: str) -> list[str]:
    if level == "NONE":
        return []
    return [reason for old in olds
            for reason in compatibility.incompatibilities(new, compatibility.parse(old.schema), level,
                                                          f"version {old.version}")]


def _against(level: str, live: list[SubjectVersion]) -> list[SubjectVersion]:
    """The earlier versions a new schema must be compatible with under `level`."""
    return live if compatibility.is_transitive(level) else live[-1:]


# --- routes -----------------------------------------------------------------------------------


async def root(request: Request) -> Response:
    return _json({})


async def schema_types(request: Request) -> Response:
    return _json(SCHEMA_TYPES)


async def schema_by_id(request: Request) -> Response:
    schema_id = request.path_params["schema_id"]
    found = request.app.state.store.schema_by_id(schema_id)
    if found is None:
        raise _schema_not_found(f"Schema {schema_id} not found.")
    return _json(_stored_schema_json(found))


async def raw_schema_by_id(request: Request) -> Response:
    schema_id = request.path_params["schema_id"]
    found = request.app.state.store.schema_by_id(schema_id)
    if found is None:
        raise _schema_not_found(f"Schema {schema_id} not found.")
    return PlainTextResponse(found.schema, media_type=MEDIA_TYPE)


async def schema_by_guid(request: Request) -> Response:
    guid = request.path_params["guid"]
    found = request.app.state.store.schema_by_guid(guid)
    if found is None:
        raise _schema_not_found(f"Schema with guid {guid} not found.")
    return _json({**_stored_schema_json(found), "id": found.schema_id})


def _usages(request: Request) -> list[SubjectVersion]:
    schema_id = request.path_params["schema_id"]
    store: Store = request.app.state.store
    if store.schema_by_id(schema_id) is None:
        raise _schema_not_found(f"Schema {schema_id} not found.")
    usages = store.usages(schema_id, include_deleted=_flag(request, "deleted"))
    wanted = request.query_params.get("subject")
    return [u for u in usages if wanted is None or u.subject == wanted]


async def schema_subjects(request: Request) -> Response:
    subjects = list(dict.fromkeys(u.subject for u in _usages(request)))
    return _json(_page(request, subjects))


async def schema_versions(request: Request) -> Response:
    return _json(_page(request, [{"subject": u.subject, "version": u.version} for u in _usages(request)]))


async def list_subjects(request: Request) -> Response:
    store: Store = request.app.state.store
    subjects = store.subjects(include_deleted=_flag(request, "deleted"), deleted_only=_flag(request, "deleted_only"))
    prefix = request.query_params.get("subjectPrefix", "")
    return _json(_page(request, [s for s in subjects if s.startswith(prefix)]))


async def lookup_schema(request: Request) -> Response:
    """POST /subjects/{subject}: is this schema registered under the subject, and as which version?"""
    subject = request.path_params["subject"]
    store: Store = request.app.state.store
    text, _ = await _schema_from_body(request)
    deleted = _flag(request, "deleted")
    if not store.versions(subject, include_deleted=deleted):
        raise _subject_not_found(subject)
    found = store.find_in_subject(subject, "AVRO", text, include_deleted=deleted)
    if found is None:
        raise _schema_not_found(f"Schema not found: it is not registered under subject '{subject}'.")
    return _json(_version_json(found))


async def delete_subject(request: Request) -> Response:
    subject = request.path_params["subject"]
    store: Store = request.app.state.store
    every = store.versions(subject, include_deleted=True)
    if not every:
        raise _subject_not_found(subject)
    live = [v for v in every if not v.deleted]
    if _flag(request, "permanent"):
        if live:
            raise RegistryError(404, 40405, f"Subject '{subject}' was not deleted first before being permanently "
                                            "deleted. Delete it without permanent=true first.")
        return _json(store.hard_delete_subject(subject))
    if not live:
        raise RegistryError(404, 40404, f"Subject '{subject}' was soft deleted. "
                                        "Set permanent=true to delete permanently.")
    return _json(store.soft_delete_subject(subject))


async def list_versions(request: Request) -> Response:
    subject = request.path_params["subject"]
    deleted_only = _flag(request, "deleted_only")
    versions = request.app.state.store.versions(subject, include_deleted=deleted_only or _flag(request, "deleted"))
    if not versions:
        raise _subject_not_found(subject)
    return _json(_page(request, [v.version for v in versions if v.deleted or not deleted_only]))


async def register_schema(request: Request) -> Response:
    """POST /subjects/{subject}/versions: the schema's id, registering it as a new version if needed."""
    subject = request.path_params["subject"]
    store: Store = request.app.state.store
    text, parsed = await _schema_from_body(request)
    level = store.effective_compatibility(subject)

    def refuse_incompatible(live: list[SubjectVersion]) -> None:
        reasons = _incompatibilities(parsed, _against(level, live), level)
        if reasons:
            raise RegistryError(409, 409, f"Schema being registered is incompatible with an earlier schema for "
                                          f"subject '{subject}' (compatibility {level}): " + "; ".join(reasons))

    registered = store.register(subject, "AVRO", text, check=refuse_incompatible)
    return _json({"id": registered.schema_id, "guid": registered.guid, "subject": subject,
                  "version": registered.version})


async def get_version(request: Request) -> Response:
    found = _resolve(request.app.state.store, request.path_params["subject"], _version_param(request),
                     include_deleted=_flag(request, "deleted"))
    return _json(_version_json(found))


async def get_version_schema(request: Request) -> Response:
    found = _resolve(request.app.state.store, request.path_params["subject"], _version_param(request),
                     include_deleted=_flag(request, "deleted"))
    return PlainTextResponse(found.schema, media_type=MEDIA_TYPE)


async def delete_version(request: Request) -> Response:
    subject = request.path_params["subject"]
    version = _version_param(request)
    store: Store = request.app.state.store
    permanent = _flag(request, "permanent")
    # A permanent delete targets versions already soft-deleted, so `latest` then counts those too.
    found = _resolve(store, subject, version, include_deleted=permanent or version is not None)
    if permanent:
        if not found.deleted:
            raise RegistryError(404, 40407, f"Subject '{subject}' Version {found.version} was not deleted first "
                                            "before being permanently deleted. Delete it without permanent=true "
                                            "first.")
        store.hard_delete_version(subject, found.version)
    else:
        if found.deleted:
            raise RegistryError(404, 40406, f"Subject '{subject}' Version {found.version} was soft deleted. "
                                            "Set permanent=true to delete permanently.")
        store.soft_delete_version(subject, found.version)
    return _json(found.version)


async def check_compatibility(request: Request) -> Response:
    """POST /compatibility/subjects/{subject}/versions[/{version}]: would this schema be accepted?

    With a version, the schema is checked against that version; without, against the versions the
    subject's level names (the latest, or all of them when transitive). `verbose=true` adds reasons.
    """
    subject = request.path_params["subject"]
    store: Store = request.app.state.store
    _, parsed = await _schema_from_body(request)
    level = store.effective_compatibility(subject)
    if "version" in request.path_params:
        version = _version_param(request)
        live = store.versions(subject)
        # Like Confluent: nothing registered yet means anything is compatible with `latest`.
        olds = [] if version is None and not live else [_resolve(store, subject, version)]
    else:
        olds = _against(level, store.versions(subject))
    reasons = _incompatibilities(parsed, olds, level)
    answer: dict[str, Any] = {"is_compatible": not reasons}
    if _flag(request, "verbose"):
        answer["messages"] = reasons
    return _json(answer)


async def get_config(request: Request) -> Response:
    store: Store = request.app.state.store
    subject = request.path_params.get("subject")
    if subject is None:
        return _json({"compatibilityLevel": store.global_compatibility()})
    level = store.subject_compatibility(subject)
    if level is None:
        if not _flag(request, "defaultToGlobal"):
            raise RegistryError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility "
                                            "configured. Add defaultToGlobal=true to get the global level.")
        level = store.global_compatibility()
    return _json({"compatibilityLevel": level})


async def put_config(request: Request) -> Response:
    body = await _body(request)
    unknown = sorted(set(body) - {"compatibility", "compatibilityLevel"})
    if unknown:
        raise RegistryError(422, 42203, f"Only the compatibility level can be configured here, not {unknown}.")
    level = str(body.get("compatibility") or body.get("compatibilityLevel") or "").upper()
    if level not in compatibility.LEVELS:
        raise RegistryError(422, 42203, "Invalid compatibility level. Valid values are: "
                                        + ", ".join(compatibility.LEVELS) + ".")
    request.app.state.store.set_compatibility(level, request.path_params.get("subject"))
    return _json({"compatibility": level})


async def delete_config(request: Request) -> Response:
    store: Store = request.app.state.store
    subject = request.path_params.get("subject")
    if subject is None:
        previous = store.global_compatibility()
    else:
        previous = store.subject_compatibility(subject)
        if previous is None:
            raise RegistryError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility "
                                            "configured.")
    store.delete_compatibility(subject)
    return _json({"compatibilityLevel": previous})


ROUTES = [
    Route("/", root, methods=["GET"]),
    Route("/schemas/types", schema_types, methods=["GET"]),
    Route("/schemas/ids/{schema_id:int}", schema_by_id, methods=["GET"]),
    Route("/schemas/ids/{schema_id:int}/schema", raw_schema_by_id, methods=["GET"]),
    Route("/schemas/ids/{schema_id:int}/subjects", schema_subjects, methods=["GET"]),
    Route("/schemas/ids/{schema_id:int}/versions", schema_versions, methods=["GET"]),
    Route("/schemas/guids/{guid}", schema_by_guid, methods=["GET"]),
    Route("/subjects", list_subjects, methods=["GET"]),
    Route("/subjects/{subject}", lookup_schema, methods=["POST"]),
    Route("/subjects/{subject}", delete_subject, methods=["DELETE"]),
    Route("/subjects/{subject}/versions", list_versions, methods=["GET"]),
    Route("/subjects/{subject}/versions", register_schema, methods=["POST"]),
    Route("/subjects/{subject}/versions/{version}", get_version, methods=["GET"]),
    Route("/subjects/{subject}/versions/{version}", delete_version, methods=["DELETE"]),
    Route("/subjects/{subject}/versions/{version}/schema", get_version_schema, methods=["GET"]),
    Route("/compatibility/subjects/{subject}/versions", check_compatibility, methods=["POST"]),
    Route("/compatibility/subjects/{subject}/versions/{version}", check_compatibility, methods=["POST"]),
    Route("/config", get_config, methods=["GET"]),
    Route("/config", put_config, methods=["PUT"]),
    Route("/config", delete_config, methods=["DELETE"]),
    Route("/config/{subject}", get_config, methods=["GET"]),
    Route("/config/{subject}", put_config, methods=["PUT"]),
    Route("/config/{subject}", delete_config, methods=["DELETE"]),
]


# --- errors and authentication ----------------------------------------------------------------


async def _registry_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RegistryError)
    return _json({"error_code": error.error_code, "message": error.message}, status=error.status)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = f"HTTP {error.status_code} {error.detail}: {request.method} {request.url.path}"
    return _json({"error_code": error.status_code, "message": message}, status=error.status_code)


async def _unexpected_error(request: Request, error: Exception) -> Response:
    return _json({"error_code": 50001, "message": f"Error in the backend data store: {error}"}, status=500)


class BasicAuth:
    """ASGI middleware refusing HTTP requests without the configured basic-auth user and password."""

    def __init__(self, app: ASGIApp, username: str, password: str) -> None:
        self.app = app
        self._expected = f"{username}:{password}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(Headers(scope=scope).get("authorization", "")):
            response = _json({"error_code": 40101, "message": "Unauthorized: this registry needs HTTP basic "
                                                              "auth (basic.auth.user.info USER:PASSWORD)."},
                             status=401)
            response.headers["WWW-Authenticate"] = 'Basic realm="survey-kit schema registry"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)


def create_app(db_path: str | Path, basic_auth: tuple[str, str] | None = None) -> Starlette:
    """A Schema Registry ASGI app keeping its schemas in the SQLite file `db_path` (created if missing).

    `basic_auth=(user, password)` makes every request need those HTTP basic credentials.
    Serve it with uvicorn, or use it in-process with `starlette.testclient.TestClient`.
    """
    store = Store(db_path)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        store.close()

    middleware = [Middleware(BasicAuth, username=basic_auth[0], password=basic_auth[1])] if basic_auth else []
    app = Starlette(
        routes=ROUTES,
        middleware=middleware,
        exception_handlers={RegistryError: _registry_error, HTTPException: _http_error,
                            Exception: _unexpected_error},
        lifespan=lifespan,
    )
    app.state.store = store
    return app
