"""Hypothesis properties of the call model and the framer."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.calls import WANTED_EVENTS, CallTracker
from telephony.capture import read_capture
from telephony.effects import Conversation, ConversationEnded
from telephony.framing import MAX_FRAME_BYTES, FrameReader, Malformed, Message, printable

from .scenario import Chan, Pbx, run

TRACES = Path(__file__).resolve().parents[1] / "traces"

OPS = ("answer", "enter", "leave", "hold", "unhold", "hangup", "wait")


def random_calls(ops: list[tuple[str, int, int, float]]) -> list[Message]:
    """Arbitrary (even nonsensical) sequences over two clients, two consultants and a Local pair."""
    pbx = Pbx()
    chans: list[Chan] = [pbx.client_calls(n=1), pbx.client_calls("84957770000", n=2)]
    chans += [pbx.consultant("101", 3), pbx.consultant("102", 4)]
    chans += list(pbx.local_pair("Local/103@agents-00000001"))
    bridges = [pbx.bridge(), pbx.bridge(), pbx.bridge("holding_bridge", "parking")]
    for op, target, bridge, seconds in ops:
        chan = chans[target % len(chans)]
        bridge_id = bridges[bridge % len(bridges)]
        if op == "wait":
            pbx.after(seconds)
        elif op == "answer":
            pbx.answer(chan)
        elif op == "enter":
            pbx.enter(bridge_id, chan)
        elif op == "leave":
            pbx.leave(bridge_id, chan)
        elif op == "hold":
            pbx.hold(chan)
        elif op == "unhold":
            pbx.unhold(chan)
        else:
            pbx.hangup(chan)
    return pbx.events


operations = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.integers(0, 5),
        st.integers(0, 2),
        st.floats(0, 3, allow_nan=False).map(lambda x: round(x, 3)),
    ),
    max_size=60,
)


@given(operations, st.sampled_from([0.0, 0.5, 1.0]))
@settings(max_examples=300, deadline=None)
def test_segments_are_ordered_disjoint_and_within_the_call(ops, debounce) -> None:
    conversations, _ = run(random_calls(ops), CallTracker(debounce=debounce))
    assert len(conversations) == 2
    for conversation in conversations:
        assert conversation.ended_at is not None
        wall = conversation.ended_at - conversation.started_at
        assert 0.0 <= conversation.talk_seconds <= wall + 1e-9
        assert 0.0 <= conversation.hold_seconds <= conversation.talk_seconds + 1e-9
        previous_end = conversation.started_at
        for segment in conversation.segments:
            assert segment.start >= previous_end - 1e-9
            assert segment.end > segment.start
            previous_end = segment.end
        assert previous_end <= conversation.ended_at + 1e-9
        named = {s.consultant for s in conversation.segments if s.consultant is not None}
        assert named <= set(conversation.consultants)


def load(name: str) -> list[Message]:
    data = (TRACES / f"{name}.ami").read_bytes()
    return [m for m, _ in read_capture(data, None, WANTED_EVENTS) if isinstance(m, Message)]


def measure(messages: list[Message]) -> dict[str, dict[str, object]]:
    tracker = CallTracker()
    effects = [e for m in messages for e in tracker.feed(m, 0.0)] + tracker.close_all()
    ended: list[Conversation] = [e.conversation for e in effects if isinstance(e, ConversationEnded)]
    return {c.conversation_id: c.to_json() for c in ended}


PAIRS = [("hold", "blind_transfer"), ("attended_transfer", "outbound"), ("inbound_abandoned", "direct_dial")]
STREAMS = {name: load(name) for pair in PAIRS for name in pair}


@given(st.sampled_from(PAIRS), st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_interleaving_unrelated_calls_changes_nothing(pair, rng: random.Random) -> None:
    first, second = (STREAMS[name] for name in pair)
    alone = measure(first) | measure(second)
    merged, i, j = [], 0, 0
    while i < len(first) or j < len(second):
        if j == len(second) or (i < len(first) and rng.random() < 0.5):
            merged.append(first[i])
            i += 1
        else:
            merged.append(second[j])
            j += 1
    assert measure(merged) == alone


CAPTURE = (TRACES / "attended_transfer.ami").read_bytes()


@given(st.lists(st.integers(1, len(CAPTURE) - 1), max_size=40, unique=True))
@settings(max_examples=100, deadline=None)
def test_framing_does_not_depend_on_how_tcp_cut_the_stream(cuts) -> None:
    whole = FrameReader().feed(CAPTURE)
    reader, pieces, start = FrameReader(), [], 0
    for cut in [*sorted(cuts), len(CAPTURE)]:
        pieces += reader.feed(CAPTURE[start:cut])
        start = cut
    assert pieces == whole


@given(st.text(min_size=1, max_size=30).filter(lambda s: "\r" not in s and "\n" not in s), st.data())
def test_any_unicode_caller_name_survives_any_split(name, data) -> None:
    frame = f"Event: Newchannel\r\nCallerIDName: {name}\r\nUniqueid: 1.1\r\n\r\n".encode()
    cut = data.draw(st.integers(1, len(frame) - 1))
    reader = FrameReader()
    messages = reader.feed(frame[:cut]) + reader.feed(frame[cut:])
    assert [m.get("CallerIDName") for m in messages if isinstance(m, Message)] == [printable(name)]


REPLY = b"Response: Success\r\nActionID: talkmeter-7\r\nPing: Pong\r\nTimestamp: 1795716685.733749\r\n\r\n"


@given(
    st.integers(MAX_FRAME_BYTES + 1, 3 * MAX_FRAME_BYTES),
    st.integers(1, len(REPLY) - 1),
    st.lists(st.integers(1, 3 * MAX_FRAME_BYTES), max_size=20, unique=True),
    st.sampled_from([b"", b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n", b"Event: Hangup\r\n"]),
    st.sampled_from([b"\r\n", b""]),
)
@settings(max_examples=40, deadline=None)
def test_a_garbage_line_never_swallows_the_reply_after_it(
    length: int, into_reply: int, cuts: list[int], before: bytes, end: bytes
) -> None:
    """Was: a 10 MB line made the framer drop its buffer each time it passed 1 MB, and with it the
    start of the ping reply that followed (or, without a line break, ran into the reply's first
    line): the session dropped as a half-open link."""
    garbage = b"\xff" * length + end  # one line, longer than any frame may be
    stream = before + garbage + REPLY
    # Cut where TCP pleases, and where the framer's buffer would overflow, and inside the reply.
    edges = {*cuts, len(before) + len(garbage) + into_reply}
    edges |= {len(before) + k * (MAX_FRAME_BYTES + 1) for k in (1, 2)}
    reader, out, start = FrameReader(), [], 0
    for cut in [*sorted(edge for edge in edges if 0 < edge < len(stream)), len(stream)]:
        out += reader.feed(stream[start:cut])
        start = cut
    replies = [m for m in out if isinstance(m, Message) and m.response == "Success"]
    assert [reply.get("ActionID") for reply in replies] == ["talkmeter-7"]
    assert any(isinstance(m, Malformed) for m in out)  # the garbage is reported
    assert len(reader._buffer) <= MAX_FRAME_BYTES


@given(st.text(max_size=40), st.sampled_from(["", "\x00", "\x1b", "\t", "\x7f", "\x85", "\r", "\n", "\x9f"]))
def test_no_control_character_reaches_a_value(text: str, control: str) -> None:
    """The cheap look that decides whether a frame needs cleaning never lets one through."""
    value = text[: len(text) // 2] + control + text[len(text) // 2 :]
    frame = f"Event: Newchannel\r\nCallerIDName: {value}\r\nUniqueid: 1.1\r\n\r\n".encode()
    for message in FrameReader().feed(frame):
        if isinstance(message, Message):
            for key, item in message.headers.items():
                assert not [c for c in key + item if unicodedata.category(c) == "Cc"], (key, item)
