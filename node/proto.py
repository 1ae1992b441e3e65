"""Protocol Buffers' wire format: the small part the node agent speaks.

The node's extension points (NRI over ttrpc, the kubelet's device-plugin and plugin-registration
gRPC services, the CRI image service) all carry protobuf messages. Rather than generated code for
a few dozen messages, each is declared here as a :class:`Message`: its fields by number, name and
kind. A decoded message is a plain ``dict`` holding only the fields present on the wire (proto3
omits defaults; read with ``.get(name, default)``); unknown fields are skipped, so a newer peer's
additions do not break an older agent.

Kinds: ``string``, ``bytes``, ``int`` (int32/int64/enum, two's complement), ``uint``
(uint32/uint64), ``bool``, ``double``, a nested :class:`Message`, and maps (``map=(key kind,
value kind or Message)``). ``repeated=True`` makes a list; numeric lists are written packed and
read either way.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_SCALARS = frozenset({"string", "bytes", "int", "uint", "bool", "double"})


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the message."""


@dataclass(frozen=True)
class Field:
    number: int
    name: str
    kind: str | Message = "string"
    repeated: bool = False
    map: tuple[str, str | Message] | None = None  # (key kind, value kind): map<key, value>

    def __post_init__(self) -> None:
        kinds = [self.kind] if self.map is None else list(self.map)
        for kind in kinds:
            if not isinstance(kind, Message) and kind not in _SCALARS:
                raise ValueError(f"field {self.name}: unknown kind {kind!r}")


class Message:
    """One message type: ``Message("Device", Field(1, "ID"), Field(2, "health"))``."""

    def __init__(self, name: str, *fields: Field) -> None:
        self.name = name
        self.fields: dict[int, Field] = {}
        self.by_name: dict[str, Field] = {}
        self.extend(*fields)

    def extend(self, *fields: Field) -> None:
        """Add fields after construction (for a message that contains itself)."""
        for f in fields:
            self.fields[f.number] = f
            self.by_name[f.name] = f

    def __repr__(self) -> str:
        return f"Message({self.name!r})"

    def encode(self, values: Mapping[str, Any]) -> bytes:
        out = bytearray()
        for name, value in values.items():
            field = self.by_name.get(name)
            if field is None:
                raise KeyError(f"{self.name} has no field {name!r}")
            if value is None:
                continue
            if field.map is not None:
                entry = Message(
                    f"{self.name}.{name}Entry",
                    Field(1, "key", field.map[0]),
                    Field(2, "value", field.map[1]),
                )
                for k, v in value.items():
                    _tag(out, field.number, LENGTH)
                    _length_delimited(out, entry.encode({"key": k, "value": v}))
            elif field.repeated:
                items = list(value)
                if items and field.kind in ("int", "uint", "bool", "double"):
                    packed = bytearray()
                    for item in items:
                        _scalar(packed, field.kind, item)
                    _tag(out, field.number, LENGTH)
                    _length_delimited(out, bytes(packed))
                else:
                    for item in items:
                        _value(out, field, item)
            else:
                _value(out, field, value)
        return bytes(out)

    def decode(self, data: bytes) -> dict[str, Any]:
        result: dict[str, Any] = {}
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            key, pos = _varint(view, pos)
            number, wire = key >> 3, key & 7
            if wire == VARINT:
                raw, pos = _varint(view, pos)
                chunk: bytes | int = raw
            elif wire == FIXED64:
                chunk, pos = bytes(view[pos : pos + 8]), pos + 8
            elif wire == FIXED32:
                chunk, pos = bytes(view[pos : pos + 4]), pos + 4
            elif wire == LENGTH:
                size, pos = _varint(view, pos)
                if pos + size > len(view):
                    raise DecodeError(f"{self.name}: field {number} runs past the end")
                chunk, pos = bytes(view[pos : pos + size]), pos + size
            else:
                raise DecodeError(f"{self.name}: field {number} has wire type {wire}")
            if pos > len(view):
                raise DecodeError(f"{self.name}: truncated")
            field = self.fields.get(number)
            if field is not None:
                _store(result, field, wire, chunk)
        return result


def _tag(out: bytearray, number: int, wire: int) -> None:
    _write_varint(out, number << 3 | wire)


def _write_varint(out: bytearray, value: int) -> None:
    value &= (1 << 64) - 1
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _length_delimited(out: bytearray, data: bytes) -> None:
    _write_varint(out, len(data))
    out += data


def _scalar(out: bytearray, kind: str, value: Any) -> None:
    if kind == "double":
        out += struct.pack("<d", float(value))
    else:
        _write_varint(out, int(value))


def _value(out: bytearray, field: Field, value: Any) -> None:
    kind = field.kind
    if isinstance(kind, Message):
        _tag(out, field.number, LENGTH)
        _length_delimited(out, kind.encode(value))
    elif kind == "string":
        _tag(out, field.number, LENGTH)
        _length_delimited(out, str(value).encode())
    elif kind == "bytes":
        _tag(out, field.number, LENGTH)
        _length_delimited(out, bytes(value))
    else:
        _tag(out, field.number, FIXED64 if kind == "double" else VARINT)
        _scalar(out, kind, value)


def _convert(kind: str | Message, wire: int, chunk: bytes | int, where: str) -> Any:
    if isinstance(kind, Message):
        if not isinstance(chunk, bytes) or wire != LENGTH:
            raise DecodeError(f"{where}: expected a message")
        return kind.decode(chunk)
    if kind in ("string", "bytes"):
        if not isinstance(chunk, bytes) or wire != LENGTH:
            raise DecodeError(f"{where}: expected {kind}")
        if kind == "bytes":
            return chunk
        try:
            return chunk.decode()
        except UnicodeDecodeError as e:
            raise DecodeError(f"{where}: not UTF-8") from e
    if kind == "double":
        if not isinstance(chunk, bytes) or len(chunk) != 8:
            raise DecodeError(f"{where}: expected a double")
        return struct.unpack("<d", chunk)[0]
    if not isinstance(chunk, int):
        raise DecodeError(f"{where}: expected a varint")
    if kind == "bool":
        return bool(chunk)
    if kind == "int" and chunk >= 1 << 63:
        return chunk - (1 << 64)
    return chunk


def _store(result: dict[str, Any], field: Field, wire: int, chunk: bytes | int) -> None:
    where = field.name
    if field.map is not None:
        if not isinstance(chunk, bytes):
            raise DecodeError(f"{where}: expected a map entry")
        entry = Message(where, Field(1, "key", field.map[0]), Field(2, "value", field.map[1]))
        decoded = entry.decode(chunk)
        default: Any = {} if isinstance(field.map[1], Message) else ""
        if field.map[1] in ("int", "uint"):
            default = 0
        result.setdefault(field.name, {})[decoded.get("key", "")] = decoded.get("value", default)
    elif field.repeated:
        items = result.setdefault(field.name, [])
        kind = field.kind
        if wire == LENGTH and kind in ("int", "uint", "bool", "double"):
            assert isinstance(chunk, bytes)
            view = memoryview(chunk)
            pos = 0
            while pos < len(view):
                if kind == "double":
                    items.append(struct.unpack("<d", view[pos : pos + 8])[0])
                    pos += 8
                else:
                    raw, pos = _varint(view, pos)
                    items.append(_convert(kind, VARINT, raw, where))
        else:
            items.append(_convert(kind, wire, chunk, where))
    else:
        result[field.name] = _convert(field.kind, wire, chunk, where)
