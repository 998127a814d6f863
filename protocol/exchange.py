"""The job and settle exchanges as transition tables, one view per role, sans-I/O (like h11).

A `Table` lists every allowed step of one exchange as (state, sender, event, next state);
an event is a frame type, or `inputs_done` (no needed input is left to receive), which the
machine takes on its own. An `error` frame from either side ends every open state in
`closed`. `Exchange` is one side's machine: feed it each frame this side sends
(`send`) or receives (`receive`); a frame its table does not allow raises `OutOfOrder`
(from the peer) or `SendOutOfOrder` (our own bug) and leaves the state as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from protocol import wire
from protocol.errors import OutOfOrder, SendOutOfOrder

Role = Literal["provider", "requester"]
Direction = Literal["send", "receive"]
ROLES: tuple[Role, Role] = ("provider", "requester")
INPUTS_DONE = "inputs_done"
"""The automatic event: the last needed input's final chunk arrived (or none was needed)."""
INPUT_STATES = ("inputs", "inputs_lane")
"""Where the requester's chunks count towards `inputs_done`."""
CLOSED = "closed"
MOVED = "moved"
"""The job stream after its outputs moved to a settle stream (`fetch_outputs`): nothing
but an error frame may follow; it closes when the fetch ended."""


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    state: str
    sender: Role | None
    """Who sends the frame; None for the automatic `inputs_done`."""
    event: str
    next: str


@dataclasses.dataclass(frozen=True, slots=True)
class Table:
    """One exchange: its stream protocol, start state, terminal states and steps."""

    name: str
    protocol: str
    start: str
    terminal: frozenset[str]
    steps: tuple[Step, ...]

    @property
    def states(self) -> tuple[str, ...]:
        seen: dict[str, None] = {self.start: None}
        for s in self.steps:
            seen.setdefault(s.state)
            seen.setdefault(s.next)
        return tuple(seen)

    def next_state(self, state: str, sender: Role | None, event: str) -> str | None:
        for s in self.steps:
            if (s.state, s.sender, s.event) == (state, sender, event):
                return s.next
        return None

    def allowed(self, state: str, sender: Role) -> tuple[str, ...]:
        """The frame types `sender` may send in `state`."""
        return tuple(s.event for s in self.steps if s.state == state and s.sender == sender)

    def for_role(self, role: Role) -> tuple[tuple[str, Direction, str, str], ...]:
        """This table as one side sees it: (state, send|receive, frame type, next state)."""
        return tuple((s.state, "send" if s.sender == role else "receive", s.event, s.next)
                     for s in self.steps if s.sender is not None)


def _with_errors(name: str, protocol: str, start: str, terminal: frozenset[str],
                 steps: tuple[Step, ...]) -> Table:
    """`steps`, and an `error` from either side in every state that is not terminal."""
    open_states = dict.fromkeys(x for s in steps for x in (s.state, s.next)
                                if x not in terminal)
    errors = tuple(Step(state, sender, wire.ErrorReply.type_name, CLOSED)
                   for state in open_states for sender in ROLES)
    return Table(name=name, protocol=protocol, start=start, terminal=terminal,
                 steps=steps + errors)


P: Role = "provider"
R: Role = "requester"

JOB = _with_errors("job", wire.JOB_PROTOCOL, "start", frozenset({CLOSED, "done"}), (
    Step("start", R, wire.SubmitJob.type_name, "submitted"),
    Step("submitted", P, wire.QuoteOffer.type_name, "quoted"),
    Step("quoted", R, wire.QuoteAccept.type_name, "waiting"),
    Step("waiting", P, wire.Queued.type_name, "waiting"),
    Step("waiting", P, wire.Accepted.type_name, "inputs"),
    Step("inputs", R, wire.Chunk.type_name, "inputs"),
    Step("inputs", None, INPUTS_DONE, "running"),
    Step("inputs", P, wire.Lane.type_name, "inputs"),
    Step("inputs", R, wire.Lane.type_name, "inputs_lane"),
    Step("inputs_lane", R, wire.Chunk.type_name, "inputs_lane"),
    Step("inputs_lane", None, INPUTS_DONE, "running"),
    Step("inputs_lane", P, wire.Running.type_name, "running"),
    Step("inputs_lane", P, wire.Output.type_name, "running"),
    Step("inputs_lane", P, wire.ResultReady.type_name, "outputs"),
    Step("running", P, wire.Running.type_name, "running"),
    Step("running", P, wire.Output.type_name, "running"),
    Step("running", P, wire.ResultReady.type_name, "outputs"),
    Step("outputs", P, wire.Chunk.type_name, "outputs"),
    Step("outputs", R, wire.Lane.type_name, "outputs"),
    Step("outputs", P, wire.Lane.type_name, "outputs_lane"),
    Step("outputs_lane", P, wire.Chunk.type_name, "outputs_lane"),
    Step("outputs", R, wire.FetchOutputs.type_name, MOVED),
    Step("running", P, wire.Detached.type_name, "done"),
    Step("inputs_lane", P, wire.Detached.type_name, "done"),
))
"""`/offload/job/1.0.0`. The stream ends after the last output chunk (the signed result
names the outputs), or after an error frame, or (`moved`) once the requester has fetched
the outputs on a settle stream, or (`done`) once the provider said a job whose spec asks
to `detach` runs on without it. A phase of at least `wire.LANE_MIN_BYTES`
starts with the receiver's `lane` offer; the sender's `lane` answer means it dials the
lane (`inputs_lane`, `outputs_lane`), and chunks may still follow there if it fails."""

SETTLE = _with_errors("settle", wire.SETTLE_PROTOCOL, "start", frozenset({"done", CLOSED}), (
    Step("start", R, wire.Settle.type_name, "settling"),
    Step("start", R, wire.ResultQuery.type_name, "querying"),
    Step("settling", P, wire.SettleAck.type_name, "done"),
    Step("querying", P, wire.ResultReady.type_name, "done"),
    Step("start", R, wire.FetchOutputs.type_name, "outputs"),
    Step("outputs", P, wire.Chunk.type_name, "outputs"),
    Step("outputs", R, wire.Lane.type_name, "outputs"),
    Step("outputs", P, wire.Lane.type_name, "outputs_lane"),
    Step("outputs_lane", P, wire.Chunk.type_name, "outputs_lane"),
    Step("querying", P, wire.Running.type_name, "done"),
    Step("start", R, wire.LogsQuery.type_name, "logs"),
    Step("logs", P, wire.Output.type_name, "logs"),
    Step("logs", P, wire.Running.type_name, "logs"),
    Step("logs", P, wire.LogsEnd.type_name, "done"),
    Step("logs", P, wire.ResultReady.type_name, "done"),
    Step("start", R, wire.CancelJob.type_name, "cancelling"),
    Step("cancelling", P, wire.ResultReady.type_name, "done"),
))
"""`/offload/settle/1.0.0`: a receipt (and cheque) acknowledged, or a lost result asked
for again (one request, one answer); or the outputs of a job whose stream moved them
here, sent as on the job stream (the stream ends after the last chunk). A result asked
for may still be `running`. The output of a job (`logs_query`) comes as `output` frames
until `logs_end`, or as its signed result once it ended; a `cancel_job` is answered by the
signed result of the stopped job."""

_CALLS = (wire.Item, wire.Reply, wire.Output, wire.Checkpoint)
SESSION = _with_errors("session", wire.SESSION_PROTOCOL, "start", frozenset({"done", CLOSED}), (
    Step("start", R, wire.SessionOpen.type_name, "submitted"),
    Step("submitted", P, wire.QuoteOffer.type_name, "quoted"),
    Step("quoted", R, wire.QuoteAccept.type_name, "waiting"),
    Step("waiting", P, wire.Queued.type_name, "waiting"),
    Step("waiting", P, wire.Accepted.type_name, "inputs"),
    Step("inputs", R, wire.Chunk.type_name, "inputs"),
    Step("inputs", None, INPUTS_DONE, "starting"),
    Step("starting", P, wire.Output.type_name, "starting"),
    Step("starting", P, wire.SessionReady.type_name, "open"),
    Step("starting", P, wire.SessionEnd.type_name, "done"),
    Step("open", R, wire.MethodCall.type_name, "open"),
    Step("open", R, wire.Credit.type_name, "open"),
    *(Step("open", P, f.type_name, "open") for f in _CALLS),
    Step("open", R, wire.SessionClose.type_name, "closing"),
    Step("open", P, wire.SessionEnd.type_name, "done"),
    Step("closing", R, wire.Credit.type_name, "closing"),
    *(Step("closing", P, f.type_name, "closing") for f in _CALLS),
    Step("closing", P, wire.SessionEnd.type_name, "done"),
))
"""`/offload/session/1.0.0`: a lease opened like a job (spec, quote, inputs), the object
built (`starting`), then calls, streamed items, replies and checkpoints in any order
(protocol.sessions.Calls keeps ids, concurrency and credit), until the requester closes
it or the provider ends it (idle timeout, maximum duration, failure) with the final
signed SessionResult; settled afterwards on the settle protocol like a job."""

TABLES = (JOB, SETTLE, SESSION)


class Exchange:
    """One side of one exchange: the current state, moved only by frames its table allows."""

    def __init__(self, table: Table, role: Role) -> None:
        self.table = table
        self.role = role
        self.peer: Role = R if role == P else P
        self.state = table.start
        self._inputs_left = 0

    @property
    def closed(self) -> bool:
        return self.state in self.table.terminal

    def send(self, frame: wire.Frame) -> None:
        """Record a frame this side is about to send; SendOutOfOrder if the table forbids it."""
        self._step(frame, self.role, SendOutOfOrder)

    def receive(self, frame: wire.Frame) -> None:
        """Record a frame the peer sent; OutOfOrder if the table forbids it."""
        self._step(frame, self.peer, OutOfOrder)

    def _step(self, frame: wire.Frame, sender: Role,
              error: type[OutOfOrder] | type[SendOutOfOrder]) -> None:
        nxt = self.table.next_state(self.state, sender, frame.type_name)
        if nxt is None:
            allowed = ", ".join(map(repr, self.table.allowed(self.state, sender)))
            raise error(f"frame {frame.type_name!r} from the {sender} is out of order: in "
                        f"state {self.state!r} of the {self.table.name} exchange the "
                        f"{sender} may send {allowed or 'nothing'}")
        if isinstance(frame, wire.Accepted):
            self._inputs_left = len(frame.need)
        elif isinstance(frame, wire.Chunk) and self.state in INPUT_STATES and frame.final:
            self._inputs_left -= 1
        self.state = nxt
        if self.state in INPUT_STATES and self._inputs_left <= 0:
            auto = self.table.next_state(self.state, None, INPUTS_DONE)
            assert auto is not None
            self.state = auto


def markdown(table: Table) -> str:
    """The table as SPEC.md shows it (a test keeps the two equal)."""
    error = wire.ErrorReply.type_name
    lines = [f"#### `{table.protocol}` ({table.name} exchange)", "",
             "| state | sender | frame | next state |", "| --- | --- | --- | --- |"]
    for s in table.steps:
        if s.event != error:
            frame = f"`{s.event}`" if s.sender else f"({s.event}: automatic)"
            lines.append(f"| `{s.state}` | {s.sender or '-'} | {frame} | `{s.next}` |")
    open_states = [s for s in table.states if s not in table.terminal]
    lines += ["", f"Start state `{table.start}`; terminal: "
              + ", ".join(f"`{t}`" for t in sorted(table.terminal)) + ". In "
              + ", ".join(f"`{s}`" for s in open_states)
              + f", either side may send `{error}`, which moves to `{CLOSED}`."]
    return "\n".join(lines) + "\n"
