"""Which `Timestamp`s are believed (telephony.stamps): a table of cases and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.calls import WANTED_EVENTS, CallTracker
from telephony.capture import Chunk, read_capture
from telephony.effects import Anomaly, ConversationEnded
from telephony.framing import Message
from telephony.stamps import TOLERANCE, StreamClock, read_stamp

T = 1_795_716_685.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1795716685.733749", 1795716685.733749),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("-1", None),
        ("0", None),
        ("1e300", None),
        ("4102444800", None),  # 2100-01-01
        ("soon", None),
        ("", None),
    ],
)
def test_only_plausible_times_are_read(raw: str, expected: float | None) -> None:
    assert read_stamp(raw) == expected
    assert Message({"Timestamp": raw}).timestamp == expected


@pytest.mark.parametrize(
    ("stamps", "believed"),
    [
        ([T, T + 1, T + 2], [True, True, True]),
        ([T, T - 0.000_1, T + 1], [True, True, True]),  # sub-millisecond inversion between threads
        ([T, -1.0, T + 1], [True, False, True]),
        ([T, T - 3600, T + 1], [True, False, True]),  # an hour behind the stream
        ([T, T + 3600, T + 1], [True, False, True]),  # an hour ahead of the receive clock
        ([T - 4 * 86400, T - 4 * 86400 + 1], [True, True]),  # a replay days behind our clock: its own
    ],
)
def test_live_stamps_are_believed_when_consistent_with_the_stream(
    stamps: list[float], believed: list[bool]
) -> None:
    clock = StreamClock()
    verdicts = [clock.judge(repr(stamp), received=float(n)) for n, stamp in enumerate(stamps)]
    assert [verdict.believed for verdict in verdicts] == believed
    for verdict, stamp, n in zip(verdicts, stamps, range(len(stamps)), strict=True):
        if not verdict.believed:
            assert verdict.at == pytest.approx(stamps[0] + n)  # the last believed + receive time
            assert verdict.reason
        else:
            assert verdict.at == stamp


def test_a_capture_keeps_its_own_clock_across_a_quiet_night() -> None:
    clock = StreamClock()
    assert [clock.judge(repr(stamp)).believed for stamp in (T, T + 8 * 3600, T + 8 * 3600 - 1e6)] == [
        True,
        True,
        False,
    ]


def test_a_new_session_is_anchored_again() -> None:
    clock = StreamClock()
    clock.judge(repr(T), received=0.0)
    assert not clock.judge(repr(T - 86400), received=1.0).believed
    clock.restart()
    assert clock.judge(repr(T - 86400), received=2.0).believed


def test_before_any_time_an_unbelievable_stamp_has_no_estimate() -> None:
    verdict = StreamClock().judge("nan", received=5.0)
    assert (verdict.at, verdict.believed) == (None, False)


HOSTILE = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e300", "", "x", "1795716685.7.3"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(TOLERANCE + 1, 1e9).map(lambda offset: repr(T - offset)),
)


@given(
    st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=40),
    st.lists(st.tuples(st.integers(1, 39), HOSTILE), max_size=10),
)
def test_hostile_stamps_never_move_the_stream(gaps: list[float], hostile: list[tuple[int, str]]) -> None:
    """Whatever replaces some stamps of a live stream, the time used for every event stays finite
    and close to the truth, and every true stamp after the first is believed."""
    truth = [T + sum(gaps[: n + 1]) for n in range(len(gaps))]
    raw = [repr(stamp) for stamp in truth]
    for index, value in hostile:
        if index < len(raw):
            raw[index] = value
    clock = StreamClock()
    for n, (stamp, text) in enumerate(zip(truth, raw, strict=True)):
        verdict = clock.judge(text, received=stamp - T)  # the receive clock runs with the PBX's
        assert verdict.at is not None and math.isfinite(verdict.at)
        assert abs(verdict.at - stamp) <= TOLERANCE or (verdict.believed and text != repr(stamp))
        if text == repr(stamp) and n > 0:
            assert verdict.believed and verdict.at == stamp


def frame(event: str, stamp: str, **headers: str) -> bytes:
    lines = [f"Event: {event}", f"Timestamp: {stamp}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


CALL = {"Channel": "PJSIP/trunk-00000001", "Uniqueid": "1.1", "ChannelState": "4"}


def call_with_first_stamp(first: str) -> tuple[bytes, bytes]:
    newchannel = frame("Newchannel", first, **CALL, CallerIDNum="+74951234567", Exten="74950000000")
    return newchannel, frame("Hangup", repr(T + 5), **CALL)


@pytest.mark.parametrize(("timed", "start"), [(False, T + 5), (True, T + 2)], ids=["no-timing", "timing"])
def test_events_before_the_first_believed_stamp_are_dated_with_it(timed: bool, start: float) -> None:
    """Was: a first stamp not believed was removed and the event fed with receive time 0.0 (no
    sidecar): the conversation started in 1970 and `no_timestamp` was reported on a stamped PBX.
    With a sidecar, the receive clock tells how long before the first believed stamp it came."""
    first, second = call_with_first_stamp("nan")
    timing = [Chunk(0, len(first), 100.0), Chunk(len(first), len(second), 103.0)] if timed else None
    replaced: list[str] = []
    read = list(read_capture(first + second, timing, WANTED_EVENTS, lambda m, r: replaced.append(r)))
    messages = [(m, at) for m, at in read if isinstance(m, Message)]
    assert [m.timestamp for m, _ in messages] == [start, T + 5]
    tracker = CallTracker()
    effects = [e for m, at in messages for e in tracker.feed(m, at)]
    assert not [e for e in effects if isinstance(e, Anomaly)]
    (ended,) = [e.conversation for e in effects if isinstance(e, ConversationEnded)]
    assert (ended.started_at, ended.ended_at) == (start, T + 5)
    assert len(replaced) == 1
