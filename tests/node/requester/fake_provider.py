"""A scripted provider on a memory host, speaking the real job and settle frames.

Each job it is sent takes the next of its `script` moves ("ok" once the script is used up):
it quotes with a signed Quote, takes the inputs over the real transfer code, and answers
with a signed JobResult and its output files; or it answers busy, refuses, vanishes
half-way, goes silent before or after its quote, returns a wrong answer or a forged one.
What it saw is kept for the test: specs, inputs, declined quotes and settle frames.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path
from typing import Literal

import trio

from node.errors import PeerGone
from node.net.host import Stream
from node.net.memory import MemoryHost, MemoryNetwork
from node.net.transfer import receive_file, send_file
from node.requester.exchange import JobRequest
from protocol import (
    CapacityAd,
    JobResult,
    JobSpec,
    OutputFile,
    Price,
    Quote,
    Receipt,
    SandboxProfile,
    Usage,
    open_signed,
    sign,
    wire,
)
from scheduler.scoring import ScoreParts
from tests.factories import cpu_device, plain_ad

Move = Literal["ok", "busy", "refuse", "vanish", "silent", "stall", "wrong", "forged"]
NOW_MS = 1_800_000_000_000


@dataclasses.dataclass
class FakeProvider:
    host: MemoryHost
    max_charge: int = 1_000
    charge: int = 400
    stdout: str = "42\n"
    outputs: dict[str, bytes] = dataclasses.field(default_factory=lambda: {"out.txt": b"ok"})
    script: list[Move] = dataclasses.field(default_factory=list)
    retry_after_s: float = 5.0
    specs: list[JobSpec] = dataclasses.field(default_factory=list)
    inputs: dict[str, bytes] = dataclasses.field(default_factory=dict)
    declined: list[str] = dataclasses.field(default_factory=list)
    settled: list[wire.Settle] = dataclasses.field(default_factory=list)
    results: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.host.handle(wire.JOB_PROTOCOL, self.handle_job)
        self.host.handle(wire.SETTLE_PROTOCOL, self.handle_settle)
        self.identity = self.host.identity
        self.peer_id = self.host.peer_id

    def ad(self) -> CapacityAd:
        return plain_ad(peer_id=self.peer_id, addrs=tuple(self.host.addrs()), cpus=2,
                        memory_mb=1024, devices=(cpu_device(model="fake", memory_mb=1024),),
                        expires=NOW_MS + 120_000)

    def receipts(self) -> list[Receipt]:
        return [open_signed(s.receipt, Receipt).message for s in self.settled]

    async def handle_job(self, stream: Stream) -> None:
        submit = wire.expect(await stream.receive(), wire.SubmitJob)
        signed = open_signed(submit.spec, JobSpec)
        spec, job_id = signed.message, signed.digest
        self.specs.append(spec)
        move = self.script.pop(0) if self.script else "ok"
        if move == "busy":
            await stream.send(wire.ErrorReply(code="busy", message="all slots and the queue "
                                              "are full", retry_after_s=self.retry_after_s))
            return
        if move == "refuse":
            await stream.send(wire.ErrorReply(code="bad_request", message="not here"))
            return
        if move == "silent":
            await trio.sleep_forever()
        quote = Quote(job_id=job_id, provider=self.peer_id, requester=spec.requester,
                      price=Price(), max_charge=self.max_charge, expires=NOW_MS + 30_000)
        await stream.send(wire.QuoteOffer(quote=sign(quote, self.identity).raw))
        answer = await stream.receive()
        if isinstance(answer, wire.ErrorReply):
            self.declined.append(answer.message)
            return
        wire.expect(answer, wire.QuoteAccept)
        await stream.send(wire.Queued(position=1))
        if move == "stall":  # queued, then never a slot nor a heartbeat
            await trio.sleep_forever()
        await stream.send(wire.Accepted(job_id=job_id, need=tuple(f.sha256 for f in
                                                                  spec.inputs), resume={}))
        with tempfile.TemporaryDirectory() as tmp:
            for f in spec.inputs:
                dest = Path(tmp) / f.name
                await receive_file(stream, name=f.name, size=f.size, sha256=f.sha256,
                                   dest=dest)
                self.inputs[f.name] = dest.read_bytes()
            if move == "vanish":
                raise PeerGone("the fake provider vanished")  # the host resets the stream
            await stream.send(wire.Running(elapsed_s=0.1))
            await stream.send(wire.Output(stream="stdout", text=self.stdout))
            outs = {n: Path(tmp) / "out" / n for n in self.outputs}
            for name, path in outs.items():
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(self.outputs[name])
            result = self.result(job_id, spec.requester,
                                 stdout="wrong\n" if move == "wrong" else self.stdout)
            raw = sign(result, self.identity).raw
            if move == "forged":  # a flipped byte inside the signature
                flipped = bytearray(raw)
                flipped[-30] ^= 1
                raw = bytes(flipped)
            self.results[job_id] = raw
            await stream.send(wire.ResultReady(result=raw))
            for name, path in outs.items():
                await send_file(stream, name, path)

    def result(self, job_id: str, requester: str, *, stdout: str) -> JobResult:
        return JobResult(
            job_id=job_id, provider=self.peer_id, requester=requester, status="ok",
            exit_code=0, stdout=stdout, stderr="", stdout_truncated=False,
            stderr_truncated=False,
            outputs=tuple(OutputFile(name=n, sha256=hashlib.sha256(d).hexdigest(), size=len(d))
                          for n, d in self.outputs.items()),
            limits_hit=(), usage=Usage(wall_s=0.1, cpu_s=0.1, gpu_s=0.0, peak_memory_mb=10),
            sandbox=SandboxProfile(tier="none", wall_limit_s=30, memory_limit_mb=256,
                                   cpu_limit=1.0, pids_limit=64, disk_limit_mb=64,
                                   network="none", runtime="python3", runtime_digest="",
                                   warm=False),
            price_charged=self.charge, finished_at=NOW_MS)

    async def handle_settle(self, stream: Stream) -> None:
        frame = await stream.receive_within(10, "a settle frame")
        if isinstance(frame, wire.ResultQuery):
            raw = self.results.get(frame.job_id)
            if raw is None:
                await stream.send(wire.ErrorReply(code="bad_request", message="no such job"))
            else:
                await stream.send(wire.ResultReady(result=raw))
            return
        settle = wire.expect(frame, wire.Settle)
        self.settled.append(settle)
        await stream.send(wire.SettleAck(job_id=open_signed(settle.receipt,
                                                            Receipt).message.job_id))


def providers(net: MemoryNetwork, n: int, **kw: object) -> list[FakeProvider]:
    return [FakeProvider(net.add(), **kw) for _ in range(n)]  # type: ignore[arg-type]


def ranked(*fakes: FakeProvider) -> list[tuple[CapacityAd, ScoreParts]]:
    """The fakes' ads in the given order, each with a finite score (best first)."""
    return [(f.ad(), ScoreParts(cost_credits=0.0, seconds=1.0 + i, transfer_s=0.0,
                                rtt_ms=1.0, reputation=0.0, locality=1.0, total=float(i)))
            for i, f in enumerate(fakes)]


def job_request(tmp: Path, text: str = "print(42)\n", *, files: dict[str, bytes] | None = None,
                **kw: object) -> JobRequest:
    tmp.mkdir(parents=True, exist_ok=True)
    script = tmp / "job.py"
    script.write_text(text)
    extra = []
    for name, data in (files or {}).items():
        (tmp / name).write_bytes(data)
        extra.append(tmp / name)
    return JobRequest(script=script, files=tuple(extra), **kw)  # type: ignore[arg-type]
