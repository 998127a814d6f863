"""The session host: the script a session's sandbox runs (protocol.sessions.HOST_FILE).

It builds the user's object once from CLASS_FILE (a cloudpickle of `(cls, args, kwargs)`)
and serves calls over its stdin and stdout in the framing of protocol.sessions.HOST_FRAMES:
R (or F with the constructor's error), then for each C frame the method's items (I, never
more than the call's window plus the credit K frames granted: a generator that runs ahead
blocks) and its end (E). Each call runs on its own thread (the provider lets at most the
session's concurrency be in flight), frames are written under one lock. The user's prints
come back as O frames: fd 1 is kept (dup) as the frame channel, fd 2 takes its place, and
sys.stdout / sys.stderr write O frames.

Like node.api.values.WRAPPER it needs only the standard library and cloudpickle, and it
reuses WRAPPER's own msgpack encoder (`dumps`, `_error`) by embedding that source text:
values are strict msgpack records as values.py writes them (`{"v": 1, "ok": ..., ...}`).
"""

from __future__ import annotations

import string

from node.api.values import WRAPPER
from protocol.sessions import CLASS_FILE, MAX_VALUE_BYTES

_ENCODER = WRAPPER.split("\n", 1)[1].split("\ndef main():", 1)[0]
"""WRAPPER without its docstring and `main`: its constants, `dumps` and `_error`."""

_HOST = string.Template('''
CLASS_FILE = $class_file
MAX_VALUE = $max_value
MAX_FRAME = MAX_VALUE + 1024
MAX_TEXT = 65536

import io
import threading

_LOCK = threading.Lock()
_FRAMES = None
_CREDIT = {}
_CREDIT_LOCK = threading.Condition()


def _send(kind, body=b""):
    data = kind + body
    with _LOCK:
        _FRAMES.write(struct.pack(">I", len(data)) + data)
        _FRAMES.flush()


def _value(record):
    if len(record) > MAX_VALUE:
        raise Unsendable("the value is %d bytes, above the cap of %d; write large results "
                         "to ./out/ as files" % (len(record), MAX_VALUE))
    return record


def _ok(value):
    return _value(dumps({"v": 1, "ok": True, "value": value}))


class _Text(io.TextIOBase):
    """sys.stdout / sys.stderr: whole lines go out as O frames (UTF-8, capped)."""

    def __init__(self, stream):
        self._stream = struct.pack(">B", stream)
        self._held = ""
        self._lock = threading.Lock()

    def writable(self):
        return True

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        with self._lock:
            self._held += text
            cut = self._held.rfind("\\n") + 1
            if len(self._held) >= MAX_TEXT // 4:
                cut = len(self._held)
            if cut:
                self._emit(self._held[:cut])
                self._held = self._held[cut:]
        return len(text)

    def flush(self):
        with self._lock:
            self._emit(self._held)
            self._held = ""

    def _emit(self, text):
        for i in range(0, len(text), MAX_TEXT // 4):
            part = text[i:i + MAX_TEXT // 4].encode("utf-8", "replace")
            if part:
                _send(b"O", self._stream + part)


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass


def _read(f, n):
    data = b""
    while len(data) < n:
        part = f.read(n - len(data))
        if not part:
            return None
        data += part
    return data


def _frames(f):
    while True:
        head = _read(f, 4)
        if head is None:
            return
        (n,) = struct.unpack(">I", head)
        if not 1 <= n <= MAX_FRAME:
            raise ValueError("a frame of %d bytes from the provider" % n)
        body = _read(f, n)
        if body is None:
            return
        yield body[:1], body[1:]


def _take_credit(call_id):
    with _CREDIT_LOCK:
        while _CREDIT.get(call_id, 0) <= 0:
            _CREDIT_LOCK.wait()
        _CREDIT[call_id] -= 1


def _grant(call_id, n):
    with _CREDIT_LOCK:
        if call_id in _CREDIT:
            _CREDIT[call_id] += n
            _CREDIT_LOCK.notify_all()


def _call(obj, call_id, window, method, args):
    head = struct.pack(">I", call_id)
    try:
        import pickle
        import types
        a, kw = pickle.loads(args)
        result = getattr(obj, method)(*a, **kw)
        if isinstance(result, types.GeneratorType) and not window:
            result = list(result)  # called, not streamed: no credit will come
        elif isinstance(result, types.GeneratorType):
            for item in result:
                body = _ok(item)
                _take_credit(call_id)
                _flush()
                _send(b"I", head + body)
            result = None
        body = struct.pack(">B", 0) + _ok(result)
    except BaseException as exc:
        body = struct.pack(">B", 1) + _error(exc)
    with _CREDIT_LOCK:
        _CREDIT.pop(call_id, None)
    _flush()
    _send(b"E", head + body)


def _build():
    try:
        import cloudpickle  # noqa: F401  (the pickle below needs it)
    except ImportError:
        raise RuntimeError("this provider's runtime lacks cloudpickle; ask its operator "
                           "to run `offload runtime install`") from None
    import pickle
    with open(CLASS_FILE, "rb") as f:
        cls, args, kwargs = pickle.load(f)
    return cls(*args, **kwargs)


def main():
    global _FRAMES
    _FRAMES = os.fdopen(os.dup(1), "wb")
    commands = os.fdopen(os.dup(0), "rb", buffering=0)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = _Text(1)
    sys.stderr = _Text(2)
    try:
        obj = _build()
    except BaseException as exc:
        traceback.print_exc()
        _flush()
        _send(b"F", _error(exc))
        return 1
    _flush()
    _send(b"R")
    for kind, body in _frames(commands):
        if kind == b"C":
            call_id, window, n = struct.unpack(">IHH", body[:8])
            method = body[8:8 + n].decode("utf-8")
            with _CREDIT_LOCK:
                _CREDIT[call_id] = window
            threading.Thread(target=_call, args=(obj, call_id, window, method, body[8 + n:]),
                             name="call-%d" % call_id, daemon=True).start()
        elif kind == b"K":
            call_id, n = struct.unpack(">IH", body[:6])
            _grant(call_id, n)
        else:
            raise ValueError("an unknown frame kind %r from the provider" % kind)
    return 0


if __name__ == "__main__":
    code = main()
    sys.__stderr__.flush()
    os._exit(code)
''').substitute(class_file=repr(CLASS_FILE), max_value=MAX_VALUE_BYTES)

HOST = ('"""offload session host: build the object here, in the sandbox; serve its calls."""\n'
        + _ENCODER + _HOST)
"""The host script's text (what HOST_FILE holds)."""


def host_bytes() -> bytes:
    return HOST.encode()
