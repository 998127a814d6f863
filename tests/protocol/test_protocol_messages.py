"""Message constructors: frozen keyword-only dataclasses that refuse invalid fields locally."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from protocol import (
    CapacityAd,
    Device,
    Identity,
    InputFile,
    InvalidMessage,
    JobResult,
    JobSpec,
    LocalProtocolError,
    OutputFile,
    Price,
    RemoteProtocolError,
    Resources,
    Usage,
)
from protocol.identity import b58encode

ID_RSA_STYLE = b58encode(b"\x12\x20" + bytes(32))  # a "Qm..." sha256 peer id, not Ed25519
STDOUT_CAP = 64 * 1024

# (builder, exact error message); each builder breaks one rule of an otherwise valid message
CASES: list[Any] = [
    pytest.param(lambda b: b.ad(peer_id="not-a-peer-id"),
                 "peer_id is not an Ed25519 peer id: "
                 "peer id has the wrong length for an Ed25519 id", id="peer-id-short"),
    pytest.param(lambda b: b.ad(peer_id=ID_RSA_STYLE),
                 "peer_id is not an Ed25519 peer id: "
                 "peer id is not an inline Ed25519 libp2p id", id="peer-id-rsa-style"),
    pytest.param(lambda b: b.ad(peer_id="0" + b.bob.peer_id[1:]),
                 "peer_id is not an Ed25519 peer id: invalid base58 character '0'",
                 id="peer-id-bad-char"),
    pytest.param(lambda b: b.spec(provider=b.alice.peer_id[:-1]),
                 "provider is not an Ed25519 peer id: "
                 "peer id is not an inline Ed25519 libp2p id", id="provider-truncated"),
    pytest.param(lambda b: b.result(requester="x" * 52),
                 "requester is not an Ed25519 peer id: "
                 "peer id is not an inline Ed25519 libp2p id", id="result-requester"),
    pytest.param(lambda b: b.input_file("../x"), "input name '../x' is not a plain file name",
                 id="input-dotdot"),
    pytest.param(lambda b: b.input_file("a/b"), "input name 'a/b' is not a plain file name",
                 id="input-slash"),
    pytest.param(lambda b: b.input_file(".hidden"),
                 "input name '.hidden' is not a plain file name", id="input-hidden"),
    pytest.param(lambda b: b.input_file("a..b"), "input name 'a..b' is not a plain file name",
                 id="input-inner-dotdot"),
    pytest.param(lambda b: b.input_file("/etc"), "input name '/etc' is not a plain file name",
                 id="input-absolute"),
    pytest.param(lambda b: b.input_file(""), "input name '' is not a plain file name",
                 id="input-empty"),
    pytest.param(lambda b: b.input_file("main.py\n"),
                 "input name 'main.py\\n' is not a plain file name", id="input-newline"),
    pytest.param(lambda b: b.input_file("a\\b"), "input name 'a\\\\b' is not a plain file name",
                 id="input-backslash"),
    pytest.param(lambda b: b.input_file(sha256="A" * 64),
                 "input sha256 must be 64 lowercase hex digits", id="input-sha-upper"),
    pytest.param(lambda b: b.spec(entrypoint="run.py"),
                 "entrypoint must be one of the input files", id="entrypoint-missing"),
    pytest.param(lambda b: b.spec(inputs=(b.input_file(), b.input_file())),
                 "input names must be unique", id="duplicate-inputs"),
    pytest.param(lambda b: b.spec(nonce=bytes(15)), "nonce must be at least 16 bytes",
                 id="short-nonce"),
    pytest.param(lambda b: b.spec(nonce=bytes(33)), "nonce is longer than 32",
                 id="long-nonce"),
    pytest.param(lambda b: b.spec(max_price=-1),
                 "max_price is -1, outside its range 0..1000000000000000",
                 id="negative-max-price"),
    pytest.param(lambda b: b.spec(created_at=-1),
                 "created_at is -1, outside its range 0..9007199254740991",
                 id="negative-created-at"),
    pytest.param(lambda b: b.spec(verification="redundant"),
                 "verification must be one of ('none',), not 'redundant'",
                 id="verification-unknown"),
    pytest.param(lambda b: Price(start=-1),
                 "start is -1, outside its range 0..1000000000000000", id="price-start"),
    pytest.param(lambda b: Price(per_gpu_second=-5),
                 "per_gpu_second is -5, outside its range 0..1000000000000000",
                 id="price-per-gpu"),
    pytest.param(lambda b: Price(minimum=-1),
                 "minimum is -1, outside its range 0..1000000000000000",
                 id="price-minimum"),
    pytest.param(lambda b: b.ad(load=1.01), "load must be between 0 and 1", id="load-over-1"),
    pytest.param(lambda b: b.ad(load=-0.01), "load must be between 0 and 1", id="load-negative"),
    pytest.param(lambda b: b.ad(load=float("nan")), "load must be finite", id="load-nan"),
    pytest.param(lambda b: b.ad(coords=(float("inf"),)), "coords[0] must be finite",
                 id="coords-inf"),
    pytest.param(lambda b: b.device(gflops=float("nan")), "gflops must be finite",
                 id="gflops-nan"),
    pytest.param(lambda b: Usage(wall_s=float("-inf"), cpu_s=0, gpu_s=0, peak_memory_mb=0),
                 "wall_s must be finite", id="usage-inf"),
    pytest.param(lambda b: b.device(count=0), "count is 0, outside its range 1..64",
                 id="device-count-0"),
    pytest.param(lambda b: b.device(kind="tpu"),
                 "kind must be one of ('cpu', 'cuda'), not 'tpu'", id="device-kind"),
    pytest.param(lambda b: b.ad(sandbox_tier="C"),
                 "sandbox_tier must be one of ('A', 'B', 'none'), not 'C'", id="tier"),
    pytest.param(lambda b: b.ad(addrs=("ip4/1.2.3.4",)),
                 "addr 'ip4/1.2.3.4' is not a multiaddr", id="addr-no-slash"),
    pytest.param(lambda b: b.ad(addrs=("/ip4/1.2.3.4",) * 17), "addrs has 17 items, more than 16",
                 id="too-many-addrs"),
    pytest.param(lambda b: b.ad(cached=("abc",)), "cached digest must be 64 lowercase hex digits",
                 id="cached-digest"),
    pytest.param(lambda b: b.ad(cpus="16"), "cpus must be an int", id="cpus-str"),
    pytest.param(lambda b: b.ad(seq=True), "seq must be an int", id="seq-bool"),
    pytest.param(lambda b: b.ad(expires=2**64),
                 "expires is 18446744073709551616, outside its range "
                 "0..9007199254740991",
                 id="expires-huge"),
    pytest.param(lambda b: b.ad(memory_mb=-1), "memory_mb is -1, outside its range 0..2147483647",
                 id="memory-negative"),
    pytest.param(lambda b: b.ad(region="r" * 65), "region is longer than 64", id="region-long"),
    pytest.param(lambda b: b.ad(price={"start": 1}), "price must be a Price", id="price-dict"),
    pytest.param(lambda b: b.ad(load="0.5"), "load must be a float", id="load-str"),
    pytest.param(lambda b: b.spec(args="python main.py"), "args must be a tuple", id="args-str"),
    pytest.param(lambda b: b.spec(args=(1,)), "args[0] must be str", id="args-int"),
    pytest.param(lambda b: Resources(cpus=0),
                 "cpus is 0, outside its range 1..65536",
                 id="resources-cpus"),
    pytest.param(lambda b: Resources(gpus=-1),
                 "gpus is -1, outside its range 0..1024", id="resources-gpus"),
    pytest.param(lambda b: Resources(max_seconds=7 * 24 * 3600 + 1),
                 "max_seconds is 604801, outside its range 1..604800", id="resources-week"),
    pytest.param(lambda b: b.result(stdout="x" * (STDOUT_CAP + 1)),
                 "stdout is longer than 65536", id="stdout-oversize"),
    pytest.param(lambda b: b.result(stderr="x" * (STDOUT_CAP + 1)),
                 "stderr is longer than 65536", id="stderr-oversize"),
    pytest.param(lambda b: b.result(job_id="z" * 64), "job_id must be 64 lowercase hex digits",
                 id="result-job-id"),
    pytest.param(lambda b: b.result(status="exploded"),
                 "status must be one of ('ok', 'failed', 'timeout', 'killed', 'error'), "
                 "not 'exploded'", id="result-status"),
    pytest.param(lambda b: b.result(price_charged=-1),
                 "price_charged is -1, outside its range 0..1000000000000000",
                 id="result-price"),
    pytest.param(lambda b: OutputFile(name="../x", sha256="0" * 64, size=1),
                 "output name '../x' is not a safe relative path", id="output-dotdot"),
    pytest.param(lambda b: OutputFile(name="a/../b", sha256="0" * 64, size=1),
                 "output name 'a/../b' is not a safe relative path", id="output-inner-dotdot"),
    pytest.param(lambda b: OutputFile(name="/abs", sha256="0" * 64, size=1),
                 "output name '/abs' is not a safe relative path", id="output-absolute"),
    pytest.param(lambda b: OutputFile(name="a//b", sha256="0" * 64, size=1),
                 "output name 'a//b' is not a safe relative path", id="output-empty-segment"),
    pytest.param(lambda b: b.result(outputs=(OutputFile(name="a", sha256="0" * 64, size=1),) * 2),
                 "output names must be unique", id="output-duplicate"),
    pytest.param(lambda b: Identity(bytes(31)), "an Ed25519 seed is exactly 32 bytes",
                 id="identity-seed"),
]


@pytest.mark.parametrize(("make", "message"), CASES)
def test_constructors_refuse_invalid_fields(build: Any, make: Any, message: str) -> None:
    with pytest.raises(InvalidMessage, match=f"^{re.escape(message)}$") as info:
        make(build)
    assert isinstance(info.value, LocalProtocolError)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, RemoteProtocolError)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda b: b.ad(load=1.0), id="load-1"),
        pytest.param(lambda b: b.ad(load=0.0), id="load-0"),
        pytest.param(lambda b: b.spec(nonce=bytes(16)), id="nonce-16"),
        pytest.param(lambda b: b.spec(nonce=bytes(32)), id="nonce-32"),
        pytest.param(lambda b: b.spec(max_price=0), id="max-price-0"),
        pytest.param(lambda b: b.result(stdout="x" * STDOUT_CAP), id="stdout-at-cap"),
        pytest.param(lambda b: b.input_file("_a.b-c"), id="input-name-chars"),
        pytest.param(lambda b: b.ad(addrs=("/ip4/1.2.3.4",) * 16), id="addrs-at-cap"),
        pytest.param(lambda b: Resources(max_seconds=7 * 24 * 3600), id="a-week"),
        pytest.param(lambda b: b.device(count=64), id="device-count-64"),
        pytest.param(lambda b: OutputFile(name="a/b/c.txt", sha256="0" * 64, size=0),
                     id="output-nested"),
    ],
)
def test_boundary_values_are_accepted(build: Any, make: Any) -> None:
    """Canaries for the table above: the values just inside each limit build fine."""
    make(build)


def test_int_is_widened_to_float_where_a_float_is_declared(build: Any) -> None:
    ad = build.ad(load=1, coords=(52, 13))
    assert type(ad.load) is float and ad.load == 1.0
    assert all(type(c) is float for c in ad.coords)


def test_lists_become_tuples(build: Any) -> None:
    spec = build.spec(args=["a", "b"])
    assert spec.args == ("a", "b")
    assert isinstance(spec.args, tuple)


def test_messages_are_frozen_slotted_and_keyword_only(build: Any) -> None:
    ad = build.ad()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ad.load = 0.5  # type: ignore[misc]
    assert not hasattr(ad, "__dict__")
    with pytest.raises(TypeError):
        Price(1)  # type: ignore[misc]


def test_messages_compare_and_hash_by_value(build: Any) -> None:
    assert build.spec() == build.spec()
    assert hash(build.spec()) == hash(build.spec())
    assert build.spec() != build.spec(nonce=bytes(range(1, 17)))


@pytest.mark.parametrize("cls", [CapacityAd, JobSpec, JobResult, Device, InputFile, Usage])
def test_to_wire_from_wire_round_trip(build: Any, cls: type[Any]) -> None:
    value = {
        CapacityAd: build.ad, JobSpec: build.spec, JobResult: build.result,
        Device: build.device, InputFile: build.input_file,
        Usage: lambda: Usage(wall_s=1.5, cpu_s=2.0, gpu_s=0.0, peak_memory_mb=10),
    }[cls]()
    wire = value.to_wire()
    assert all(not isinstance(v, tuple) for v in wire.values())  # wire form is lists/maps
    assert cls.from_wire(wire) == value
