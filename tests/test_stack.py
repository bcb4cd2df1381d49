"""The embedded stack: start, stop, double start, port in use, broken binary, and the CLI around it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from survey_kit.stack import EmbeddedStack, StackError
from survey_kit.stack.processes import ProcessRecord, free_port, tcp_answers

CLI = [sys.executable, "-m", "survey_kit.cli"]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_context_manager_starts_answering_services_and_stops_them():
    with EmbeddedStack() as stack:
        status = stack.status()
        assert set(status) == {"broker", "registry", "telegram", "engine"}
        assert all(info["answers"] for info in status.values())
        pids = [info["pid"] for info in status.values()]
        assert stack.bootstrap_servers.startswith("127.0.0.1:")
        assert stack.schema_registry_url.startswith("http://127.0.0.1:")
        data_dir = stack.data_dir
    assert not any(pid_alive(pid) for pid in pids)
    assert not data_dir.exists()  # a temporary data dir is removed


def test_port_in_use_is_named_and_nothing_is_left_running():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        stack = EmbeddedStack(ports={"registry": taken})
        with pytest.raises(StackError, match=f"port {taken}.*Schema Registry.*--registry-port"):
            stack.start()
        assert stack.records == {}
        assert not tcp_answers(stack.ports["broker"])


def test_missing_broker_binary_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(StackError, match="Tansu broker binary is missing"):
        EmbeddedStack(services=("broker",)).start()


def test_service_dying_at_start_stops_the_rest(tmp_path, monkeypatch):
    # A "broker" that exits at once: the stack must say so, with its log, and stop the registry.
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'fatal: cannot open storage' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    stack = EmbeddedStack(data_dir=tmp_path / "data")
    with pytest.raises(StackError, match="(?s)broker.*exited while starting.*cannot open storage"):
        stack.start()
    assert stack.records == {}
    assert not tcp_answers(stack.ports["registry"])


def test_stopping_a_record_never_touches_a_process_that_is_not_ours():
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        wrong_start = ProcessRecord(pid=stranger.pid, start_time="1", log="")
        assert not wrong_start.is_running()
        from survey_kit.stack import processes

        assert processes.stop(wrong_start) is False
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_pause_and_resume_keep_the_broker_data():
    with EmbeddedStack(services=("broker",)) as stack:
        stack.pause_service("broker")
        assert stack.status()["broker"]["running"]
        stack.resume_service("broker")
        assert stack.status()["broker"]["answers"]


def run_cli(*args, home):
    env = {**os.environ, "SURVEY_KIT_HOME": str(home)}
    return subprocess.run(CLI + list(args), env=env, capture_output=True, text=True, timeout=60)


def test_cli_up_twice_status_json_and_down(tmp_path):
    home = tmp_path / "home"
    ports = ["--broker-port", str(free_port()), "--registry-port", str(free_port()), "--telegram-port", str(free_port()),
             "--engine-port", str(free_port())]
    first = run_cli("up", *ports, home=home)
    try:
        assert first.returncode == 0, first.stderr
        assert "embedded stack started" in first.stdout
        second = run_cli("up", *ports, home=home)
        assert "already running" in second.stdout

        status = run_cli("status", "--json", home=home)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["bootstrap_servers"] == f"127.0.0.1:{ports[1]}"
        assert report["schema_registry_url"] == f"http://127.0.0.1:{ports[3]}"
        pids = [info["pid"] for info in report["services"].values()]
        assert report["telegram_api_url"] == f"http://127.0.0.1:{ports[5]}"
        assert report["ksqldb_url"] == f"http://127.0.0.1:{ports[7]}"
        assert len(pids) == 4 and all(pid_alive(pid) for pid in pids)
        assert "answers" in run_cli("status", home=home).stdout

        # a service that crashed: status says so and what to do; up starts it again and leaves the rest be
        registry = report["services"]["registry"]["pid"]
        os.kill(registry, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(registry) and time.monotonic() < deadline:
            time.sleep(0.1)
        crashed = run_cli("status", home=home)
        assert crashed.returncode == 1
        assert "Schema Registry stopped: `survey-kit up` starts it again" in crashed.stdout
        again = run_cli("up", *ports, home=home)
        assert again.returncode == 0, again.stderr
        assert "started again: the Schema Registry, which had stopped" in again.stdout
        report = json.loads(run_cli("status", "--json", home=home).stdout)
        assert all(info["answers"] for info in report["services"].values())
        assert report["services"]["broker"]["pid"] == pids[0]  # the others kept running
        pids = [info["pid"] for info in report["services"].values()]

        # a mistyped pipeline directory is refused before anything changes (no schema registered for it)
        wrong = run_cli("ksql", "apply", str(tmp_path / "no-such-dir"), home=home)
        assert wrong.returncode == 1 and "is not a directory of ksql statement files" in wrong.stderr
        assert httpx.get(f"{report['schema_registry_url']}/subjects").json() == []
    finally:
        down = run_cli("down", home=home)
    assert "stopped" in down.stdout
    assert not any(pid_alive(pid) for pid in pids)
    assert run_cli("status", home=home).returncode == 1
    assert "no embedded stack was running" in run_cli("down", home=home).stdout


def test_cli_port_in_use_fails_without_traceback(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        result = run_cli("up", "--broker-port", str(taken), "--registry-port", str(free_port()),
                         "--telegram-port", str(free_port()), "--engine-port", str(free_port()), home=tmp_path)
    assert result.returncode == 1
    assert f"port {taken}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "stack.json").exists()


def test_cli_without_stack_or_config_explains_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEY_KIT_")}
    env["SURVEY_KIT_HOME"] = str(tmp_path)
    result = subprocess.run(CLI + ["survey", "list"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "survey-kit up" in result.stderr and "Traceback" not in result.stderr
