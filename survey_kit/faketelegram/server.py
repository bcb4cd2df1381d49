"""Running the fake Telegram: as a process (`python -m survey_kit.faketelegram`) or in a background thread."""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn

from .api import create_app


def bind_loopback(host: str, port: int) -> socket.socket:
    """A listening socket on a loopback address; ValueError/OSError say clearly what is wrong."""
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"--host {host} is not a loopback address; the fake Telegram serves 127.0.0.1 only")
    except ValueError as error:
        if "loopback" in str(error):
            raise
        raise ValueError(f"--host {host!r} is not an IP address; use 127.0.0.1") from None
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # As uvicorn does: the connections it closed linger in TIME_WAIT for a minute, and without this a fake
    # started again on the same port (`make demo` run twice) is refused it
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, ending the fake's long polls when asked to exit (they would hold up shutdown)."""

    def __init__(self, data_dir: Path | None):
        self.app = create_app(data_dir)
        super().__init__(uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on",
                                        timeout_graceful_shutdown=5))
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:  # SIGTERM/SIGINT, in the loop's thread
        self._end_waits()
        super().handle_exit(sig, frame)

    def exit_from_another_thread(self) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self._end_waits)
        self.should_exit = True

    def _end_waits(self) -> None:
        world = getattr(self.app.state, "world", None)
        if world is not None:
            asyncio.ensure_future(world.close(), loop=self.loop)


def _server(sock: socket.socket, data_dir: Path | None) -> _Server:
    return _Server(data_dir)


class FakeTelegramServer:
    """The fake Telegram Bot API in a background thread of this process, on a free loopback port.

        with FakeTelegramServer() as fake:
            app = Application.builder().token("123:TEST").base_url(fake.bot_base_url).build()
            client = FakeTelegramClient(fake.api_url)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, data_dir: str | Path | None = None):
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir) if data_dir else None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def bot_base_url(self) -> str:
        """What python-telegram-bot's `base_url` setting takes: it appends `<token>/<method>`."""
        return f"{self.api_url}/bot"

    def start(self) -> FakeTelegramServer:
        sock = bind_loopback(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _server(sock, self.data_dir)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-telegram", daemon=True
        )
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            time.sleep(0.02)
        if not self._server.started:
            raise RuntimeError("the fake Telegram server did not start; see the log above")
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.exit_from_another_thread()
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeTelegramServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m survey_kit.faketelegram",
        description="A local fake of the Telegram Bot API for running the survey bot without Telegram.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one, printed)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="directory where the fake keeps its state across restarts")
    args = parser.parse_args(argv)
    try:
        sock = bind_loopback(args.host, args.port)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            print(f"error: {args.host}:{args.port} is already in use; choose another --port", file=sys.stderr)
        else:
            print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 2
    if args.data_dir:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    port = sock.getsockname()[1]
    print(f"fake Telegram Bot API listening on http://{args.host}:{port}", flush=True)
    _server(sock, args.data_dir).run(sockets=[sock])
    return 0
