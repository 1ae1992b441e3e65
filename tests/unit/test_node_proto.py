"""node.proto: the protobuf wire format, checked against encodings from the protobuf docs."""

from __future__ import annotations

import pytest

from node.proto import DecodeError, Field, Message

INNER = Message("Inner", Field(1, "a", "int"))
OUTER = Message(
    "Outer",
    Field(1, "a", "int"),
    Field(2, "b", "string"),
    Field(3, "c", INNER),
    Field(4, "ids", "uint", repeated=True),
    Field(5, "names", "string", repeated=True),
    Field(6, "labels", map=("string", "string")),
    Field(7, "ok", "bool"),
    Field(8, "x", "double"),
    Field(9, "raw", "bytes"),
)


def test_known_encodings() -> None:
    assert OUTER.encode({"a": 150}) == bytes.fromhex("089601")
    assert OUTER.encode({"b": "testing"}) == bytes.fromhex("120774657374696e67")
    assert OUTER.encode({"c": {"a": 150}}) == bytes.fromhex("1a03089601")
    assert OUTER.encode({"ids": [3, 270, 86942]}) == bytes.fromhex("2206038e029ea705")
    assert OUTER.encode({"a": -1}) == bytes.fromhex("08ffffffffffffffffff01")


def test_round_trip_and_defaults() -> None:
    value = {
        "a": -7,
        "b": "ü",
        "c": {"a": 1},
        "ids": [1, 2, 300],
        "names": ["x", ""],
        "labels": {"k": "v", "e": ""},
        "ok": True,
        "x": 0.25,
        "raw": b"\x00\x01",
    }
    assert OUTER.decode(OUTER.encode(value)) == value
    assert OUTER.decode(b"") == {}


def test_unpacked_repeated_and_unknown_fields_are_read() -> None:
    unpacked = bytes.fromhex("2003") + bytes.fromhex("208e02")
    unknown = bytes.fromhex("f80101") + bytes.fromhex("fa0100")  # fields 31: varint, bytes
    assert OUTER.decode(unpacked + unknown) == {"ids": [3, 270]}


@pytest.mark.parametrize(
    "data", [b"\x08", b"\x12\x05ab", b"\x0b", bytes.fromhex("12028080"), b"\x08" + b"\xff" * 11]
)
def test_bad_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        OUTER.decode(data)


def test_unknown_field_name_is_refused() -> None:
    with pytest.raises(KeyError, match="Outer has no field 'nope'"):
        OUTER.encode({"nope": 1})
