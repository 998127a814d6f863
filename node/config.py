"""Provider and requester settings from TOML files, checked at load with one-line errors.

A file holds known sections (`[network]`, `[capacity]`, ...) of known keys. Anything unknown,
mistyped or out of range raises ConfigError: `<file>: <field>: <what is wrong>; <how to fix>`,
where `<field>` is dotted (`price.per_cpu_second`, `network.listen[0]`), a TOML position
(`line 3, column 7`) for syntax errors, and left out for errors about the whole file.
See configs/provider.toml and configs/requester.toml for every field, documented.

Every setting resolves the same way, in `resolve` and `resolve_list`: a flag (or API
argument) beats its OFFLOAD_* environment variable, which beats the file, which beats the
default; an empty value counts as unset. The environment is read when asked, never at import.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, overload

from node.errors import ConfigError as ConfigError
from node.errors import UserError
from node.net.limits import Limits
from protocol import Price
from protocol.limits import MICRO

SandboxChoice = Literal["auto", "A", "B"]

PRICE_KEYS = ("start", "per_cpu_second", "per_gpu_second", "per_gb_second", "per_gb_transfer",
              "minimum")
MAX_SECONDS = 7 * 24 * 3600

PROVIDER_LAYOUT: dict[str, tuple[str, ...]] = {
    "network": ("listen", "bootstrap", "region"),
    "capacity": ("slots", "queue", "warm", "max_job_seconds", "quote_hold_s",
                 "detached_keep_s", "detached_max_gb"),
    "sandbox": ("tier", "unsafe_no_sandbox"),
    "price": PRICE_KEYS,
    "cache": ("dir", "max_gb"),
    "operations": ("metrics_listen", "benchmark_interval_s", "drain_timeout_s"),
    "limits": ("streams_per_peer", "streams_per_ip", "connections_per_ip", "exempt",
               "jobs_per_peer"),
}
REQUESTER_LAYOUT: dict[str, tuple[str, ...]] = {
    "network": ("bootstrap",),
    "job": ("timeout_s", "runtime", "max_price"),
    "caps": PRICE_KEYS,
}

_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,128}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
_LISTEN_EXAMPLE = '["/ip4/0.0.0.0/tcp/4001"]'


def env_list(name: str, *, env: Mapping[str, str] | None = None) -> list[str]:
    """A list variable such as OFFLOAD_BOOTSTRAP: values split on commas and whitespace."""
    raw = (os.environ if env is None else env).get(name, "")
    return [v for v in raw.replace(",", " ").split() if v]


@overload
def resolve(flag: str | os.PathLike[str] | None, env_name: str,
            file: str | None, default: str, *,
            env: Mapping[str, str] | None = None) -> str: ...
@overload
def resolve(flag: str | os.PathLike[str] | None, env_name: str,
            file: str | None = None, default: None = None, *,
            env: Mapping[str, str] | None = None) -> str | None: ...
def resolve(flag: str | os.PathLike[str] | None, env_name: str,
            file: str | None = None, default: str | None = None, *,
            env: Mapping[str, str] | None = None) -> str | None:
    """flag > $env_name > file > default, for one text setting (a path is returned as text)."""
    if flag is not None and os.fspath(flag):
        return os.fspath(flag)
    value = (os.environ if env is None else env).get(env_name)
    return value or file or default


def resolve_list(flag: Sequence[str] | None, env_name: str, file: Sequence[str] = (),
                 default: Sequence[str] = (), *,
                 env: Mapping[str, str] | None = None) -> list[str]:
    """flag > $env_name (split like `env_list`) > file > default, for one list setting."""
    return list(flag or env_list(env_name, env=env) or file or default)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderSettings:
    """What `offload provide --config FILE` reads; the defaults are a loopback test node."""

    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    region: str = ""
    slots: int = 2
    queue: int = 8
    warm: int = 1
    max_job_seconds: int = 3600
    sandbox_tier: SandboxChoice = "auto"
    unsafe_no_sandbox: bool = False
    price: Price = dataclasses.field(default_factory=Price)
    quote_hold_s: float = 30.0
    cache_dir: str = ""
    cache_max_gb: float = 10.0
    metrics_listen: str = "127.0.0.1:0"   # port 0: a free port, shown by `offload status`
    benchmark_interval_s: int = 86400
    drain_timeout_s: float = 60.0
    limits: Limits = dataclasses.field(default_factory=Limits)
    jobs_per_peer: int = 0
    """Jobs one requester may hold here at once (running or queued); 0: slots + queue/4."""
    detached_keep_s: int = 86400
    detached_max_gb: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RequesterSettings:
    """What a requester reads: where to join, job defaults and price limits (micro-credits)."""

    bootstrap: tuple[str, ...] = ()
    max_price: int | None = None
    caps: Price | None = None
    timeout_s: int = 600
    runtime: str = "python3"


def load_provider(path: Path | None) -> ProviderSettings:
    """Settings from a provider.toml; None gives the defaults."""
    d = ProviderSettings()
    if path is None:
        return d
    r = _Reader(path, PROVIDER_LAYOUT, "configs/provider.toml")
    return ProviderSettings(
        listen=r.listen(d.listen),
        bootstrap=r.bootstrap("network", d.bootstrap),
        region=r.text("network", "region", d.region, max_len=64),
        slots=r.integer("capacity", "slots", d.slots, 1, 64),
        queue=r.integer("capacity", "queue", d.queue, 0, 1024, unit="jobs"),
        warm=r.integer("capacity", "warm", d.warm, 0, 8),
        max_job_seconds=r.integer("capacity", "max_job_seconds", d.max_job_seconds, 1,
                                  MAX_SECONDS, unit="seconds"),
        quote_hold_s=r.number("capacity", "quote_hold_s", d.quote_hold_s, 1, 600,
                              unit="seconds"),
        detached_keep_s=r.integer("capacity", "detached_keep_s", d.detached_keep_s, 0,
                                  30 * 24 * 3600, unit="seconds"),
        detached_max_gb=r.number("capacity", "detached_max_gb", d.detached_max_gb, 0,
                                 unit="GB"),
        sandbox_tier=r.tier(d.sandbox_tier),
        unsafe_no_sandbox=r.flag("sandbox", "unsafe_no_sandbox", d.unsafe_no_sandbox),
        price=r.price("price", d.price),
        cache_dir=r.text("cache", "dir", d.cache_dir, max_len=4096),
        cache_max_gb=r.number("cache", "max_gb", d.cache_max_gb, 0, above=True, unit="GB"),
        metrics_listen=r.metrics_listen(d.metrics_listen),
        benchmark_interval_s=r.benchmark_interval(d.benchmark_interval_s),
        drain_timeout_s=r.number("operations", "drain_timeout_s", d.drain_timeout_s, 0, 3600,
                                 unit="seconds"),
        limits=r.limits(d.limits),
        jobs_per_peer=r.integer("limits", "jobs_per_peer", d.jobs_per_peer, 0, 1024,
                                unit="jobs"),
    )


def load_requester(path: Path | None) -> RequesterSettings:
    """Settings from a requester.toml; None gives the defaults. `max_price` is read in credits."""
    d = RequesterSettings()
    if path is None:
        return d
    r = _Reader(path, REQUESTER_LAYOUT, "configs/requester.toml")
    return RequesterSettings(
        bootstrap=r.bootstrap("network", d.bootstrap),
        timeout_s=r.integer("job", "timeout_s", d.timeout_s, 1, MAX_SECONDS, unit="seconds"),
        runtime=r.runtime(d.runtime),
        max_price=r.max_price(),
        caps=r.price("caps", None) if "caps" in r.sections else None,
    )


def _read(path: Path, example: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file",
                          f"check the path, or copy {example} there") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read it ({exc.strerror})",
                          "check the path and its permissions") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        m = re.fullmatch(r"(.*) \(at (.*)\)", str(exc))
        reason, where = (m.group(1), m.group(2)) if m else (str(exc), "")
        raise ConfigError(path, where, f"invalid TOML ({reason})",
                          "fix the syntax there (see https://toml.io)") from None


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _toml(value: Any) -> str:
    """A scalar as TOML would write it, shortened for a message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:76] + '..."'
    return str(value)


def _kind(value: Any) -> str:
    """The TOML type of a value, with its value where it is short."""
    kinds = [(bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table")]
    name = next((n for t, n in kinds if isinstance(value, t)), "a date or time")
    return f"{name} ({_toml(value)})" if isinstance(value, bool | int | float | str) else name


def _valid(names: tuple[str, ...]) -> str:
    return ", ".join(names)


class _Reader:
    """One parsed file whose sections and keys were checked against a layout."""

    def __init__(self, path: Path, layout: dict[str, tuple[str, ...]], example: str) -> None:
        self.path = path
        self.sections: dict[str, dict[str, Any]] = {}
        owner = {key: sec for sec, keys in layout.items() for key in keys}
        sections = tuple(layout)
        for name, value in _read(path, example).items():
            if name not in layout:
                if name in owner and not isinstance(value, dict):
                    raise self.error(_key(name), "key outside any section",
                                     f"move it under [{owner[name]}]")
                close = difflib.get_close_matches(name, sections, n=1)
                hint = f"did you mean [{close[0]}]?" if close else "remove it"
                raise self.error(_key(name), "unknown section",
                                 f"{hint} (valid sections: {_valid(sections)})")
            if not isinstance(value, dict):
                raise self.error(_key(name), f"expected a table, got {_kind(value)}",
                                 f"write it as a [{name}] section")
            for key in value:
                if key not in layout[name]:
                    raise self.unknown_key(name, key, layout[name], owner)
            self.sections[name] = value

    def error(self, field: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(self.path, field, problem, fix)

    def unknown_key(self, section: str, key: str, valid: tuple[str, ...],
                    owner: dict[str, str]) -> ConfigError:
        close = difflib.get_close_matches(key, valid, n=1)
        if key in owner:
            hint = f"move it to [{owner[key]}]"
        elif close:
            hint = f'did you mean "{close[0]}"?'
        else:
            hint = "remove it"
        return self.error(f"{section}.{_key(key)}", "unknown key",
                          f"{hint} (valid keys: {_valid(valid)})")

    def get(self, section: str, key: str) -> Any:
        return self.sections.get(section, {}).get(key)

    def wrong_type(self, section: str, key: str, expected: str, value: Any,
                   example: str, index: int | None = None) -> ConfigError:
        field = f"{section}.{key}" + ("" if index is None else f"[{index}]")
        return self.error(field, f"expected {expected}, got {_kind(value)}",
                          f"write e.g. {key} = {example}")

    def integer(self, section: str, key: str, default: int, lo: int, hi: int | None = None,
                *, unit: str = "") -> int:
        value = self.get(section, key)
        if value is None:
            return default
        if type(value) is not int:
            raise self.wrong_type(section, key, "a whole number", value, str(default))
        self.check_range(section, key, value, lo, hi, unit=unit)
        return value

    def number(self, section: str, key: str, default: float, lo: float, hi: float | None = None,
               *, above: bool = False, unit: str = "") -> float:
        value = self.get(section, key)
        if value is None:
            return default
        if type(value) not in (int, float):
            raise self.wrong_type(section, key, "a number", value, str(default))
        self.check_range(section, key, value, lo, hi, above=above, unit=unit)
        return float(value)

    def check_range(self, section: str, key: str, value: float, lo: float, hi: float | None,
                    *, above: bool = False, unit: str = "") -> None:
        suffix = f" {unit}" if unit else ""
        bounds = (f"more than {_toml(lo)}" if above else
                  f"{_toml(lo)} or more" if hi is None else f"{_toml(lo)} to {_toml(hi)}")
        if not math.isfinite(value):
            problem = f"{_toml(value)} is not a finite number"
        elif value < lo or (above and value == lo):
            problem = f"{_toml(value)} is too small" if hi is None else \
                f"{_toml(value)} is out of range"
        elif hi is not None and value > hi:
            problem = f"{_toml(value)} is out of range"
        else:
            return
        raise self.error(f"{section}.{key}", problem, f"use {bounds}{suffix}")

    def flag(self, section: str, key: str, default: bool) -> bool:
        value = self.get(section, key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.wrong_type(section, key, "true or false", value, _toml(default))
        return value

    def text(self, section: str, key: str, default: str, *, max_len: int) -> str:
        value = self.get(section, key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.wrong_type(section, key, "a string", value, _toml(default))
        if len(value) > max_len:
            raise self.error(f"{section}.{key}", f"{len(value)} characters is too long",
                             f"use at most {max_len}")
        return value

    def limits(self, d: Limits) -> Limits:
        exempt = self.strings("limits", "exempt", '["127.0.0.0/8", "::1/128"]')
        try:
            return Limits(
                streams_per_peer=self.integer("limits", "streams_per_peer", d.streams_per_peer,
                                              1, 100_000, unit="streams"),
                streams_per_ip=self.integer("limits", "streams_per_ip", d.streams_per_ip,
                                            1, 100_000, unit="streams"),
                connections_per_ip=self.integer("limits", "connections_per_ip",
                                                d.connections_per_ip, 1, 100_000,
                                                unit="connections"),
                exempt=d.exempt if exempt is None else exempt)
        except UserError as exc:
            raise ConfigError(self.path, "limits", str(exc), "see configs/provider.toml"
                              ) from None

    def strings(self, section: str, key: str, example: str) -> tuple[str, ...] | None:
        value = self.get(section, key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.wrong_type(section, key, "a list of strings", value, example)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.wrong_type(section, key, "a string", item, example, index=i)
        return tuple(value)

    def listen(self, default: tuple[str, ...]) -> tuple[str, ...]:
        addrs = self.strings("network", "listen", _LISTEN_EXAMPLE)
        if addrs is None:
            return default
        if not addrs:
            raise self.error("network.listen", "empty",
                             f"list at least one address, e.g. listen = {_LISTEN_EXAMPLE}")
        if len(addrs) > 16:
            raise self.error("network.listen", f"{len(addrs)} addresses is too many",
                             "list at most 16")
        for i, addr in enumerate(addrs):
            if not _is_tcp_ip_multiaddr(addr):
                raise self.error(f"network.listen[{i}]",
                                 f"{_toml(addr)} is not an IP/TCP multiaddr",
                                 'use e.g. "/ip4/0.0.0.0/tcp/4001" or "/ip6/::/tcp/4001"')
        return addrs

    def bootstrap(self, section: str, default: tuple[str, ...]) -> tuple[str, ...]:
        example = '["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]'
        addrs = self.strings(section, "bootstrap", example)
        if addrs is None:
            return default
        for i, addr in enumerate(addrs):
            head, sep, peer = addr.rpartition("/p2p/")
            if not (sep and head.startswith("/") and _BASE58.fullmatch(peer)):
                raise self.error(f"{section}.bootstrap[{i}]",
                                 f"{_toml(addr)} does not end in /p2p/<peer id>",
                                 "use the node's full address, e.g. "
                                 '"/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..." '
                                 "(a provider's ready file lists its own)")
        return addrs

    def tier(self, default: SandboxChoice) -> SandboxChoice:
        value = self.text("sandbox", "tier", default, max_len=64)
        if value not in ("auto", "A", "B"):
            raise self.error("sandbox.tier", f"{_toml(value)} is not a sandbox tier",
                             'use "auto" (A, else B), "A" (bubblewrap) or "B" (Landlock)')
        return cast(SandboxChoice, value)

    def price(self, section: str, default: Price | None) -> Price:
        values: dict[str, int] = {}
        for key in PRICE_KEYS:
            if default is None and self.get(section, key) is None:
                raise self.error(f"{section}.{key}", "missing",
                                 f"add it in micro-credits, or delete [{section}] for no caps")
            fallback = 0 if default is None else getattr(default, key)
            values[key] = self.integer(section, key, fallback, 0, unit="micro-credits")
        return Price(**values)

    def metrics_listen(self, default: str) -> str:
        value = self.text("operations", "metrics_listen", default, max_len=64)
        if value and not _is_loopback_host_port(value):
            raise self.error("operations.metrics_listen",
                             f"{_toml(value)} is not a loopback IP address and port",
                             'use e.g. "127.0.0.1:9464" or "[::1]:9464", or "" to disable')
        return value

    def benchmark_interval(self, default: int) -> int:
        value = self.integer("operations", "benchmark_interval_s", default, 0)
        if 0 < value < 600:
            raise self.error("operations.benchmark_interval_s", f"{value} is out of range",
                             "use 0 (only at start) or 600 or more seconds")
        return value

    def runtime(self, default: str) -> str:
        value = self.text("job", "runtime", default, max_len=64)
        if not value:
            raise self.error("job.runtime", "empty",
                             f"name a runtime providers offer, e.g. runtime = {_toml(default)}")
        return value

    def max_price(self) -> int | None:
        value = self.get("job", "max_price")
        if value is None:
            return None
        credits = self.number("job", "max_price", 5.0, 0, above=True, unit="credits")
        micro = round(credits * MICRO)
        if micro < 1:
            raise self.error("job.max_price", f"{_toml(value)} is less than one micro-credit",
                             "use 0.000001 credits or more")
        return micro


def _port(text: str) -> int | None:
    return int(text) if _PORT.fullmatch(text) and int(text) <= 65535 else None


def _is_tcp_ip_multiaddr(addr: str) -> bool:
    parts = addr.split("/")
    if len(parts) != 5 or parts[0] or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        return False
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return False
    return ip.version == int(parts[1][2]) and _port(parts[4]) is not None


def _is_loopback_host_port(value: str) -> bool:
    m = re.fullmatch(r"\[([0-9a-fA-F:]+)\]:([0-9]+)|([0-9.]+):([0-9]+)", value)
    if m is None or not (_port(m.group(2) or m.group(4)) or (m.group(2) or m.group(4)) == "0"):
        return False
    try:
        ip = ipaddress.ip_address(m.group(1) or m.group(3))
    except ValueError:
        return False
    return ip.is_loopback and (ip.version == 6) == bool(m.group(1))
