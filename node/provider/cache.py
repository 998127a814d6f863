"""A content-addressed on-disk cache of job inputs, bounded in bytes, evicted least recently used.

Layout under `root` (files 0644, directories 0755, so job users can read objects):

    objects/<2 hex>/<62 hex>        verified objects, named by their sha256
    partial/<sha256>                an in-progress download; its prefix is kept for a resume
    partial/<sha256>.<pid>.<n>.put  a put_file() in progress

There is no index file. Recency lives in memory (digest -> (size, last_used), nothing else
per object) and in each object's mtime, which the cache sets to `clock()` on every use, so a
new InputCache rebuilds the LRU order from mtimes. Objects are not re-hashed at start: they
only ever appear under objects/ by a rename after verification.

Rules the code keeps:
- Crash safety: data is written under partial/, fsynced, then renamed into objects/ (and the
  directory fsynced), so a half-written object never appears under objects/.
- Resume: hashlib state cannot be saved across processes, so begin() re-hashes an existing
  partial prefix from disk. A prefix is only checked against its digest at commit(); a torn
  tail left by a crash makes commit() fail and discard the partial (fetch it again).
- Bound: size() <= max_bytes except for pinned data. Admitting an object evicts unpinned
  objects, oldest first, until size() + incoming <= max_bytes; if pinned objects hold the
  space the object is still admitted (a job is waiting for it), so size() <= max_bytes +
  pinned bytes, and the excess is evicted as soon as the pins are released. Bytes under
  partial/ are not counted; stale ones (older than 24 h) are removed at start.
- put_file() hard-links when it can: the object then shares the source's inode (its mode
  becomes 0644 and its mtime tracks use), so never modify a source in place after adding it.
- Thread-safe; one process per root. OSError from the disk itself (full, unreadable) passes
  through unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType

from node.errors import CacheError as CacheError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
STALE_PARTIAL_S = 24 * 3600.0
FILE_MODE = 0o644
DIR_MODE = 0o755
_DIGEST = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")


def check_digest(digest: object) -> str:
    """`digest` if it is 64 lowercase hex characters, else CacheError (never a path)."""
    if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
        shown = repr(digest)[:80]
        raise CacheError(f"not a sha256 digest: {shown}; expected 64 lowercase hex characters")
    return digest


class InputCache:
    """Verified input files by sha256 under `root`, at most `max_bytes` of them (see module)."""

    def __init__(self, root: Path, *, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        if max_bytes < 0:
            raise CacheError(f"max_bytes must be zero or more, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._clock = clock
        self._objects = self.root / "objects"
        self._partial = self.root / "partial"
        self._lock = threading.Lock()
        self._index: dict[str, tuple[int, float]] = {}  # digest -> (size, last_used); LRU first
        self._bytes = 0
        self._pins: dict[str, int] = {}
        self._writing: set[str] = set()
        self._tmp_names = itertools.count()
        self.root.mkdir(parents=True, exist_ok=True)
        _mkdir(self._objects)
        _mkdir(self._partial)
        self._sweep_partials()
        self._load()
        if self._bytes > max_bytes:
            self.evict_to(max_bytes)

    # -- queries ---------------------------------------------------------------------------

    def has(self, digest: str) -> bool:
        """Whether the object is held (from memory; does not touch the LRU order)."""
        check_digest(digest)
        with self._lock:
            return digest in self._index

    def path(self, digest: str) -> Path | None:
        """The object's path, marking it most recently used; None if not held.

        Without a pin() the file may be evicted at any time after this returns."""
        check_digest(digest)
        with self._lock:
            return self._touch(digest)

    def summary(self, limit: int = 64) -> tuple[str, ...]:
        """Up to `limit` held digests, most recently used first (for capacity ads)."""
        with self._lock:
            return tuple(itertools.islice(reversed(self._index), max(limit, 0)))

    def size(self) -> int:
        """Bytes held under objects/."""
        with self._lock:
            return self._bytes

    # -- adding ----------------------------------------------------------------------------

    def begin(self, digest: str, size: int) -> PartialFile:
        """Start or resume a download of `size` bytes; write from the returned `.offset`."""
        check_digest(digest)
        self._check_size(digest, size)
        with self._lock:
            if digest in self._index:
                raise CacheError(f"{digest} is already cached; use path() or pin() "
                                 "instead of begin()")
            if digest in self._writing:
                raise CacheError(f"{digest} is already being written by another PartialFile; "
                                 "commit or abort it first")
            self._writing.add(digest)
        try:
            return PartialFile(self, digest, size, self._partial / digest)
        except BaseException:
            self._release(digest)
            raise

    def put_file(self, source: Path, digest: str) -> Path:
        """Add an existing file whose sha256 must be `digest`; hard-linked if possible, else
        copied. A digest already held returns its object without reading `source`."""
        check_digest(digest)
        source = Path(source)
        try:
            st = source.stat()
        except OSError as exc:
            raise CacheError(f"cannot read {source}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise CacheError(f"{source} is not a regular file; only files can be cached")
        self._check_size(digest, st.st_size)
        with self._lock:
            held = self._touch(digest)
        if held is not None:
            return held
        tmp = self._partial / f"{digest}.{os.getpid()}.{next(self._tmp_names)}.put"
        try:
            got, size = self._link_or_copy(source, tmp, digest)
            if got != digest:
                raise CacheError(f"{source} does not match sha256 {digest}; it was not cached")
            return self._install(tmp, digest, size)
        finally:
            _unlink(tmp)

    # -- pins and eviction -----------------------------------------------------------------

    def pin(self, digest: str) -> AbstractContextManager[Path]:
        """Keep the object from eviction while the `with` block runs; yields its path."""
        return self._pinned(check_digest(digest))

    def evict_to(self, max_bytes: int) -> int:
        """Evict unpinned objects, least recently used first, until size() <= max_bytes (or
        only pinned ones are left); returns the bytes freed."""
        with self._lock:
            return self._evict_locked(max_bytes)

    # -- internals -------------------------------------------------------------------------

    def _object_path(self, digest: str) -> Path:
        return self._objects / digest[:2] / digest[2:]

    def _check_size(self, digest: str, size: int) -> None:
        if not isinstance(size, int) or size < 0:
            raise CacheError(f"size of {digest} must be a whole number of bytes, got {size!r}")
        if size > self.max_bytes:
            raise CacheError(f"{digest} is {size} bytes, larger than the cache "
                             f"({self.max_bytes} bytes); raise max_bytes to accept it")

    def _touch(self, digest: str) -> Path | None:
        """(Lock held.) Mark `digest` most recently used; None if it is not (or no longer) held."""
        entry = self._index.pop(digest, None)
        if entry is None:
            return None
        path = self._object_path(digest)
        now = self._clock()
        try:
            os.utime(path, (now, now))
        except FileNotFoundError:
            log.warning("cached object %s vanished from disk; forgetting it", digest)
            self._bytes -= entry[0]
            return None
        except OSError:
            pass  # the mtime only orders a restart; the in-memory order is what counts now
        self._index[digest] = (entry[0], now)
        return path

    def _evict_locked(self, max_bytes: int) -> int:
        freed = 0
        for digest in list(self._index):  # least recently used first
            if self._bytes <= max_bytes:
                break
            if digest in self._pins:
                continue
            size, _ = self._index.pop(digest)
            self._bytes -= size
            freed += size
            _unlink(self._object_path(digest))
            log.debug("evicted %s (%d bytes)", digest, size)
        return freed

    def _install(self, tmp: Path, digest: str, size: int) -> Path:
        """Rename a verified, fsynced file into objects/ after making room for it."""
        dest = self._object_path(digest)
        with self._lock:
            held = self._touch(digest)
            if held is not None:  # another writer got there first: same bytes
                _unlink(tmp)
                return held
            self._evict_locked(self.max_bytes - size)
            new_dir = _mkdir(dest.parent)
            os.replace(tmp, dest)
            now = self._clock()
            with contextlib.suppress(OSError):
                os.utime(dest, (now, now))
            self._index[digest] = (size, now)
            self._bytes += size
        _fsync_dir(dest.parent)
        if new_dir:
            _fsync_dir(self._objects)
        return dest

    def _link_or_copy(self, source: Path, tmp: Path, digest: str) -> tuple[str, int]:
        """Hard-link (or copy) `source` to `tmp`, fsynced and 0644; returns (sha256, size)."""
        try:
            os.link(source, tmp)
            os.chmod(tmp, FILE_MODE)
        except OSError:
            _unlink(tmp)
        else:
            with tmp.open("rb") as f:
                linked = self._hash_stream(f, digest, None)
                os.fsync(f.fileno())
            return linked
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with source.open("rb") as src, io.FileIO(fd, "w") as dst:
            copied = self._hash_stream(src, digest, dst)
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
        return copied

    def _hash_stream(self, src: io.BufferedReader, digest: str,
                     copy_to: io.FileIO | None) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        while data := src.read(CHUNK):
            size += len(data)
            self._check_size(digest, size)  # the file grew past the cache while we read it
            h.update(data)
            if copy_to is not None:
                _write_all(copy_to, data)
        return h.hexdigest(), size

    def _release(self, digest: str) -> None:
        with self._lock:
            self._writing.discard(digest)

    @contextlib.contextmanager
    def _pinned(self, digest: str) -> Iterator[Path]:
        with self._lock:
            path = self._touch(digest)
            if path is None:
                raise CacheError(f"{digest} is not cached; fetch it before pinning it")
            self._pins[digest] = self._pins.get(digest, 0) + 1
        try:
            yield path
        finally:
            with self._lock:
                left = self._pins.pop(digest) - 1
                if left:
                    self._pins[digest] = left
                self._evict_locked(self.max_bytes)  # what the pin held above the bound

    def _load(self) -> None:
        found: list[tuple[float, str, int]] = []
        with os.scandir(self._objects) as subdirs:
            for sub in subdirs:
                if not (_HEX2.fullmatch(sub.name) and sub.is_dir(follow_symlinks=False)):
                    log.debug("ignoring stray %s in the cache", sub.path)
                    continue
                with os.scandir(sub.path) as files:
                    for entry in files:
                        digest = sub.name + entry.name
                        if not (_DIGEST.fullmatch(digest)
                                and entry.is_file(follow_symlinks=False)):
                            log.debug("ignoring stray %s in the cache", entry.path)
                            continue
                        st = entry.stat(follow_symlinks=False)
                        found.append((st.st_mtime, digest, st.st_size))
        for mtime, digest, size in sorted(found):
            self._index[digest] = (size, mtime)
            self._bytes += size

    def _sweep_partials(self) -> None:
        cutoff = self._clock() - STALE_PARTIAL_S
        with os.scandir(self._partial) as entries:
            for entry in entries:
                try:
                    if (not entry.is_dir(follow_symlinks=False)
                            and entry.stat(follow_symlinks=False).st_mtime < cutoff):
                        os.unlink(entry.path)
                        log.info("removed stale partial download %s", entry.path)
                except OSError:
                    pass


class PartialFile:
    """An in-progress download of one object (from InputCache.begin); commit() or abort() it.

    As a context manager it aborts (keeping the prefix) unless committed."""

    def __init__(self, cache: InputCache, digest: str, size: int, path: Path) -> None:
        self.digest = digest
        self.size = size
        self._cache = cache
        self._path = path
        self._hash = hashlib.sha256()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        f = io.FileIO(fd, "r+")
        try:
            if os.fstat(fd).st_size > size:  # not a prefix of this object
                f.truncate(0)
            held = 0
            while data := f.read(CHUNK):  # re-hash the prefix: hashlib state can't persist
                self._hash.update(data)
                held += len(data)
        except BaseException:
            f.close()
            raise
        self._file: io.FileIO | None = f
        self.offset = held

    def write(self, offset: int, data: bytes) -> None:
        """Append `data`, which must start at `self.offset`."""
        f = self._live()
        if offset != self.offset:
            raise CacheError(f"write to {self.digest} at offset {offset}, but {self.offset} "
                             f"bytes are held; resume at offset {self.offset}")
        if self.offset + len(data) > self.size:
            raise CacheError(f"{self.digest} is longer than its declared {self.size} bytes; "
                             "discard it with abort(keep=False)")
        try:
            _write_all(f, data)
        except BaseException:
            with contextlib.suppress(OSError):  # drop a torn tail so the prefix stays whole
                f.truncate(self.offset)
                f.seek(self.offset)
            raise
        self._hash.update(data)
        self.offset += len(data)

    def commit(self) -> Path:
        """Verify size and sha256, then move the file into objects/; returns its path.

        Incomplete: CacheError and the partial stays open. Wrong bytes: CacheError and the
        partial is discarded."""
        f = self._live()
        if self.offset != self.size:
            raise CacheError(f"{self.digest} is incomplete ({self.offset} of {self.size} "
                             "bytes); write the rest, or abort()")
        got = self._hash.hexdigest()
        on_disk = os.fstat(f.fileno()).st_size
        if got != self.digest or on_disk != self.size:
            self.abort(keep=False)
            raise CacheError(f"{self.digest} does not match the data received (sha256 {got}, "
                             f"{on_disk} bytes); the partial was discarded, fetch it again")
        os.fchmod(f.fileno(), FILE_MODE)
        os.fsync(f.fileno())
        self._close()
        try:
            return self._cache._install(self._path, self.digest, self.size)
        finally:
            self._cache._release(self.digest)

    def abort(self, keep: bool = True) -> None:
        """Stop writing; keep=True leaves the prefix (fsynced) for a later begin() to resume."""
        f = self._file
        if f is None:
            return
        if keep:
            with contextlib.suppress(OSError):
                os.fsync(f.fileno())
        self._close()
        if not keep:
            _unlink(self._path)
        self._cache._release(self.digest)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort(keep=True)

    def _live(self) -> io.FileIO:
        if self._file is None:
            raise CacheError(f"the partial file for {self.digest} is already committed or "
                             "aborted; call begin() again")
        return self._file

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _write_all(f: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def _mkdir(path: Path) -> bool:
    """Create `path` as 0755 (whatever the umask); False if it already existed."""
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(path, DIR_MODE)
    return True


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
