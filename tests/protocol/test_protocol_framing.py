"""Length-prefixed frames: any split of the byte stream gives the same frames; caps hold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import FrameTooLarge, InvalidMessage
from protocol.framing import DEFAULT_MAX_FRAME, HEADER, FrameDecoder, encode_frame

CAP = 64


def drain(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def test_encode_frame_is_big_endian_length_then_body() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert HEADER.size == 4


def test_one_frame_at_a_time() -> None:
    decoder = FrameDecoder()
    assert decoder.next_frame() is None
    decoder.feed(encode_frame(b"hello")[:6])
    assert decoder.next_frame() is None
    assert decoder.buffered == 6
    decoder.feed(b"llo")
    assert decoder.next_frame() == b"hello"
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


frames_strategy = st.lists(st.binary(max_size=CAP), max_size=8)


@settings(max_examples=300, deadline=None)
@given(frames_strategy, st.data())
def test_any_split_gives_the_same_frames(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(f, max_size=CAP) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder(max_size=CAP)
    got: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[start:end])
        got.extend(drain(decoder))
    assert got == frames
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(frames_strategy)
def test_byte_by_byte_gives_the_same_frames(frames: list[bytes]) -> None:
    stream = b"".join(encode_frame(f, max_size=CAP) for f in frames)
    decoder = FrameDecoder(max_size=CAP)
    got: list[bytes] = []
    for i in range(len(stream)):
        decoder.feed(stream[i:i + 1])
        got.extend(drain(decoder))
    assert got == frames


def test_frame_at_the_cap_passes_and_one_more_byte_raises() -> None:
    decoder = FrameDecoder(max_size=CAP)
    decoder.feed(encode_frame(b"x" * CAP, max_size=CAP))
    assert decoder.next_frame() == b"x" * CAP
    with pytest.raises(FrameTooLarge, match=rf"^frame announces {CAP + 1} bytes, cap is {CAP}$"):
        FrameDecoder(max_size=CAP).feed(HEADER.pack(CAP + 1) + b"x" * (CAP + 1))


def test_encode_frame_refuses_oversize_bodies_locally() -> None:
    assert encode_frame(b"x" * CAP, max_size=CAP)[4:] == b"x" * CAP
    too_big = rf"^frame of {CAP + 1} bytes exceeds the cap of {CAP}$"
    with pytest.raises(InvalidMessage, match=too_big):
        encode_frame(b"x" * (CAP + 1), max_size=CAP)


def test_the_header_alone_of_an_oversize_frame_raises_at_once() -> None:
    decoder = FrameDecoder(max_size=CAP)
    header = HEADER.pack(CAP + 1)
    for byte in header[:-1]:
        decoder.feed(bytes([byte]))  # three bytes are not yet a header: nothing to judge
    with pytest.raises(FrameTooLarge, match=rf"^frame announces {CAP + 1} bytes, cap is {CAP}$"):
        decoder.feed(header[-1:])  # no body byte has arrived


def test_a_hostile_four_gigabyte_claim_raises_under_the_default_cap() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge, match=rf"^frame announces 4294967295 bytes, cap is "
                       rf"{DEFAULT_MAX_FRAME}$"):
        decoder.feed(b"\xff\xff\xff\xff")
    # the decoder stays failed: later reads raise too, never return a frame
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_an_oversize_frame_behind_a_valid_one_raises() -> None:
    decoder = FrameDecoder(max_size=CAP)
    decoder.feed(encode_frame(b"ok", max_size=CAP))
    decoder.feed(HEADER.pack(CAP + 1))
    with pytest.raises(FrameTooLarge):
        drain(decoder)


def test_frames_before_an_oversize_header_are_still_delivered() -> None:
    decoder = FrameDecoder(max_size=CAP)
    decoder.feed(encode_frame(b"ok", max_size=CAP) + HEADER.pack(CAP + 1))
    assert decoder.next_frame() == b"ok"
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
