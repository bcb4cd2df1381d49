"""The embedded stack: a Kafka broker, a Schema Registry and friends on 127.0.0.1, as child processes.

Two ways to use it:

* ``survey-kit up`` / ``down`` / ``status`` (see :mod:`survey_kit.stack.state`) for a stack that
  outlives the command, on well-known ports, recorded in a state file;
* ``with EmbeddedStack() as stack:`` in notebooks and tests: free ports, a private data directory,
  everything stopped on exit, so two test runs never collide.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import processes
from .processes import ProcessRecord, StackError
from .services import SERVICES, Service

DEFAULT_SERVICES = tuple(SERVICES)


class EmbeddedStack:
    """A running (or startable) set of services of the embedded stack.

    ``ports`` maps a service name to a port; a missing or 0 port means "any free port".
    ``data_dir`` holds each service's log and files; without one, a temporary directory is used
    and removed by :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        ports: Mapping[str, int] | None = None,
        services: Iterable[str] = DEFAULT_SERVICES,
    ):
        self.services: list[Service] = _in_start_order([_service(name) for name in services])
        self._temporary = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="survey-kit-"))
        ports = dict(ports or {})
        self.ports = {s.name: ports.get(s.name) or processes.free_port() for s in self.services}
        self.records: dict[str, ProcessRecord] = {}
        self._children: dict[str, subprocess.Popen] = {}
        self.restarted: list[str] = []  # the services `state.up` started again in this stack

    # -- addresses ---------------------------------------------------------------------------
    @property
    def addresses(self) -> dict[str, str]:
        """Each service's address under its well-known key (bootstrap_servers, schema_registry_url, ...)."""
        return {s.address_key: s.address(self.ports[s.name]) for s in self.services}

    @property
    def bootstrap_servers(self) -> str:
        return self.addresses["bootstrap_servers"]

    @property
    def schema_registry_url(self) -> str | None:
        return self.addresses.get("schema_registry_url")

    @property
    def telegram_api_url(self) -> str | None:
        return self.addresses.get("telegram_api_url")

    # -- life cycle --------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> EmbeddedStack:
        """Start every service and wait until each answers; on any failure, stop what was started."""
        for service in self.services:
            processes.ensure_port_free(self.ports[service.name], service.title, service.port_option)
        try:
            for tier in _tiers(self.services):
                for service in tier:
                    self._spawn(service)
                for service in tier:
                    self._wait(service, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every service this object started, newest first; remove a temporary data directory."""
        for name in reversed(list(self.records)):
            processes.stop(self.records.pop(name))
            self._children.pop(name, None)
        if self._temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- one service at a time (outage tests, restarts) -----------------------------------------
    def stop_service(self, name: str) -> None:
        """Stop one service (the broker loses its topics: it keeps them in memory)."""
        record = self.records.pop(name, None)
        if record is None:
            raise StackError(f"the {name} is not running in this stack")
        processes.stop(record)
        self._children.pop(name, None)

    def start_service(self, name: str, timeout: float = 20.0) -> None:
        """Start one service again on its port, e.g. after :meth:`stop_service`."""
        service = _service(name)
        processes.ensure_port_free(self.ports[name], service.title, service.port_option)
        self._spawn(service)
        self._wait(service, timeout)

    def start_stopped(self, timeout: float = 20.0) -> list[str]:
        """Start again, on their ports, the services whose process has gone (crashed, killed); returns their names.

        The others keep running. A broker started again is empty (it keeps topics in memory).
        """
        stopped = [s.name for s in self.services if not (s.name in self.records and self.records[s.name].is_running())]
        for name in stopped:
            self.records.pop(name, None)
            self.start_service(name, timeout)
        return stopped

    def pause_service(self, name: str) -> None:
        """Freeze a service (SIGSTOP): it keeps its data but answers nothing, like a hung broker."""
        processes.signal_process(self._record(name), signal.SIGSTOP)

    def resume_service(self, name: str) -> None:
        """Let a paused service run again."""
        processes.signal_process(self._record(name), signal.SIGCONT)

    # -- inspection --------------------------------------------------------------------------
    def status(self) -> dict[str, dict]:
        """Per service: its address, pid, whether its process runs and whether it answers."""
        report = {}
        for service in self.services:
            record = self.records.get(service.name)
            running = bool(record and record.is_running())
            report[service.name] = {
                "title": service.title,
                "address": service.address(self.ports[service.name]),
                "pid": record.pid if record else None,
                "running": running,
                "answers": running and service.answers(self.ports[service.name]),
                "log": record.log if record else None,
            }
        return report

    def to_state(self) -> dict:
        """What another command needs to find and stop this stack."""
        return {
            "data_dir": str(self.data_dir),
            "ports": self.ports,
            "processes": {name: record.to_dict() for name, record in self.records.items()},
            **self.addresses,
        }

    @classmethod
    def from_state(cls, state: Mapping) -> EmbeddedStack:
        """The stack described by :meth:`to_state`, to inspect or stop it."""
        stack = cls(data_dir=state["data_dir"], ports=state["ports"], services=state["ports"].keys())
        stack.records = {name: ProcessRecord(**record) for name, record in state["processes"].items()}
        return stack

    def _spawn(self, service: Service) -> None:
        port = self.ports[service.name]
        command = service.command(port, self.data_dir / service.name, self.addresses)
        proc, record = processes.spawn(command, self.data_dir / "logs" / f"{service.name}.log")
        self._children[service.name] = proc
        self.records[service.name] = record

    def _wait(self, service: Service, timeout: float) -> None:
        port = self.ports[service.name]
        processes.wait_until_ready(
            f"{service.title} on port {port}",
            self._children.get(service.name),
            self.records[service.name],
            lambda: service.answers(port),
            timeout,
        )

    def _record(self, name: str) -> ProcessRecord:
        if name not in self.records:
            raise StackError(f"the {name} is not running in this stack")
        return self.records[name]


def _service(name: str) -> Service:
    try:
        return SERVICES[name]
    except KeyError:
        raise StackError(f"no service called {name!r}; the services are {', '.join(SERVICES)}") from None


def _in_start_order(services: list[Service]) -> list[Service]:
    names = {s.name for s in services}
    for service in services:
        missing = [need for need in service.needs if need not in names]
        if missing:
            raise StackError(f"the {service.title} needs the {', '.join(missing)} in the same stack")
    return [s for tier in _tiers(services) for s in tier]


def _tiers(services: list[Service]) -> list[list[Service]]:
    """Groups that can start together: each group needs only services of earlier groups."""
    done: set[str] = set()
    left = list(services)
    tiers = []
    while left:
        tier = [s for s in left if all(need in done for need in s.needs)]
        tiers.append(tier)
        done.update(s.name for s in tier)
        left = [s for s in left if s not in tier]
    return tiers
