"""SQLite persistence of the embedded Schema Registry: schemas, subject versions, compatibility config.

The store knows nothing about Avro or HTTP. It keeps three facts:

- every distinct schema text gets one global id (and a guid) forever, so the same schema registered
  under two subjects, or again after a delete, gets the id it had before, as Confluent does;
- a subject is an ordered list of versions, each pointing at a schema id, soft-deletable;
- the compatibility level, globally and per subject.

One connection, guarded by a lock, with explicit transactions: registering is a read-check-write that
must not interleave with another registration, and `BEGIN IMMEDIATE` also keeps a second process on
the same file from slipping in between.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_COMPATIBILITY = "BACKWARD"
_GLOBAL_SCOPE = ""  # config row of the global level; subjects are never empty

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS schemas (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    guid        TEXT NOT NULL UNIQUE,
    schema_type TEXT NOT NULL,
    schema      TEXT NOT NULL,
    UNIQUE (schema_type, schema)
);
CREATE TABLE IF NOT EXISTS subject_versions (
    subject   TEXT NOT NULL,
    version   INTEGER NOT NULL,
    schema_id INTEGER NOT NULL REFERENCES schemas (id),
    deleted   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, version)
);
CREATE TABLE IF NOT EXISTS config (
    scope         TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SubjectVersion:
    """One version of a subject, with the schema it points at."""

    subject: str
    version: int
    schema_id: int
    guid: str
    schema_type: str
    schema: str
    deleted: bool


@dataclass(frozen=True)
class StoredSchema:
    """A schema by its global id."""

    schema_id: int
    guid: str
    schema_type: str
    schema: str


class Store:
    """The registry's tables in one SQLite file; safe to share between threads of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction spans exactly one method.
        self._conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._transaction(write=True) as db:
            for statement in filter(str.strip, _SCHEMA_SQL.split(";")):
                db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # --- subjects and versions -------------------------------------------------------------------

    def subjects(self, include_deleted: bool = False, deleted_only: bool = False) -> list[str]:
        """Subject names, sorted. A subject is live while one of its versions is not deleted."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT subject, MIN(deleted) AS all_deleted FROM subject_versions GROUP BY subject ORDER BY subject"
            ).fetchall()
        if deleted_only:
            return [r["subject"] for r in rows if r["all_deleted"]]
        return [r["subject"] for r in rows if include_deleted or not r["all_deleted"]]

    def versions(self, subject: str, include_deleted: bool = False) -> list[SubjectVersion]:
        """The versions of a subject in order (empty when the subject does not exist)."""
        with self._transaction() as db:
            return self._versions(db, subject, include_deleted)

    def find_in_subject(self, subject: str, schema_type: str, schema: str, include_deleted: bool = False
                        ) -> SubjectVersion | None:
        """The (newest) version of `subject` holding exactly this schema text."""
        matches = [v for v in self.versions(subject, include_deleted)
                   if v.schema_type == schema_type and v.schema == schema]
        return matches[-1] if matches else None

    def register(self, subject: str, schema_type: str, schema: str,
                 check: Callable[[list[SubjectVersion]], None]) -> SubjectVersion:
        """Add `schema` as the next version of `subject`, or return the live version already holding it.

        `check(live_versions)` runs inside the transaction before anything is written; it raises to
        refuse the schema (the compatibility rule), leaving the store unchanged.
        """
        with self._transaction(write=True) as db:
            live = self._versions(db, subject, include_deleted=False)
            for existing in reversed(live):
                if existing.schema_type == schema_type and existing.schema == schema:
                    return existing
            check(live)
            row = db.execute("SELECT id FROM schemas WHERE schema_type = ? AND schema = ?",
                             (schema_type, schema)).fetchone()
            if row is None:
                schema_id = db.execute("INSERT INTO schemas (guid, schema_type, schema) VALUES (?, ?, ?)",
                                       (str(uuid.uuid4()), schema_type, schema)).lastrowid
            else:
                schema_id = row["id"]
            # Versions keep counting past soft-deleted ones, so a version number is never reused.
            (last,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM subject_versions WHERE subject = ?",
                                 (subject,)).fetchone()
            db.execute("INSERT INTO subject_versions (subject, version, schema_id) VALUES (?, ?, ?)",
                       (subject, last + 1, schema_id))
            return self._versions(db, subject, include_deleted=False)[-1]

    def soft_delete_version(self, subject: str, version: int) -> None:
        with self._transaction(write=True) as db:
            db.execute("UPDATE subject_versions SET deleted = 1 WHERE subject = ? AND version = ?",
                       (subject, version))

    def hard_delete_version(self, subject: str, version: int) -> None:
        with self._transaction(write=True) as db:
            db.execute("DELETE FROM subject_versions WHERE subject = ? AND version = ?", (subject, version))

    def soft_delete_subject(self, subject: str) -> list[int]:
        """Mark every live version deleted and drop the subject's config; returns those versions."""
        with self._transaction(write=True) as db:
            live = [v.version for v in self._versions(db, subject, include_deleted=False)]
            db.execute("UPDATE subject_versions SET deleted = 1 WHERE subject = ?", (subject,))
            db.execute("DELETE FROM config WHERE scope = ?", (subject,))
            return live

    def hard_delete_subject(self, subject: str) -> list[int]:
        with self._transaction(write=True) as db:
            gone = [v.version for v in self._versions(db, subject, include_deleted=True)]
            db.execute("DELETE FROM subject_versions WHERE subject = ?", (subject,))
            db.execute("DELETE FROM config WHERE scope = ?", (subject,))
            return gone

    # --- schemas by id ---------------------------------------------------------------------------

    def schema_by_id(self, schema_id: int) -> StoredSchema | None:
        """The schema with this id, while some subject version (even soft-deleted) still uses it."""
        return self._schema_where("s.id = ?", schema_id)

    def schema_by_guid(self, guid: str) -> StoredSchema | None:
        return self._schema_where("s.guid = ?", guid)

    def usages(self, schema_id: int, include_deleted: bool = False) -> list[SubjectVersion]:
        """Every subject version using the schema `schema_id`."""
        with self._transaction() as db:
            rows = db.execute(
                _VERSION_SELECT + " WHERE v.schema_id = ? AND (? OR v.deleted = 0) ORDER BY v.subject, v.version",
                (schema_id, include_deleted)).fetchall()
        return [_subject_version(r) for r in rows]

    # --- compatibility config --------------------------------------------------------------------

    def global_compatibility(self) -> str:
        return self.subject_compatibility(_GLOBAL_SCOPE) or DEFAULT_COMPATIBILITY

    def subject_compatibility(self, subject: str) -> str | None:
        """The level set on this subject itself, or None when it follows the global level."""
        with self._transaction() as db:
            row = db.execute("SELECT compatibility FROM config WHERE scope = ?", (subject,)).fetchone()
        return row["compatibility"] if row else None

    def effective_compatibility(self, subject: str) -> str:
        return self.subject_compatibility(subject) or self.global_compatibility()

    def set_compatibility(self, level: str, subject: str | None = None) -> None:
        with self._transaction(write=True) as db:
            db.execute("INSERT INTO config (scope, compatibility) VALUES (?, ?) "
                       "ON CONFLICT (scope) DO UPDATE SET compatibility = excluded.compatibility",
                       (subject or _GLOBAL_SCOPE, level))

    def delete_compatibility(self, subject: str | None = None) -> None:
        """Forget a subject's level (it follows the global one again), or reset the global level."""
        with self._transaction(write=True) as db:
            db.execute("DELETE FROM config WHERE scope = ?", (subject or _GLOBAL_SCOPE,))

    # --- helpers ---------------------------------------------------------------------------------

    def _versions(self, db: sqlite3.Connection, subject: str, include_deleted: bool) -> list[SubjectVersion]:
        rows = db.execute(_VERSION_SELECT + " WHERE v.subject = ? AND (? OR v.deleted = 0) ORDER BY v.version",
                          (subject, include_deleted)).fetchall()
        return [_subject_version(r) for r in rows]

    def _schema_where(self, condition: str, value: object) -> StoredSchema | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT s.id, s.guid, s.schema_type, s.schema FROM schemas s WHERE " + condition +
                " AND EXISTS (SELECT 1 FROM subject_versions v WHERE v.schema_id = s.id)", (value,)).fetchone()
        return StoredSchema(row["id"], row["guid"], row["schema_type"], row["schema"]) if row else None


_VERSION_SELECT = (
    "SELECT v.subject, v.version, v.schema_id, v.deleted, s.guid, s.schema_type, s.schema "
    "FROM subject_versions v JOIN schemas s ON s.id = v.schema_id"
)


def _subject_version(row: sqlite3.Row) -> SubjectVersion:
    return SubjectVersion(subject=row["subject"], version=row["version"], schema_id=row["schema_id"],
                          guid=row["guid"], schema_type=row["schema_type"], schema=row["schema"],
                          deleted=bool(row["deleted"]))
