"""A job's files on the provider: inputs in (through the cache, resumable), outputs out."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import trio

from node.net import lane
from node.net.host import Stream
from node.net.transfer import (
    STALL_S,
    TransferFailed,
    file_sha256,
    receive_file,
    receive_into,
    send_file,
    transfer_deadline,
)
from node.provider.cache import CacheError, InputCache, PartialFile
from node.provider.executor import Slot
from node.provider.metrics import ProviderMetrics
from protocol import Identity, InputFile, MalformedMessage, OutputFile, wire
from protocol.messages import MAX_OUTPUTS

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = STALL_S
MAX_OUTPUT_FILES = MAX_OUTPUTS
MAX_OUTPUT_BYTES = 1024 * 1024 * 1024


class HasInputs(Protocol):
    """What receive_inputs reads of a spec: a JobSpec or a SessionSpec."""

    @property
    def inputs(self) -> Sequence[InputFile]: ...


async def receive_inputs(stream: Stream, spec: HasInputs, job_id: str, slot: Slot, *,
                         cache: InputCache | None, metrics: ProviderMetrics,
                         on_cached: Callable[[], None],
                         identity: Identity | None = None, lanes: bool = True) -> None:
    """Inputs the cache holds are not sent again; interrupted ones resume where they
    stopped; each lands read-only in the job's inputs. The whole upload must average
    transfer.MIN_RATE_BPS (after its grace), so a trickling peer is cut with
    TransferTimeout and its slot freed; a resumed upload is allowed for what is left.
    With `identity`, an upload of wire.LANE_MIN_BYTES or more is offered a fast lane;
    `lanes=False` (a session, whose table has no lane frames): chunks only, no offer."""
    by_digest = {f.sha256: f for f in spec.inputs}
    digests = list(by_digest)
    partials: dict[str, PartialFile] = {}
    held: set[str] = set()
    if cache is not None:
        for d in digests:
            if cache.has(d):
                held.add(d)
                continue
            try:
                partials[d] = await trio.to_thread.run_sync(cache.begin, d,
                                                            by_digest[d].size)
            except CacheError as exc:  # too large, or another job is fetching it
                log.debug("input %s bypasses the cache: %s", d[:12], exc)
    need = tuple(d for d in digests if d not in held)
    resume = {d: p.offset for d, p in partials.items() if p.offset}
    if resume:
        log.info("job %s: resuming %d input(s) already partly held", job_id[:12],
                 len(resume))
    left = sum(by_digest[d].size - resume.get(d, 0) for d in need)
    direct = {d: lane.DestFile(slot.input_path(by_digest[d].name), by_digest[d].size, d)
              for d in need if d not in partials}

    async def by_stream(s: Stream) -> None:
        for d in need:
            await _receive_one(s, by_digest[d], partials, held, slot, metrics=metrics,
                               on_cached=on_cached)

    try:
        with transfer_deadline(left, f"the inputs of job {job_id[:12]} from "
                                     f"{stream.remote_peer[:16]}"):
            await stream.send(wire.Accepted(job_id=job_id, need=need, resume=resume))
            sinks: list[tuple[str, PartialFile | lane.DestFile]] = [
                (by_digest[d].name, partials[d] if d in partials else direct[d]) for d in need]
            if not lanes:
                await by_stream(stream)
            elif await lane.receive_phase(stream, identity, sinks, fallback=by_stream):
                await _commit_lane(need, partials, direct, held, on_cached)
                metrics.bytes_in_total.inc(left)
    finally:
        for p in partials.values():
            p.abort(keep=True)
        for sink in direct.values():
            sink.abandon()
    for f in spec.inputs:
        dest = slot.input_path(f.name)
        if f.sha256 in held and cache is not None:
            with cache.pin(f.sha256) as source:
                await trio.to_thread.run_sync(_link_or_copy, source, dest)
        elif not dest.exists():
            shutil.copyfile(slot.input_path(by_digest[f.sha256].name), dest)
        slot.expose_input(f.name)


async def _receive_one(stream: Stream, f: InputFile, partials: dict[str, PartialFile],
                       held: set[str], slot: Slot, *, metrics: ProviderMetrics,
                       on_cached: Callable[[], None]) -> None:
    """One needed input: into the cache (resumable) when it has room, else straight in."""
    d = f.sha256
    if d in partials:
        got = await receive_into(stream, partials[d], name=f.name, idle_timeout=IDLE_TIMEOUT_S)
        try:
            await trio.to_thread.run_sync(partials.pop(d).commit)
        except CacheError as exc:
            raise TransferFailed(str(exc)) from exc
        held.add(d)
        on_cached()
    else:
        await receive_file(stream, name=f.name, size=f.size, sha256=f.sha256,
                           dest=slot.input_path(f.name), idle_timeout=IDLE_TIMEOUT_S)
        got = f.size
    metrics.bytes_in_total.inc(got)


async def _commit_lane(need: tuple[str, ...], partials: dict[str, PartialFile],
                       direct: dict[str, lane.DestFile], held: set[str],
                       on_cached: Callable[[], None]) -> None:
    """Inputs that came over the lane: digests checked, cached ones committed."""
    for d in need:
        if d in partials:
            try:
                await trio.to_thread.run_sync(partials.pop(d).commit)
            except CacheError as exc:
                raise TransferFailed(str(exc)) from exc
            held.add(d)
            on_cached()
        else:
            await trio.to_thread.run_sync(direct[d].finish)


async def outputs_stream(stream: Stream, job_id: str,
                         outputs: list[tuple[OutputFile, Path]]) -> Stream | None:
    """Where the outputs go: `stream`, or None when the requester moved them to a settle
    stream (`fetch_outputs`: a phase big enough for a lane, on a relayed job stream)."""
    if sum(out.size for out, _ in outputs) < wire.LANE_MIN_BYTES:
        return stream
    frame = await stream.receive_within(STALL_S, "a lane offer or fetch_outputs")
    if not isinstance(frame, wire.FetchOutputs):
        return lane.Replay(stream, frame)
    if frame.job_id != job_id:
        raise MalformedMessage("fetch_outputs names another job")
    return None


async def send_outputs(stream: Stream, outputs: list[tuple[OutputFile, Path]], *,
                       metrics: ProviderMetrics, identity: Identity | None = None) -> None:
    """The outputs in the result's order: over a fast lane when the requester offers one
    for wire.LANE_MIN_BYTES or more (with `identity`), else as chunks on the stream."""

    async def by_stream(s: Stream) -> None:
        for out, path in outputs:
            await send_file(s, out.name, path)
            metrics.bytes_out_total.inc(out.size)

    files = [(out.name, path, 0) for out, path in outputs]
    if await lane.send_phase(stream, identity, files, fallback=by_stream):
        metrics.bytes_out_total.inc(sum(out.size for out, _ in outputs))


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def _regular_files(root: Path) -> list[Path]:
    """Regular files below `root`; symlinks (to files or dirs) and special files are skipped."""
    found = []
    for dirpath, _, files in os.walk(root, followlinks=False):
        for name in files:
            path = Path(dirpath) / name
            try:
                if stat.S_ISREG(path.lstat().st_mode):
                    found.append(path)
            except OSError:
                continue
    return sorted(found)


def collect_outputs(out_dir: Path) -> list[tuple[OutputFile, Path]]:
    """Regular files under out/ (symlinks and specials ignored), in a stable order."""
    found: list[tuple[OutputFile, Path]] = []
    total = 0
    for path in _regular_files(out_dir):
        rel = path.relative_to(out_dir).as_posix()
        try:
            size = path.stat().st_size
            total += size
            if len(found) >= MAX_OUTPUT_FILES or total > MAX_OUTPUT_BYTES:
                log.warning("output limit reached; %s and later files dropped", rel)
                break
            digest = file_sha256(path)
            found.append((OutputFile(name=rel, sha256=digest, size=size), path))
        except (OSError, ValueError) as exc:
            log.warning("output %s skipped: %s", rel, exc)
    return found


