"""The session book and transcript, without sockets: what each side refuses, what both
sides agree on."""

from __future__ import annotations

import re

import pytest

from protocol.errors import InvalidMessage, OutOfOrder
from protocol.messages import check_method
from protocol.sessions import MAX_VALUE_BYTES, MAX_WINDOW, Calls, Transcript

SID = "ab" * 32


def test_both_sides_replaying_the_same_calls_get_the_same_head() -> None:
    a, b = Calls(SID, 2), Calls(SID, 2)
    for book in (a, b):
        book.call(1, "reply", b"args", 2)
        book.call(2, "stream", b"", 2)
        book.item(2, b"t1")
        book.grant(2, 1)
        book.item(2, b"t2")
        book.reply(2, b"", False)
        book.reply(1, b"hi", False)
    assert a.transcript.head == b.transcript.head and a.transcript.calls == 2
    assert not a.open


@pytest.mark.parametrize("change", ["args", "item", "value", "error", "order"])
def test_any_difference_in_a_call_or_reply_changes_the_head(change: str) -> None:
    def head(**alt: object) -> str:
        book = Calls(SID, 2)
        book.call(1, "m", alt.get("args", b"a"), 1)  # type: ignore[arg-type]
        book.call(2, "m", b"b", 0)
        book.item(1, alt.get("item", b"i"))  # type: ignore[arg-type]
        first, second = (2, 1) if alt.get("order") else (1, 2)
        book.reply(first, alt.get("value", b"v"), bool(alt.get("error", False)))  # type: ignore[arg-type]
        book.reply(second, b"w", False)
        return book.transcript.head

    alt: dict[str, object] = {"args": b"A", "item": b"I", "value": b"V", "error": True,
                              "order": True}
    assert head() == head()  # canary: deterministic
    assert head(**{change: alt[change]}) != head()


def test_transcripts_of_two_sessions_never_start_alike() -> None:
    assert Transcript(SID).head != Transcript("cd" * 32).head


def test_the_book_refuses_what_the_peer_may_not_send_and_stays_as_it_was() -> None:
    book = Calls(SID, 1)
    book.call(5, "m", b"", 1)
    refused = [
        (lambda: book.call(5, "m", b"", 0), "call id 5 is not above the last one (5)"),
        (lambda: book.call(6, "m", b"", 0), "1 calls are in flight already, the "
                                             "session's concurrency is 1"),
        (lambda: book.item(9, b""), "call 9 is not in flight"),
        (lambda: book.grant(5, MAX_WINDOW), f"credit {MAX_WINDOW} would leave call 5 above "
                                             f"{MAX_WINDOW} unread items"),
        (lambda: book.reply(9, b"", False), "call 9 is not in flight"),
    ]
    for attempt, message in refused:
        with pytest.raises(OutOfOrder, match=f"^{re.escape(message)}"):
            attempt()
    book.item(5, b"x")  # within the window of 1
    with pytest.raises(OutOfOrder, match="beyond the reader's credit"):
        book.item(5, b"y")
    with pytest.raises(OutOfOrder, match="exceeds"):
        book.reply(5, b"x" * (MAX_VALUE_BYTES + 1), False)
    assert list(book.open) == [5] and book.transcript.calls == 0
    book.reply(5, b"", False)
    assert book.transcript.calls == 1
    assert book.grant(5, 1) is None  # credit that crossed the reply is let go
    with pytest.raises(OutOfOrder, match=r"^call 6 is not in flight$"):
        book.grant(6, 1)  # a call never made is not


@pytest.mark.parametrize("name", ["_private", "__class__", "1x", "a-b", "", "x" * 129])
def test_only_public_method_names_may_be_called(name: str) -> None:
    with pytest.raises(InvalidMessage):
        check_method(name)
    check_method("reply")  # canary
