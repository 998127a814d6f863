"""@remote without a network: the sandbox wrapper, the strict return decoder, the facade."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch

from node.api.remote import pickle_function, remote
from node.api.requester import Job, Requester
from node.api.values import (
    ARGS_FILE,
    FUNCTION_FILE,
    RETURN_FILE,
    WRAPPER,
    WRAPPER_NAME,
    RemoteFunctionError,
    Returned,
    ReturnValueRejected,
    decode_return,
    decode_return_bytes,
    remote_error,
)
from node.errors import UserError

RUNTIME_PYTHON = Path("/opt/offload/runtimes/python3/bin/python3")


def _wrapper() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "offload_wrapper"}
    exec(compile(WRAPPER, WRAPPER_NAME, "exec"), namespace)
    return namespace


W = _wrapper()


def roundtrip(value: Any) -> Any:
    returned = decode_return_bytes(W["dumps"]({"v": 1, "ok": True, "value": value}))
    assert returned.ok
    return returned.value


@remote
def fib(n: int) -> int:
    """Refers to itself through the RemoteFunction global: must pickle as the plain fn."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


# the wire format -----------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    None, True, False, 0, 127, -1, -33, 2**64 - 1, -2**63, 2**64, -2**63 - 1,
    pytest.param(7**500, id="7**500"), 1.5,
    -0.0, math.inf, "", "héllo",
    "x" * 70_000, b"", b"\x00\xff" * 40, [], [1, [2, [3]]], {}, {"a": 1, 2: "b", b"k": None},
    (1, "two", (3.0,)), [(1, 2), {"t": ()}], list(range(20)), {str(i): i for i in range(20)},
])
def test_plain_values_come_back_as_they_went(value: Any) -> None:
    got = roundtrip(value)
    assert got == value and type(got) is type(value)
    if isinstance(value, float) and value == 0:
        assert math.copysign(1, got) == math.copysign(1, value)


def test_the_wrapper_writes_msgpack_that_msgpack_reads() -> None:
    value = {"a": [1, -2, 3.5, "s", b"b", None, True], "n": {"m": []}}
    data = W["dumps"](value)
    assert msgpack.unpackb(data, raw=False, strict_map_key=False) == value


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(3.25),
    np.zeros((0, 5), dtype=np.int16),
    np.arange(20, dtype=np.int64)[::3],
    np.arange(6, dtype=">f8").reshape(2, 3),
    np.array([True, False]),
    np.array([1 + 2j], dtype=np.complex64),
    np.arange(8, dtype=np.uint8).reshape(2, 2, 2).T,
])
def test_numpy_arrays_come_back_with_dtype_and_shape(array: np.ndarray[Any, Any]) -> None:
    got = roundtrip(array)
    assert isinstance(got, np.ndarray)
    assert got.shape == array.shape and got.dtype == array.dtype.newbyteorder("=")
    assert np.array_equal(got, array)
    got[...] = 0  # writable, not a view of the file's bytes


def test_numpy_scalars_come_back_as_python_numbers() -> None:
    assert roundtrip([np.float32(1.5), np.int64(-3), np.bool_(True)]) == [1.5, -3, True]


def test_torch_tensors_come_back_as_tensors() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).requires_grad_()
    got = roundtrip({"w": t * 2, "i": torch.tensor([1, 2], dtype=torch.int64),
                     "h": torch.ones(3, dtype=torch.bfloat16), "b": torch.zeros(0, 2)})
    assert isinstance(got["w"], torch.Tensor) and torch.equal(got["w"], (t * 2).detach())
    assert got["i"].dtype == torch.int64 and got["i"].tolist() == [1, 2]
    assert got["h"].dtype == torch.bfloat16 and got["h"].tolist() == [1.0, 1.0, 1.0]
    assert got["b"].shape == (0, 2)


@pytest.mark.parametrize(("value", "says"), [
    (np.array([object()]), "dtype object cannot come back"),
    (np.array(["a"]), "dtype <U1 cannot come back"),
    ({1, 2}, "returned a set, which cannot come back"),
    (object(), "returned a object"),
    pytest.param(2**600_000, "int in the return value is over 65536 bytes", id="huge-int"),
    ({(1, 2): 3}, "dict key in the return value is a tuple"),
    ([[[[]]]], None),
])
def test_the_wrapper_refuses_what_cannot_come_back(value: Any, says: str | None) -> None:
    if says is None:  # the canary: nesting within the limit is fine
        assert roundtrip(value) == value
        return
    with pytest.raises(TypeError, match=says):
        W["dumps"](value)


# hostile return files ------------------------------------------------------------------
def _array_ext(name: str, shape: list[int], raw: bytes, code: int = 1) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb([name, shape, raw]))


def _doc(value: Any) -> bytes:
    data: bytes = msgpack.packb({"v": 1, "ok": True, "value": value})
    return data


def test_a_well_formed_crafted_file_is_accepted() -> None:  # the canary for the below
    got = decode_return_bytes(_doc(_array_ext("float64", [2], b"\x00" * 16)))
    assert got.ok and np.array_equal(got.value, np.zeros(2))


@pytest.mark.parametrize(("data", "says"), [
    (pickle.dumps({"v": 1, "ok": True, "value": 1}), "not valid msgpack"),
    (b"cos\nsystem\n(S'echo pwned'\ntR.", "not valid msgpack"),
    (_doc(_array_ext("object", [1], b"\x00" * 8)), "dtype 'object'"),
    (_doc(_array_ext("O", [1], b"\x00" * 8)), "dtype 'O'"),
    (_doc(_array_ext("bfloat16", [2], b"\x00" * 4)), "dtype 'bfloat16'"),
    (_doc(_array_ext("float32", [1000, 1000], b"\x00" * 8)), "claims shape"),
    (_doc(_array_ext("float32", [-1, 2], b"\x00" * 8)), "invalid shape"),
    (_doc(_array_ext("float32", [1] * 40, b"\x00" * 4)), "malformed|not valid"),
    (_doc(msgpack.ExtType(1, msgpack.packb({"dtype": "f4"}))), "max_map_len"),
    (_doc(msgpack.ExtType(1, msgpack.packb(["f4", 1]))), "array .* is malformed"),
    (_doc(msgpack.ExtType(9, b"")), "unknown ext type 9"),
    (_doc(msgpack.ExtType(4, b"\x01")), "big int .* bad length"),
    (_doc(msgpack.ExtType(4, b"\x01" * 70_000)), "big int .* bad length"),
    (_doc(msgpack.ExtType(3, msgpack.packb({"a": 1}))), "tuple .* is not an array"),
    (_doc({1.5: 2}), "dict key .* is a float"),
    (_doc(1) + b"\x00", "not valid msgpack"),
    (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),
    (b"\x91" * 100_000 + b"\xc0", "not valid msgpack|deeper"),
    (msgpack.packb({"v": 2, "ok": True, "value": 1}), "lacks its header"),
    (msgpack.packb([1, 2]), "lacks its header"),
    (msgpack.packb({"v": 1, "ok": True, "value": 1, "x": 0}), "unknown fields"),
    (msgpack.packb({"v": 1, "ok": False, "error": {"type": "E"}}), "malformed"),
    (msgpack.packb({"v": 1, "ok": False, "error": {"type": "a b", "message": "",
                                                    "traceback": ""}}), "invalid exception"),
])
def test_hostile_return_bytes_raise_a_named_error(data: bytes, says: str) -> None:
    with pytest.raises(ReturnValueRejected, match=says):
        decode_return_bytes(data)


def test_nested_tuples_past_the_depth_limit_are_refused() -> None:
    data = msgpack.packb(None)
    for _ in range(80):
        data = msgpack.packb(msgpack.ExtType(3, b"\x91" + data))
    with pytest.raises(ReturnValueRejected, match="deeper than 64"):
        decode_return_bytes(_doc(msgpack.ExtType(3, b"\x91" + data)))


def test_return_files_are_size_capped_and_must_exist(tmp_path: Path) -> None:
    path = tmp_path / RETURN_FILE
    with pytest.raises(ReturnValueRejected, match=r"out/return\.msgpack is missing"):
        decode_return(path)
    path.write_bytes(_doc("x" * 100))
    with pytest.raises(ReturnValueRejected, match="above the cap of 50"):
        decode_return(path, max_bytes=50)
    assert decode_return(path).value == "x" * 100


# remote errors -------------------------------------------------------------------------
def test_a_remote_builtin_exception_is_also_that_exception() -> None:
    err = remote_error(Returned(ok=False, error_type="KeyError", error_message="'k'",
                                traceback="Traceback ...\nKeyError: 'k'\n"),
                       job_id="ab" * 32, provider="12D3KooWprovider")
    assert isinstance(err, KeyError) and isinstance(err, RemoteFunctionError)
    assert str(err).startswith("KeyError: 'k' (raised by the remote function in job ababab")
    assert err.__notes__ == ["remote traceback:\nTraceback ...\nKeyError: 'k'"]
    other = remote_error(Returned(ok=False, error_type="mymod.Oops", error_message="no"),
                         job_id="j", provider="p")
    assert type(other) is RemoteFunctionError and other.remote_type == "mymod.Oops"
    missing = remote_error(Returned(ok=False, error_type="ModuleNotFoundError",
                                    error_message="No module named 'pandas'"),
                           job_id="j", provider="p")
    assert isinstance(missing, ImportError) and "define what the function needs" in str(missing)


# the wrapper as a job ------------------------------------------------------------------
def _run_wrapper(tmp_path: Path, fn: Any, *args: Any, python: Path | None = None,
                 **kwargs: Any) -> tuple[subprocess.CompletedProcess[str], Returned]:
    (tmp_path / WRAPPER_NAME).write_text(WRAPPER)
    (tmp_path / FUNCTION_FILE).write_bytes(pickle_function(fn))
    import cloudpickle
    (tmp_path / ARGS_FILE).write_bytes(cloudpickle.dumps((args, kwargs)))
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    proc = subprocess.run([str(python or sys.executable), "-s", WRAPPER_NAME], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    return proc, decode_return(tmp_path / "out" / RETURN_FILE)


def test_the_wrapper_runs_a_call_and_reports_an_exception(tmp_path: Path) -> None:
    def divide(a: float, b: float = 1.0) -> dict[str, Any]:
        return {"q": a / b, "arr": np.full(3, a)}

    proc, got = _run_wrapper(tmp_path, divide, 6, b=3)
    assert proc.returncode == 0, proc.stderr
    assert got.value["q"] == 2.0 and got.value["arr"].tolist() == [6.0, 6.0, 6.0]

    proc, got = _run_wrapper(tmp_path, divide, 1, b=0)
    assert proc.returncode == 1 and "ZeroDivisionError" in proc.stderr
    assert not got.ok and got.error_type == "ZeroDivisionError"
    assert "in divide" in got.traceback and got.error_message == "division by zero"

    proc, got = _run_wrapper(tmp_path, lambda: {1, 2})
    assert proc.returncode == 1 and got.error_type == "TypeError"
    assert "returned a set, which cannot come back" in got.error_message


@pytest.mark.skipif(not RUNTIME_PYTHON.exists(), reason="no job runtime installed")
def test_a_module_function_runs_where_node_is_not_installed(tmp_path: Path) -> None:
    proc, got = _run_wrapper(tmp_path, fib.fn, 10, python=RUNTIME_PYTHON)
    assert proc.returncode == 0, proc.stderr
    assert got.value == 55
    probe = subprocess.run([str(RUNTIME_PYTHON), "-c", "import node"], capture_output=True,
                           cwd=tmp_path)
    assert probe.returncode != 0  # the canary: node/ really is absent there


# the decorator and the session settings ------------------------------------------------
def test_remote_checks_its_options() -> None:
    with pytest.raises(UserError, match=r"@remote: .*unexpected keyword argument 'gpu'"):
        remote(gpu=1)  # type: ignore[call-overload]
    with pytest.raises(UserError, match="cpus and redundancy must be at least 1"):
        remote(redundancy=0)
    assert fib.local(10) == 55 and fib(7) == 13 and fib.__name__ == "fib"  # type: ignore[attr-defined]


async def test_a_blocking_call_inside_trio_is_refused() -> None:
    with pytest.raises(UserError, match=r"inside trio code would stall it; use `await"):
        fib.remote(3)


def test_settings_come_from_arguments_then_env_then_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    peer = "/ip4/127.0.0.1/tcp/{}/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
    config = tmp_path / "requester.toml"
    config.write_text(f'[network]\nbootstrap = ["{peer.format(1)}"]\n[job]\ntimeout_s = 30\n')
    for name in ("OFFLOAD_HOME", "OFFLOAD_BOOTSTRAP", "OFFLOAD_REQUESTER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OFFLOAD_REQUESTER_CONFIG", str(config))
    r = Requester()
    assert r.bootstrap == [peer.format(1)]
    assert r.request(Job("x.py")).resources.max_seconds == 30
    monkeypatch.setenv("OFFLOAD_BOOTSTRAP", peer.format(2))
    monkeypatch.setenv("OFFLOAD_HOME", str(tmp_path / "h"))
    r = Requester()
    assert r.bootstrap == [peer.format(2)] and r.home == tmp_path / "h"
    r = Requester(bootstrap=[peer.format(3)], home=tmp_path / "g", config=os.devnull)
    assert r.bootstrap == [peer.format(3)] and r.home == tmp_path / "g"
    assert r.request(Job("x.py", timeout=5, max_price=0.5)).max_price == 500_000
