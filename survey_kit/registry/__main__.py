"""Run the embedded Schema Registry as a process.

    python -m survey_kit.registry --host 127.0.0.1 --port 8081 --data-dir DIR [--basic-auth USER:PASSWORD]

Schemas are kept in DIR/schema-registry.sqlite, so a restart on the same directory keeps ids and
versions. Basic auth may come from the SURVEY_KIT_REGISTRY_BASIC_AUTH environment variable instead of
the command line (which other users of the machine can see). Prints one line when it answers
requests; stops cleanly on SIGINT/SIGTERM. Exit code 2: bad arguments, or the port is taken.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sqlite3
import sys
from pathlib import Path

import uvicorn

from .app import create_app

DB_FILENAME = "schema-registry.sqlite"
BASIC_AUTH_ENV = "SURVEY_KIT_REGISTRY_BASIC_AUTH"


class _Server(uvicorn.Server):
    """uvicorn's server, announcing readiness once it accepts connections."""

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self._ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._ready_line, flush=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_basic_auth(value: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        # The value may hold a password: never echo it.
        parser.error(f"basic auth (--basic-auth or {BASIC_AUTH_ENV}) must look like USER:PASSWORD "
                     "with both parts non-empty")
    return user, password


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn does: a restart may rebind while old connections linger in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m survey_kit.registry",
                                     description="Embedded Confluent-compatible Schema Registry (Avro).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    parser.add_argument("--data-dir", type=Path, required=True, help=f"directory holding {DB_FILENAME}")
    parser.add_argument("--basic-auth", metavar="USER:PASSWORD",
                        help=f"require HTTP basic auth (or set {BASIC_AUTH_ENV})")
    parser.add_argument("--allow-remote", action="store_true", help="allow listening on a non-loopback address")
    args = parser.parse_args(argv)

    if not _is_loopback(args.host) and not args.allow_remote:
        parser.error(f"refusing to listen on {args.host}: it is not a loopback address "
                     "(pass --allow-remote to serve other machines)")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, not {args.port}")
    auth_value = args.basic_auth or os.environ.get(BASIC_AUTH_ENV)
    basic_auth = _parse_basic_auth(auth_value, parser) if auth_value else None
    try:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"cannot use --data-dir {args.data_dir}: {error.strerror}")

    db_path = args.data_dir / DB_FILENAME
    try:
        app = create_app(db_path, basic_auth)
    except sqlite3.Error as error:
        print(f"schema registry: cannot use {db_path}: {error}", file=sys.stderr)
        return 2

    try:
        sock = _bind(args.host, args.port)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            print(f"schema registry: port {args.port} on {args.host} is already in use; "
                  "stop what uses it or choose another --port", file=sys.stderr)
        else:
            print(f"schema registry: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 2

    port = sock.getsockname()[1]
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    ready_line = (f"schema registry ready at http://{url_host}:{port} (schemas in {db_path}"
                  f"{', basic auth required' if basic_auth else ''})")
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            lifespan="on")
    _Server(config, ready_line).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
