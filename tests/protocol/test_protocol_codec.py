"""The canonical msgpack codec: one encoding per value, strict and size-capped decoding."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    DecodeError,
    FrameTooLarge,
    InvalidMessage,
    NonCanonical,
    RemoteProtocolError,
)
from protocol.codec import MAX_DEPTH, pack, unpack

BIG = 1 << 20


def nested_list(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# values the codec must carry unchanged (msgpack's own types, tuples come back as lists)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def test_key_insertion_order_does_not_change_bytes() -> None:
    one = {"b": 1, "a": {"y": [1, 2], "x": b"\x00"}, "c": None}
    two = {"c": None, "a": {"x": b"\x00", "y": [1, 2]}, "b": 1}
    assert list(one) != list(two)  # canary: the two really differ in insertion order
    assert pack(one) == pack(two)


def test_keys_sort_by_utf8_bytes_str_before_bytes() -> None:
    assert pack({"b": 1, "a": 2}) == b"\x82\xa1a\x02\xa1b\x01"
    # "é" (0xc3 0xa9) sorts after "z" by UTF-8 bytes; str keys come before bytes keys
    assert list(unpack(pack({b"a": 0, "é": 1, "z": 2}), max_size=BIG)) == ["z", "é", b"a"]


def test_bytes_use_bin_type_and_tuples_become_arrays() -> None:
    assert pack(b"ab") == b"\xc4\x02ab"
    assert pack("ab") == b"\xa2ab"
    assert pack((1, 2)) == pack([1, 2]) == b"\x92\x01\x02"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**63), max_size=8),
       st.randoms())
def test_any_key_permutation_packs_identically(d: dict[str, int], rnd: Any) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert pack(dict(items)) == pack(d)


@settings(max_examples=200, deadline=None)
@given(values)
def test_pack_unpack_round_trip(value: Any) -> None:
    data = pack(value)
    assert unpack(data, max_size=BIG) == value
    assert pack(unpack(data, max_size=BIG)) == data


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param(msgpack.packb({"b": 1, "a": 2}), "keys out of order", id="key-order"),
        pytest.param(b"\x82\xa1a\x01\xa1a\x02", "duplicate key", id="duplicate-key"),
        pytest.param(b"\xcc\x05", "uint8 for a fixint", id="wide-int"),
        pytest.param(b"\xd1\x00\x01", "int16 for a fixint", id="wide-negative-int"),
        pytest.param(b"\xca" + struct.pack(">f", 1.5), "float32", id="float32"),
        pytest.param(b"\xd9\x01a", "str8 for a fixstr", id="wide-str"),
        pytest.param(b"\xc5\x00\x01a", "bin16 for a short bin", id="wide-bin"),
        pytest.param(b"\xdc\x00\x01\x01", "array16 for a fixarray", id="wide-array"),
        pytest.param(b"\xde\x00\x01\xa1a\x01", "map16 for a fixmap", id="wide-map"),
    ],
)
def test_non_canonical_encodings_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(NonCanonical, match=r"^bytes are not the canonical encoding of"):
        unpack(data, max_size=BIG)


def test_canonical_forms_of_the_same_values_are_accepted() -> None:
    """Canary for the table above: the canonical spelling of each value decodes."""
    for value in ({"a": 2, "b": 1}, {"a": 2}, 5, -1, 1.5, "a", b"a", [1], {"a": 1}):
        assert unpack(pack(value), max_size=BIG) == value


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b"", r"^not a valid msgpack document", id="empty"),
        pytest.param(b"\x92\x01", r"^not a valid msgpack document", id="truncated"),
        pytest.param(b"\x01\x02", r"^not a valid msgpack document", id="trailing-data"),
        pytest.param(b"\xc1", r"^not a valid msgpack document", id="reserved-byte"),
        pytest.param(b"\xa1\xff", r"^not a valid msgpack document", id="bad-utf8"),
        pytest.param(b"\x81\x01\x02", r"^not a valid msgpack document", id="int-map-key"),
        pytest.param(b"\x81\xc0\x02", r"^not a valid msgpack document", id="nil-map-key"),
        pytest.param(b"\xdd\xff\xff\xff\xff", r"^not a valid msgpack document",
                     id="huge-array-claim"),
        pytest.param(msgpack.packb(nested_list(MAX_DEPTH + 1)),
                     r"value nests deeper than 32 levels$", id="too-deep"),
        pytest.param(b"\x91" * 5000 + b"\x00", r"^not a valid msgpack document",
                     id="stack-overflow-deep"),
    ],
)
def test_malformed_bytes_raise_decode_error(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        unpack(data, max_size=BIG)
    assert not isinstance(info.value, NonCanonical)


def test_nesting_at_the_depth_limit_decodes() -> None:
    value = nested_list(MAX_DEPTH)
    assert unpack(pack(value), max_size=BIG) == value


def test_max_size_is_enforced_before_decoding() -> None:
    data = pack({"blob": b"x" * 100})
    assert unpack(data, max_size=len(data)) == {"blob": b"x" * 100}
    cap = len(data) - 1
    with pytest.raises(FrameTooLarge, match=rf"^{len(data)} bytes exceed the cap of {cap}$"):
        unpack(data, max_size=len(data) - 1)
    # the cap is checked before parsing: even garbage of the wrong size is "too large"
    with pytest.raises(FrameTooLarge, match=r"^11 bytes exceed the cap of 10$"):
        unpack(b"\xc1" * 11, max_size=10)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param(object(), r"^value cannot be encoded: ", id="object"),
        pytest.param({1: "x"}, r"map keys must be str or bytes, not int$", id="int-key"),
        pytest.param({"a": {(1,): 2}}, r"map keys must be str or bytes, not tuple$",
                     id="nested-tuple-key"),
        pytest.param(2**64, r"^value cannot be encoded: ", id="int-too-big"),
        pytest.param(nested_list(MAX_DEPTH + 1), r"value nests deeper than 32 levels$",
                     id="too-deep"),
    ],
)
def test_pack_refuses_unencodable_values_as_local_errors(value: Any, match: str) -> None:
    with pytest.raises(InvalidMessage, match=match) as info:
        pack(value)
    assert not isinstance(info.value, RemoteProtocolError)


def test_nan_packs_and_round_trips() -> None:
    # NaN is a valid msgpack float; messages refuse it at construction (see messages tests)
    assert math.isnan(unpack(pack(float("nan")), max_size=BIG))
