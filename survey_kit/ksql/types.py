"""ksqlDB's SQL types and how Python values are coerced to them."""

from __future__ import annotations

import datetime
import decimal
from dataclasses import dataclass


class KsqlError(Exception):
    """A statement ksqlDB would reject, or one outside the supported subset.

    The message says what was wrong and, when known, the line and column.
    """


@dataclass(frozen=True)
class SqlType:
    """A column type: `base` plus parameters for DECIMAL / ARRAY / MAP / STRUCT."""

    base: str  # BOOLEAN INT BIGINT DOUBLE DECIMAL STRING BYTES TIMESTAMP DATE TIME ARRAY MAP STRUCT
    precision: int | None = None
    scale: int | None = None
    item: "SqlType | None" = None  # ARRAY item, MAP value
    key: "SqlType | None" = None  # MAP key
    fields: tuple[tuple[str, "SqlType"], ...] = ()

    def __str__(self) -> str:
        if self.base == "DECIMAL":
            return f"DECIMAL({self.precision}, {self.scale})"
        if self.base == "ARRAY":
            return f"ARRAY<{self.item}>"
        if self.base == "MAP":
            return f"MAP<{self.key}, {self.item}>"
        if self.base == "STRUCT":
            return "STRUCT<" + ", ".join(f"{n} {t}" for n, t in self.fields) + ">"
        return self.base

    @property
    def is_numeric(self) -> bool:
        return self.base in NUMERIC_ORDER

    def field_type(self, name: str) -> "SqlType | None":
        for field_name, field_type in self.fields:
            if field_name.upper() == name.upper():
                return field_type
        return None


BOOLEAN = SqlType("BOOLEAN")
INT = SqlType("INT")
BIGINT = SqlType("BIGINT")
DOUBLE = SqlType("DOUBLE")
STRING = SqlType("STRING")
BYTES = SqlType("BYTES")
TIMESTAMP = SqlType("TIMESTAMP")
NUMERIC_ORDER = {"INT": 0, "BIGINT": 1, "DECIMAL": 2, "DOUBLE": 3}

_ALIASES = {
    "VARCHAR": "STRING",
    "STRING": "STRING",
    "INT": "INT",
    "INTEGER": "INT",
    "BIGINT": "BIGINT",
    "DOUBLE": "DOUBLE",
    "BOOLEAN": "BOOLEAN",
    "BYTES": "BYTES",
    "TIMESTAMP": "TIMESTAMP",
    "DATE": "DATE",
    "TIME": "TIME",
    "DECIMAL": "DECIMAL",
}


def simple_type(name: str, params: list[int]) -> SqlType:
    """Build a non-nested type from its name, e.g. `VARCHAR` or `DECIMAL(4,2)`."""
    base = _ALIASES.get(name.upper())
    if base is None:
        raise KsqlError(f"Unknown type: {name}")
    if base == "DECIMAL":
        if len(params) != 2:
            raise KsqlError("DECIMAL needs a precision and a scale, e.g. DECIMAL(4, 2)")
        return SqlType("DECIMAL", precision=params[0], scale=params[1])
    return SqlType(base)


def wider_numeric(a: SqlType, b: SqlType) -> SqlType:
    """The result type of arithmetic between two numeric types."""
    if a.base == "DECIMAL" or b.base == "DECIMAL":
        if "DOUBLE" in (a.base, b.base):
            return DOUBLE
        return a if a.base == "DECIMAL" else b
    return a if NUMERIC_ORDER[a.base] >= NUMERIC_ORDER[b.base] else b


_INTEGER_BITS = {"INT": 32, "BIGINT": 64}


def java_wrap(value: int, base: str) -> int:
    """`value` as Java's int (INT) or long (BIGINT) arithmetic leaves it: wrapped into the type's range, as
    ksqlDB's INT and BIGINT arithmetic and sums overflow."""
    bits = _INTEGER_BITS[base]
    half = 1 << (bits - 1)
    return (value + half) % (1 << bits) - half


def java_narrow(value: float | decimal.Decimal, base: str) -> int:
    """A DOUBLE or DECIMAL cast to INT or BIGINT as Java casts it: toward zero; a DOUBLE past the range
    saturates at its end (NaN is 0), a DECIMAL keeps the low bits."""
    if not isinstance(value, float):
        return java_wrap(int(value), base)
    if value != value:  # NaN
        return 0
    half = 1 << (_INTEGER_BITS[base] - 1)
    if value >= half:
        return half - 1
    if value < -half:
        return -half
    return int(value)


TEMPORAL = ("TIMESTAMP", "DATE", "TIME")
_EPOCH = datetime.datetime(1970, 1, 1)
_DAY_MS = 86_400_000


def format_temporal(value: int, base: str) -> str:
    """A TIMESTAMP (epoch ms), DATE (epoch days) or TIME (ms of the day) as ksqlDB casts it to STRING:
    `1970-01-01T00:00:00.010` (UTC), `2026-12-07`, `10:00:01.5`."""
    if base == "DATE":
        return (_EPOCH + datetime.timedelta(days=value)).date().isoformat()
    moment = _EPOCH + datetime.timedelta(milliseconds=value)
    if base == "TIMESTAMP":
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{value % 1000:03d}"
    fraction = f"{value % 1000:03d}".rstrip("0")
    return f"{moment:%H:%M:%S}" + (f".{fraction}" if fraction else "")


def parse_temporal(text: str, base: str) -> int:
    """ISO text as a TIMESTAMP, DATE or TIME (see `format_temporal`); a timestamp without an offset is UTC.
    Raises ValueError for text that is not one."""
    text = text.strip()
    if base == "DATE":
        return (datetime.date.fromisoformat(text) - _EPOCH.date()).days
    if base == "TIME":
        t = datetime.time.fromisoformat(text)
        return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return (moment - _EPOCH) // datetime.timedelta(milliseconds=1)


def convert_temporal(value: int, source: str, target: str) -> int:
    """A TIMESTAMP, DATE or TIME value as another of them: a timestamp's day or time of day, a day's midnight."""
    if source == target:
        return value
    if source == "TIMESTAMP":
        return value // _DAY_MS if target == "DATE" else value % _DAY_MS
    if source == "DATE" and target == "TIMESTAMP":
        return value * _DAY_MS
    raise ValueError(f"cannot cast {source} to {target}")


def coerce(value, sql_type: SqlType, column: str = "value"):
    """Convert a decoded value (JSON, Avro, text) to the Python value of `sql_type`.

    Raises ValueError naming the column when the value cannot be that type.
    """
    if value is None:
        return None
    base = sql_type.base
    try:
        if base == "STRING":
            if isinstance(value, (dict, list)):
                raise ValueError("not a string")
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
        if base in ("INT", "BIGINT"):
            if isinstance(value, bool):
                raise ValueError("boolean is not a number")
            if isinstance(value, float) and not value.is_integer():
                return int(value)
            result = int(value)
            if base == "INT" and not -(2**31) <= result < 2**31:
                raise ValueError("out of range for INT")
            return result
        if base == "DOUBLE":
            if isinstance(value, bool):
                raise ValueError("boolean is not a number")
            return float(value)
        if base == "DECIMAL":
            return decimal.Decimal(str(value)).quantize(decimal.Decimal(1).scaleb(-sql_type.scale))
        if base == "BOOLEAN":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError("not a boolean")
        if base == "ARRAY":
            if not isinstance(value, list):
                raise ValueError("not an array")
            return [coerce(v, sql_type.item, column) for v in value]
        if base == "MAP":
            if not isinstance(value, dict):
                raise ValueError("not a map")
            return {coerce(k, sql_type.key, column): coerce(v, sql_type.item, column) for k, v in value.items()}
        if base == "STRUCT":
            if not isinstance(value, dict):
                raise ValueError("not a struct")
            upper = {str(k).upper(): v for k, v in value.items()}
            return {n: coerce(upper.get(n.upper()), t, column) for n, t in sql_type.fields}
        if base in ("TIMESTAMP", "DATE", "TIME"):
            return int(value)
        if base == "BYTES":
            return bytes(value) if not isinstance(value, str) else value.encode()
    except (TypeError, ValueError, decimal.InvalidOperation) as exc:
        raise ValueError(f"column {column}: cannot read {value!r} as {sql_type}: {exc}") from None
    raise ValueError(f"column {column}: unsupported type {sql_type}")
