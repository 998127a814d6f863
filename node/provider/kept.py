"""What a provider keeps of its detached jobs: the signed result and the outputs, under
`<home>/kept/<job id>/`, for its requester to fetch on the settle protocol after the job
stream is gone (and after a restart of this daemon).

Bounded by time (`keep_s` after the job ends, stated in the `detached` frame) and by disk
(`max_bytes` in all): a detached job reserves its disk limit when it starts, so a job that
could not be kept is refused before it runs. A job is dropped once its requester settled
it (the receipt came) or its time ran out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from protocol import JobResult, OutputFile, ProtocolError, open_signed
from protocol.messages import check_sha256

log = logging.getLogger(__name__)
Outputs = list[tuple[OutputFile, Path]]
META = "meta.json"
RESULT = "result"
FILES = "files"
MAX_META = 4096
MAX_RESULT = 1024 * 1024


class KeptJobs:
    def __init__(self, folder: Path, *, keep_s: float, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._reserved: dict[str, int] = {}
        self._used: int | None = None

    def _dir(self, job_id: str) -> Path | None:
        try:
            check_sha256(job_id, "job_id")
        except ProtocolError:
            return None
        return self.folder / job_id

    @property
    def used(self) -> int:
        """Bytes kept on disk now (scanned once, then counted)."""
        if self._used is None:
            self._used = sum(p.stat().st_size for p in self.folder.glob(f"*/{FILES}/*")
                             if p.is_file()) if self.folder.is_dir() else 0
        return self._used

    def reserve(self, job_id: str, nbytes: int) -> bool:
        """Room for a detached job's outputs (its disk limit); False: none left."""
        if self.used + sum(self._reserved.values()) + nbytes > self.max_bytes:
            return False
        self._reserved[job_id] = nbytes
        return True

    def release(self, job_id: str) -> None:
        self._reserved.pop(job_id, None)

    def keep(self, job_id: str, requester: str, result: bytes, outputs: Outputs) -> bool:
        """Move the outputs here and keep the result beside them (the reservation ends);
        False (nothing kept) on a disk error."""
        final = self._dir(job_id)
        assert final is not None
        tmp = self.folder / f".{job_id}.{os.getpid()}.tmp"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / FILES).mkdir(parents=True, mode=0o700)
            size = 0
            for i, (out, path) in enumerate(outputs):
                dest = tmp / FILES / str(i)
                try:
                    os.replace(path, dest)
                except OSError:
                    shutil.copyfile(path, dest, follow_symlinks=False)
                size += out.size
            (tmp / RESULT).write_bytes(result)
            (tmp / META).write_text(json.dumps({
                "requester": requester, "until": self._clock() + self.keep_s}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._used = self.used + size
            return True
        except OSError as exc:
            log.warning("could not keep detached job %s: %s", job_id[:12], exc)
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        finally:
            self.release(job_id)

    def _meta(self, folder: Path) -> dict[str, object] | None:
        try:
            with (folder / META).open("rb") as f:
                doc = json.loads(f.read(MAX_META))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def result(self, job_id: str, requester: str) -> bytes | None:
        """The kept signed result of `requester`'s job, if its time has not run out."""
        folder = self._dir(job_id)
        if folder is None:
            return None
        meta = self._meta(folder)
        if meta is None or meta.get("requester") != requester:
            return None
        until = meta.get("until")
        if not isinstance(until, int | float) or self._clock() > until:
            return None
        try:
            with (folder / RESULT).open("rb") as f:
                raw = f.read(MAX_RESULT + 1)
            r = open_signed(raw, JobResult).message
        except (OSError, ProtocolError):
            return None
        return raw if r.job_id == job_id and r.requester == requester else None

    def outputs(self, job_id: str, requester: str) -> Outputs | None:
        """The kept outputs in the result's order, or None if not all are here."""
        raw = self.result(job_id, requester)
        folder = self._dir(job_id)
        if raw is None or folder is None:
            return None
        r = open_signed(raw, JobResult).message
        out: Outputs = []
        for i, o in enumerate(r.outputs):
            path = folder / FILES / str(i)
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_size != o.size:
                    return None
            except OSError:
                return None
            out.append((o, path))
        return out

    def drop(self, job_id: str) -> None:
        folder = self._dir(job_id)
        if folder is None or not folder.exists():
            return
        freed = sum(p.stat().st_size for p in (folder / FILES).glob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        self._used = max(0, self.used - freed)
        log.info("detached job %s: dropped what was kept", job_id[:12])

    def prune(self) -> int:
        """Drop jobs whose time ran out (and leftovers of a crash); how many."""
        if not self.folder.is_dir():
            return 0
        n = 0
        now = self._clock()
        for folder in list(self.folder.iterdir()):
            if folder.name.startswith("."):
                with contextlib.suppress(OSError):
                    if now - folder.stat().st_mtime > 3600:
                        shutil.rmtree(folder, ignore_errors=True)
                continue
            meta = self._meta(folder)
            until = meta.get("until") if meta else None
            if not isinstance(until, int | float) or now > until:
                self.drop(folder.name)
                n += 1
        return n
