"""The signed records of the market: capacity ads, job specs and job results."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from protocol.errors import InvalidMessage
from protocol.identity import public_key_from_peer_id
from protocol.limits import (
    INT32_MAX,
    INT32_MIN,
    MAX_AMOUNT,
    MAX_COUNT,
    MAX_CPUS,
    MAX_DEVICES,
    MAX_FILE_SIZE,
    MAX_GPUS,
    MAX_JOB_SECONDS,
    MAX_MB,
    MAX_SAFE,
    MAX_SERIAL,
    MAX_TIME_MS,
)
from protocol.schema import Message, field, message

MAX_OUTPUT_TEXT = 64 * 1024
"""Cap, in UTF-8 bytes, of each of a result's stdout and stderr."""
MAX_ARGS_BYTES = 64 * 1024
FULL_OUTPUT = {"stdout": "offload-stdout.txt", "stderr": "offload-stderr.txt"}
"""The output files that hold a job's whole stdout and stderr when its spec asks."""
MAX_OUTPUTS = 256
_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")
_NAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\Z")
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-+=,@ ]{0,127}"
_METHOD = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_REL_PATH = re.compile(rf"\A{_PART}(/{_PART}){{0,7}}\Z")

SandboxTier = Literal["A", "B", "none"]
JobStatus = Literal["ok", "failed", "timeout", "killed", "error"]
Limit = Literal["wall", "memory", "pids", "disk", "cpu"]


def check_peer_id(value: str, what: str) -> None:
    try:
        public_key_from_peer_id(value)
    except Exception as exc:
        raise InvalidMessage(f"{what} is not an Ed25519 peer id: {exc}") from exc


def check_sha256(value: str, what: str) -> None:
    if not _SHA256.match(value):
        raise InvalidMessage(f"{what} must be 64 lowercase hex digits")


def check_file_name(value: str, what: str) -> None:
    """Plain names only: no slash, no leading dot, no '..'."""
    if not _NAME.match(value) or ".." in value:
        raise InvalidMessage(f"{what} {value!r} is not a plain file name")


def check_method(name: str) -> None:
    """A method a session call may name: a public Python identifier."""
    if not _METHOD.match(name) or name.startswith("_"):
        raise InvalidMessage(f"method {name!r} is not a public method name")


def check_rel_path(value: str, what: str) -> None:
    if not _REL_PATH.match(value) or ".." in value:
        raise InvalidMessage(f"{what} {value!r} is not a safe relative path")


def _non_negative(**values: float) -> None:
    for name, v in values.items():
        if v < 0:
            raise InvalidMessage(f"{name} must not be negative")


class Signable(Message):
    """A message type that travels signed; `signer_field` names the signing peer."""

    __slots__ = ()
    type_name: ClassVar[str]
    signer_field: ClassVar[str]

    @classmethod
    def domain(cls) -> bytes:
        return f"offload/{cls.type_name}/1".encode()

    def signer(self) -> str:
        value: str = getattr(self, self.signer_field)
        return value


@message
class Device(Message):
    kind: Literal["cpu", "cuda"]
    model: str = field(max_len=128)
    memory_mb: int = field(ge=0, le=MAX_MB)
    compute_capability: str = field(max_len=16)
    count: int = field(ge=1, le=MAX_DEVICES)
    gflops: float
    """Measured fp32 matmul throughput per device, GFLOP/s (0 until benchmarked)."""
    fp16_gflops: float = 0.0
    bf16_gflops: float = 0.0
    mem_gbps: float = 0.0
    utilization: float = 0.0
    temperature_c: float = 0.0
    power_w: float = 0.0
    driver: str = field(max_len=32, default="")

    def validate(self) -> None:
        _non_negative(gflops=self.gflops,
                      fp16_gflops=self.fp16_gflops, bf16_gflops=self.bf16_gflops,
                      mem_gbps=self.mem_gbps, power_w=self.power_w)
        if not 0.0 <= self.utilization <= 1.0:
            raise InvalidMessage("utilization must be between 0 and 1")


@message
class Price(Message):
    """Linear price in micro-credits: start fee plus per-unit rates, with a minimum charge."""

    start: int = field(ge=0, le=MAX_AMOUNT, default=0)
    per_cpu_second: int = field(ge=0, le=MAX_AMOUNT, default=0)
    per_gpu_second: int = field(ge=0, le=MAX_AMOUNT, default=0)
    per_gb_second: int = field(ge=0, le=MAX_AMOUNT, default=0)
    per_gb_transfer: int = field(ge=0, le=MAX_AMOUNT, default=0)
    minimum: int = field(ge=0, le=MAX_AMOUNT, default=0)


@message
class Runtime(Message):
    """A job runtime: interpreter version, key package versions, digest of the manifest."""

    name: str = field(max_len=64)
    version: str = field(max_len=64)
    packages: dict[str, str] = field(max_len=32)
    digest: str = field(max_len=64)


@message
class CapacityAd(Signable):
    type_name: ClassVar[str] = "capacity_ad"
    signer_field: ClassVar[str] = "peer_id"

    peer_id: str = field(max_len=64)
    addrs: tuple[str, ...] = field(max_len=16)
    devices: tuple[Device, ...] = field(max_len=16)
    cpus: int = field(ge=0, le=MAX_CPUS)
    memory_mb: int = field(ge=0, le=MAX_MB)
    runtimes: tuple[Runtime, ...] = field(max_len=16)
    price: Price
    sandbox_tier: SandboxTier
    region: str = field(max_len=64)
    coords: tuple[float, ...] = field(max_len=8)
    cached: tuple[str, ...] = field(max_len=64)
    load: float
    seq: int = field(ge=0, le=MAX_SERIAL)
    expires: int = field(ge=0, le=MAX_TIME_MS)

    def validate(self) -> None:
        check_peer_id(self.peer_id, "peer_id")
        for a in self.addrs:
            if not a.startswith("/") or len(a) > 256:
                raise InvalidMessage(f"addr {a!r} is not a multiaddr")
        for d in self.cached:
            check_sha256(d, "cached digest")
        if not 0.0 <= self.load <= 1.0:
            raise InvalidMessage("load must be between 0 and 1")


@message
class Quote(Signable):
    """The most a job can cost here, signed by the provider before anything runs."""

    type_name: ClassVar[str] = "quote"
    signer_field: ClassVar[str] = "provider"

    job_id: str = field(max_len=64)
    provider: str = field(max_len=64)
    requester: str = field(max_len=64)
    price: Price
    max_charge: int = field(ge=0, le=MAX_AMOUNT)
    expires: int = field(ge=0, le=MAX_TIME_MS)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")
        check_peer_id(self.provider, "provider")
        check_peer_id(self.requester, "requester")


@message
class InputFile(Message):
    name: str = field(max_len=128)
    sha256: str = field(max_len=64)
    size: int = field(ge=0, le=MAX_FILE_SIZE)

    def validate(self) -> None:
        check_file_name(self.name, "input name")
        check_sha256(self.sha256, "input sha256")


@message
class Resources(Message):
    gpus: int = field(ge=0, le=MAX_GPUS, default=0)
    cpus: int = field(ge=1, le=MAX_CPUS, default=1)
    memory_mb: int = field(ge=1, le=MAX_MB, default=2048)
    disk_mb: int = field(ge=1, le=MAX_MB, default=1024)
    max_seconds: int = field(ge=1, le=MAX_JOB_SECONDS, default=600)
    """At most one week."""


@message
class JobSpec(Signable):
    """What to run, signed by the requester and addressed to one provider."""

    type_name: ClassVar[str] = "job_spec"
    signer_field: ClassVar[str] = "requester"

    requester: str = field(max_len=64)
    provider: str = field(max_len=64)
    runtime: str = field(max_len=64)
    entrypoint: str = field(max_len=128)
    args: tuple[str, ...] = field(max_len=256)
    """At most 256 words and MAX_ARGS_BYTES in all, so a signed spec stays under its cap."""
    inputs: tuple[InputFile, ...] = field(max_len=256)
    resources: Resources
    max_price: int | None = field(ge=0, le=MAX_AMOUNT)
    verification: Literal["none"]
    nonce: bytes = field(max_len=32)
    created_at: int = field(ge=0, le=MAX_TIME_MS)
    output_cap: int = field(ge=0, le=MAX_OUTPUT_TEXT, default=0)
    """UTF-8 bytes of stdout, and of stderr, the result may hold; 0: the provider's limit
    (at most MAX_OUTPUT_TEXT). The result says what was cut beyond it."""
    full_output: bool = field(default=False)
    """Also return the whole of stdout and stderr as output files (FULL_OUTPUT names)."""
    detach: bool = field(default=False)
    """Run on without the job stream once the inputs are in (`detached`); the result and
    outputs are fetched later on the settle protocol."""

    def validate(self) -> None:
        names = check_work_spec(self.requester, self.provider, self.inputs, self.nonce)
        if sum(len(a.encode()) for a in self.args) > MAX_ARGS_BYTES:
            raise InvalidMessage(f"args exceed {MAX_ARGS_BYTES} bytes in all")
        if self.entrypoint not in names:
            raise InvalidMessage("entrypoint must be one of the input files")


def check_work_spec(requester: str, provider: str, inputs: tuple[InputFile, ...],
                    nonce: bytes) -> list[str]:
    """What a job spec and a session spec both need: two peer ids, unique input names, a
    nonce of at least 16 bytes; the input names."""
    check_peer_id(requester, "requester")
    check_peer_id(provider, "provider")
    names = [f.name for f in inputs]
    if len(set(names)) != len(names):
        raise InvalidMessage("input names must be unique")
    if len(nonce) < 16:
        raise InvalidMessage("nonce must be at least 16 bytes")
    return names


@message
class OutputFile(Message):
    name: str = field(max_len=255)
    sha256: str = field(max_len=64)
    size: int = field(ge=0, le=MAX_FILE_SIZE)

    def validate(self) -> None:
        check_rel_path(self.name, "output name")
        check_sha256(self.sha256, "output sha256")


@message
class Usage(Message):
    wall_s: float
    cpu_s: float
    gpu_s: float
    peak_memory_mb: int = field(ge=0, le=MAX_MB)

    def validate(self) -> None:
        _non_negative(wall_s=self.wall_s, cpu_s=self.cpu_s, gpu_s=self.gpu_s)


@message
class SandboxProfile(Message):
    """The isolation a job ran under, as enforced by the provider."""

    tier: SandboxTier
    wall_limit_s: int = field(ge=0, le=MAX_JOB_SECONDS)
    memory_limit_mb: int = field(ge=0, le=MAX_MB)
    cpu_limit: float
    pids_limit: int = field(ge=0, le=MAX_COUNT)
    disk_limit_mb: int = field(ge=0, le=MAX_MB)
    network: Literal["none", "host"]
    runtime: str = field(max_len=64)
    runtime_digest: str = field(max_len=64)
    warm: bool


@message
class JobResult(Signable):
    """What happened, signed by the provider that ran it."""

    type_name: ClassVar[str] = "job_result"
    signer_field: ClassVar[str] = "provider"

    job_id: str = field(max_len=64)
    provider: str = field(max_len=64)
    requester: str = field(max_len=64)
    status: JobStatus
    exit_code: int = field(ge=INT32_MIN, le=INT32_MAX)
    stdout: str = field(max_len=MAX_OUTPUT_TEXT)
    stderr: str = field(max_len=MAX_OUTPUT_TEXT)
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_dropped: int = field(ge=0, le=MAX_SAFE, default=0)
    """Bytes of stdout the job printed beyond what `stdout` holds (0 unless truncated)."""
    stderr_dropped: int = field(ge=0, le=MAX_SAFE, default=0)
    outputs: tuple[OutputFile, ...] = field(max_len=MAX_OUTPUTS)
    limits_hit: tuple[Limit, ...] = field(max_len=8)
    usage: Usage
    sandbox: SandboxProfile
    price_charged: int = field(ge=0, le=MAX_AMOUNT)
    finished_at: int = field(ge=0, le=MAX_TIME_MS)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")
        check_peer_id(self.provider, "provider")
        check_peer_id(self.requester, "requester")
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise InvalidMessage("output names must be unique")
        for label, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if len(text.encode("utf-8", "surrogatepass")) > MAX_OUTPUT_TEXT:
                raise InvalidMessage(f"{label} exceeds {MAX_OUTPUT_TEXT} UTF-8 bytes")
        for label, dropped, cut in (("stdout", self.stdout_dropped, self.stdout_truncated),
                                    ("stderr", self.stderr_dropped, self.stderr_truncated)):
            if dropped and not cut:
                raise InvalidMessage(f"{label}_dropped is {dropped} but {label} is not "
                                     "truncated")


def clip_text(data: bytes, cap: int = MAX_OUTPUT_TEXT) -> tuple[str, bool]:
    """Decode process output for a JobResult: invalid bytes replaced, at most `cap` UTF-8 bytes."""
    encoded = data.decode("utf-8", "replace").encode("utf-8")
    if len(encoded) <= cap:
        return encoded.decode("utf-8"), False
    return encoded[:cap].decode("utf-8", "ignore"), True
