"""Requirement filters: a small expression language over capacity ads (`offload offers --where`).

    cpus >= 4
    gpu.memory >= 24 and gpu.count >= 1 and price.gpu_hour <= 2.5 and tier == "A"
    not (region == "eu-west" or load > 0.5)
    region in ["eu-west", "eu-north"]

Grammar, parsed by hand (never eval, exec, compile or Python's ast):

    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" or_expr ")" | comparison
    comparison := FIELD OP value | FIELD "in" "[" value ("," value)* "]"
    OP         := == | != | < | <= | > | >=
    value      := number | "text" | 'text' | true | false

FIELDS lists the fields. Text and true/false fields take ==, != and `in` only. A field with
several values (runtime, gpu.model) matches when any value does; `!=` when none does.
Strings have no escapes. Keywords are lowercase. A bad filter raises FilterError, one line
that names the 1-based column and the token at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

from protocol import CapacityAd, Device
from protocol.limits import MICRO  # ads carry prices in micro-credits, filters speak credits
from scheduler.errors import FilterError as FilterError

MAX_LENGTH = 1000
"""Longest filter accepted, in characters."""
MAX_DEPTH = 32
"""Most levels of `not` and parentheses, so parsing never nears the recursion limit."""

Value = int | float | str | bool
Kind = Literal["number", "text", "bool"]
Check = Callable[[CapacityAd, int], bool]
Getter = Callable[[CapacityAd, int], Value]


# ---------------------------------------------------------------- the field table


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    kind: Kind
    doc: str
    values: Callable[[CapacityAd, int], tuple[Value, ...]]
    """Every value the field has in an ad (given now_ms); a comparison holds if any does."""


def _one(kind: Kind, doc: str, get: Getter) -> _Field:
    return _Field(kind, doc, lambda ad, now: (get(ad, now),))


def _cuda(ad: CapacityAd) -> list[Device]:
    return [d for d in ad.devices if d.kind == "cuda"]


def _cpu(ad: CapacityAd) -> list[Device]:
    return [d for d in ad.devices if d.kind == "cpu"]


def _most(values: Iterable[float]) -> float:
    return max(values, default=0.0)


def _hourly(micro_per_second: int) -> float:
    return micro_per_second * 3600 / MICRO


_TABLE: dict[str, _Field] = {
    "cpus": _one("number", "CPU cores offered", lambda ad, now: ad.cpus),
    "memory": _one("number", "memory offered, GB (memory_mb / 1024)",
                   lambda ad, now: ad.memory_mb / 1024),
    "load": _one("number", "current load, 0 (idle) to 1 (busy)", lambda ad, now: ad.load),
    "tier": _one("text", 'sandbox tier: "A", "B" or "none"', lambda ad, now: ad.sandbox_tier),
    "region": _one("text", 'region the provider names, e.g. "eu-west"',
                   lambda ad, now: ad.region),
    "peer_id": _one("text", "the provider's peer id", lambda ad, now: ad.peer_id),
    "runtime": _Field("text", 'a runtime offered, e.g. "python3"; matches if any does',
                      lambda ad, now: tuple(r.name for r in ad.runtimes)),
    "has_gpu": _one("bool", "true if the ad lists a CUDA device",
                    lambda ad, now: bool(_cuda(ad))),
    "gpu.count": _one("number", "CUDA GPUs in all (sum of device counts)",
                      lambda ad, now: sum(d.count for d in _cuda(ad))),
    "gpu.memory": _one("number", "memory of the largest CUDA GPU, GB (0 without GPUs)",
                       lambda ad, now: _most(d.memory_mb / 1024 for d in _cuda(ad))),
    "gpu.model": _Field("text", "a CUDA GPU model; matches if any GPU's model equals it",
                        lambda ad, now: tuple(d.model for d in _cuda(ad))),
    "gpu.tflops": _one("number", "best measured fp32 TFLOP/s of one CUDA GPU",
                       lambda ad, now: _most(d.gflops / 1000 for d in _cuda(ad))),
    "gpu.bf16_tflops": _one("number", "best measured bf16 TFLOP/s of one CUDA GPU",
                            lambda ad, now: _most(d.bf16_gflops / 1000 for d in _cuda(ad))),
    "cpu.tflops": _one("number", "measured fp32 TFLOP/s of the CPU (0 if not benchmarked)",
                       lambda ad, now: _most(d.gflops / 1000 for d in _cpu(ad))),
    "cpu.mem_gbps": _one("number", "measured CPU memory bandwidth, GB/s",
                         lambda ad, now: _most(d.mem_gbps for d in _cpu(ad))),
    "price.start": _one("number", "start fee, credits", lambda ad, now: ad.price.start / MICRO),
    "price.cpu_hour": _one("number", "credits per CPU-hour",
                           lambda ad, now: _hourly(ad.price.per_cpu_second)),
    "price.gpu_hour": _one("number", "credits per GPU-hour",
                           lambda ad, now: _hourly(ad.price.per_gpu_second)),
    "price.gb_hour": _one("number", "credits per GB of memory per hour",
                          lambda ad, now: _hourly(ad.price.per_gb_second)),
    "price.gb_transfer": _one("number", "credits per GB transferred",
                              lambda ad, now: ad.price.per_gb_transfer / MICRO),
    "price.minimum": _one("number", "minimum charge, credits",
                          lambda ad, now: ad.price.minimum / MICRO),
    "cached": _one("number", "number of cached content digests",
                   lambda ad, now: len(ad.cached)),
    "expires_in": _one("number", "seconds until the ad expires (negative once expired)",
                       lambda ad, now: (ad.expires - now) / 1000),
}

FIELDS: dict[str, str] = {name: f"{f.kind}: {f.doc}" for name, f in _TABLE.items()}
"""Field name -> one line: its type ("number", "text" or "bool") and what it means."""

_FIELD_LIST = ", ".join(_TABLE)
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}
_OP_LIST = "== != < <= > >= in"
_OP_HINTS = {"=": "==", "===": "==", "=<": "<=", "=>": ">=", "<>": "!=", "!": "not",
             "&": "and", "&&": "and", "|": "or", "||": "or"}
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
_KIND_WORD = {"number": "a number", "text": "text", "bool": "true/false"}
_KIND_HINT = {"number": "a number", "text": "a quoted string", "bool": "true or false"}


# ---------------------------------------------------------------- tokens

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]+")
_OPERATOR = re.compile(r"[=!<>~&|]+")
TokenKind = Literal["name", "number", "string", "op", "(", ")", "[", "]", ",", "end"]
_PUNCT: dict[str, TokenKind] = {"(": "(", ")": ")", "[": "[", "]": "]", ",": ","}


@dataclasses.dataclass(frozen=True, slots=True)
class _Token:
    kind: TokenKind
    text: str
    column: int
    value: Value = ""


def _show(token: str | None) -> str:
    if token is None:
        return "end of filter"
    if len(token) > 40:
        token = token[:37] + "..."
    return json.dumps(token)  # ASCII-only and escaped: the message stays on one line


def _error(source: str, column: int, token: str | None, problem: str) -> FilterError:
    err = FilterError(f"bad filter at column {column} ({_show(token)}): {problem}")
    err.expression, err.column, err.token = source, column, token
    return err


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(source):
        c, col = source[i], i + 1
        if c.isspace():
            i += 1
        elif c in _PUNCT:
            tokens.append(_Token(_PUNCT[c], c, col))
            i += 1
        elif c in "\"'":
            end = source.find(c, i + 1)
            if end < 0:
                raise _error(source, col, source[i:], f"unterminated string; close it with {c}")
            tokens.append(_Token("string", source[i:end + 1], col, source[i + 1:end]))
            i = end + 1
        elif m := _NUMBER.match(source, i):
            if tail := _NUMBER_TAIL.match(source, m.end()):
                raise _error(source, col, source[i:tail.end()],
                             "bad number; write plain digits without units "
                             "(memory and gpu.memory are in GB, prices in credits)")
            text = m.group()
            value = float(text) if any(x in text for x in ".eE") else int(text)
            if not math.isfinite(value):
                raise _error(source, col, text, "number out of range")
            tokens.append(_Token("number", text, col, value))
            i = m.end()
        elif m := _NAME.match(source, i):
            tokens.append(_Token("name", m.group(), col))
            i = m.end()
        elif m := _OPERATOR.match(source, i):
            tokens.append(_Token("op", m.group(), col))
            i = m.end()
        else:
            raise _error(source, col, c, "unexpected character")
    tokens.append(_Token("end", "", len(source) + 1))
    return tokens


# ---------------------------------------------------------------- parser


def _compare(field: _Field, op: str, value: Value) -> Check:
    get = field.values
    if op == "!=":
        return lambda ad, now: all(v != value for v in get(ad, now))
    fn = _OPS[op]
    return lambda ad, now: any(bool(fn(v, value)) for v in get(ad, now))


def _member(field: _Field, values: tuple[Value, ...]) -> Check:
    get = field.values
    return lambda ad, now: any(v == w for v in get(ad, now) for w in values)


def _all(checks: list[Check]) -> Check:
    return checks[0] if len(checks) == 1 else lambda ad, now: all(c(ad, now) for c in checks)


def _any(checks: list[Check]) -> Check:
    return checks[0] if len(checks) == 1 else lambda ad, now: any(c(ad, now) for c in checks)


def _negate(check: Check) -> Check:
    return lambda ad, now: not check(ad, now)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.pos = 0
        self.depth = 0

    def fail(self, token: _Token, problem: str) -> FilterError:
        text = None if token.kind == "end" else token.text
        return _error(self.source, token.column, text, problem)

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        if token.kind != "end":
            self.pos += 1
        return token

    def is_word(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "name" and token.text == word

    def parse(self) -> Check:
        if self.peek().kind == "end":
            raise self.fail(self.peek(), "empty filter; write a condition such as cpus >= 4")
        check = self.or_expr()
        token = self.peek()
        if token.kind == ")":
            raise self.fail(token, "unbalanced parentheses: this ) has no matching (")
        if token.kind != "end":
            raise self.unexpected(token)
        return check

    def unexpected(self, token: _Token) -> FilterError:
        if token.kind == "op":
            return self.unknown_operator(token)
        return self.fail(token, "unexpected text after a complete condition; "
                                "join conditions with and / or")

    def unknown_operator(self, token: _Token) -> FilterError:
        hint = _OP_HINTS.get(token.text)
        did = f"; did you mean {hint}?" if hint else ""
        return self.fail(token, f"unknown operator{did} (operators: {_OP_LIST})")

    def or_expr(self) -> Check:
        checks = [self.and_expr()]
        while self.is_word("or"):
            self.take()
            checks.append(self.and_expr())
        return _any(checks)

    def and_expr(self) -> Check:
        checks = [self.not_expr()]
        while self.is_word("and"):
            self.take()
            checks.append(self.not_expr())
        return _all(checks)

    def not_expr(self) -> Check:
        token = self.peek()
        if not (self.is_word("not") or token.kind == "("):
            return self.comparison()
        self.take()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(token, f"nested too deeply; use at most {MAX_DEPTH} levels of "
                                   "not and parentheses")
        if token.kind == "(":
            check = self.or_expr()
            close = self.peek()
            if close.kind == "end":
                raise self.fail(token, "unbalanced parentheses: this ( is never closed")
            if close.kind != ")":
                raise self.unexpected(close)
            self.take()
        else:
            check = _negate(self.not_expr())
        self.depth -= 1
        return check

    def comparison(self) -> Check:
        token = self.take()
        if token.kind == "op" and token.text in _OP_HINTS:
            raise self.unknown_operator(token)
        if token.kind != "name" or token.text in _KEYWORDS:
            raise self.fail(token, f"expected a field name, as in cpus >= 4 (fields: "
                                   f"{_FIELD_LIST})")
        name = token.text
        field = _TABLE.get(name)
        if field is None:
            close = difflib.get_close_matches(name.lower(), _TABLE, n=1)
            did = f"; did you mean {close[0]}?" if close else ""
            raise self.fail(token, f"unknown field{did} (fields: {_FIELD_LIST})")
        op = self.take()
        if op.kind == "name" and op.text == "in":
            return _member(field, self.value_list(name, field))
        if op.kind == "name" or (op.kind == "op" and op.text not in _OPS):
            raise self.unknown_operator(op)
        if op.kind != "op":
            raise self.fail(op, f"expected an operator after {name} (operators: {_OP_LIST})")
        if field.kind != "number" and op.text not in ("==", "!="):
            raise self.fail(op, f"type mismatch: {name} is {_KIND_WORD[field.kind]}; "
                                f"use ==, != or in, not {op.text}")
        return _compare(field, op.text, self.value(name, field, after=op.text))

    def value_list(self, name: str, field: _Field) -> tuple[Value, ...]:
        bracket = self.take()
        if bracket.kind != "[":
            raise self.fail(bracket, 'expected [ after in, as in region in ["eu-west", "eu-north"]')
        values = [self.value(name, field, after="[")]
        while True:
            token = self.take()
            if token.kind == "]":
                return tuple(values)
            if token.kind == "end":
                raise self.fail(bracket, "unbalanced brackets: this [ is never closed")
            if token.kind != ",":
                raise self.fail(token, "expected , or ] in the list")
            values.append(self.value(name, field, after=","))

    def value(self, name: str, field: _Field, *, after: str) -> Value:
        token = self.take()
        kind: Kind
        value: Value
        if token.kind == "number":
            kind, value = "number", token.value
        elif token.kind == "string":
            kind, value = "text", token.value
        elif token.kind == "name" and token.text in ("true", "false"):
            kind, value = "bool", token.text == "true"
        else:
            raise self.fail(token, f"expected a value after {after} (a number, a quoted "
                                   "string, true or false)")
        if kind != field.kind:
            raise self.fail(token, f"type mismatch: {name} is {_KIND_WORD[field.kind]}, not "
                                   f"{_KIND_WORD[kind]}; compare it with "
                                   f"{_KIND_HINT[field.kind]}")
        return value


# ---------------------------------------------------------------- API


@dataclasses.dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter; `Filter(source)` parses like `parse(source)`. Call it with an ad."""

    source: str
    _check: Check = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.source) > MAX_LENGTH:
            raise _error(self.source, MAX_LENGTH + 1, self.source[MAX_LENGTH:],
                         f"filter is longer than {MAX_LENGTH} characters; shorten it")
        object.__setattr__(self, "_check", _Parser(self.source).parse())

    def __call__(self, ad: CapacityAd, *, now_ms: int) -> bool:
        """True if `ad` meets the filter; `now_ms` is the clock for expires_in."""
        return self._check(ad, now_ms)


def parse(expression: str) -> Filter:
    """Parse a filter expression; raises FilterError pointing at the bad token."""
    return Filter(expression)
