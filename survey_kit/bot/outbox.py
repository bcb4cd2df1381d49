"""The durable outbox: confirmed entries wait here, on disk, until Kafka has acknowledged them.

Every confirmed entry is written here first (SQLite, synchronous commits), then delivered; it is removed only
after the broker's acknowledgement. So an entry confirmed while Kafka is down, or while the bot crashes, is
delivered later, in the order it was confirmed, with the entry id it was given at confirmation.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PendingEntry:
    """One confirmed entry not yet acknowledged by Kafka."""

    seq: int
    entry_id: str
    key: str
    value: dict[str, Any]
    confirmed_at: float


class Outbox:
    """A SQLite-backed FIFO of confirmed entries; safe to use from several threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a confirmed entry must survive a power cut
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT, entry_id TEXT NOT NULL UNIQUE, key TEXT NOT NULL,"
            " value TEXT NOT NULL, confirmed_at REAL NOT NULL)"
        )
        self._lock = threading.Lock()

    def add(self, entry_id: str, key: str, value: dict[str, Any]) -> int:
        """Store a confirmed entry durably; returns its position in the outbox."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO outbox (entry_id, key, value, confirmed_at) VALUES (?, ?, ?, ?)",
                (entry_id, key, json.dumps(value), time.time()),
            )
            return cursor.lastrowid

    def pending(self, limit: int = 500) -> list[PendingEntry]:
        """The oldest entries still to deliver, in confirmation order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, entry_id, key, value, confirmed_at FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [PendingEntry(seq, entry_id, key, json.loads(value), at) for seq, entry_id, key, value, at in rows]

    def remove(self, entry_ids: list[str]) -> None:
        """Forget entries Kafka has acknowledged."""
        with self._lock:
            self._db.executemany("DELETE FROM outbox WHERE entry_id = ?", [(e,) for e in entry_ids])

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
