"""The content-addressed input cache: layout, LRU with pins, resumable partials, restarts."""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import NodeError
from node.provider.cache import STALE_PARTIAL_S, CacheError, InputCache

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ticking(start: float = 1000.0) -> Callable[[], float]:
    """A clock that advances one second per reading."""
    ticks = itertools.count()
    return lambda: start + next(ticks)


def put(cache: InputCache, src: Path, data: bytes) -> str:
    """Add `data` through put_file from a fresh source file; returns its digest."""
    digest = sha(data)
    source = src / f"{digest}.{len(list(src.iterdir()))}"
    source.write_bytes(data)
    cache.put_file(source, digest)
    return digest


def objects(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").rglob("*") if p.is_file())


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    return tmp_path / "src"


# -- put / has / path --------------------------------------------------------------------------

def test_put_has_path_and_layout(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=1000)
    data = b"hello cache"
    digest = sha(data)
    assert not cache.has(digest) and cache.path(digest) is None
    put(cache, src, data)
    assert cache.has(digest) and cache.size() == len(data)
    path = cache.path(digest)
    assert path == tmp_path / "c" / "objects" / digest[:2] / digest[2:]
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert list((tmp_path / "c" / "partial").iterdir()) == []
    assert issubclass(CacheError, NodeError)


def test_put_file_same_digest_twice_counts_once(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=1000)
    put(cache, src, b"x" * 10)
    put(cache, src, b"x" * 10)
    assert cache.size() == 10 and len(objects(tmp_path / "c")) == 1


@pytest.mark.parametrize("link_fails", [False, True])
def test_put_file_links_on_the_same_filesystem_else_copies(
        tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch, link_fails: bool) -> None:
    if link_fails:
        def no_link(*args: object, **kwargs: object) -> None:
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(os, "link", no_link)
    cache = InputCache(tmp_path / "c", max_bytes=1000)
    source = src / "in.bin"
    source.write_bytes(b"data" * 10)
    path = cache.put_file(source, sha(b"data" * 10))
    assert path.read_bytes() == b"data" * 10
    assert path.samefile(source) is not link_fails
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_put_file_rejects_wrong_content(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=1000)
    source = src / "in.bin"
    source.write_bytes(b"not what you asked for")
    digest = sha(b"something else")
    with pytest.raises(CacheError, match=rf"^{source} does not match sha256 {digest}; "
                                         r"it was not cached$"):
        cache.put_file(source, digest)
    assert not cache.has(digest) and cache.size() == 0
    assert objects(tmp_path / "c") == []
    assert list((tmp_path / "c" / "partial").iterdir()) == []


@pytest.mark.parametrize(("make", "error"), [
    (lambda p: None, r"^cannot read .*/missing: No such file or directory$"),
    (lambda p: p.mkdir(), r"^.*/missing is not a regular file; only files can be cached$"),
])
def test_put_file_needs_a_readable_regular_file(
        tmp_path: Path, make: Callable[[Path], None], error: str) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=1000)
    make(tmp_path / "missing")
    with pytest.raises(CacheError, match=error):
        cache.put_file(tmp_path / "missing", "a" * 64)


# -- LRU, pins, summary ------------------------------------------------------------------------

@pytest.mark.parametrize(("touched", "pinned", "survivors"), [
    ((), (), "bcd"),            # a is the least recently used
    (("a",), (), "acd"),        # path(a) makes b the oldest
    (("a", "b"), (), "abd"),
    (("c", "a", "b"), (), "abd"),
    ((), ("a",), "acd"),        # pinned a is skipped; b goes
    ((), ("a", "b"), "abd"),
    ((), ("a", "b", "c"), "abcd"),  # all pinned: d is admitted above max_bytes
])
def test_lru_eviction_order_and_pins(tmp_path: Path, src: Path, touched: tuple[str, ...],
                                     pinned: tuple[str, ...], survivors: str) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=300, clock=ticking())
    blobs = {name: name.encode() * 100 for name in "abcd"}
    digests = {name: put(cache, src, blobs[name]) for name in "abc"}
    for name in touched:
        assert cache.path(digests[name]) is not None
    pins = [(name, cache.pin(digests[name])) for name in pinned]
    for name, pin in pins:
        assert pin.__enter__().read_bytes() == blobs[name]
    digests["d"] = put(cache, src, blobs["d"])
    assert {n for n, d in digests.items() if cache.has(d)} == set(survivors)
    assert cache.size() == 100 * len(survivors)
    for _, pin in pins:
        pin.__exit__(None, None, None)
    assert cache.size() <= 300  # releasing the pins evicts what they held above the bound


def test_pinned_object_survives_evict_to_and_is_evicted_after(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=1000, clock=ticking())
    a, b, c = (put(cache, src, ch * 100) for ch in (b"a", b"b", b"c"))
    with cache.pin(a) as path:
        assert cache.evict_to(0) == 200
        assert path.read_bytes() == b"a" * 100
        assert [cache.has(d) for d in (a, b, c)] == [True, False, False]
        assert cache.size() == 100
    assert cache.evict_to(0) == 100 and cache.size() == 0 and objects(tmp_path / "c") == []


def test_nested_pins_hold_until_the_last_is_released(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=1000)
    a = put(cache, src, b"a" * 10)
    with cache.pin(a), cache.pin(a):
        pass
    with cache.pin(a):
        with cache.pin(a):
            assert cache.evict_to(0) == 0
        assert cache.evict_to(0) == 0
    assert cache.evict_to(0) == 10


@pytest.mark.parametrize(("limit", "expected"), [
    (64, "cabd"), (2, "ca"), (1, "c"), (0, ""), (-1, ""),
])
def test_summary_is_most_recently_used_first(tmp_path: Path, src: Path, limit: int,
                                             expected: str) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=1000, clock=ticking())
    digests = {ch: put(cache, src, ch.encode() * 3) for ch in "abcd"}
    cache.path(digests["b"])
    cache.path(digests["a"])
    with cache.pin(digests["c"]):
        pass
    assert cache.summary(limit) == tuple(digests[ch] for ch in expected)
    assert cache.summary() == cache.summary(64)  # reading the summary touches nothing


def test_pin_of_a_missing_object_is_refused(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=1000)
    with pytest.raises(CacheError, match=rf"^{'b' * 64} is not cached; fetch it before "
                                         r"pinning it$"), cache.pin("b" * 64):
        pass


# -- partial files -----------------------------------------------------------------------------

def write_chunks(partial: object, data: bytes, start: int, stop: int, chunk: int = MiB) -> None:
    from node.provider.cache import PartialFile

    assert isinstance(partial, PartialFile)
    for offset in range(start, stop, chunk):
        partial.write(offset, data[offset:min(offset + chunk, stop)])


def test_partial_resume_after_abort_keeps_the_prefix(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 12345)
    digest, half = sha(data), (2 * MiB + 12345) // 2
    cache = InputCache(tmp_path / "c", max_bytes=10 * MiB)
    partial = cache.begin(digest, len(data))
    assert partial.offset == 0
    write_chunks(partial, data, 0, half)
    partial.abort(keep=True)
    assert (tmp_path / "c" / "partial" / digest).stat().st_size == half
    assert not cache.has(digest)

    cache = InputCache(tmp_path / "c", max_bytes=10 * MiB)  # a restart in between, too
    with cache.begin(digest, len(data)) as partial:
        assert partial.offset == half
        write_chunks(partial, data, half, len(data))
        path = partial.commit()
    assert path.read_bytes() == data and cache.has(digest) and cache.size() == len(data)
    assert list((tmp_path / "c" / "partial").iterdir()) == []


def test_abort_without_keep_discards_and_context_exit_keeps(tmp_path: Path) -> None:
    data = b"0123456789"
    cache = InputCache(tmp_path / "c", max_bytes=100)
    partial = cache.begin(sha(data), 10)
    partial.write(0, data[:4])
    partial.abort(keep=False)
    partial.abort()  # idempotent
    with cache.begin(sha(data), 10) as partial:
        assert partial.offset == 0
        partial.write(0, data[:6])
    assert cache.begin(sha(data), 10).offset == 6


def test_commit_of_wrong_data_discards_the_partial(tmp_path: Path) -> None:
    good, bad = b"good data!", b"evil data!"
    digest = sha(good)
    cache = InputCache(tmp_path / "c", max_bytes=100)
    partial = cache.begin(digest, len(good))
    partial.write(0, bad)
    with pytest.raises(CacheError, match=rf"^{digest} does not match the data received \(sha256 "
                                         rf"{sha(bad)}, 10 bytes\); the partial was discarded, "
                                         r"fetch it again$"):
        partial.commit()
    assert not cache.has(digest) and cache.size() == 0
    assert objects(tmp_path / "c") == []
    assert list((tmp_path / "c" / "partial").iterdir()) == []
    assert cache.begin(digest, len(good)).offset == 0


def test_a_partial_longer_than_declared_starts_over(tmp_path: Path) -> None:
    (tmp_path / "c" / "partial").mkdir(parents=True)
    digest = sha(b"abc")
    (tmp_path / "c" / "partial" / digest).write_bytes(b"abcdef")
    partial = InputCache(tmp_path / "c", max_bytes=100).begin(digest, 3)
    assert partial.offset == 0
    partial.write(0, b"abc")
    assert partial.commit().read_bytes() == b"abc"


def test_a_torn_prefix_fails_at_commit(tmp_path: Path) -> None:
    data = b"a" * 100
    (tmp_path / "c" / "partial").mkdir(parents=True)
    (tmp_path / "c" / "partial" / sha(data)).write_bytes(b"a" * 40 + b"\0" * 10)
    cache = InputCache(tmp_path / "c", max_bytes=1000)
    partial = cache.begin(sha(data), 100)
    assert partial.offset == 50
    partial.write(50, data[50:])
    with pytest.raises(CacheError, match=r"the partial was discarded, fetch it again$"):
        partial.commit()
    assert cache.begin(sha(data), 100).offset == 0


@pytest.mark.parametrize(("offset", "data", "error"), [
    (0, b"x", r"^{d} at offset 0, but 4 bytes are held; resume at offset 4$"),
    (3, b"x", r"^{d} at offset 3, but 4 bytes are held; resume at offset 4$"),
    (9, b"x", r"^{d} at offset 9, but 4 bytes are held; resume at offset 4$"),
    (4, b"x" * 7, r"^{d} is longer than its declared 10 bytes; discard it with "
                  r"abort\(keep=False\)$"),
])
def test_write_must_continue_at_the_offset_held(tmp_path: Path, offset: int, data: bytes,
                                                error: str) -> None:
    digest = sha(b"0123456789")
    cache = InputCache(tmp_path / "c", max_bytes=100)
    partial = cache.begin(digest, 10)
    partial.write(0, b"0123")
    error = error.replace("^{d} at", f"^write to {digest} at").replace("{d}", digest)
    with pytest.raises(CacheError, match=error):
        partial.write(offset, data)
    partial.write(4, b"456789")  # the partial is unharmed
    assert partial.commit().read_bytes() == b"0123456789"


def test_commit_of_an_incomplete_partial_keeps_it_open(tmp_path: Path) -> None:
    digest = sha(b"0123456789")
    partial = InputCache(tmp_path / "c", max_bytes=100).begin(digest, 10)
    partial.write(0, b"01234")
    with pytest.raises(CacheError, match=rf"^{digest} is incomplete \(5 of 10 bytes\); "
                                         r"write the rest, or abort\(\)$"):
        partial.commit()
    partial.write(5, b"56789")
    partial.commit()
    with pytest.raises(CacheError, match=rf"^the partial file for {digest} is already committed "
                                         r"or aborted; call begin\(\) again$"):
        partial.write(10, b"")


@pytest.mark.parametrize(("held", "error"), [
    (True, r"^{d} is already cached; use path\(\) or pin\(\) instead of begin\(\)$"),
    (False, r"^{d} is already being written by another PartialFile; commit or abort it first$"),
])
def test_begin_refuses_held_or_busy_digests(tmp_path: Path, src: Path, held: bool,
                                            error: str) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=100)
    digest = sha(b"data")
    if held:
        put(cache, src, b"data")
    else:
        cache.begin(digest, 4)
    with pytest.raises(CacheError, match=error.replace("{d}", digest)):
        cache.begin(digest, 4)


def test_commit_after_a_concurrent_put_returns_the_held_object(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=100)
    partial = cache.begin(sha(b"data"), 4)
    partial.write(0, b"data")
    put(cache, src, b"data")
    assert partial.commit() == cache.path(sha(b"data"))
    assert cache.size() == 4 and list((tmp_path / "c" / "partial").iterdir()) == []


def test_commit_evicts_to_fit(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=100, clock=ticking())
    a, b = put(cache, src, b"a" * 40), put(cache, src, b"b" * 40)
    partial = cache.begin(sha(b"c" * 50), 50)
    partial.write(0, b"c" * 50)
    partial.commit()
    assert (cache.has(a), cache.has(b), cache.size()) == (False, True, 90)


# -- refusals ----------------------------------------------------------------------------------

BAD_DIGESTS = [
    "../etc/passwd",
    "../" + "a" * 61,
    "a" * 62 + "/x",
    "",
    "a" * 63,
    "a" * 65,
    "A" * 64,
    "g" * 64,
    "a" * 64 + "\n",
    "a" * 63 + "\0",
    "\u0661" * 64,  # Arabic-Indic digit one: a \d would take it
    64,
]
CALLS: dict[str, Callable[[InputCache, Path, object], object]] = {
    "has": lambda c, s, d: c.has(d),  # type: ignore[arg-type]
    "path": lambda c, s, d: c.path(d),  # type: ignore[arg-type]
    "pin": lambda c, s, d: c.pin(d),  # type: ignore[arg-type]
    "begin": lambda c, s, d: c.begin(d, 1),  # type: ignore[arg-type]
    "put_file": lambda c, s, d: c.put_file(s, d),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("digest", BAD_DIGESTS, ids=repr)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_bad_digests_are_refused(tmp_path: Path, src: Path, digest: object, call: str) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=100)
    (src / "in").write_bytes(b"x")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(CacheError, match=r"^not a sha256 digest: .*; expected 64 lowercase hex "
                                         r"characters$"):
        CALLS[call](cache, src / "in", digest)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("call", sorted(CALLS))
def test_good_digests_pass_the_same_check(tmp_path: Path, src: Path, call: str) -> None:
    """Canary for the refusals above: a well-formed digest gets past the digest check."""
    cache = InputCache(tmp_path / "c", max_bytes=100)
    (src / "in").write_bytes(b"x")
    try:
        CALLS[call](cache, src / "in", "0123456789abcdef" * 4)
    except CacheError as exc:
        assert "not a sha256 digest" not in str(exc)


def test_objects_larger_than_the_cache_are_refused(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=10)
    data = b"x" * 11
    error = rf"^{sha(data)} is 11 bytes, larger than the cache \(10 bytes\); raise max_bytes " \
            r"to accept it$"
    with pytest.raises(CacheError, match=error):
        cache.begin(sha(data), 11)
    with pytest.raises(CacheError, match=error):
        put(cache, src, data)
    assert cache.begin(sha(b"x" * 10), 10).offset == 0  # exactly max_bytes is fine
    assert cache.size() == 0 and objects(tmp_path / "c") == []
    with pytest.raises(CacheError, match=r"^max_bytes must be zero or more, got -1$"):
        InputCache(tmp_path / "d", max_bytes=-1)


# -- restarts ----------------------------------------------------------------------------------

def test_a_restart_sees_objects_sizes_and_lru_order(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=1000, clock=ticking())
    digests = {ch: put(cache, src, ch.encode() * (10 + i)) for i, ch in enumerate("abcd")}
    cache.path(digests["a"])
    order = cache.summary()
    (tmp_path / "c" / "objects" / "zz").mkdir()  # strays are ignored
    (tmp_path / "c" / "objects" / digests["a"][:2] / "junk").write_bytes(b"junk")

    again = InputCache(tmp_path / "c", max_bytes=1000, clock=ticking(5000.0))
    assert again.size() == cache.size() == 10 + 11 + 12 + 13
    assert again.summary() == order == tuple(digests[ch] for ch in "adcb")
    assert all(again.has(d) for d in digests.values())
    assert again.path(digests["b"]).read_bytes() == b"b" * 11  # type: ignore[union-attr]

    smaller = InputCache(tmp_path / "c", max_bytes=30, clock=ticking(9000.0))
    assert smaller.size() == 10 + 11 and smaller.summary() == (digests["b"], digests["a"])


def test_stale_partials_are_removed_at_start(tmp_path: Path) -> None:
    now = 2_000_000_000.0
    partial_dir = tmp_path / "c" / "partial"
    partial_dir.mkdir(parents=True)
    ages = {"old": STALE_PARTIAL_S + 1, "older.1.2.put": 10 * STALE_PARTIAL_S,
            "fresh": STALE_PARTIAL_S - 60, "new": 0.0}
    for name, age in ages.items():
        (partial_dir / name).write_bytes(b"x")
        os.utime(partial_dir / name, (now - age, now - age))
    InputCache(tmp_path / "c", max_bytes=100, clock=lambda: now)
    assert sorted(p.name for p in partial_dir.iterdir()) == ["fresh", "new"]


# -- threads and random operations -------------------------------------------------------------

def test_concurrent_puts_and_downloads_keep_the_books(tmp_path: Path, src: Path) -> None:
    cache = InputCache(tmp_path / "c", max_bytes=2000)
    blobs = [bytes([i]) * (100 + i) for i in range(30)]
    sources = []
    for i, blob in enumerate(blobs):
        sources.append(src / str(i))
        sources[-1].write_bytes(blob)

    def work(k: int) -> None:
        for i in range(k, len(blobs), 3):
            if i % 2:
                cache.put_file(sources[i], sha(blobs[i]))
            else:
                try:
                    partial = cache.begin(sha(blobs[i]), len(blobs[i]))
                except CacheError:
                    continue
                partial.write(0, blobs[i])
                partial.commit()

    threads = [threading.Thread(target=work, args=(k % 3,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.size() <= 2000
    assert cache.size() == sum(p.stat().st_size for p in objects(tmp_path / "c"))


BLOBS = [bytes([i]) * n for i, n in enumerate((0, 1, 50, 120, 200, 300, 399, 400, 401))]
MAX = 400
OPS = st.lists(st.tuples(st.sampled_from(["put", "download", "path", "pin", "unpin", "evict"]),
                         st.integers(0, len(BLOBS) - 1)), max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_random_operations_keep_the_bound_and_the_bytes(ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "src").mkdir()
        sources = []
        for i, blob in enumerate(BLOBS):
            sources.append(root / "src" / str(i))
            sources[-1].write_bytes(blob)
        cache = InputCache(root / "c", max_bytes=MAX, clock=ticking())
        pins: list[tuple[str, AbstractContextManager[Path]]] = []
        for op, i in ops:
            blob, digest = BLOBS[i], sha(BLOBS[i])
            held = cache.has(digest)
            if op in ("put", "download") and len(blob) > MAX:
                with pytest.raises(CacheError, match="larger than the cache"):
                    if op == "put":
                        cache.put_file(sources[i], digest)
                    else:
                        cache.begin(digest, len(blob))
            elif op == "put":
                assert cache.put_file(sources[i], digest).read_bytes() == blob
            elif op == "download" and held:
                with pytest.raises(CacheError, match="is already cached"):
                    cache.begin(digest, len(blob))
            elif op == "download":
                partial = cache.begin(digest, len(blob))
                for offset in range(0, len(blob), 64):
                    partial.write(offset, blob[offset:offset + 64])
                assert partial.commit().read_bytes() == blob
            elif op == "path":
                path = cache.path(digest)
                assert (path is not None) == held
            elif op == "pin" and held:
                pin = cache.pin(digest)
                assert pin.__enter__().read_bytes() == blob
                pins.append((digest, pin))
            elif op == "pin":
                with pytest.raises(CacheError, match="is not cached"), cache.pin(digest):
                    pass
            elif op == "unpin" and pins:
                pins.pop(i % len(pins))[1].__exit__(None, None, None)
            elif op == "evict":
                cache.evict_to(len(blob))
            check_invariants(root / "c", cache, {d for d, _ in pins})
        while pins:
            pins.pop()[1].__exit__(None, None, None)
        assert cache.size() <= MAX
        check_invariants(root / "c", cache, set())


def check_invariants(root: Path, cache: InputCache, pinned: set[str]) -> None:
    sizes = {sha(b): len(b) for b in BLOBS}
    assert cache.size() <= MAX + sum(sizes[d] for d in pinned)
    assert cache.size() == sum(p.stat().st_size for p in objects(root))
    assert all(cache.has(d) for d in pinned)
    for digest in sizes:
        if cache.has(digest):
            path = root / "objects" / digest[:2] / digest[2:]
            assert sha(path.read_bytes()) == digest
    assert len(objects(root)) == sum(cache.has(d) for d in sizes)
    assert list((root / "partial").iterdir()) == []
