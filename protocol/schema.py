"""Frozen message dataclasses that check their own fields, and strict dict <-> message mapping."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from protocol.errors import (
    FieldTypeError,
    InvalidMessage,
    MalformedMessage,
    MissingField,
    OutOfRange,
    UnknownField,
    ValueOutOfRange,
)
from protocol.limits import INT64_MAX, INT64_MIN

DEFAULT_MAX_LEN = 4096
DEFAULT_MAX_ITEMS = 256

M = TypeVar("M", bound="Message")
Meta = Mapping[str, Any]


def field(*, max_len: int = DEFAULT_MAX_LEN, ge: float | None = None,
          le: float | None = None, default: Any = dataclasses.MISSING) -> Any:
    """A message field; `max_len` caps str/bytes length and tuple/dict item counts;
    `ge`/`le` bound an int or float (each one, inside a tuple or dict). An int field
    without them is bounded to INT64_MIN..INT64_MAX, what SQLite stores."""
    meta: dict[str, Any] = {"max_len": max_len}
    if ge is not None:
        meta["ge"] = ge
    if le is not None:
        meta["le"] = le
    return dataclasses.field(default=default, metadata=meta)


def int_range(meta: Meta) -> tuple[int, int]:
    """The bounds an int field declares, never wider than the signed 64-bit range."""
    return (max(INT64_MIN, int(meta.get("ge", INT64_MIN))),
            min(INT64_MAX, int(meta.get("le", INT64_MAX))))


class Message:
    """Base of every message: fields are type-checked and `validate()`d when built."""

    __slots__ = ()
    _hints_cache: ClassVar[dict[type, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            checked = _check(_hints(type(self))[f.name], value, f.name, f.metadata)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        self.validate()

    def validate(self) -> None:
        """Per-type rules beyond types; raise InvalidMessage."""

    def to_wire(self) -> dict[str, Any]:
        return {f.name: _to_wire(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_wire(cls: type[M], value: Any) -> M:
        """Build from decoded msgpack; every failure is a RemoteProtocolError."""
        return typing.cast(M, _from_wire(cls, value, cls.__name__))


def _hints(cls: type) -> dict[str, Any]:
    hints = Message._hints_cache.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        Message._hints_cache[cls] = hints
    return hints


def _to_wire(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_wire()
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _check(tp: Any, value: Any, path: str, meta: Meta) -> Any:
    """Type-check a constructor argument; ints become floats where a float is declared."""
    origin = get_origin(tp)
    max_len = int(meta.get("max_len", DEFAULT_MAX_LEN))
    if _is_union(tp):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, path, meta)
    if origin is Literal:
        if value not in get_args(tp):
            raise InvalidMessage(f"{path} must be one of {get_args(tp)}, not {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise InvalidMessage(f"{path} must be a tuple")
        if len(value) > max_len:
            raise InvalidMessage(f"{path} has {len(value)} items, more than {max_len}")
        (item_tp, _) = get_args(tp)
        items = _item_meta(meta)
        return tuple(_check(item_tp, v, f"{path}[{i}]", items)
                     for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidMessage(f"{path} must be a dict")
        if len(value) > max_len:
            raise InvalidMessage(f"{path} has {len(value)} items, more than {max_len}")
        (_, val_tp) = get_args(tp)
        for k in value:
            if not isinstance(k, str) or len(k) > DEFAULT_MAX_LEN:
                raise InvalidMessage(f"{path} keys must be short strings")
        items = _item_meta(meta)
        return {k: _check(val_tp, v, f"{path}.{k}", items) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Message):
        if not isinstance(value, tp):
            raise InvalidMessage(f"{path} must be a {tp.__name__}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidMessage(f"{path} must be a bool")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidMessage(f"{path} must be an int")
        lo, hi = int_range(meta)
        if not lo <= value <= hi:
            raise ValueOutOfRange(f"{path} is {value}, outside its range {lo}..{hi}")
        return value
    if tp is float:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, float):
            raise InvalidMessage(f"{path} must be a float")
        if not math.isfinite(value):
            raise InvalidMessage(f"{path} must be finite")
        lo_f, hi_f = meta.get("ge", -math.inf), meta.get("le", math.inf)
        if not lo_f <= value <= hi_f:
            raise ValueOutOfRange(f"{path} is {value}, outside its range {lo_f}..{hi_f}")
        return value
    if tp in (str, bytes):
        if not isinstance(value, tp):
            raise InvalidMessage(f"{path} must be {tp.__name__}")
        if len(value) > max_len:
            raise InvalidMessage(f"{path} is longer than {max_len}")
        return value
    raise TypeError(f"unsupported field type {tp!r} at {path}")  # pragma: no cover


def _item_meta(meta: Meta) -> Meta:
    """What a tuple's or dict's items inherit from their field: the range, not the length."""
    return {k: v for k, v in meta.items() if k in ("ge", "le")}


def _from_wire(tp: Any, value: Any, path: str) -> Any:
    """Map decoded msgpack onto `tp`; only the wire's own types are accepted, except that a
    float field takes an int (stored, and re-encoded, as a float)."""
    origin = get_origin(tp)
    if _is_union(tp):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _from_wire(inner[0], value, path)
    if isinstance(tp, type) and issubclass(tp, Message):
        if not isinstance(value, dict):
            raise FieldTypeError(f"{path} must be a map")
        names = {f.name for f in dataclasses.fields(tp)}  # type: ignore[arg-type]
        unknown = sorted(str(k) for k in value if k not in names)
        if unknown:
            raise UnknownField(f"{path} has unknown field {unknown[0]!r}")
        missing = sorted(n for n in names if n not in value)
        if missing:
            raise MissingField(f"{path} lacks field {missing[0]!r}")
        hints = _hints(tp)
        kwargs = {n: _from_wire(hints[n], value[n], f"{path}.{n}") for n in names}
        try:
            return tp(**kwargs)
        except ValueOutOfRange as exc:
            raise OutOfRange(f"{path}: {exc}") from exc
        except InvalidMessage as exc:
            raise MalformedMessage(str(exc)) from exc
    if origin is tuple:
        if not isinstance(value, list):
            raise FieldTypeError(f"{path} must be an array")
        (item_tp, _) = get_args(tp)
        return [_from_wire(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise FieldTypeError(f"{path} must be a map")
        (_, val_tp) = get_args(tp)
        return {k: _from_wire(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if origin is Literal:
        return value  # checked by the constructor
    if tp is float:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # a JavaScript peer cannot tell 5 from 5.0
        if not isinstance(value, float):
            raise FieldTypeError(f"{path} must be a float")
        return value
    if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise FieldTypeError(f"{path} must be an int")
    if tp is bool and not isinstance(value, bool):
        raise FieldTypeError(f"{path} must be a bool")
    if tp in (str, bytes) and not isinstance(value, tp):
        raise FieldTypeError(f"{path} must be {tp.__name__}")
    return value


@typing.dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(field,))
def message(cls: type[M]) -> type[M]:
    """Declare a message type: a frozen, slotted, keyword-only dataclass."""
    return dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
