"""Waiting in tests for a condition that other threads or processes make true."""

from __future__ import annotations

import time


def wait_for(condition, timeout: float = 30.0, what: str = "the condition", interval: float = 0.1) -> None:
    """Return once `condition()` is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
