"""Hypothesis properties of the call model and the framer."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.calls import WANTED_EVENTS, CallTracker
from telephony.capture import read_capture
from telephony.effects import Conversation, ConversationEnded
from telephony.framing import FrameReader, Message, printable

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
