"""provider.toml / requester.toml: defaults, the shipped files, and every kind of error."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from node.config import (
    PROVIDER_LAYOUT,
    REQUESTER_LAYOUT,
    ConfigError,
    ProviderSettings,
    RequesterSettings,
    load_provider,
    load_requester,
)
from node.errors import UserError
from protocol import Price

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PEER = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
SECTIONS = "(valid sections: network, capacity, sandbox, price, cache, operations, limits)"
CAPACITY_KEYS = ("(valid keys: slots, queue, warm, max_job_seconds, quote_hold_s, "
                 "detached_keep_s, detached_max_gb)")
LISTEN_FIX = 'use e.g. "/ip4/0.0.0.0/tcp/4001" or "/ip6/::/tcp/4001"'
METRICS_FIX = 'use e.g. "127.0.0.1:9464" or "[::1]:9464", or "" to disable'
TOML_FIX = "fix the syntax there (see https://toml.io)"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def exactly(path: Path, message: str) -> str:
    return f"^{re.escape(f'{path}: {message}')}$"


def test_defaults_without_a_file() -> None:
    p = load_provider(None)
    assert p == ProviderSettings()
    assert (p.listen, p.slots, p.queue, p.warm, p.sandbox_tier, p.price) == (
        ("/ip4/127.0.0.1/tcp/0",), 2, 8, 1, "auto", Price())
    assert (p.metrics_listen, p.benchmark_interval_s, p.drain_timeout_s) == (
        "127.0.0.1:0", 86400, 60.0)
    r = load_requester(None)
    assert r == RequesterSettings()
    assert (r.max_price, r.caps, r.timeout_s, r.runtime) == (None, None, 600, "python3")


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_provider(write(tmp_path, "p.toml", "")) == ProviderSettings()
    assert load_requester(write(tmp_path, "r.toml", "")) == RequesterSettings()


PROVIDER_FIELDS: dict[str, str] = {
    "network.listen": "listen", "network.bootstrap": "bootstrap", "network.region": "region",
    "capacity.slots": "slots", "capacity.queue": "queue", "capacity.warm": "warm",
    "capacity.max_job_seconds": "max_job_seconds", "capacity.quote_hold_s": "quote_hold_s",
    "capacity.detached_keep_s": "detached_keep_s",
    "capacity.detached_max_gb": "detached_max_gb",
    "sandbox.tier": "sandbox_tier", "sandbox.unsafe_no_sandbox": "unsafe_no_sandbox",
    **{f"price.{k}": f"price.{k}" for k in PROVIDER_LAYOUT["price"]},
    "cache.dir": "cache_dir", "cache.max_gb": "cache_max_gb",
    "operations.metrics_listen": "metrics_listen",
    "operations.benchmark_interval_s": "benchmark_interval_s",
    "operations.drain_timeout_s": "drain_timeout_s",
    **{f"limits.{k}": f"limits.{k}" for k in ("streams_per_peer", "streams_per_ip",
                                              "connections_per_ip", "exempt")},
    "limits.jobs_per_peer": "jobs_per_peer",
}
REQUESTER_FIELDS: dict[str, str] = {
    "network.bootstrap": "bootstrap", "job.timeout_s": "timeout_s", "job.runtime": "runtime",
    "job.max_price": "max_price", **{f"caps.{k}": f"caps.{k}" for k in REQUESTER_LAYOUT["caps"]},
}


def attr(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def as_loaded(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize(("name", "load", "layout", "fields"), [
    ("provider.toml", load_provider, PROVIDER_LAYOUT, PROVIDER_FIELDS),
    ("requester.toml", load_requester, REQUESTER_LAYOUT, REQUESTER_FIELDS),
])
def test_the_shipped_files_set_every_field_and_load_as_written(
        name: str, load: Any, layout: dict[str, tuple[str, ...]], fields: dict[str, str]
) -> None:
    path = CONFIGS / name
    raw = tomllib.loads(path.read_text())
    written = {f"{s}.{k}": v for s, table in raw.items() for k, v in table.items()}
    assert set(written) == {f"{s}.{k}" for s, keys in layout.items() for k in keys}
    assert set(fields) == set(written)
    settings = load(path)
    for dotted, value in written.items():
        expected = round(value * 1_000_000) if dotted == "job.max_price" else as_loaded(value)
        assert attr(settings, fields[dotted]) == expected, dotted


def test_the_shipped_price_and_max_price() -> None:
    assert load_provider(CONFIGS / "provider.toml").price == Price(
        start=1000, per_cpu_second=20, per_gpu_second=500, per_gb_second=2,
        per_gb_transfer=10000, minimum=1000)
    assert load_requester(CONFIGS / "requester.toml").max_price == 5_000_000


def test_a_full_provider_file_in_other_values(tmp_path: Path) -> None:
    path = write(tmp_path, "provider.toml", f"""
[network]
listen = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"]
bootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/{PEER}"]
region = "us-east"
[capacity]
slots = 64
queue = 0
warm = 0
max_job_seconds = 604800
quote_hold_s = 1.5
[sandbox]
tier = "B"
unsafe_no_sandbox = true
[price]
per_gpu_second = 7
[cache]
dir = "/var/cache/offload"
max_gb = 0.5
[operations]
metrics_listen = "[::1]:9100"
benchmark_interval_s = 0
drain_timeout_s = 0
""")
    assert load_provider(path) == ProviderSettings(
        listen=("/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"),
        bootstrap=(f"/ip4/192.0.2.7/tcp/4001/p2p/{PEER}",), region="us-east", slots=64,
        queue=0, warm=0, max_job_seconds=604800, quote_hold_s=1.5, sandbox_tier="B",
        unsafe_no_sandbox=True, price=Price(per_gpu_second=7), cache_dir="/var/cache/offload",
        cache_max_gb=0.5, metrics_listen="[::1]:9100", benchmark_interval_s=0,
        drain_timeout_s=0.0)


@pytest.mark.parametrize(("value", "metrics"), [
    ('""', ""), ('"127.0.0.1:0"', "127.0.0.1:0"), ('"127.0.0.1:9464"', "127.0.0.1:9464"),
    ('"127.8.9.10:1"', "127.8.9.10:1"),
    ('"[::1]:65535"', "[::1]:65535"),
])
def test_loopback_metrics_addresses_are_accepted(tmp_path: Path, value: str,
                                                 metrics: str) -> None:
    path = write(tmp_path, "provider.toml", f"[operations]\nmetrics_listen = {value}\n")
    assert load_provider(path).metrics_listen == metrics


PROVIDER_ERRORS = [
    # unknown sections and keys
    ("[prices]\nstart = 1\n", f"prices: unknown section; did you mean [price]? {SECTIONS}"),
    ("[gpu]\n", f"gpu: unknown section; remove it {SECTIONS}"),
    ("slots = 2\n", "slots: key outside any section; move it under [capacity]"),
    ("[capacity]\nslot = 2\n",
     f'capacity.slot: unknown key; did you mean "slots"? {CAPACITY_KEYS}'),
    ("[capacity]\nfoo = 1\n", f"capacity.foo: unknown key; remove it {CAPACITY_KEYS}"),
    ("[network]\nslots = 2\n", "network.slots: unknown key; move it to [capacity] "
     "(valid keys: listen, bootstrap, region)"),
    ('[capacity]\n"a\\nb" = 1\n', f'capacity."a\\nb": unknown key; remove it {CAPACITY_KEYS}'),
    # wrong types
    ("network = 5\n",
     "network: expected a table, got an integer (5); write it as a [network] section"),
    ("[capacity]\nslots = true\n",
     "capacity.slots: expected a whole number, got a boolean (true); write e.g. slots = 2"),
    ('[capacity]\nslots = "2"\n',
     'capacity.slots: expected a whole number, got a string ("2"); write e.g. slots = 2'),
    ("[capacity]\nslots = 2.0\n",
     "capacity.slots: expected a whole number, got a float (2.0); write e.g. slots = 2"),
    ("[price]\nstart = false\n",
     "price.start: expected a whole number, got a boolean (false); write e.g. start = 0"),
    ("[sandbox]\nunsafe_no_sandbox = 1\n", "sandbox.unsafe_no_sandbox: expected true or false, "
     "got an integer (1); write e.g. unsafe_no_sandbox = false"),
    ("[capacity]\nquote_hold_s = false\n", "capacity.quote_hold_s: expected a number, got a "
     "boolean (false); write e.g. quote_hold_s = 30.0"),
    ("[network]\nregion = 5\n",
     'network.region: expected a string, got an integer (5); write e.g. region = ""'),
    ('[network]\nlisten = "/ip4/0.0.0.0/tcp/4001"\n', "network.listen: expected a list of "
     'strings, got a string ("/ip4/0.0.0.0/tcp/4001"); write e.g. '
     'listen = ["/ip4/0.0.0.0/tcp/4001"]'),
    ('[network]\nlisten = ["/ip4/0.0.0.0/tcp/4001", 5]\n', "network.listen[1]: expected a "
     'string, got an integer (5); write e.g. listen = ["/ip4/0.0.0.0/tcp/4001"]'),
    # out of range
    ("[capacity]\nslots = 0\n", "capacity.slots: 0 is out of range; use 1 to 64"),
    ("[capacity]\nslots = 65\n", "capacity.slots: 65 is out of range; use 1 to 64"),
    ("[capacity]\nqueue = -1\n", "capacity.queue: -1 is out of range; use 0 to 1024 jobs"),
    ("[capacity]\nwarm = 9\n", "capacity.warm: 9 is out of range; use 0 to 8"),
    ("[capacity]\nmax_job_seconds = 604801\n",
     "capacity.max_job_seconds: 604801 is out of range; use 1 to 604800 seconds"),
    ("[capacity]\nquote_hold_s = 0.5\n",
     "capacity.quote_hold_s: 0.5 is out of range; use 1 to 600 seconds"),
    ("[price]\nper_cpu_second = -1\n",
     "price.per_cpu_second: -1 is too small; use 0 or more micro-credits"),
    ("[cache]\nmax_gb = 0\n", "cache.max_gb: 0 is too small; use more than 0 GB"),
    ("[cache]\nmax_gb = inf\n", "cache.max_gb: inf is not a finite number; use more than 0 GB"),
    ("[operations]\nbenchmark_interval_s = 300\n", "operations.benchmark_interval_s: 300 is out "
     "of range; use 0 (only at start) or 600 or more seconds"),
    ("[operations]\ndrain_timeout_s = 3600.5\n",
     "operations.drain_timeout_s: 3600.5 is out of range; use 0 to 3600 seconds"),
    (f'[network]\nregion = "{"x" * 65}"\n',
     "network.region: 65 characters is too long; use at most 64"),
    ('[sandbox]\ntier = "C"\n', 'sandbox.tier: "C" is not a sandbox tier; '
     'use "auto" (A, else B), "A" (bubblewrap) or "B" (Landlock)'),
    # addresses
    ("[network]\nlisten = []\n", "network.listen: empty; list at least one address, e.g. "
     'listen = ["/ip4/0.0.0.0/tcp/4001"]'),
    ('[network]\nlisten = ["/dns4/example.com/tcp/4001"]\n',
     f'network.listen[0]: "/dns4/example.com/tcp/4001" is not an IP/TCP multiaddr; {LISTEN_FIX}'),
    ('[network]\nlisten = ["/ip4/0.0.0.0/udp/4001"]\n',
     f'network.listen[0]: "/ip4/0.0.0.0/udp/4001" is not an IP/TCP multiaddr; {LISTEN_FIX}'),
    ('[network]\nlisten = ["/ip4/0.0.0.0/tcp/4001", "/ip4/999.1.1.1/tcp/1"]\n',
     f'network.listen[1]: "/ip4/999.1.1.1/tcp/1" is not an IP/TCP multiaddr; {LISTEN_FIX}'),
    ('[network]\nlisten = ["/ip4/0.0.0.0/tcp/65536"]\n',
     f'network.listen[0]: "/ip4/0.0.0.0/tcp/65536" is not an IP/TCP multiaddr; {LISTEN_FIX}'),
    ('[network]\nlisten = ["/ip6/127.0.0.1/tcp/1"]\n',
     f'network.listen[0]: "/ip6/127.0.0.1/tcp/1" is not an IP/TCP multiaddr; {LISTEN_FIX}'),
    ('[network]\nbootstrap = ["/ip4/192.0.2.7/tcp/4001"]\n',
     'network.bootstrap[0]: "/ip4/192.0.2.7/tcp/4001" does not end in /p2p/<peer id>; '
     'use the node\'s full address, e.g. "/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..." '
     "(a provider's ready file lists its own)"),
    ('[network]\nbootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]\n',
     'network.bootstrap[0]: "/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..." does not end in '
     '/p2p/<peer id>; use the node\'s full address, e.g. '
     '"/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..." (a provider\'s ready file lists its own)'),
    *[(f'[operations]\nmetrics_listen = "{bad}"\n', f'operations.metrics_listen: "{bad}" is '
       f"not a loopback IP address and port; {METRICS_FIX}")
      for bad in ("0.0.0.0:9464", "192.168.1.5:9464", "localhost:9464", "127.0.0.1",
                  "::1:9464", "127.0.0.1:65536", "[::]:9464")],
    # not TOML
    ("[capacity]\nslots = \n", f"line 2, column 9: invalid TOML (Invalid value); {TOML_FIX}"),
    ("[capacity]\nslots = 1\nslots = 2\n",
     f"line 3, column 10: invalid TOML (Cannot overwrite a value); {TOML_FIX}"),
]


@pytest.mark.parametrize(("text", "message"), PROVIDER_ERRORS,
                         ids=[m.split(";")[0][:60] for _, m in PROVIDER_ERRORS])
def test_provider_errors_say_file_field_problem_and_fix(tmp_path: Path, text: str,
                                                        message: str) -> None:
    path = write(tmp_path, "provider.toml", text)
    with pytest.raises(ConfigError, match=exactly(path, message)) as info:
        load_provider(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UserError)


REQUESTER_ERRORS = [
    ("[cap]\n", "cap: unknown section; did you mean [caps]? (valid sections: network, job, caps)"),
    ("[job]\nmax_prize = 1\n", 'job.max_prize: unknown key; did you mean "max_price"? '
     "(valid keys: timeout_s, runtime, max_price)"),
    ("[job]\nmax_price = true\n",
     "job.max_price: expected a number, got a boolean (true); write e.g. max_price = 5.0"),
    ("[job]\nmax_price = 0\n", "job.max_price: 0 is too small; use more than 0 credits"),
    ("[job]\nmax_price = -2.5\n", "job.max_price: -2.5 is too small; use more than 0 credits"),
    ("[job]\nmax_price = 0.0000001\n",
     "job.max_price: 1e-07 is less than one micro-credit; use 0.000001 credits or more"),
    ("[job]\ntimeout_s = 0\n", "job.timeout_s: 0 is out of range; use 1 to 604800 seconds"),
    ("[job]\ntimeout_s = 60.0\n",
     "job.timeout_s: expected a whole number, got a float (60.0); write e.g. timeout_s = 600"),
    ('[job]\nruntime = ""\n',
     'job.runtime: empty; name a runtime providers offer, e.g. runtime = "python3"'),
    ("[caps]\nstart = 1\n",
     "caps.per_cpu_second: missing; add it in micro-credits, or delete [caps] for no caps"),
    ("[caps]\n", "caps.start: missing; add it in micro-credits, or delete [caps] for no caps"),
    ("[caps]\nstart = 1\nper_cpu_second = 1\nper_gpu_second = 1\nper_gb_second = 1\n"
     "per_gb_transfer = 1\nminimum = -1\n",
     "caps.minimum: -1 is too small; use 0 or more micro-credits"),
    ("[network]\nbootstrap = 5\n", "network.bootstrap: expected a list of strings, got an "
     'integer (5); write e.g. bootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]'),
]


@pytest.mark.parametrize(("text", "message"), REQUESTER_ERRORS,
                         ids=[m.split(";")[0][:60] for _, m in REQUESTER_ERRORS])
def test_requester_errors_say_file_field_problem_and_fix(tmp_path: Path, text: str,
                                                         message: str) -> None:
    path = write(tmp_path, "requester.toml", text)
    with pytest.raises(ConfigError, match=exactly(path, message)):
        load_requester(path)


@pytest.mark.parametrize(("load", "example"), [
    (load_provider, "configs/provider.toml"), (load_requester, "configs/requester.toml"),
])
def test_a_missing_file(tmp_path: Path, load: Any, example: str) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError,
                       match=exactly(path, f"no such file; check the path, or copy {example} "
                                           "there")):
        load(path)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=exactly(
            tmp_path, "cannot read it (Is a directory); check the path and its permissions")):
        load_provider(tmp_path)
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=exactly(path, "not UTF-8 text; save it as UTF-8")):
        load_requester(path)


def test_the_error_keeps_its_parts(tmp_path: Path) -> None:
    path = write(tmp_path, "provider.toml", "[capacity]\nslots = 0\n")
    with pytest.raises(ConfigError) as info:
        load_provider(path)
    e = info.value
    assert (e.path, e.field, e.problem, e.fix) == (path, "capacity.slots", "0 is out of range",
                                                   "use 1 to 64")


@pytest.mark.parametrize(("value", "micro"), [
    ("2.5", 2_500_000), ("0.57", 570_000), ("3", 3_000_000), ("0.000001", 1),
    ("1.1", 1_100_000), ("1000", 1_000_000_000),
])
def test_max_price_is_read_in_credits_and_kept_in_micro_credits(tmp_path: Path, value: str,
                                                                micro: int) -> None:
    path = write(tmp_path, "requester.toml", f"[job]\nmax_price = {value}\n")
    settings = load_requester(path)
    assert settings.max_price == micro
    assert type(settings.max_price) is int


def test_caps_are_none_without_the_section_and_a_price_with_it(tmp_path: Path) -> None:
    assert load_requester(write(tmp_path, "a.toml", "[job]\ntimeout_s = 60\n")).caps is None
    path = write(tmp_path, "b.toml", "[caps]\nstart = 1\nper_cpu_second = 2\n"
                 "per_gpu_second = 3\nper_gb_second = 4\nper_gb_transfer = 5\nminimum = 0\n")
    assert load_requester(path).caps == Price(start=1, per_cpu_second=2, per_gpu_second=3,
                                              per_gb_second=4, per_gb_transfer=5, minimum=0)


def test_a_partial_price_section_keeps_the_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "provider.toml", "[price]\nminimum = 50\n")
    assert load_provider(path).price == Price(minimum=50)
