"""The chats that asked (/subscribe) for final results, kept in SQLite so they survive restarts."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class Subscribers:
    """A durable set of chat ids."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS subscribers (chat_id INTEGER PRIMARY KEY)")
        self._lock = threading.Lock()

    def add(self, chat_id: int) -> bool:
        """Subscribe a chat; False if it already was."""
        with self._lock:
            return self._db.execute("INSERT OR IGNORE INTO subscribers VALUES (?)", (chat_id,)).rowcount == 1

    def remove(self, chat_id: int) -> bool:
        """Unsubscribe a chat; False if it was not subscribed."""
        with self._lock:
            return self._db.execute("DELETE FROM subscribers WHERE chat_id = ?", (chat_id,)).rowcount == 1

    def chat_ids(self) -> list[int]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT chat_id FROM subscribers ORDER BY chat_id")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
