"""The one canonical msgpack codec: sorted map keys, bin type for bytes, strict decoding."""

from __future__ import annotations

from typing import Any

import msgpack

from protocol.errors import DecodeError, FrameTooLarge, InvalidMessage, NonCanonical

MAX_DEPTH = 32


def _canonical(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise InvalidMessage("value nests deeper than 32 levels")
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _key_order(kv[0]))
        return {k: _canonical(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, depth + 1) for v in value]
    return value


def _key_order(key: object) -> tuple[int, bytes]:
    if isinstance(key, str):
        return (0, key.encode("utf-8"))
    if isinstance(key, bytes):
        return (1, key)
    raise InvalidMessage(f"map keys must be str or bytes, not {type(key).__name__}")


def pack(value: Any) -> bytes:
    """Encode `value` canonically: the same value always gives the same bytes."""
    canonical = _canonical(value)
    try:
        out: bytes = msgpack.packb(canonical, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(f"value cannot be encoded: {exc}") from exc
    return out


def unpack(data: bytes, *, max_size: int) -> Any:
    """Decode canonical msgpack bytes; anything else raises a RemoteProtocolError."""
    if len(data) > max_size:
        raise FrameTooLarge(f"{len(data)} bytes exceed the cap of {max_size}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError) as exc:
        raise DecodeError(f"not a valid msgpack document: {exc}") from exc
    except Exception as exc:  # msgpack raises bare UnpackException subclasses too
        raise DecodeError(f"not a valid msgpack document: {exc!r}") from exc
    try:
        again = pack(value)
    except InvalidMessage as exc:
        raise DecodeError(str(exc)) from exc
    if again != data:
        raise NonCanonical("bytes are not the canonical encoding of their value")
    return value
