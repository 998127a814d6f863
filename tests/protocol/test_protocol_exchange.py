"""The job and settle exchange tables, without sockets: every step, every refusal, the ends."""

from __future__ import annotations

import re

import pytest

from protocol import wire
from protocol.errors import OutOfOrder, ProtocolError, SendOutOfOrder, WrongMessageType
from protocol.exchange import (
    CLOSED,
    INPUTS_DONE,
    JOB,
    ROLES,
    SESSION,
    SETTLE,
    TABLES,
    Exchange,
    Role,
    Table,
)

JOB_ID = "ab" * 32
D1, D2 = "11" * 32, "22" * 32
SAMPLE: dict[str, wire.Frame] = {
    "submit": wire.SubmitJob(spec=b"spec"),
    "quote": wire.QuoteOffer(quote=b"quote"),
    "quote_accept": wire.QuoteAccept(job_id=JOB_ID),
    "queued": wire.Queued(position=1),
    "accepted": wire.Accepted(job_id=JOB_ID, need=(D1,), resume={}),
    "chunk": wire.Chunk(name="a.py", offset=0, data=b"x", final=False),
    "running": wire.Running(elapsed_s=1.0),
    "result": wire.ResultReady(result=b"result"),
    "error": wire.ErrorReply(code="bad_request", message="no"),
    "output": wire.Output(stream="stdout", text="hi\n"),
    "settle": wire.Settle(receipt=b"r", cheque=b""),
    "settle_ack": wire.SettleAck(job_id=JOB_ID),
    "result_query": wire.ResultQuery(job_id=JOB_ID),
    "lane": wire.Lane(port=0, token=b"", cert=b"cert"),
    "fetch_outputs": wire.FetchOutputs(job_id=JOB_ID),
    "session_open": wire.SessionOpen(spec=b"spec"),
    "session_ready": wire.SessionReady(job_id=JOB_ID),
    "call": wire.MethodCall(id=1, method="reply", args=b"a", window=4),
    "credit": wire.Credit(id=1, n=2),
    "item": wire.Item(id=1, value=b"i"),
    "reply": wire.Reply(id=1, value=b"v", error=False),
    "checkpoint": wire.Checkpoint(result=b"r"),
    "session_close": wire.SessionClose(abandon=False),
    "session_end": wire.SessionEnd(result=b"r"),
    "detached": wire.Detached(job_id=JOB_ID, keep_s=3600),
    "logs_query": wire.LogsQuery(job_id=JOB_ID, follow=True),
    "logs_end": wire.LogsEnd(job_id=JOB_ID, running=False),
    "cancel_job": wire.CancelJob(job_id=JOB_ID),
}
P: Role = "provider"
R: Role = "requester"
# how to reach each state from the start: (sender, frame)
PATHS: dict[tuple[str, str], list[tuple[Role, wire.Frame]]] = {
    ("job", "start"): [],
    ("job", "submitted"): [(R, SAMPLE["submit"])],
    ("job", "quoted"): [(R, SAMPLE["submit"]), (P, SAMPLE["quote"])],
    ("job", "waiting"): [(R, SAMPLE["submit"]), (P, SAMPLE["quote"]),
                         (R, SAMPLE["quote_accept"])],
    ("job", "inputs"): [(R, SAMPLE["submit"]), (P, SAMPLE["quote"]),
                        (R, SAMPLE["quote_accept"]),
                        (P, wire.Accepted(job_id=JOB_ID, need=(D1, D2), resume={}))],
    ("job", "running"): [(R, SAMPLE["submit"]), (P, SAMPLE["quote"]),
                         (R, SAMPLE["quote_accept"]),
                         (P, wire.Accepted(job_id=JOB_ID, need=(), resume={}))],
    ("job", "outputs"): [(R, SAMPLE["submit"]), (P, SAMPLE["quote"]),
                         (R, SAMPLE["quote_accept"]),
                         (P, wire.Accepted(job_id=JOB_ID, need=(), resume={})),
                         (P, SAMPLE["result"])],
    ("job", "inputs_lane"): [(R, SAMPLE["submit"]), (P, SAMPLE["quote"]),
                             (R, SAMPLE["quote_accept"]),
                             (P, wire.Accepted(job_id=JOB_ID, need=(D1, D2), resume={})),
                             (P, SAMPLE["lane"]), (R, SAMPLE["lane"])],
    ("job", "outputs_lane"): [(R, SAMPLE["submit"]), (P, SAMPLE["quote"]),
                              (R, SAMPLE["quote_accept"]),
                              (P, wire.Accepted(job_id=JOB_ID, need=(), resume={})),
                              (P, SAMPLE["result"]), (R, SAMPLE["lane"]), (P, SAMPLE["lane"])],
    ("job", CLOSED): [(P, SAMPLE["error"])],
    ("job", "moved"): [(R, SAMPLE["submit"]), (P, SAMPLE["quote"]),
                       (R, SAMPLE["quote_accept"]),
                       (P, wire.Accepted(job_id=JOB_ID, need=(), resume={})),
                       (P, SAMPLE["result"]), (R, SAMPLE["fetch_outputs"])],
    ("settle", "start"): [],
    ("settle", "settling"): [(R, SAMPLE["settle"])],
    ("settle", "querying"): [(R, SAMPLE["result_query"])],
    ("settle", "done"): [(R, SAMPLE["settle"]), (P, SAMPLE["settle_ack"])],
    ("settle", CLOSED): [(R, SAMPLE["error"])],
    ("settle", "outputs"): [(R, SAMPLE["fetch_outputs"])],
    ("settle", "logs"): [(R, SAMPLE["logs_query"])],
    ("settle", "cancelling"): [(R, SAMPLE["cancel_job"])],
    ("job", "done"): [(R, SAMPLE["submit"]), (P, SAMPLE["quote"]),
                      (R, SAMPLE["quote_accept"]),
                      (P, wire.Accepted(job_id=JOB_ID, need=(), resume={})),
                      (P, SAMPLE["detached"])],
    **{("session", state): path for state, path in {
        "start": [],
        "submitted": [(R, SAMPLE["session_open"])],
        "quoted": [(R, SAMPLE["session_open"]), (P, SAMPLE["quote"])],
        "waiting": [(R, SAMPLE["session_open"]), (P, SAMPLE["quote"]),
                    (R, SAMPLE["quote_accept"])],
        "inputs": [(R, SAMPLE["session_open"]), (P, SAMPLE["quote"]),
                   (R, SAMPLE["quote_accept"]),
                   (P, wire.Accepted(job_id=JOB_ID, need=(D1, D2), resume={}))],
        "starting": [(R, SAMPLE["session_open"]), (P, SAMPLE["quote"]),
                     (R, SAMPLE["quote_accept"]),
                     (P, wire.Accepted(job_id=JOB_ID, need=(), resume={}))],
        "open": [(R, SAMPLE["session_open"]), (P, SAMPLE["quote"]),
                 (R, SAMPLE["quote_accept"]),
                 (P, wire.Accepted(job_id=JOB_ID, need=(), resume={})),
                 (P, SAMPLE["session_ready"])],
        "closing": [(R, SAMPLE["session_open"]), (P, SAMPLE["quote"]),
                    (R, SAMPLE["quote_accept"]),
                    (P, wire.Accepted(job_id=JOB_ID, need=(), resume={})),
                    (P, SAMPLE["session_ready"]), (R, SAMPLE["session_close"])],
        "done": [(R, SAMPLE["session_open"]), (P, SAMPLE["quote"]),
                 (R, SAMPLE["quote_accept"]),
                 (P, wire.Accepted(job_id=JOB_ID, need=(), resume={})),
                 (P, SAMPLE["session_end"])],
        CLOSED: [(R, SAMPLE["error"])],
    }.items()},
    ("settle", "outputs_lane"): [(R, SAMPLE["fetch_outputs"]), (R, SAMPLE["lane"]),
                                 (P, SAMPLE["lane"])],
}


def at(table: Table, state: str, role: Role) -> Exchange:
    """`role`'s machine, driven from the start to `state` by frames the table allows."""
    ex = Exchange(table, role)
    for sender, frame in PATHS[(table.name, state)]:
        (ex.send if sender == role else ex.receive)(frame)
    assert ex.state == state
    return ex


def feed(ex: Exchange, sender: Role, frame: wire.Frame) -> None:
    (ex.send if sender == ex.role else ex.receive)(frame)


def test_every_frame_type_has_a_sample_and_every_state_a_path() -> None:
    assert set(SAMPLE) == set(wire.FRAME_TYPES)
    assert {(t.name, s) for t in TABLES for s in t.states} == set(PATHS)


STEPS = [pytest.param(t, s, id=f"{t.name}:{s.state}-{s.sender}-{s.event}")
         for t in TABLES for s in t.steps if s.sender is not None]


@pytest.mark.parametrize(("table", "step"), STEPS)
@pytest.mark.parametrize("role", ROLES)
def test_every_allowed_step_moves_both_sides_to_its_next_state(
        table: Table, step: object, role: Role) -> None:
    from protocol.exchange import Step

    assert isinstance(step, Step) and step.sender is not None
    ex = at(table, step.state, role)
    frame = SAMPLE[step.event]
    if (step.state, step.event) == ("inputs", "chunk"):
        frame = wire.Chunk(name="a", offset=0, data=b"", final=True)  # one of two files
    feed(ex, step.sender, frame)
    assert ex.state == step.next


REFUSED = [pytest.param(t, state, sender, name, id=f"{t.name}:{state}-{sender}-{name}")
           for t in TABLES for state in t.states for sender in ROLES for name in SAMPLE
           if t.next_state(state, sender, name) is None]


@pytest.mark.parametrize(("table", "state", "sender", "name"), REFUSED)
@pytest.mark.parametrize("role", ROLES)
def test_every_other_frame_is_refused_and_leaves_the_state(
        table: Table, state: str, sender: Role, name: str, role: Role) -> None:
    ex = at(table, state, role)
    error = SendOutOfOrder if sender == role else OutOfOrder
    with pytest.raises(error, match=f"^frame '{name}' from the {sender} is out of order"):
        feed(ex, sender, SAMPLE[name])
    assert ex.state == state


def test_the_refusal_names_state_and_what_the_sender_may_send() -> None:
    ex = at(JOB, "submitted", R)
    message = ("frame 'accepted' from the provider is out of order: in state 'submitted' of "
               "the job exchange the provider may send 'quote', 'error'")
    with pytest.raises(OutOfOrder, match=f"^{re.escape(message)}$"):
        ex.receive(SAMPLE["accepted"])
    closed = at(SETTLE, "done", P)
    message = ("frame 'error' from the provider is out of order: in state 'done' of the "
               "settle exchange the provider may send nothing")
    with pytest.raises(SendOutOfOrder, match=f"^{re.escape(message)}$"):
        closed.send(SAMPLE["error"])


def test_out_of_order_is_a_remote_wrong_message_type() -> None:
    assert issubclass(OutOfOrder, WrongMessageType)
    assert not issubclass(SendOutOfOrder, WrongMessageType)


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_terminal_states_take_no_frame_and_every_open_state_ends_on_error(
        table: Table) -> None:
    assert table.terminal <= set(table.states)
    for state in table.states:
        if state in table.terminal:
            assert not any(s.state == state for s in table.steps)
            assert at(table, state, P).closed
        else:
            for sender in ROLES:
                assert table.next_state(state, sender, "error") == CLOSED
            assert not at(table, state, P).closed


def test_inputs_are_done_after_the_final_chunk_of_each_needed_file() -> None:
    ex = at(JOB, "inputs", P)  # two files needed
    ex.receive(wire.Chunk(name="a", offset=0, data=b"x", final=False))
    ex.receive(wire.Chunk(name="a", offset=1, data=b"y", final=True))
    assert ex.state == "inputs"
    with pytest.raises(SendOutOfOrder):
        ex.send(SAMPLE["running"])  # not before the last input
    ex.receive(wire.Chunk(name="b", offset=0, data=b"", final=True))
    assert ex.state == "running"
    with pytest.raises(OutOfOrder):
        ex.receive(SAMPLE["chunk"])  # no more inputs
    assert JOB.next_state("inputs", None, INPUTS_DONE) == "running"


def test_a_lane_for_inputs_ends_in_running_by_the_providers_frames_or_by_chunks() -> None:
    ex = at(JOB, "inputs_lane", R)
    ex.receive(SAMPLE["running"])  # the inputs came over the lane
    assert ex.state == "running"
    fell_back = at(JOB, "inputs_lane", P)  # the lane did not open: chunks on the stream
    fell_back.receive(wire.Chunk(name="a", offset=0, data=b"x", final=True))
    assert fell_back.state == "inputs_lane"
    with pytest.raises(SendOutOfOrder):
        fell_back.send(SAMPLE["lane"])
    fell_back.receive(wire.Chunk(name="b", offset=0, data=b"", final=True))
    assert fell_back.state == "running"
    with pytest.raises(OutOfOrder):
        at(JOB, "running", P).receive(SAMPLE["lane"])  # no lane once inputs are done


def test_a_lane_frame_offer_is_bounded_and_consistent() -> None:
    from protocol.errors import InvalidMessage

    ok = wire.Lane(port=4242, token=b"t" * 32, cert=b"c")
    assert wire.decode(wire.encode(ok)[4:]) == ok
    for bad in ({"port": 4242, "token": b"t" * 31, "cert": b"c"},
                {"port": 4242, "token": b"t" * 32, "cert": b""}):
        with pytest.raises(InvalidMessage):
            wire.Lane(**bad)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        wire.Lane(port=70000, token=b"", cert=b"")
    with pytest.raises(ProtocolError):
        wire.Lane(port=0, token=b"", cert=b"c" * (wire.MAX_LANE_CERT + 1))


def test_nothing_needed_goes_straight_to_running() -> None:
    ex = at(JOB, "waiting", R)
    ex.receive(wire.Accepted(job_id=JOB_ID, need=(), resume={}))
    assert ex.state == "running"


def test_a_whole_job_and_its_settlement_in_order() -> None:
    pro, req = Exchange(JOB, P), Exchange(JOB, R)
    script: list[tuple[Role, wire.Frame]] = [
        (R, SAMPLE["submit"]), (P, SAMPLE["quote"]), (R, SAMPLE["quote_accept"]),
        (P, SAMPLE["queued"]), (P, SAMPLE["queued"]), (P, SAMPLE["accepted"]),
        (R, wire.Chunk(name="a.py", offset=0, data=b"x", final=True)),
        (P, SAMPLE["running"]), (P, SAMPLE["output"]), (P, SAMPLE["result"]),
        (P, SAMPLE["chunk"]), (P, wire.Chunk(name="o", offset=1, data=b"", final=True))]
    for sender, frame in script:
        for ex in (pro, req):
            feed(ex, sender, frame)
        assert pro.state == req.state
    assert pro.state == "outputs"
    pay = Exchange(SETTLE, R)
    pay.send(SAMPLE["result_query"])
    pay.receive(SAMPLE["result"])
    assert pay.state == "done" and pay.closed


def test_outputs_moved_to_a_settle_stream_end_the_job_stream_and_arrive_there() -> None:
    job = at(JOB, "outputs", P)
    job.receive(SAMPLE["fetch_outputs"])
    assert job.state == "moved" and job.table.allowed("moved", P) == ("error",)
    with pytest.raises(SendOutOfOrder):
        job.send(SAMPLE["chunk"])  # nothing more goes on the job stream
    job.send(SAMPLE["error"])  # but a named error may
    fetch = Exchange(SETTLE, P)
    fetch.receive(SAMPLE["fetch_outputs"])
    fetch.receive(SAMPLE["lane"])
    fetch.send(SAMPLE["chunk"])  # the requester's lane offer declined: chunks
    assert fetch.state == "outputs"
    with pytest.raises(OutOfOrder):
        at(JOB, "running", P).receive(SAMPLE["fetch_outputs"])  # only once the result is out


def test_a_session_serves_calls_until_closed_and_ends_with_its_result() -> None:
    pro, req = at(SESSION, "open", P), at(SESSION, "open", R)
    script: list[tuple[Role, wire.Frame]] = [
        (R, SAMPLE["call"]), (P, SAMPLE["output"]), (P, SAMPLE["item"]), (R, SAMPLE["credit"]),
        (P, SAMPLE["item"]), (P, SAMPLE["checkpoint"]), (P, SAMPLE["reply"]),
        (R, SAMPLE["call"]), (R, SAMPLE["session_close"]), (P, SAMPLE["reply"]),
        (P, SAMPLE["session_end"])]
    for sender, frame in script:
        for ex in (pro, req):
            feed(ex, sender, frame)
        assert pro.state == req.state
    assert pro.state == "done" and pro.closed
    closing = at(SESSION, "closing", P)
    with pytest.raises(OutOfOrder):
        closing.receive(SAMPLE["call"])  # no new call once closing


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_the_two_roles_see_one_table_mirrored(table: Table) -> None:
    provider = {(s, d, e, n) for s, d, e, n in table.for_role(P)}
    requester = {(s, "send" if d == "receive" else "receive", e, n)
                 for s, d, e, n in table.for_role(R)}
    assert provider == requester
    assert len(provider) == sum(1 for s in table.steps if s.sender is not None)


def test_every_event_is_a_frame_type_or_the_automatic_one() -> None:
    for table in TABLES:
        for s in table.steps:
            assert (s.event in wire.FRAME_TYPES) == (s.sender is not None)
            assert s.sender is not None or s.event == INPUTS_DONE
