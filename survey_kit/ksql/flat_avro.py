"""Avro readers and writers for flat records, compiled to Python: the engine's hot path.

The engine reads and writes most records as records of primitive columns (the
talk's entries, respondents and responses: a few nullable strings). cavro takes
~0.6 µs per call before doing anything and ~0.4 µs per field: ~3 µs to write a
respondent, ~2.7 µs to read an entry. A function generated for the schema (one
straight-line body, no per-field calls) writes a respondent in under 1 µs and
reads an entry in ~1.4 µs.

    write = flat_record_writer(schema, fallback=cavro_schema.binary_encode)
    write({"user_id": "7", "name": "Ann", "company": None, "location": None})

    read = flat_record_reader(schema, [("USER_ID", "user_id")], fallback=cavro_reader.binary_decode)
    read(payload)   # {"USER_ID": "7"}: the named fields, renamed, the others skipped

    copy = flat_record_copier(schema, other_schema, ["user_id"])
    copy(payload, 0)   # other_schema's record of the user_id field's bytes, or None: read and write it instead

Only records whose fields are all `string`, `long`, `int`, `double` or
`boolean`, each possibly in a union with `null`, get one (else None). A value
of another Python type than the one each Avro type is written from (a str
subclass, an int for a double, a bool for a long) or a missing field hands the
whole record to `fallback`, so every record either writes as the library writes
it or fails as it fails (tests/test_ksql_avro_codec.py compares them byte for
byte). A reader hands `fallback` every payload it does not read to its end
itself (a truncated or garbled one, a length or union branch out of range,
bytes left over, text that is not UTF-8), so each payload reads as the library
reads it or fails as it fails.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

_PRIMITIVES = ("string", "long", "int", "double", "boolean")
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _long(n: int) -> bytes:
    """Avro's encoding of a long: zig-zag, then a base-128 varint."""
    return _varint((n << 1) ^ (n >> 63))


# Encodings of the lengths most strings have (after each union branch a string can be in), looked up
# instead of computed
_LENGTHS = {branch: [branch + _long(n) for n in range(1024)] for branch in (b"", _long(0), _long(1))}
_DOUBLE = struct.Struct("<d").pack


def flat_record_writer(schema: Any, fallback: Callable[[Any], bytes]) -> Callable[[Any], bytes] | None:
    """A function writing records of `schema` (parsed JSON) as Avro binary, or None when `schema` is not flat.

    `fallback` writes a whole record the slow way; it gets every record this
    function does not write itself (see the module docstring).
    """
    fields = _flat_fields(schema)
    if fields is None:
        return None
    body = ["def write(record):", "    if type(record) is not dict:", "        return fallback(record)", "    get = record.get"]
    parts = []
    for i, (name, primitive, null_branch, value_branch) in enumerate(fields):
        part = f"p{i}"
        parts.append(part)
        condition, value = _value(primitive, value_branch)
        body.append(f"    v = get({name!r}, MISSING)")  # a missing field: cavro writes its default or refuses it
        if null_branch is not None:
            body += ["    if v is None:", f"        {part} = {null_branch!r}", f"    elif {condition}:"]
        else:
            body.append(f"    if {condition}:")
        body += [f"        {line}" for line in value[:-1]] + [f"        {part} = {value[-1]}", "    else:", "        return fallback(record)"]
    body.append(f"    return b''.join(({', '.join(parts)},))")
    namespace = {"__name__": __name__, "fallback": fallback, "MISSING": object(), "long": _long, "double": _DOUBLE,
                 "LONG_MIN": _LONG_MIN, "LONG_MAX": _LONG_MAX, "INT_MIN": _INT_MIN, "INT_MAX": _INT_MAX}
    namespace.update((f"LENGTHS{branch.hex()}", table) for branch, table in _LENGTHS.items())
    exec(compile("\n".join(body), f"<avro writer for {schema.get('name')}>", "exec"), namespace)  # noqa: S102 -- our own generated source
    return namespace["write"]


def _flat_fields(schema: Any) -> list[tuple[str, str, bytes | None, bytes]] | None:
    """(name, primitive, bytes of the null branch or None, bytes before a value) per field of a flat record
    schema; None for any other schema."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    fields = schema.get("fields")
    if not isinstance(fields, list) or not fields:
        return None
    flat = []
    for field in fields:
        name, kind = field.get("name"), _field_kind(field.get("type"))
        if kind is None or not isinstance(name, str):
            return None
        flat.append((name, *kind))
    return flat


def _field_kind(avro_type) -> tuple[str, bytes | None, bytes] | None:
    """(primitive, bytes of the null branch or None, bytes before a value) for a flat field type, else None."""
    if avro_type in _PRIMITIVES:
        return avro_type, None, b""
    if isinstance(avro_type, list) and len(avro_type) == 2 and "null" in avro_type:
        null_index = avro_type.index("null")
        primitive = avro_type[1 - null_index]
        if primitive in _PRIMITIVES:
            return primitive, _long(null_index), _long(1 - null_index)
    return None


def _value(primitive: str, prefix: bytes) -> tuple[str, list[str]]:
    """When a value `v` is written as `primitive` here, and how: statements, the last one the bytes' expression."""
    p = f"{prefix!r} + " if prefix else ""
    if primitive == "string":
        return "type(v) is str", ["v = v.encode()", "n = len(v)", f"(LENGTHS{prefix.hex()}[n] if n < 1024 else {p}long(n)) + v"]
    if primitive in ("long", "int"):
        low, high = ("LONG_MIN", "LONG_MAX") if primitive == "long" else ("INT_MIN", "INT_MAX")
        return f"type(v) is int and {low} <= v <= {high}", [f"{p}long(v)"]
    if primitive == "double":
        return "type(v) is float", [f"{p}double(v)"]
    return "v is True or v is False", [f"{p}(b'\\x01' if v else b'\\x00')"]


def flat_record_reader(schema: Any, renames: list[tuple[str, str]], fallback: Callable[[bytes], Any]) -> Callable[[bytes], dict] | None:
    """A function reading Avro binary of `schema` (parsed JSON) into a dict, or None when `schema` is not flat.

    `renames` are (key, field name) pairs: the dict has these keys, in this
    order, each with its field's value; the schema's other fields are skipped.
    `fallback` reads a whole payload the slow way; it gets every payload this
    function does not read itself (see the module docstring).
    """
    fields = _flat_fields(schema)
    wanted = {field: f"v{i}" for i, (_, field) in enumerate(renames)}
    if fields is None or len(wanted) != len(renames):  # not flat, or a field read into two keys
        return None
    body = ["def read(b):", "    try:", "        p = 0", "        end = len(b)"]
    for name, primitive, null_branch, value_branch in fields:
        target = wanted.pop(name, None)
        lines = _read_value(primitive, target)
        if null_branch is not None:
            null_byte, value_byte = null_branch[0], value_branch[0]  # branch 0 or 1: one byte each
            lines = ["i = b[p]", "p += 1", f"if i == {null_byte}:", f"    {target or '_'} = None",
                     f"elif i == {value_byte}:", *(f"    {line}" for line in lines), "else:", "    raise Unread"]
        body += [f"        {line}" for line in lines]
    if wanted:
        return None  # a key from a field the schema lacks: not a plain renaming
    body += ["        if p != end:", "            raise Unread",  # bytes left over
             # anything not read here (Unread, an index past the end, not UTF-8, a short double): the library
             # reads it as it reads it, or raises its own error
             "    except Exception:", "        return fallback(b)",
             "    return {" + ", ".join(f"{key!r}: v{i}" for i, (key, _) in enumerate(renames)) + "}"]
    namespace = {"__name__": __name__, "fallback": fallback, "Unread": _Unread, "long_at": _long_at, "double_at": _DOUBLE_AT,
                 "INT_MIN": _INT_MIN, "INT_MAX": _INT_MAX, "LONG_MIN": _LONG_MIN, "LONG_MAX": _LONG_MAX}
    exec(compile("\n".join(body), f"<avro reader for {schema.get('name')}>", "exec"), namespace)  # noqa: S102 -- our own generated source
    return namespace["read"]


def _read_value(primitive: str, target: str | None) -> list[str]:
    """Statements reading a `primitive` at position `p` of `b` into `target` (None: skipped), advancing `p`."""
    if primitive == "double":
        return ([f"{target} = double_at(b, p)[0]"] if target else ["if end < p + 8:", "    raise Unread"]) + ["p += 8"]
    if primitive == "boolean":
        return ["i = b[p]", "p += 1", "if i > 1:", "    raise Unread", f"{target or '_'} = i == 1"]
    if primitive == "string":
        # the length, zig-zag varint: one even byte when under 64 (a slice past the end is short: checked after);
        # a skipped string is decoded too, as the library checks it is UTF-8
        return ["n = b[p]", "if n < 0x80 and not n & 1:", "    p += 1", "    q = p + (n >> 1)",
                "else:", "    n, p = long_at(b, p)", "    if n < 0:", "        raise Unread", "    q = p + n",
                f"{target or '_'} = b[p:q].decode()", "if q > end:", "    raise Unread", "p = q"]
    # a long or an int: zig-zag varint, one byte when under 64
    low, high = ("INT_MIN", "INT_MAX") if primitive == "int" else ("LONG_MIN", "LONG_MAX")
    return ["n = b[p]", "if n < 0x80:", "    p += 1", "    n = (n >> 1) ^ -(n & 1)", "else:", "    n, p = long_at(b, p)",
            f"if not {low} <= n <= {high}:", "    raise Unread", *([f"{target} = n"] if target else [])]


class _Unread(Exception):
    """Raised inside a compiled reader for a payload it leaves to the library."""


def _long_at(data: bytes, position: int) -> tuple[int, int]:
    """The zig-zag varint long at `position` of `data`, and the position after it (ValueError when over 10 bytes)."""
    n = shift = 0
    while True:
        byte = data[position]
        position += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), position
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


_DOUBLE_AT = struct.Struct("<d").unpack_from


def flat_record_copier(writer: Any, output: Any, picks: list[str]) -> Callable[[bytes, int], bytes | None] | None:
    """A function copying fields of Avro binary of `writer` into Avro binary of `output`, or None when it cannot.

    `picks[i]` names the `writer` field that output field i is a copy of: both
    schemas must be flat (see above) and each pair of fields of one primitive
    type, so that a value's bytes are the same in both: they are copied as they
    are, with only the union branch before them written anew. This projects
    plain columns without decoding and re-encoding them.

        copy = flat_record_copier(entry_schema, respondent_schema, ["user_id", "name", "company", "location"])
        copy(payload, 5)   # the respondent's Avro binary, from the entry's after its 5-byte Confluent header

    It reads the payload from the given position as `flat_record_reader` does
    and returns None for any payload that reader would hand to its fallback
    (garbled, truncated, bytes left over, text that is not UTF-8) and any whose
    copy might not be the bytes a writer of `output` writes (a varint longer
    than the shortest, a null for a field `output` does not let be null): the
    caller reads and writes those the usual way. So each payload either copies
    to exactly what reading and writing it gives, or is left to them.
    """
    fields, outputs = _flat_fields(writer), _flat_fields(output)
    if fields is None or outputs is None or len(picks) != len(outputs):
        return None
    kinds = {name: primitive for name, primitive, _, _ in fields}
    copies: dict[str, list[int]] = {}
    for i, (pick, (_, primitive, _, _)) in enumerate(zip(picks, outputs)):
        if kinds.get(pick) != primitive:
            return None  # no such field, or one of another type: its bytes are not the output's
        copies.setdefault(pick, []).append(i)
    # text all ASCII (the whole payload is) is UTF-8: then no string is decoded to check it
    body = ["def copy(b, p):", "    try:", "        end = len(b)", "        ascii = b.isascii()"]
    for f, (name, primitive, null_branch, value_branch) in enumerate(fields):
        start = f"s{f}"  # where the field's value starts; None for a null
        lines = [f"{start} = p", *_copy_value(primitive)]
        if null_branch is not None:
            lines = ["i = b[p]", "p += 1", f"if i == {null_branch[0]}:", f"    {start} = None",
                     f"elif i == {value_branch[0]}:", *(f"    {line}" for line in lines), "else:", "    raise Unread"]
        body += [f"        {line}" for line in lines]
        for i in copies.get(name, ()):
            _, _, out_null, out_value = outputs[i]
            copied = f"{out_value!r} + b[{start}:p]" if out_value else f"b[{start}:p]"
            if null_branch is None:
                body.append(f"        o{i} = {copied}")
            elif out_null is None:
                body += [f"        if {start} is None:", "            raise Unread", f"        o{i} = {copied}"]
            else:
                body.append(f"        o{i} = {out_null!r} if {start} is None else {copied}")
    body += ["        if p != end:", "            raise Unread",
             "    except Exception:", "        return None",
             f"    return b''.join(({''.join(f'o{i}, ' for i in range(len(outputs)))}))"]
    namespace = {"__name__": __name__, "Unread": _Unread, "long_at": _long_at, "INT_MIN": _INT_MIN, "INT_MAX": _INT_MAX,
                 "LONG_MIN": _LONG_MIN, "LONG_MAX": _LONG_MAX}
    exec(compile("\n".join(body), f"<avro copier {writer.get('name')} -> {output.get('name')}>", "exec"), namespace)  # noqa: S102 -- our own generated source
    return namespace["copy"]


def _copy_value(primitive: str) -> list[str]:
    """Statements moving `p` past a `primitive` at position `p` of `b` as `_read_value` reads it, raising
    Unread where that read would or where a varint is not the shortest encoding of its number (a position
    past the end raises IndexError, or fails the check that the payload ends at its last field's end)."""
    if primitive == "double":
        return ["p += 8"]
    if primitive == "boolean":
        return ["if b[p] > 1:", "    raise Unread", "p += 1"]
    # a zig-zag varint: one byte under 0x80; a longer one whose last byte is 0 is not the shortest
    long_varint = ["    n, p = long_at(b, p)", "    if b[p - 1] == 0:", "        raise Unread"]
    if primitive == "string":  # its text from q to p
        return ["n = b[p]", "if n < 0x80 and not n & 1:", "    q = p + 1", "    p = q + (n >> 1)", "else:",
                "    n, q = long_at(b, p)", "    if n < 0 or b[q - 1] == 0:", "        raise Unread", "    p = q + n",
                "if not ascii:", "    b[q:p].decode()"]
    low, high = ("INT_MIN", "INT_MAX") if primitive == "int" else ("LONG_MIN", "LONG_MAX")
    return ["n = b[p]", "if n < 0x80:", "    p += 1", "else:", *long_varint, f"    if not {low} <= n <= {high}:", "        raise Unread"]
