"""Values of @remote functions: the sandbox-side wrapper, and the strict decoder here.

A call travels to the provider as two cloudpickle files that only the job's sandbox ever
unpickles. The return value comes back as `out/return.msgpack`: plain msgpack for None,
bool, int, float, str, bytes, list and str/int/bytes-keyed dicts, plus ext types for
tuples, ints beyond 64 bits, numpy arrays and torch tensors (dtype name from a whitelist,
shape, little-endian raw bytes; tensors come back as tensors where torch is imported).
WRAPPER is the job's entrypoint; it needs only the standard library and cloudpickle, so
it carries its own small msgpack encoder. `decode_return` reads the file with a capped,
strict unpacker and `numpy.frombuffer`: nothing from a provider is ever unpickled here.
"""

from __future__ import annotations

import builtins
import dataclasses
import math
import re
import string
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from node.errors import RemoteFunctionError as RemoteFunctionError
from node.errors import ReturnValueRejected as ReturnValueRejected

WRAPPER_NAME = "_offload_remote.py"
FUNCTION_FILE = "_offload_fn.pkl"
ARGS_FILE = "_offload_args.pkl"
RETURN_FILE = "return.msgpack"
MAX_RETURN_BYTES = 256 * 1024 * 1024
MAX_ITEMS = 4_000_000
MAX_DEPTH = 64
MAX_DIMS = 32
EXT_NDARRAY, EXT_TENSOR, EXT_TUPLE, EXT_BIGINT = 1, 2, 3, 4
MAX_BIGINT_BYTES = 64 * 1024
DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                    "uint64", "float16", "float32", "float64", "complex64", "complex128"})
TENSOR_ONLY_DTYPES = frozenset({"bfloat16"})
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.<>]{0,199}")


@dataclasses.dataclass(frozen=True, slots=True)
class Returned:
    """A decoded return file: a value, or the remote error's parts."""

    ok: bool
    value: Any = None
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""


_ERROR_CLASSES: dict[str, type[RemoteFunctionError]] = {}


def error_class(remote_type: str) -> type[RemoteFunctionError]:
    """RemoteFunctionError, mixed with the built-in exception of that name if there is one."""
    base = getattr(builtins, remote_type, None) if "." not in remote_type else None
    if (not (isinstance(base, type) and issubclass(base, Exception))
            or base in (Exception, StopIteration, StopAsyncIteration)):
        return RemoteFunctionError
    cls = _ERROR_CLASSES.get(remote_type)
    if cls is None:
        try:
            made = type(f"Remote{remote_type}", (RemoteFunctionError, base), {})
        except TypeError:  # a layout conflict (e.g. OSError's slots): no mix-in
            made = RemoteFunctionError
        cls = _ERROR_CLASSES.setdefault(remote_type, made)
    return cls


def remote_error(returned: Returned, *, job_id: str, provider: str) -> RemoteFunctionError:
    hint = ""
    if returned.error_type in ("ModuleNotFoundError", "ImportError"):
        hint = ("; providers have only the runtime's packages (torch, numpy): define what "
                "the function needs in your script, ship local modules with "
                "@remote(include=[...]) or include_imports=True, or ask for packages=[...]")
    message = (f"{returned.error_type}: {returned.error_message} (raised by the remote "
               f"function in job {job_id[:12]} on provider {provider[:16]}{hint})")
    message = " ".join(message.splitlines())[:2000]
    parts = {"remote_type": returned.error_type, "remote_message": returned.error_message,
             "remote_traceback": returned.traceback, "job_id": job_id, "provider": provider}
    try:
        err = error_class(returned.error_type)(message, **parts)
    except TypeError:  # a built-in whose constructor wants more (UnicodeDecodeError)
        err = RemoteFunctionError(message, **parts)
    if returned.traceback:
        err.add_note("remote traceback:\n" + returned.traceback.rstrip())
    return err


def decode_return(path: Path, *, max_bytes: int = MAX_RETURN_BYTES) -> Returned:
    """Read a return file strictly; ReturnValueRejected names what is wrong with it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ReturnValueRejected("the job wrote no return value (out/return.msgpack is "
                                  "missing): the function or its sandbox ended early") from None
    if size > max_bytes:
        raise ReturnValueRejected(f"the return value is {size} bytes, above the cap of "
                                  f"{max_bytes}; write large results to ./out/ as files")
    return decode_return_bytes(path.read_bytes())


def decode_return_bytes(data: bytes) -> Returned:
    """Decode a provider's return bytes; any flaw is a ReturnValueRejected, nothing else."""
    try:
        doc = _unpack(data, depth=0)
    except ReturnValueRejected:
        raise
    except Exception as exc:  # msgpack, numpy and torch raise what they like on hostile input
        raise ReturnValueRejected(f"the return value is not valid msgpack ({exc}); "
                                  "nothing of it was used") from None
    # exact types: an array's `!=` is elementwise and `1.0 == True == 1` in Python
    if (not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != 1
            or type(doc.get("ok")) is not bool):
        raise ReturnValueRejected("the return value lacks its header (v=1, ok)")
    if doc["ok"]:
        if set(doc) != {"v", "ok", "value"}:
            raise ReturnValueRejected("the return value has unknown fields")
        return Returned(ok=True, value=doc["value"])
    err = doc.get("error")
    if set(doc) != {"v", "ok", "error"} or not isinstance(err, dict) or set(err) != {
            "type", "message", "traceback"} or not all(isinstance(v, str) for v in err.values()):
        raise ReturnValueRejected("the remote error record is malformed")
    if not _TYPE_NAME.fullmatch(err["type"]):
        raise ReturnValueRejected("the remote error names an invalid exception type")
    return Returned(ok=False, error_type=err["type"], error_message=err["message"][:10_000],
                    traceback=err["traceback"][-100_000:])


def _unpack(data: bytes, *, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ReturnValueRejected(f"the return value nests deeper than {MAX_DEPTH} levels")

    def ext(code: int, payload: bytes) -> Any:
        if code == EXT_TUPLE:
            items = _unpack(payload, depth=depth + 1)
            if not isinstance(items, list):
                raise ReturnValueRejected("a tuple in the return value is not an array")
            return tuple(items)
        if code in (EXT_NDARRAY, EXT_TENSOR):
            return _array(payload, tensor=code == EXT_TENSOR)
        if code == EXT_BIGINT:
            if not 8 < len(payload) <= MAX_BIGINT_BYTES:
                raise ReturnValueRejected("a big int in the return value has a bad length")
            return int.from_bytes(payload, "big", signed=True)
        raise ReturnValueRejected(f"the return value holds an unknown ext type {code}")

    return msgpack.unpackb(
        data, raw=False, use_list=True, strict_map_key=False, ext_hook=ext,
        object_pairs_hook=_pairs, max_str_len=len(data), max_bin_len=len(data),
        max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS, max_ext_len=len(data))


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k, v in pairs:
        if type(k) not in (str, int, bytes):
            raise ReturnValueRejected(f"a dict key in the return value is a {type(k).__name__} "
                                      "(only str, int and bytes keys come back)")
        out[k] = v
    return out


def _array(payload: bytes, *, tensor: bool) -> Any:
    head = msgpack.unpackb(payload, raw=False, use_list=True, max_array_len=MAX_DIMS + 3,
                           max_map_len=0, max_ext_len=0, max_bin_len=len(payload),
                           max_str_len=32)
    if (not isinstance(head, list) or len(head) != 3 or not isinstance(head[0], str)
            or not isinstance(head[1], list) or not isinstance(head[2], bytes)):
        raise ReturnValueRejected("an array in the return value is malformed")
    name, shape, raw = head
    if name not in DTYPES and not (tensor and name in TENSOR_ONLY_DTYPES):
        raise ReturnValueRejected(f"an array in the return value has dtype {name[:32]!r}, "
                                  "which does not come back (numbers and bools only)")
    if len(shape) > MAX_DIMS or not all(type(d) is int and d >= 0 for d in shape):
        raise ReturnValueRejected("an array in the return value has an invalid shape")
    itemsize = 2 if name == "bfloat16" else np.dtype(name).itemsize
    if math.prod(shape) * itemsize != len(raw):
        raise ReturnValueRejected(f"an array in the return value claims shape {shape} of "
                                  f"{name} but carries {len(raw)} bytes")
    buf = bytearray(raw)
    if name == "bfloat16":
        torch = _torch()
        if torch is None:
            raise ReturnValueRejected("the return value holds a bfloat16 tensor; import "
                                      "torch here to receive it")
        flat = (torch.frombuffer(buf, dtype=torch.bfloat16) if buf
                else torch.empty(0, dtype=torch.bfloat16))
        return flat.reshape(shape)
    array = np.frombuffer(buf, dtype=np.dtype(name).newbyteorder("<")).reshape(shape)
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    if tensor and (torch := _torch()) is not None:
        return torch.from_numpy(array)
    return array


def _torch() -> Any:
    """torch if this program imported it: tensors come back as tensors where torch is in
    use, as numpy arrays elsewhere (importing torch just to decode would take seconds)."""
    return sys.modules.get("torch")


WRAPPER = string.Template('''\
"""offload @remote: unpickle the call here, in the sandbox; send the value back as msgpack."""
import os
import struct
import sys
import traceback

FUNCTION_FILE = $function_file
ARGS_FILE = $args_file
RETURN_FILE = $return_file
MAX_BYTES = $max_bytes
MAX_DEPTH = $max_depth
MAX_BIGINT_BYTES = $max_bigint
DTYPES = $dtypes


class Unsendable(TypeError):
    pass


def _head(out, small, fix, n, codes):
    if n < small:
        out.append(struct.pack(">B", fix | n))
    elif codes[0] is not None and n < 256:
        out.append(struct.pack(">BB", codes[0], n))
    elif n < 65536:
        out.append(struct.pack(">BH", codes[1], n))
    elif n < 2 ** 32:
        out.append(struct.pack(">BI", codes[2], n))
    else:
        raise Unsendable("a value in the return value is too long for msgpack")


def _ext(out, code, payload):
    out.append(struct.pack(">BIb", 0xC9, len(payload), code))
    out.append(payload)


def _array(out, name, shape, raw, code):
    body = []
    _pack(body, [name, [int(d) for d in shape], raw], 1)
    _ext(out, code, b"".join(body))


def _pack(out, obj, depth):
    if depth > MAX_DEPTH:
        raise Unsendable("the return value nests deeper than %d levels" % MAX_DEPTH)
    np = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    if obj is None:
        out.append(b"\\xc0")
    elif obj is True or obj is False:
        out.append(b"\\xc3" if obj else b"\\xc2")
    elif isinstance(obj, int):
        if 0 <= obj < 2 ** 64:
            out.append(struct.pack(">BQ", 0xCF, obj))
        elif -2 ** 63 <= obj < 0:
            out.append(struct.pack(">Bq", 0xD3, obj))
        else:
            size = (obj.bit_length() + 8) // 8
            if size > MAX_BIGINT_BYTES:
                raise Unsendable("an int in the return value is over %d bytes long"
                                 % MAX_BIGINT_BYTES)
            _ext(out, 4, obj.to_bytes(size, "big", signed=True))
    elif isinstance(obj, float):
        out.append(struct.pack(">Bd", 0xCB, obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        _head(out, 32, 0xA0, len(data), (0xD9, 0xDA, 0xDB))
        out.append(data)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        _head(out, 0, 0, len(data), (0xC4, 0xC5, 0xC6))
        out.append(data)
    elif isinstance(obj, tuple):
        body = []
        _pack(body, list(obj), depth + 1)
        _ext(out, 3, b"".join(body))
    elif isinstance(obj, list):
        _head(out, 16, 0x90, len(obj), (None, 0xDC, 0xDD))
        for item in obj:
            _pack(out, item, depth + 1)
    elif isinstance(obj, dict):
        _head(out, 16, 0x80, len(obj), (None, 0xDE, 0xDF))
        for key, value in obj.items():
            if type(key) not in (str, int, bytes):
                raise Unsendable("a dict key in the return value is a %s; use str, int or "
                                 "bytes keys" % type(key).__name__)
            _pack(out, key, depth + 1)
            _pack(out, value, depth + 1)
    elif np is not None and isinstance(obj, np.ndarray):
        a = obj
        if a.dtype.name not in DTYPES:
            raise Unsendable("a numpy array of dtype %s cannot come back; convert it to a "
                             "numeric dtype or write it to ./out/ as a file" % a.dtype)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        _array(out, a.dtype.name, a.shape, a.tobytes(order="C"), 1)
    elif np is not None and isinstance(obj, np.generic):
        value = obj.item()
        if isinstance(value, np.generic) or not isinstance(value, (bool, int, float)):
            raise Unsendable("a numpy %s scalar cannot come back" % obj.dtype)
        _pack(out, value, depth)
    elif torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            _array(out, "bfloat16", t.shape, t.view(torch.int16).numpy().tobytes(), 2)
            return
        try:
            a = t.numpy()
        except (TypeError, RuntimeError) as exc:
            raise Unsendable("a torch tensor of dtype %s cannot come back (%s)"
                             % (t.dtype, exc)) from None
        if a.dtype.name not in DTYPES:
            raise Unsendable("a torch tensor of dtype %s cannot come back" % t.dtype)
        _array(out, a.dtype.name, a.shape, a.tobytes(), 2)
    else:
        raise Unsendable(
            "the function returned a %s, which cannot come back; return None, bool, int, "
            "float, str, bytes, lists, tuples, dicts, numpy arrays or torch tensors, or "
            "write files to ./out/" % type(obj).__qualname__)


def dumps(value):
    out = []
    _pack(out, value, 0)
    return b"".join(out)


def _error(exc):
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else "%s.%s" % (
        kind.__module__, kind.__qualname__)
    if isinstance(exc, Unsendable):
        name = "TypeError"
    try:
        message = str(exc)
    except Exception:
        message = repr(exc)
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # the wrapper's own frame says nothing
    text = "".join(traceback.format_exception(kind, exc, tb))
    return dumps({"v": 1, "ok": False, "error": {
        "type": name[:200], "message": message[:10000], "traceback": text[-100000:]}})


def main():
    code = 0
    try:
        try:
            import cloudpickle  # noqa: F401  (the pickles below need it)
        except ImportError:
            raise RuntimeError("this provider's runtime lacks cloudpickle; ask its operator "
                               "to run `offload runtime install`") from None
        import pickle
        with open(FUNCTION_FILE, "rb") as f:
            function = pickle.load(f)
        with open(ARGS_FILE, "rb") as f:
            args, kwargs = pickle.load(f)
        body = dumps({"v": 1, "ok": True, "value": function(*args, **kwargs)})
        if len(body) > MAX_BYTES:
            raise Unsendable("the return value is %d bytes, above the cap of %d; write "
                             "large results to ./out/ as files" % (len(body), MAX_BYTES))
    except BaseException as exc:
        traceback.print_exc()
        body = _error(exc)
        code = 1
    sys.stdout.flush()
    os.makedirs("out", exist_ok=True)
    with open(".offload-return.tmp", "wb") as f:
        f.write(body)
    os.replace(".offload-return.tmp", os.path.join("out", RETURN_FILE))
    return code


if __name__ == "__main__":
    sys.exit(main())
''').substitute(function_file=repr(FUNCTION_FILE), args_file=repr(ARGS_FILE),
                 return_file=repr(RETURN_FILE), max_bytes=MAX_RETURN_BYTES,
                 max_depth=MAX_DEPTH, dtypes=repr(sorted(DTYPES)),
                 max_bigint=MAX_BIGINT_BYTES)
