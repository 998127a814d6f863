"""The session host script as a plain local process, spoken to in HOST_FRAMES over pipes."""

from __future__ import annotations

import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from node.api.session_host import HOST
from node.api.values import decode_return_bytes
from protocol.sessions import CLASS_FILE, HOST_FILE

WAIT_S = 20.0
QUIET_S = 0.5


class Counter:
    def __init__(self, start: int) -> None:
        self.n = start
        print("built", start)

    def add(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def count(self, upto: int) -> Iterator[int]:
        for i in range(upto):
            self.n += 1
            yield i

    def fail(self) -> None:
        raise KeyError("nope")

    def shout(self, text: str) -> str:
        print(text)
        print("to stderr", file=sys.stderr)
        return text.upper()


class Broken:
    def __init__(self) -> None:
        raise ValueError("cannot build")


class Host:
    """The host process and a thread that queues every frame it writes."""

    def __init__(self, tmp: Path, cls: type, *args: Any, **kwargs: Any) -> None:
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            (tmp / CLASS_FILE).write_bytes(cloudpickle.dumps((cls, args, kwargs)))
        finally:
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        (tmp / HOST_FILE).write_text(HOST)
        self.proc = subprocess.Popen([sys.executable, HOST_FILE], cwd=tmp,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.frames: queue.Queue[tuple[bytes, bytes] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            head = out.read(4)
            if len(head) < 4:
                self.frames.put(None)
                return
            body = out.read(struct.unpack(">I", head)[0])
            self.frames.put((body[:1], body[1:]))

    def send(self, kind: bytes, body: bytes) -> None:
        assert self.proc.stdin is not None
        data = kind + body
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()

    def call(self, call_id: int, method: str, *args: Any, window: int = 0,
             **kwargs: Any) -> None:
        name = method.encode()
        self.send(b"C", struct.pack(">IHH", call_id, window, len(name)) + name
                  + cloudpickle.dumps((args, kwargs), protocol=pickle.DEFAULT_PROTOCOL))

    def credit(self, call_id: int, n: int) -> None:
        self.send(b"K", struct.pack(">IH", call_id, n))

    def next(self, *, skip_output: bool = True) -> tuple[bytes, bytes]:
        while True:
            frame = self.frames.get(timeout=WAIT_S)
            if frame is None:
                assert self.proc.stderr is not None
                raise AssertionError(f"the host ended: {self.proc.stderr.read()!r}")
            if frame[0] != b"O" or not skip_output:
                return frame

    def quiet(self) -> bool:
        """No frame but output within QUIET_S."""
        try:
            while True:
                frame = self.frames.get(timeout=QUIET_S)
                if frame is None or frame[0] != b"O":
                    return False
        except queue.Empty:
            return True

    def end(self, call_id: int) -> tuple[bool, Any]:
        kind, body = self.next()
        assert kind == b"E" and struct.unpack(">I", body[:4])[0] == call_id
        returned = decode_return_bytes(body[5:])
        assert returned.ok == (body[4] == 0)
        return returned.ok, returned.value if returned.ok else returned

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(WAIT_S)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[Host]:
    host = Host(tmp_path, Counter, 10)
    assert host.next() == (b"R", b"")
    yield host
    if host.proc.poll() is None:
        host.proc.kill()
        host.close()


def item(body: bytes) -> tuple[int, Any]:
    returned = decode_return_bytes(body[4:])
    assert returned.ok
    return struct.unpack(">I", body[:4])[0], returned.value


def test_the_object_is_built_once_and_keeps_its_state(counter: Host) -> None:
    counter.call(1, "add")
    assert counter.end(1) == (True, 11)
    counter.call(2, "add", k=5)
    assert counter.end(2) == (True, 16)
    assert counter.close() == 0


def test_a_generator_runs_no_further_ahead_than_window_and_credit(counter: Host) -> None:
    counter.call(1, "count", 10, window=2)
    assert [item(counter.next()[1]) for _ in range(2)] == [(1, 0), (1, 1)]
    assert counter.quiet()  # blocked: no credit left
    counter.credit(1, 1)
    kind, body = counter.next()
    assert (kind, item(body)) == (b"I", (1, 2))
    assert counter.quiet()
    counter.credit(1, 7)
    assert [item(counter.next()[1])[1] for _ in range(7)] == list(range(3, 10))
    assert counter.end(1) == (True, None)
    counter.call(2, "add", 0)
    assert counter.end(2) == (True, 20)  # every item ran: the state moved on


def test_a_generator_called_without_a_window_comes_back_whole(counter: Host) -> None:
    counter.call(1, "count", 3)
    assert counter.end(1) == (True, [0, 1, 2])


def test_an_exception_comes_back_as_an_error_value(counter: Host) -> None:
    counter.call(1, "fail")
    ok, returned = counter.end(1)
    assert not ok
    assert (returned.error_type, returned.error_message) == ("KeyError", "'nope'")
    assert "raise KeyError" in returned.traceback
    counter.call(2, "missing")
    ok, returned = counter.end(2)
    assert returned.error_type == "AttributeError"
    counter.call(3, "add")
    assert counter.end(3) == (True, 11)


def test_prints_come_back_as_output_frames(tmp_path: Path) -> None:
    host = Host(tmp_path, Counter, 1)
    assert host.next(skip_output=False) == (b"O", b"\x01built 1\n")
    assert host.next() == (b"R", b"")
    host.call(1, "shout", "hi")
    got = [host.next(skip_output=False) for _ in range(2)]
    assert sorted(got) == [(b"O", b"\x01hi\n"), (b"O", b"\x02to stderr\n")]
    assert host.end(1) == (True, "HI")  # after its output
    assert host.close() == 0


def test_a_constructor_that_raises_gives_f(tmp_path: Path) -> None:
    host = Host(tmp_path, Broken)
    kind, body = host.next()
    assert kind == b"F"
    returned = decode_return_bytes(body)
    assert (returned.ok, returned.error_type, returned.error_message) == (
        False, "ValueError", "cannot build")
    assert host.close() == 1
