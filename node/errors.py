"""Every error of node/, in one tree: local (this node or its user must fix something) vs
remote (a peer failed or misbehaved). `exit_code` is what `offload` exits with.

    NodeError                     root; `offload` catches only this
        UserError                 local: fix the command, config or home (exit 2)
            UsageError            the command line does not parse (`offload CMD --help`)
            ConfigError           a provider.toml / requester.toml that does not load
            NeedsUnmet            no offer can hold the job's cpus, memory or GPUs
            BeyondCapacity        a job spec asks for more than this provider has
            HomeLocked            another provider holds this home
            StatusMissing         no provider has run with this home
            CacheError            the input cache refused an operation
            OfferCacheRefused     the home's offer cache is corrupt or forged (ignored)
            InvalidInput          a protocol or scheduler error from local input
            LedgerRefused         the books forbid this move (a LocalLedgerError)
            UnknownJob            no job of this home has that id (or the prefix is ambiguous)
            NotFinished           a detached job still runs: wait, or --wait (exit 3)
            HostError             this machine cannot do it: disk, sandbox, benchmark (exit 1)
                BenchmarkFailed   the benchmark script did not run or print a result
                ProviderDidNotStart  a local provider (node/localnet) did not start
                LedgerFailed      the ledger file is unavailable, corrupt or unsettled
                SandboxError      the sandbox failed (node/provider/sandbox)
                    SandboxUnavailable  this host cannot isolate as asked
                        SeccompUnsupported  no syscall table for this architecture
                    LaunchFailed  the launcher or bubblewrap failed before the job
                    CgroupError   a cgroup could not be made, limited or removed
            JobError              the user's job ran and failed (exit 1)
                JobFailed         a verified job exited non-zero, timed out or hit a limit
                RemoteFunctionError  an @remote function raised on the provider
                SessionFailed  a session's object could not be built on the provider
        RemoteError               a peer failed, vanished or misbehaved (exit 1)
            PeerGone              the stream closed before the exchange finished
            PeerTimeout           a peer did not answer within its deadline
            PeerRefused           the peer answered with a named error frame
            PriceRefused          a quote is above the requester's caps
            NoProviders           no provider's ad verifies and matches
            ResultRejected        a result failed signature or digest checks
                ReturnValueRejected  an @remote return file is not a well-formed value
            MapItemFailed         an item of a map failed on every provider tried
            Busy                  a peer asked for a slot this provider has not got now
            DhtRequestFailed      one DHT request to one peer failed
            RemoteAdError         an ad found under a key it does not belong to
            TransferFailed        a file arrived out of order, too long or wrong
                TransferTimeout   a transfer stalled (also a PeerTimeout)
                LaneRefused       a fast lane's peer did not prove the stream's peer id
            ProtocolViolation     a peer's bytes broke the protocol (exit 2, as ever)
            HostBroke             a session host (the requester's code) broke HOST_FRAMES
            PaymentRefused        a peer's cheque or receipt was refused
            SessionLost           a session's provider vanished; paid its last checkpoint
            CallRaised            a streamed session call raised on the provider

Lower layers keep their own roots (protocol.ProtocolError, ledger.LedgerError,
scheduler.SchedulerError); `translate` maps them, and OSError, onto this tree at the
node boundary, with the same message and the original as `__cause__`.

One error class lives outside the tree on purpose: `LandlockUnsupported` in
provider/sandbox/landlock.py, which runs stdlib-only inside the tier B sandbox
(`python -I -S`) and so cannot import node/.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar


class NodeError(Exception):
    """Root of every error raised by node/."""

    exit_code: ClassVar[int] = 1


class UserError(NodeError):
    """The user asked for something impossible; the message says what to do instead."""

    exit_code: ClassVar[int] = 2


class RemoteError(NodeError):
    """A peer failed, vanished or misbehaved."""

    exit_code: ClassVar[int] = 1


class NotFinished(UserError):
    """A detached job still runs on its provider; its result is not there yet."""

    exit_code: ClassVar[int] = 3


# ---------------------------------------------------------------- local
class UnknownJob(UserError):
    """No job this home submitted has that id, or the prefix names several."""


class UsageError(UserError):
    """The command line does not parse; the message names the option and the fix."""


class NeedsUnmet(UserError):
    """No offer found can hold the job's needs; the message names the largest offered."""


class BeyondCapacity(UserError):
    """A job spec asks for more cpus, memory, disk or GPUs than this provider has."""


class ConfigError(UserError):
    """A config file is missing, is not TOML, or holds a field that is unknown or invalid."""

    def __init__(self, path: Path, field: str, problem: str, fix: str) -> None:
        self.path = path
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"{path}: {field}: " if field else f"{path}: "
        super().__init__(" ".join(f"{where}{problem}; {fix}".splitlines()))


class HomeLocked(UserError):
    """Another provider holds this home; the message names its pid."""


class StatusMissing(UserError):
    """No readable status file: no provider has run with this home (or its file is damaged)."""


class CacheError(UserError):
    """The input cache refused an operation; the message says why and what to do next."""

    exit_code: ClassVar[int] = 1


class OfferCacheRefused(UserError):
    """The home's offer cache failed a check (corrupt, forged, foreign): never trusted."""


class InvalidInput(UserError):
    """A protocol or scheduler error raised by what this node was given (a file, a filter)."""


class LedgerRefused(UserError):
    """The books forbid this move (funds, amounts, escrow state); nothing was written."""


class HostError(UserError):
    """This machine cannot do what was asked (disk, sandbox, a local process); fix the host."""

    exit_code: ClassVar[int] = 1


class BenchmarkFailed(HostError):
    """The benchmark script could not run or did not print a result; the message says why."""


class ProviderDidNotStart(HostError):
    """A local provider exited, or wrote no ready file in time; its log tail says why."""


class LedgerFailed(HostError):
    """The ledger file cannot be opened, read or settled now; the message names the fix."""


class SandboxError(HostError):
    """Root of sandbox errors."""


class SandboxUnavailable(SandboxError):
    """This host cannot provide the requested isolation; the message names the fix."""


class SeccompUnsupported(SandboxUnavailable):
    """This architecture has no syscall table here; run jobs on x86_64 or aarch64."""


class LaunchFailed(SandboxError):
    """The launcher or bubblewrap failed before the job started."""


class CgroupError(SandboxError):
    """A cgroup could not be created, limited, emptied or removed; the message says why."""


class JobError(UserError):
    """The user's job ran and failed; the provider did its part."""

    exit_code: ClassVar[int] = 1


class JobFailed(JobError):
    """A verified job did not succeed (non-zero exit, timeout, limit); `result` has why."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class RemoteFunctionError(JobError):
    """The function raised on the provider; `remote_type` and `remote_traceback` say how.

    When the remote exception is a built-in one (ValueError, KeyError, ...) the raised
    error is also an instance of it, so `except ValueError` works as it would locally.
    """

    def __init__(self, message: str, *, remote_type: str, remote_message: str,
                 remote_traceback: str, job_id: str = "", provider: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.job_id = job_id
        self.provider = provider

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SessionFailed(JobError):
    """A session ended before its first call: the constructor raised on the provider (the
    message carries its exception), or the sandbox died; only the start was charged."""


# ---------------------------------------------------------------- remote
class PeerGone(RemoteError):
    """The stream or connection to a peer closed before the exchange finished."""


class PeerTimeout(RemoteError):
    """A peer did not answer within its deadline."""


class PeerRefused(RemoteError):
    """The peer answered with a named error frame."""

    def __init__(self, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"provider refused the job ({code}): {message}")
        self.code = code
        self.retry_after_s = retry_after_s


class PriceRefused(RemoteError):
    """A quote is above the requester's caps; nothing ran and nothing was charged."""


class NoProviders(RemoteError):
    """Discovery found no provider whose ad verifies and matches."""


class ResultRejected(RemoteError):
    """A result failed signature or digest verification; nothing from it was used."""


class ReturnValueRejected(ResultRejected):
    """A provider's return file is not a well-formed value; nothing of it was used."""


class MapItemFailed(RemoteError):
    """An item of a map failed on every provider it was tried on."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class Busy(RemoteError):
    """No slot or queue place for this job now: come back after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        import math

        super().__init__(f"{message}; retry in {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


class DhtRequestFailed(RemoteError):
    """One DHT request to one peer failed; `retryable` if it reset, closed or timed out
    (a busy server), not if the peer is unreachable or does not serve the DHT."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class RemoteAdError(RemoteError):
    """An ad is valid on its own but does not belong under the key it was found at."""


class TransferFailed(RemoteError):
    """A file arrived out of order, too long, or with the wrong digest."""


class TransferTimeout(TransferFailed, PeerTimeout):
    """A transfer stalled or went slower than `MIN_RATE_BPS`; the peer is cut."""


class LaneRefused(TransferFailed):
    """A fast lane's certificate or token does not prove the job stream's peer
    (node/net/lane.py); the data takes the stream instead."""


class HostBroke(RemoteError):
    """A session host, the requester's own code in its sandbox, broke HOST_FRAMES
    (protocol/sessions.py): a bad frame, an item beyond credit, ... Its session ends
    failed (node/provider/sessions.py)."""


class ProtocolViolation(RemoteError):
    """A peer's bytes broke the protocol (a RemoteProtocolError reached the boundary).

    It exits 2, as protocol errors always did from the CLI."""

    exit_code: ClassVar[int] = 2


class PaymentRefused(RemoteError):
    """A peer's cheque or receipt was refused (a RemoteLedgerError)."""


class SessionLost(RemoteError):
    """A session's provider vanished, went silent or ended the lease mid-call; what was
    paid is at most its last checkpoint the requester verified (nothing without one)."""


class CallRaised(RemoteError):
    """A streamed session call raised on the provider; `value` is its error record, which
    node.api turns into the exception."""

    def __init__(self, value: bytes) -> None:
        super().__init__("the streamed call raised on the provider")
        self.value = value


# ---------------------------------------------------------------- the boundary
def translate(exc: BaseException) -> BaseException:
    """The node error for a lower layer's error (or an OSError), same message; other
    exceptions, node errors included, come back unchanged."""
    from ledger.errors import LedgerError, LocalLedgerError, RemoteLedgerError
    from protocol.errors import ProtocolError, RemoteProtocolError
    from scheduler.errors import SchedulerError

    out: NodeError
    if isinstance(exc, NodeError):
        return exc
    if isinstance(exc, RemoteProtocolError):
        out = ProtocolViolation(str(exc))
    elif isinstance(exc, ProtocolError | SchedulerError):
        out = InvalidInput(str(exc))
    elif isinstance(exc, LocalLedgerError):
        out = LedgerRefused(str(exc))
    elif isinstance(exc, RemoteLedgerError):
        out = PaymentRefused(str(exc))
    elif isinstance(exc, LedgerError):
        out = LedgerFailed(str(exc))
    elif isinstance(exc, OSError):
        out = HostError(str(exc))
    else:
        return exc
    out.__cause__ = exc
    return out


@contextmanager
def translated() -> Iterator[None]:
    """Raise protocol, ledger, scheduler and OS errors from the body as node errors."""
    try:
        yield
    except Exception as exc:
        mapped = translate(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one real error inside nested task groups, if there is exactly one."""
    import trio

    real = [e for e in leaves(group) if not isinstance(e, trio.Cancelled)]
    return real[0] if len(real) == 1 else None
