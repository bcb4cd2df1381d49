"""The stack that ``survey-kit up`` leaves running, recorded in a state file.

The state file (``$SURVEY_KIT_HOME/stack.json``, by default ``~/.survey-kit/stack.json``) holds the
addresses, pids and data directory, so ``status``, ``down`` and :func:`survey_kit.cluster.connect`
find the stack from any directory or process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .embedded import DEFAULT_SERVICES, EmbeddedStack
from .processes import StackError
from .services import SERVICES


def home() -> Path:
    """Where survey-kit keeps the state file and the stack's data: $SURVEY_KIT_HOME or ~/.survey-kit."""
    return Path(os.environ.get("SURVEY_KIT_HOME") or Path.home() / ".survey-kit")


def state_file() -> Path:
    return home() / "stack.json"


def running_stack() -> EmbeddedStack | None:
    """The stack recorded by ``up`` if any of its processes still runs, else None."""
    path = state_file()
    if not path.is_file():
        return None
    try:
        stack = EmbeddedStack.from_state(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, StackError):
        raise StackError(f"the state file {path} is damaged: stop the stack's processes by hand and delete it")
    if not any(record.is_running() for record in stack.records.values()):
        return None
    return stack


def up(ports: Mapping[str, int] | None = None, services=DEFAULT_SERVICES) -> tuple[EmbeddedStack, bool]:
    """Start the stack unless one runs already; returns it and whether it was started now.

    Of a stack that runs already, the services that have stopped are started again (their names in
    the stack's `restarted`), so `survey-kit up` is also how a crashed service comes back.
    """
    existing = running_stack()
    if existing is not None:
        existing.restarted = existing.start_stopped()
        if existing.restarted:
            _write_state(existing)
        return existing, False
    chosen = {name: SERVICES[name].default_port for name in services}
    chosen.update({name: port for name, port in (ports or {}).items() if port})
    stack = EmbeddedStack(data_dir=home() / "stack", ports=chosen, services=services)
    stack.start()
    _write_state(stack)
    return stack, True


def _write_state(stack: EmbeddedStack) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stack.to_state(), indent=2))
    tmp.replace(path)


def down() -> EmbeddedStack | None:
    """Stop the processes ``up`` started (by pid, never by name) and forget them."""
    path = state_file()
    if not path.is_file():
        return None
    stack = EmbeddedStack.from_state(json.loads(path.read_text()))
    stack.stop()
    path.unlink(missing_ok=True)
    return stack
