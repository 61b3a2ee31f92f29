"""Which `Timestamp`s are believed (telephony.stamps): a table of cases and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.calls import WANTED_EVENTS, CallTracker
from telephony.capture import Chunk, read_capture
from telephony.effects import Anomaly, ConversationEnded
from telephony.framing import Message
from telephony.stamps import PLAUSIBLE_FROM, PLAUSIBLE_UNTIL, TOLERANCE, StreamClock, read_stamp

from .scenario import Pbx

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
            assert verdict.at == pytest.approx(stamps[0] + n, abs=0.01)  # the last believed + receive time
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


def test_a_capture_is_not_frozen_by_one_stamp_far_ahead() -> None:
    """Was: a capture believes a stamp ahead of the last (a quiet night may come between two
    events), so one stamp 30 days ahead froze the clock there: every later stamp was "behind"."""
    clock = StreamClock()
    stamps = [T, T + 1, T + 30 * 86400, T + 2, T + 3, T + 100, T + 4000]
    verdicts = [clock.judge(repr(stamp)) for stamp in stamps]
    assert [verdict.at for verdict in verdicts] == stamps
    assert [verdict.replaces_jump for verdict in verdicts] == [None, None, None, T + 1, None, None, None]


def test_a_capture_anchored_by_a_first_stamp_far_ahead_follows_the_stream_again() -> None:
    clock = StreamClock()
    verdicts = [clock.judge(repr(stamp)) for stamp in (T + 30 * 86400, T + 1, T + 2, T + 3)]
    assert [verdict.at for verdict in verdicts] == [T + 30 * 86400, T + 30 * 86400, T + 2, T + 3]


def test_one_stamp_far_ahead_in_a_capture_costs_no_talk() -> None:
    pbx = Pbx()
    pbx.calls_in(3, talk=5.0)
    frames = pbx.frames()
    end = [n for n, message in enumerate(pbx.events) if message.event == "Hangup"][1]  # the first client's
    wild = frames[end].replace(pbx.events[end].headers["Timestamp"].encode(), b"%.6f" % (T + 1e7))
    replaced: list[str] = []
    data = b"".join([*frames[:end], wild, *frames[end + 1 :]])
    read = [(m, at) for m, at in read_capture(data, None, WANTED_EVENTS, lambda m, r: replaced.append(r))]
    tracker = CallTracker()
    effects = [e for m, at in read if isinstance(m, Message) for e in tracker.feed(m, at)]
    ended = [e.conversation for e in effects if isinstance(e, ConversationEnded)]
    assert [c.talk_seconds for c in ended] == [5.0, 5.0, 5.0]
    assert [c.ended_at - c.started_at for c in ended] == [7.0, 7.0, 7.0]
    assert len(replaced) == 1 and "ahead" in replaced[0]


WILD_GAPS = st.one_of(st.floats(0, 30), st.floats(TOLERANCE + 1, 86_400))  # quiet nights too


@given(st.lists(WILD_GAPS, min_size=2, max_size=30), st.data())
@settings(max_examples=300, deadline=None)
def test_a_single_wild_stamp_in_a_capture_moves_only_the_events_next_to_it(
    gaps: list[float], data: st.DataObject
) -> None:
    """Whatever one stamp of a capture says, the time between two events not next to it is kept."""
    truth = [T + sum(gaps[: n + 1]) for n in range(len(gaps))]
    k = data.draw(st.integers(0, len(truth) - 1), label="wild")
    raw = [f"{stamp:.6f}" for stamp in truth]
    raw[k] = data.draw(
        st.one_of(
            st.sampled_from(["nan", "inf", "-1", "0", "1e300", "soon"]),
            st.floats(-1e9, 1e9).map(lambda offset: f"{truth[k] + offset:.6f}"),
            st.floats(PLAUSIBLE_FROM, PLAUSIBLE_UNTIL - 1).map(lambda stamp: f"{stamp:.6f}"),
        ),
        label="stamp",
    )
    capture = b"".join(frame("Newstate", text, Uniqueid=f"1.{n}") for n, text in enumerate(raw))
    read = [(m, at) for m, at in read_capture(capture) if isinstance(m, Message)]
    dated = [m.timestamp for m, _ in read]
    assert [at for _, at in read] == dated and None not in dated and len(dated) == len(truth)
    for i in range(len(truth) - 1):
        if i + 1 < k - 1 or i > k + 1:
            assert dated[i + 1] - dated[i] == pytest.approx(truth[i + 1] - truth[i], abs=1e-5), i


@pytest.mark.parametrize(
    ("stamps", "dated"),
    [
        ([T, T + 1, T + 9e6, T + 2], [T, T + 1, T + 1, T + 2]),  # one wild stamp ahead
        ([T, T + 1, T + 9e6, "nan", T + 2], [T, T + 1, T + 1, T + 1, T + 2]),  # and its estimate
        ([T, T + 1, T + 8 * 3600, T + 8 * 3600 + 1], [T, T + 1, T + 8 * 3600, T + 8 * 3600 + 1]),  # night
        ([T, T + 1, T + 8 * 3600], [T, T + 1, T + 8 * 3600]),  # the last event after a night
    ],
)
def test_a_jump_ahead_in_a_capture_waits_for_the_next_stamp(
    stamps: list[float | str], dated: list[float]
) -> None:
    raw = [stamp if isinstance(stamp, str) else f"{stamp:.6f}" for stamp in stamps]
    capture = b"".join(frame("Newstate", text, Uniqueid=f"1.{n}") for n, text in enumerate(raw))
    assert [m.timestamp for m, _ in read_capture(capture) if isinstance(m, Message)] == dated
