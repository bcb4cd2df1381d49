"""The embedded Schema Registry, driven by confluent-kafka's own client, serializer and deserializer.

Each test talks to a real registry process (`python -m survey_kit.registry`) on a free loopback port
with its own data directory; error shapes are checked with plain httpx where the client hides them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from starlette.testclient import TestClient

from survey_kit.registry import create_app

REPO_ROOT = Path(__file__).resolve().parents[1]

# The talk's slide 26: the records the Telegram bot produces to `survey-entries`.
SURVEY_ENTRY = {
    "doc": "Contains individual survey entries for a user and survey question.",
    "fields": [
        {"name": "survey_id", "type": "string"},
        {"name": "user_id", "type": "string"},
        {"name": "name", "type": "string"},
        {"default": None, "name": "company", "type": ["null", "string"]},
        {"default": None, "name": "location", "type": ["null", "string"]},
        {"name": "response", "type": "string"},
    ],
    "name": "surveyEntry",
    "namespace": "survey.bot",
    "type": "record",
}


def with_field(field: dict, base: dict = SURVEY_ENTRY) -> dict:
    return {**base, "fields": [*base["fields"], field]}


def avro(schema: dict, indent: int | None = None) -> Schema:
    return Schema(json.dumps(schema, indent=indent), "AVRO")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RegistryProcess:
    """A `python -m survey_kit.registry` child process on a free port, stopped by `stop()`."""

    def __init__(self, data_dir: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "survey_kit.registry", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(data_dir), *args],
            cwd=REPO_ROOT, env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_ready(self, auth: tuple[str, str] | None = None, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"registry exited with {self.process.returncode}: {self.process.stdout.read()}")
            try:
                if httpx.get(self.url + "/", auth=auth, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"registry at {self.url} did not answer within {timeout}s")

    def stop(self) -> str:
        """Stop the process and return everything it printed."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.stdout.read()


@pytest.fixture
def start_registry(tmp_path):
    """Start registry processes (by default on one data dir, as a restart would); all are stopped after."""
    started: list[RegistryProcess] = []

    def start(*args: str, data_dir: Path = tmp_path / "data", env: dict | None = None,
              auth: tuple[str, str] | None = None) -> RegistryProcess:
        registry = RegistryProcess(data_dir, *args, env=env)
        started.append(registry)
        registry.wait_ready(auth=auth)
        return registry

    yield start
    for registry in started:
        registry.stop()


@pytest.fixture
def registry(start_registry) -> RegistryProcess:
    return start_registry()


@pytest.fixture
def client(registry) -> SchemaRegistryClient:
    with SchemaRegistryClient({"url": registry.url}) as sr_client:
        yield sr_client


def fresh_client(registry: RegistryProcess) -> SchemaRegistryClient:
    """A client with an empty cache, so every answer comes from the server."""
    return SchemaRegistryClient({"url": registry.url})


def error_of(call) -> SchemaRegistryError:
    with pytest.raises(SchemaRegistryError) as raised:
        call()
    return raised.value


# --- readiness and the data path --------------------------------------------------------------


def test_root_answers_empty_json_object_as_readiness_probe(registry):
    response = httpx.get(registry.url + "/")
    assert response.status_code == 200
    assert response.json() == {}


def test_survey_entry_round_trips_through_avro_serializer_and_deserializer(registry, client):
    entry = {"survey_id": "1", "user_id": "42", "name": "Danica", "company": "Confluent", "location": None,
             "response": "Pumpkin Pie"}
    context = SerializationContext("survey-entries", MessageField.VALUE)

    payload = AvroSerializer(client, json.dumps(SURVEY_ENTRY))(entry, context)

    schema_id = client.get_latest_version("survey-entries-value").schema_id
    assert payload[0] == 0 and int.from_bytes(payload[1:5], "big") == schema_id
    # A consumer elsewhere knows nothing but the registry's address.
    with fresh_client(registry) as consumer_side:
        assert AvroDeserializer(consumer_side)(payload, context) == entry


# --- register, lookup, ids ----------------------------------------------------------------------


def test_same_schema_gets_same_id_even_reformatted_and_under_another_subject(client):
    first = client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))
    again = client.register_schema("survey-entries-value", avro(SURVEY_ENTRY, indent=4))
    elsewhere = client.register_schema("other-value", avro(SURVEY_ENTRY))

    assert first == again == elsewhere
    assert client.get_versions("survey-entries-value") == [1]
    assert client.get_versions("other-value") == [1]


def test_different_schemas_get_different_ids_and_successive_versions(client):
    first = client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))
    second = client.register_schema("survey-entries-value",
                                    avro(with_field({"name": "score", "type": "int", "default": 0})))

    assert first != second
    assert client.get_versions("survey-entries-value") == [1, 2]
    latest = client.get_latest_version("survey-entries-value")
    assert (latest.version, latest.schema_id) == (2, second)
    assert client.get_version("survey-entries-value", 1).schema_id == first


def test_concurrent_registrations_of_one_schema_make_one_version(registry):
    def register(_: int) -> int:
        with fresh_client(registry) as own:
            return own.register_schema("survey-entries-value", avro(SURVEY_ENTRY))

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(register, range(16)))

    assert len(ids) == 1
    with fresh_client(registry) as client:
        assert client.get_versions("survey-entries-value") == [1]


def test_lookup_finds_the_version_holding_a_schema(registry, client):
    schema_id = client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))

    with fresh_client(registry) as other:
        found = other.lookup_schema("survey-entries-value", avro(SURVEY_ENTRY, indent=2))
        assert (found.subject, found.version, found.schema_id) == ("survey-entries-value", 1, schema_id)

        unknown = error_of(lambda: other.lookup_schema("survey-entries-value",
                                                       avro(with_field({"name": "x", "type": "int"}))))
        assert (unknown.http_status_code, unknown.error_code) == (404, 40403)
        no_subject = error_of(lambda: other.lookup_schema("nobody-value", avro(SURVEY_ENTRY)))
        assert (no_subject.http_status_code, no_subject.error_code) == (404, 40401)


def test_normalize_ignores_key_order(registry, client):
    reordered = {key: SURVEY_ENTRY[key] for key in reversed(list(SURVEY_ENTRY))}
    schema_id = client.register_schema("s-value", avro(SURVEY_ENTRY), normalize_schemas=True)

    with fresh_client(registry) as other:
        assert other.register_schema("s-value", avro(reordered), normalize_schemas=True) == schema_id
        assert other.lookup_schema("s-value", avro(reordered), normalize_schemas=True).schema_id == schema_id
    assert client.get_versions("s-value") == [1]


def test_schema_by_id_with_its_subjects_and_versions(registry, client):
    schema_id = client.register_schema("a-value", avro(SURVEY_ENTRY))
    client.register_schema("b-value", avro(SURVEY_ENTRY))

    with fresh_client(registry) as other:
        schema = other.get_schema(schema_id)
        assert json.loads(schema.schema_str) == SURVEY_ENTRY
        assert schema.schema_type == "AVRO"
        assert other.get_subjects_by_schema_id(schema_id) == ["a-value", "b-value"]
        assert [(v.subject, v.version) for v in other.get_schema_versions(schema_id)] == [("a-value", 1),
                                                                                         ("b-value", 1)]
        missing = error_of(lambda: other.get_schema(schema_id + 100))
        assert (missing.http_status_code, missing.error_code) == (404, 40403)


def test_list_subjects_and_versions(client):
    assert client.get_subjects() == []
    client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))
    client.register_schema("survey-responses-value", avro(SURVEY_ENTRY))

    assert client.get_subjects() == ["survey-entries-value", "survey-responses-value"]
    assert client.get_subjects(subject_prefix="survey-resp") == ["survey-responses-value"]
    missing = error_of(lambda: client.get_versions("nobody-value"))
    assert (missing.http_status_code, missing.error_code) == (404, 40401)
    no_version = error_of(lambda: client.get_version("survey-entries-value", 7))
    assert (no_version.http_status_code, no_version.error_code) == (404, 40402)


# --- deletes ------------------------------------------------------------------------------------


def test_delete_subject_soft_then_permanent(registry, client):
    schema_id = client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))
    client.register_schema("survey-entries-value", avro(with_field({"name": "n", "type": "int", "default": 0})))

    not_first = error_of(lambda: client.delete_subject("survey-entries-value", permanent=True))
    assert (not_first.http_status_code, not_first.error_code) == (404, 40405)

    assert client.delete_subject("survey-entries-value") == [1, 2]
    assert client.get_subjects() == []
    assert client.get_subjects(deleted=True) == ["survey-entries-value"]
    again = error_of(lambda: client.delete_subject("survey-entries-value"))
    assert (again.http_status_code, again.error_code) == (404, 40404)
    # Records already written with a soft-deleted schema stay readable.
    with fresh_client(registry) as other:
        assert json.loads(other.get_schema(schema_id).schema_str) == SURVEY_ENTRY
        assert other.lookup_schema("survey-entries-value", avro(SURVEY_ENTRY), deleted=True).version == 1

    assert client.delete_subject("survey-entries-value", permanent=True) == [1, 2]
    assert client.get_subjects(deleted=True) == []
    with fresh_client(registry) as other:
        gone = error_of(lambda: other.get_schema(schema_id))
        assert gone.error_code == 40403
    # The schema keeps its global id when it comes back, and the subject starts at version 1.
    assert client.register_schema("survey-entries-value", avro(SURVEY_ENTRY)) == schema_id
    assert client.get_versions("survey-entries-value") == [1]


def test_delete_version_keeps_numbering(client):
    client.register_schema("s-value", avro(SURVEY_ENTRY))
    client.register_schema("s-value", avro(with_field({"name": "n", "type": "int", "default": 0})))

    assert client.delete_version("s-value", 2) == 2
    assert client.get_versions("s-value") == [1]
    assert client.get_versions("s-value", deleted=True) == [1, 2]
    assert client.get_version("s-value", 2, deleted=True).version == 2
    client.register_schema("s-value", avro(with_field({"name": "m", "type": "int", "default": 0})))
    assert client.get_versions("s-value") == [1, 3]


# --- compatibility ------------------------------------------------------------------------------


def test_backward_compatible_change_is_accepted(client):
    assert client.get_compatibility() == "BACKWARD"
    assert client.test_compatibility("survey-entries-value", avro(SURVEY_ENTRY)) is True  # nothing to break yet
    client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))
    evolved = avro(with_field({"name": "score", "type": ["null", "int"], "default": None}))

    assert client.test_compatibility("survey-entries-value", evolved) is True
    client.register_schema("survey-entries-value", evolved)
    assert client.get_versions("survey-entries-value") == [1, 2]


def test_incompatible_change_is_refused_with_409_naming_the_field(registry, client):
    client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))
    breaking = avro(with_field({"name": "score", "type": "int"}))

    refused = error_of(lambda: client.register_schema("survey-entries-value", breaking))

    assert (refused.http_status_code, refused.error_code) == (409, 409)
    assert "'score'" in refused.error_message and "no default" in refused.error_message
    assert "BACKWARD" in refused.error_message and "version 1" in refused.error_message
    assert client.get_versions("survey-entries-value") == [1]
    assert client.test_compatibility("survey-entries-value", breaking) is False
    verbose = httpx.post(registry.url + "/compatibility/subjects/survey-entries-value/versions/latest",
                         params={"verbose": "true"}, json={"schema": breaking.schema_str}).json()
    assert verbose["is_compatible"] is False
    assert any("'score'" in message for message in verbose["messages"])


def test_type_change_inside_a_field_is_named(client):
    client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))
    changed = {**SURVEY_ENTRY, "fields": [
        {**field, "type": "string"} if field["name"] == "company" else field for field in SURVEY_ENTRY["fields"]]}
    del changed["fields"][3]["default"]

    refused = error_of(lambda: client.register_schema("survey-entries-value", avro(changed)))

    assert refused.http_status_code == 409
    assert "field 'company'" in refused.error_message


def test_compatibility_none_on_the_subject_allows_the_breaking_change(client):
    client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))
    breaking = avro(with_field({"name": "score", "type": "int"}))

    assert client.set_compatibility("survey-entries-value", "NONE") == {"compatibility": "NONE"}
    client.register_schema("survey-entries-value", breaking)

    assert client.get_versions("survey-entries-value") == [1, 2]
    assert client.get_compatibility() == "BACKWARD"  # the global level is untouched


def test_forward_refuses_what_old_readers_cannot_read(client):
    client.set_compatibility(level="FORWARD")
    client.register_schema("s-value", avro(SURVEY_ENTRY))
    without_response = {**SURVEY_ENTRY, "fields": [f for f in SURVEY_ENTRY["fields"] if f["name"] != "response"]}

    refused = error_of(lambda: client.register_schema("s-value", avro(without_response)))

    assert refused.http_status_code == 409
    assert "version 1 cannot read data written with the new schema" in refused.error_message
    assert "'response'" in refused.error_message


def test_transitive_checks_every_earlier_version(client):
    v1 = {"type": "record", "name": "r", "fields": [{"name": "x", "type": "int"}]}
    v2 = {"type": "record", "name": "r", "fields": [{"name": "y", "type": "int", "default": 0}]}
    v3 = {"type": "record", "name": "r", "fields": [{"name": "y", "type": "int"}]}
    for subject, level in (("plain-value", "BACKWARD"), ("transitive-value", "BACKWARD_TRANSITIVE")):
        client.set_compatibility(subject, level)
        client.register_schema(subject, avro(v1))
        client.register_schema(subject, avro(v2))

    client.register_schema("plain-value", avro(v3))  # v3 can read v2's data
    refused = error_of(lambda: client.register_schema("transitive-value", avro(v3)))
    assert refused.http_status_code == 409
    assert "version 1" in refused.error_message and "'y'" in refused.error_message


# --- config -------------------------------------------------------------------------------------


def test_config_endpoints(registry, client):
    assert client.get_compatibility() == "BACKWARD"
    assert client.set_compatibility(level="FULL") == {"compatibility": "FULL"}
    assert client.get_config().compatibility_level.value == "FULL"

    client.set_compatibility("s-value", "FORWARD_TRANSITIVE")
    assert client.get_compatibility("s-value") == "FORWARD_TRANSITIVE"
    assert client.delete_config("s-value").compatibility_level.value == "FORWARD_TRANSITIVE"
    unset = error_of(lambda: client.get_compatibility("s-value"))
    assert (unset.http_status_code, unset.error_code) == (404, 40408)
    fallback = httpx.get(registry.url + "/config/s-value", params={"defaultToGlobal": "true"}).json()
    assert fallback == {"compatibilityLevel": "FULL"}

    assert client.delete_config().compatibility_level.value == "FULL"
    assert client.get_compatibility() == "BACKWARD"
    invalid = error_of(lambda: client.set_compatibility(level="SIDEWAYS"))
    assert (invalid.http_status_code, invalid.error_code) == (422, 42203)
    assert "BACKWARD_TRANSITIVE" in invalid.error_message


# --- errors -------------------------------------------------------------------------------------


def test_errors_use_confluent_json_shape(registry):
    def post(path: str, body: object) -> httpx.Response:
        return httpx.post(registry.url + path, json=body)

    unknown_subject = httpx.get(registry.url + "/subjects/nobody-value/versions")
    assert unknown_subject.status_code == 404
    assert unknown_subject.json() == {"error_code": 40401, "message": "Subject 'nobody-value' not found."}

    invalid = post("/subjects/s-value/versions", {"schema": '{"type": "record", "name": "r"}'})
    assert invalid.status_code == 422 and invalid.json()["error_code"] == 42201
    assert "fields" in invalid.json()["message"]

    bad_default = post("/subjects/s-value/versions",
                       {"schema": json.dumps(with_field({"name": "score", "type": "int", "default": "many"}))})
    assert (bad_default.status_code, bad_default.json()["error_code"]) == (422, 42201)
    assert "Default value <many>" in bad_default.json()["message"]

    not_json = post("/subjects/s-value/versions", {"schema": "{not json"})
    assert (not_json.status_code, not_json.json()["error_code"]) == (422, 42201)

    protobuf = post("/subjects/s-value/versions", {"schema": "syntax = 'proto3';", "schemaType": "PROTOBUF"})
    assert (protobuf.status_code, protobuf.json()["error_code"]) == (422, 42201)
    assert "PROTOBUF" in protobuf.json()["message"] and "AVRO" in protobuf.json()["message"]

    post("/subjects/s-value/versions", {"schema": json.dumps(SURVEY_ENTRY)})
    bad_version = httpx.get(registry.url + "/subjects/s-value/versions/first")
    assert (bad_version.status_code, bad_version.json()["error_code"]) == (422, 42202)
    assert httpx.get(registry.url + "/subjects/s-value/versions/-1").json()["version"] == 1

    no_route = httpx.get(registry.url + "/no/such/endpoint")
    assert no_route.status_code == 404 and set(no_route.json()) == {"error_code", "message"}
    bad_body = httpx.post(registry.url + "/subjects/s-value/versions", content=b"{oops")
    assert bad_body.status_code == 400 and "not valid JSON" in bad_body.json()["message"]


def test_create_app_serves_in_process(tmp_path):
    with TestClient(create_app(tmp_path / "registry.sqlite")) as http:
        registered = http.post("/subjects/s-value/versions", json={"schema": json.dumps(SURVEY_ENTRY)})
        assert registered.status_code == 200
        assert registered.json()["id"] == 1 and registered.json()["version"] == 1
        assert http.get("/subjects").json() == ["s-value"]
        assert http.get("/schemas/ids/1/schema").json() == SURVEY_ENTRY


# --- the process --------------------------------------------------------------------------------


def test_restart_keeps_ids_and_versions(start_registry, tmp_path):
    first = start_registry()
    with fresh_client(first) as client:
        entry_id = client.register_schema("survey-entries-value", avro(SURVEY_ENTRY))
        evolved_id = client.register_schema("survey-entries-value",
                                            avro(with_field({"name": "n", "type": "int", "default": 0})))
        client.set_compatibility("survey-entries-value", "FULL")
    first.stop()

    second = start_registry()
    with fresh_client(second) as client:
        assert json.loads(client.get_schema(entry_id).schema_str) == SURVEY_ENTRY
        assert client.get_versions("survey-entries-value") == [1, 2]
        assert client.get_latest_version("survey-entries-value").schema_id == evolved_id
        assert client.get_compatibility("survey-entries-value") == "FULL"
        assert client.register_schema("survey-entries-value", avro(SURVEY_ENTRY)) == entry_id
        new_id = client.register_schema("fresh-value", avro({"type": "record", "name": "r",
                                                             "fields": [{"name": "x", "type": "int"}]}))
        assert new_id not in (entry_id, evolved_id)
    assert (tmp_path / "data" / "schema-registry.sqlite").is_file()


def test_basic_auth_is_required_when_configured_and_never_printed(start_registry):
    secured = start_registry(env={"SURVEY_KIT_REGISTRY_BASIC_AUTH": "survey:pie-secret"},
                             auth=("survey", "pie-secret"))

    with SchemaRegistryClient({"url": secured.url}) as anonymous:
        refused = error_of(anonymous.get_subjects)
        assert (refused.http_status_code, refused.error_code) == (401, 40101)
    with SchemaRegistryClient({"url": secured.url, "basic.auth.user.info": "survey:wrong"}) as wrong:
        assert error_of(wrong.get_subjects).http_status_code == 401
    with SchemaRegistryClient({"url": secured.url, "basic.auth.user.info": "survey:pie-secret"}) as client:
        assert client.register_schema("s-value", avro(SURVEY_ENTRY)) == 1
        assert client.get_subjects() == ["s-value"]

    output = secured.stop()
    assert "basic auth required" in output
    assert "pie-secret" not in output


def run_registry_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "survey_kit.registry", "--data-dir", str(tmp_path / "d"), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_port_in_use_exits_2_with_one_line_naming_the_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_registry_cli("--host", "127.0.0.1", "--port", str(port), tmp_path=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0]


def test_non_loopback_host_is_refused_without_allow_remote(tmp_path):
    result = run_registry_cli("--host", "0.0.0.0", "--port", "0", tmp_path=tmp_path)

    assert result.returncode == 2
    assert "--allow-remote" in result.stderr and "0.0.0.0" in result.stderr


def test_malformed_basic_auth_is_refused_without_echoing_it(tmp_path):
    result = run_registry_cli("--port", "0", "--basic-auth", "just-a-secret", tmp_path=tmp_path)

    assert result.returncode == 2
    assert "USER:PASSWORD" in result.stderr and "just-a-secret" not in result.stderr


def test_unreadable_database_file_is_a_clear_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "schema-registry.sqlite").write_text("these are not the schemas you are looking for\n" * 20)

    result = run_registry_cli("--port", "0", tmp_path=tmp_path)

    assert result.returncode == 2
    assert "schema-registry.sqlite" in result.stderr and "not a database" in result.stderr
