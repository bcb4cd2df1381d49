"""Explicit operator state that can be snapshotted, restored and changelogged.

Every piece of state a query keeps (aggregates, windows, join tables, stream
time) lives in a `Store`. The runtime drains each store's changes after a
batch (`drain_changes`) to write them to a changelog topic in the same Kafka
transaction as the outputs and offsets, and replays them with `apply_change`
on restart. Keys are tuples of JSON-friendly values; drained values, snapshots
and changes are JSON-friendly (`to_json` tags DECIMAL and BYTES values).
"""

from __future__ import annotations

import base64
import copy
import decimal
import json
from typing import Any, Iterator

_DELETED = object()


_PLAIN = (str, int, float, bool, type(None))


def to_json(value):
    """A JSON-friendly copy of a state value (DECIMAL and BYTES values are tagged)."""
    if type(value) in _PLAIN:  # most of a state: checked first, as this runs for every value at every commit
        return value
    if isinstance(value, dict):
        return {k: v if type(v) in _PLAIN else to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [v if type(v) in _PLAIN else to_json(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    return value


def from_json(value):
    """The state value `to_json` was given."""
    if isinstance(value, dict):
        if len(value) == 1 and "$decimal" in value:
            return decimal.Decimal(value["$decimal"])
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def encode_key(key: tuple) -> str:
    return json.dumps(list(key), separators=(",", ":"), default=str)


def decode_key(text: str) -> tuple:
    return tuple(_freeze(v) for v in json.loads(text))


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


class Store:
    """A key-value store with change tracking."""

    def __init__(self, name: str):
        self.name = name
        self._data: dict[tuple, Any] = {}
        self._dirty: dict[tuple, Any] = {}
        self._encoded: dict[tuple, str] = {}  # encode_key of the live keys: the same keys change commit after commit
        # `get(key, default=None)` is the data dict's own lookup (operators call it once per record or
        # more); `_data` is therefore never replaced, only changed
        self.get = self._data.get

    def put(self, key: tuple, value) -> None:
        self._data[key] = value
        self._dirty[key] = value

    def delete(self, key: tuple) -> None:
        if key in self._data:
            del self._data[key]
            self._dirty[key] = _DELETED

    def __contains__(self, key: tuple) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> Iterator[tuple[tuple, Any]]:
        return iter(list(self._data.items()))

    def drain_changes(self) -> list[tuple[str, Any]]:
        """Changes since the last drain: (encoded key, value or None for a delete)."""
        changes = []
        encoded = self._encoded
        for key, value in self._dirty.items():
            text = encoded.get(key)
            if text is None:
                text = encoded[key] = encode_key(key)
            if value is _DELETED:
                del encoded[key]
                changes.append((text, None))
            else:
                changes.append((text, to_json(value)))
        self._dirty.clear()
        return changes

    def apply_change(self, encoded_key: str, value) -> None:
        key = decode_key(encoded_key)
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = from_json(value)

    def snapshot(self) -> dict[str, Any]:
        return {encode_key(k): to_json(v) for k, v in self._data.items()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._data.clear()
        self._encoded.clear()
        self._data.update((decode_key(k), from_json(copy.deepcopy(v))) for k, v in snapshot.items())
        self._dirty.clear()


class Stores:
    """The named stores of one query."""

    def __init__(self):
        self._stores: dict[str, Store] = {}

    def get(self, name: str) -> Store:
        if name not in self._stores:
            self._stores[name] = Store(name)
        return self._stores[name]

    def drain_changes(self) -> list[tuple[str, str, Any]]:
        return [(name, k, v) for name, store in self._stores.items() for k, v in store.drain_changes()]

    def apply_change(self, store: str, encoded_key: str, value) -> None:
        self.get(store).apply_change(encoded_key, value)

    def snapshot(self) -> dict[str, dict]:
        return {name: store.snapshot() for name, store in self._stores.items()}

    def restore(self, snapshot: dict[str, dict]) -> None:
        for name, data in snapshot.items():
            self.get(name).restore(data)
