"""Child processes of the embedded stack: start one, wait until it answers, stop exactly it.

A process is identified by its pid *and* its start time (from /proc), so a recycled pid is never
mistaken for one of ours: `down` stops what `up` started and nothing else.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


class StackError(RuntimeError):
    """The embedded stack could not do what was asked; the message says what and what to do."""


@dataclass(frozen=True)
class ProcessRecord:
    """What is needed to find a started process again, also from another command."""

    pid: int
    start_time: str  # field 22 of /proc/PID/stat: with the pid, unique for the machine's uptime
    log: str

    def is_running(self) -> bool:
        """True while the very process we started is alive (not a zombie, not a recycled pid)."""
        return _start_time(self.pid) == self.start_time

    def to_dict(self) -> dict:
        return asdict(self)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_port_free(port: int, service: str, option: str | None = None) -> None:
    """Raise a StackError naming ``service`` when ``port`` on 127.0.0.1 is taken."""
    with socket.socket() as sock:
        # As servers bind: connections of a just-stopped service in TIME_WAIT do not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            hint = f" or choose another with {option}" if option else ""
            raise StackError(
                f"port {port} on 127.0.0.1, needed by the {service}, is already in use: "
                f"stop whatever listens there{hint}"
            ) from None


def tcp_answers(port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def spawn(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, ProcessRecord]:
    """Start ``command`` in its own session (so it outlives the CLI that started it), output to a log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        except FileNotFoundError:
            raise StackError(f"cannot start {command[0]}: no such program") from None
    # /proc may lag a fork by a moment; the start time is what makes the record safe to kill by.
    deadline = time.monotonic() + 2
    start = _start_time(proc.pid)
    while start is None and time.monotonic() < deadline:
        time.sleep(0.005)
        start = _start_time(proc.pid)
    return proc, ProcessRecord(pid=proc.pid, start_time=start or "", log=str(log_path))


def wait_until_ready(
    name: str,
    proc: subprocess.Popen | None,
    record: ProcessRecord,
    answers: Callable[[], bool],
    timeout: float,
) -> None:
    """Poll ``answers`` until true; raise a StackError with the log's tail if the process dies or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if answers():
            return
        died = proc.poll() is not None if proc is not None else not record.is_running()
        if died:
            raise StackError(f"the {name} exited while starting. Its log ({record.log}) ends with:\n{log_tail(record.log)}")
        if time.monotonic() > deadline:
            raise StackError(
                f"the {name} did not answer within {timeout:.0f} s. Its log ({record.log}) ends with:\n"
                f"{log_tail(record.log)}"
            )
        time.sleep(0.02)


def stop(record: ProcessRecord, timeout: float = 5.0) -> bool:
    """Stop the recorded process (SIGTERM, then SIGKILL). False if it was not running any more."""
    if not record.is_running():
        return False
    try:
        os.kill(record.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while record.is_running() and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.02)
    if record.is_running():
        try:
            os.kill(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while record.is_running():
            _reap(record.pid)
            time.sleep(0.01)
    _reap(record.pid)
    return True


def signal_process(record: ProcessRecord, sig: signal.Signals) -> None:
    """Send ``sig`` to the recorded process if it is still ours."""
    if record.is_running():
        os.kill(record.pid, sig)


def log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


def _start_time(pid: int) -> str | None:
    """The start time of a live, non-zombie process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _reap(pid: int) -> None:
    """Collect an exited child so it does not linger as a zombie (no-op for non-children)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
