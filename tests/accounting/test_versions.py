"""Which of several instances' measurements of one conversation the ledger keeps (pure rules).

Table of cases for `decide`, then Hypothesis over arrival orders: whatever order the versions of a
conversation arrive in, the kept one is exact when any is, it is the same measurement, and no
measurement is lost (each is the kept one's, or that of a version set aside for audit).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from accounting_helpers import conversation_dict
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.conversations import FinishedConversation, as_record, parse_conversation
from accounting.versions import SET_ASIDE, Outcome, decide, differences, fingerprint, same_measurement

START = "2026-11-24T10:00:00.000000+03:00"


def version(
    instance: str = "a", *, estimated: bool = False, pieces: tuple[tuple[float, float], ...] = ((2, 60),)
) -> FinishedConversation:
    data = conversation_dict("msk:1764000000.1", START, *pieces)
    return parse_conversation({**data, "instance": instance, "estimated": estimated})


def shifted(conversation: FinishedConversation, ms: int) -> FinishedConversation:
    """The same conversation with its hangup (and last segment's end) `ms` later."""
    last = conversation.intervals[-1]
    intervals = (*conversation.intervals[:-1], replace(last, end_ms=last.end_ms + ms))
    return replace(
        conversation, intervals=intervals, ended_at=conversation.ended_at + timedelta(milliseconds=ms)
    )


EXACT_A = version("a")
EXACT_B = version("b")
CUT_SHORT = version("b", estimated=True, pieces=((2, 41.5),))  # closed where its link was lost

CASES: dict[str, tuple[FinishedConversation | None, FinishedConversation, Outcome]] = {
    "nothing kept yet": (None, CUT_SHORT, "first"),
    "the other instance agrees": (EXACT_A, EXACT_B, "identical"),
    "a spool re-submitted after a crash": (EXACT_A, EXACT_A, "identical"),
    "within 1 ms is the same": (EXACT_A, shifted(EXACT_B, 1), "identical"),
    "exact replaces estimated": (CUT_SHORT, EXACT_A, "superseded"),
    "exact replaces estimated even when equal": (version("b", estimated=True), EXACT_A, "superseded"),
    "estimated after exact changes nothing": (EXACT_A, CUT_SHORT, "not_better"),
    "estimated equal to the exact kept one": (EXACT_A, version("b", estimated=True), "identical"),
    "two exact ones 2 ms apart disagree": (EXACT_A, shifted(EXACT_B, 2), "disagreed"),
    "a second estimated one is not better": (
        CUT_SHORT,
        version("a", estimated=True, pieces=((2, 50),)),
        "not_better",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_decide(case: str) -> None:
    kept, arriving, expected = CASES[case]
    assert decide(kept, arriving) == expected


def test_differences_name_both_values() -> None:
    found = differences(EXACT_A, shifted(EXACT_B, 250))
    assert set(found) == {"ended_at", "talk_ms", "segments"}
    assert found["talk_ms"] == (60_000, 60_250)
    assert differences(EXACT_A, replace(EXACT_B, client_number="+74950000001"))["client_number"] == (
        "+74951234567",
        "+74950000001",
    )
    assert not differences(EXACT_A, EXACT_B)  # the instance is not part of the measurement


def test_fingerprint_tells_stored_versions_apart_and_survives_a_round_trip() -> None:
    assert fingerprint(EXACT_A) != fingerprint(EXACT_B)  # another instance's
    assert fingerprint(EXACT_A) != fingerprint(shifted(EXACT_A, 1))
    again = parse_conversation(as_record(EXACT_A))
    assert again == EXACT_A and fingerprint(again) == fingerprint(EXACT_A)


# --- any arrival order ----------------------------------------------------------------------------


@st.composite
def versions_of_one_conversation(draw: st.DrawFn) -> list[FinishedConversation]:
    """Up to three instances' versions: exact ones that agree (to the microsecond or within 1 ms),
    and estimated ones cut short, started late (adopted) or stretched (resumed from a checkpoint);
    a spool may send any of them twice."""
    talk_ms = draw(st.integers(1_000, 600_000))
    truth = version("a", pieces=((2, talk_ms / 1000),))
    result = []
    for instance in draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            result.append(replace(shifted(truth, draw(st.integers(0, 1))), instance=instance))
            continue
        cut = draw(st.integers(1, talk_ms))
        first = truth.intervals[0]
        estimate = draw(
            st.sampled_from(
                [
                    replace(first, end_ms=first.start_ms + cut),  # closed at the last moment known
                    replace(first, start_ms=first.end_ms - cut),  # adopted from the lists after a login
                ]
            )
        )
        result.append(replace(truth, instance=instance, estimated=True, intervals=(estimate,)))
    if draw(st.booleans()):
        result.append(draw(st.sampled_from(result)))  # re-sent from a spool after a crash
    return result


def arrive(order: list[FinishedConversation]) -> tuple[FinishedConversation, list[FinishedConversation]]:
    """What the database ends with: the kept version and the versions set aside, in arrival order."""
    kept: FinishedConversation | None = None
    aside: dict[str, FinishedConversation] = {}
    for arriving in order:
        outcome = decide(kept, arriving)
        if outcome == "superseded":
            assert kept is not None
            aside.setdefault(fingerprint(kept), kept)
        if outcome in ("first", "superseded"):
            kept = arriving
        elif outcome in SET_ASIDE:
            aside.setdefault(fingerprint(arriving), arriving)
    assert kept is not None
    return kept, list(aside.values())


@settings(max_examples=300, deadline=None)
@given(versions=versions_of_one_conversation(), data=st.data())
def test_any_arrival_order_keeps_the_best_measurement_and_loses_no_version(
    versions: list[FinishedConversation], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(versions))
    kept, aside = arrive(order)
    exact = [v for v in versions if not v.estimated]
    if exact:
        assert not kept.estimated and same_measurement(kept, exact[0])
        # Every order keeps the same measurement: the first in the drawn order, reversed, sorted.
        for other in (list(reversed(order)), sorted(versions, key=lambda v: (v.estimated, v.instance or ""))):
            assert same_measurement(arrive(other)[0], kept)
    else:
        assert kept == order[0]  # estimated ones only: the first stays
    for each in versions:  # no measurement is lost: each is kept, or stored beside it
        assert same_measurement(each, kept) or any(same_measurement(each, stored) for stored in aside)
