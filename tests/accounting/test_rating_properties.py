"""Hypothesis properties of the rating core, and agreement with a millisecond-by-millisecond model."""

from __future__ import annotations

import bisect
import zoneinfo
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.contracts import Contract
from accounting.conversations import Interval, Talk, from_ms, to_ms
from accounting.rating import (
    Charge,
    ClientRater,
    PriorUsage,
    local_date,
    local_midnight_ms,
    rate_client,
    rate_contract,
)

ZONES = ["Europe/Moscow", "Europe/Berlin", "America/Santiago", "Asia/Kolkata", "UTC"]
# Around the Berlin autumn DST change and the Santiago spring one, and an ordinary week.
ORIGINS = ["2026-10-24T20:00:00+00:00", "2026-09-05T22:00:00+00:00", "2026-11-22T18:00:00+00:00"]


@st.composite
def contracts(draw: st.DrawFn, max_minutes: int = 20) -> Contract:
    free = draw(st.none() | st.integers(0, max_minutes))
    rate = draw(st.none() | st.decimals("0", "50", places=2))
    overage = draw(st.sampled_from(["bill", "flag"])) if rate is not None else "flag"
    return Contract(
        contract_id="K",
        client_id="C",
        valid_from=date(2026, 1, 1),
        free_daily_minutes=free,
        free_days_per_week=draw(st.none() | st.integers(1, 7)) if free is not None else None,
        prepaid_minutes=draw(st.none() | st.integers(0, max_minutes * 2)),
        rate_per_minute=rate,
        currency="RUB" if rate is not None else None,
        billing_increment_seconds=draw(st.sampled_from([1, 6, 30, 60])),
        minimum_billable_seconds=draw(st.sampled_from([0, 0, 30, 60])),
        short_call_seconds=draw(st.none() | st.integers(0, 20)),
        overage=overage,
        hold_billable=draw(st.booleans()),
    )


@st.composite
def talks(
    draw: st.DrawFn, max_count: int = 6, max_piece_ms: int = 1_500_000, span_ms: int = 4 * 86_400_000
) -> list[Talk]:
    origin = to_ms(datetime.fromisoformat(draw(st.sampled_from(ORIGINS))))
    result = []
    for number in range(draw(st.integers(1, max_count))):
        start = origin + draw(st.integers(0, span_ms))
        at = start + draw(st.integers(0, 30_000))
        intervals = []
        for _ in range(draw(st.integers(0, 4))):
            length = draw(st.integers(0, max_piece_ms))
            intervals.append(Interval(at, at + length, draw(st.booleans())))
            at += length
        result.append(Talk(f"c{number}", start, None, tuple(intervals)))
    return result


def per_day_free(charges: list[Charge]) -> dict[date, int]:
    totals: dict[date, int] = defaultdict(int)
    for charge in charges:
        for usage in charge.days:
            totals[usage.day] += usage.free_ms
    return totals


@settings(max_examples=150, deadline=None)
@given(contracts(), talks(), st.sampled_from(ZONES))
def test_seconds_are_conserved(contract: Contract, conversations: list[Talk], zone: str) -> None:
    for charge in rate_contract(contract, zone, conversations):
        parts = (charge.free_ms, charge.prepaid_ms, charge.paid_ms, charge.excluded_ms)
        assert min(parts) >= 0
        assert sum(parts) == charge.talk_ms
        assert sum(d.talk_ms for d in charge.days) == charge.talk_ms
        assert sum(d.free_ms for d in charge.days) == charge.free_ms
        assert sum(d.prepaid_ms for d in charge.days) == charge.prepaid_ms
        assert sum(d.paid_ms for d in charge.days) == charge.paid_ms
        if contract.hold_billable and not charge.short_call:
            assert charge.excluded_ms == 0


@settings(max_examples=150, deadline=None)
@given(contracts(), talks(), st.sampled_from(ZONES))
def test_caps_hold(contract: Contract, conversations: list[Talk], zone: str) -> None:
    charges = rate_contract(contract, zone, conversations)
    daily = per_day_free(charges)
    cap = contract.free_daily_ms or 0
    assert all(free <= cap for free in daily.values())
    weeks: dict[tuple[int, int], int] = defaultdict(int)
    for day, free in daily.items():
        if free > 0:
            weeks[day.isocalendar()[:2]] += 1
    assert all(count <= (contract.free_days_per_week or 7) for count in weeks.values())
    assert sum(c.prepaid_ms for c in charges) <= (contract.prepaid_ms or 0)


@settings(max_examples=150, deadline=None)
@given(contracts(), talks(), st.sampled_from(ZONES))
def test_money_is_never_negative_and_rounded_once(
    contract: Contract, conversations: list[Talk], zone: str
) -> None:
    for charge in rate_contract(contract, zone, conversations):
        assert charge.amount >= 0
        assert charge.amount == charge.amount.quantize(Decimal("0.01"))
        assert charge.billable_seconds * 1000 >= (charge.paid_ms if contract.overage == "bill" else 0)
        if charge.over_quota:
            assert charge.amount == 0 and charge.paid_ms > 0
        if charge.paid_ms == 0:
            assert charge.billable_seconds == 0 and charge.amount == 0


@settings(max_examples=100, deadline=None)
@given(contracts(), talks(), st.sampled_from(ZONES), st.randoms())
def test_rating_is_deterministic(
    contract: Contract, conversations: list[Talk], zone: str, random: Any
) -> None:
    shuffled = list(conversations)
    random.shuffle(shuffled)
    assert rate_contract(contract, zone, conversations) == rate_contract(contract, zone, shuffled)


@settings(max_examples=100, deadline=None)
@given(contracts(), talks(), st.sampled_from(ZONES))
def test_a_later_conversation_never_changes_earlier_ones(
    contract: Contract, conversations: list[Talk], zone: str
) -> None:
    """Adding a conversation that starts after every talked second leaves the others alone."""
    before = rate_contract(contract, zone, conversations)
    moments = [t.started_ms for t in conversations] + [i.end_ms for t in conversations for i in t.intervals]
    begin = 1 + max(moments)
    later = Talk("zz", begin, None, (Interval(begin, begin + 120_000, False),))
    after = rate_contract(contract, zone, [*conversations, later])
    assert [c for c in after if c.conversation_id != "zz"] == before


# --- the closed form agrees with a millisecond-by-millisecond simulation ------------------------


def simulate(
    contract: Contract, zone_name: str, conversations: list[Talk]
) -> dict[str, tuple[int, int, int]]:
    """Every millisecond, every talking conversation in rank order takes one millisecond from the
    first pool with some left. Slow and obvious."""
    zone = ZoneInfo(zone_name)
    ranked = sorted(conversations, key=lambda t: (t.started_ms, t.conversation_id))
    counted: dict[str, list[Interval]] = {}
    for conversation in ranked:
        intervals = [i for i in conversation.intervals if contract.hold_billable or not i.hold]
        if (
            contract.short_call_seconds is not None
            and sum(i.ms for i in intervals) < contract.short_call_seconds * 1000
        ):
            intervals = []
        counted[conversation.conversation_id] = intervals
    moments = sorted(
        {ms for intervals in counted.values() for i in intervals for ms in range(i.start_ms, i.end_ms)}
    )
    if not moments:
        return {t.conversation_id: (0, 0, 0) for t in conversations}
    first_day = local_date(moments[0], zone)
    midnights = [local_midnight_ms(first_day + timedelta(days=n), zone) for n in range(1, 10)]
    days = [first_day + timedelta(days=n) for n in range(10)]
    talking = {
        cid: {ms for i in intervals for ms in range(i.start_ms, i.end_ms)}
        for cid, intervals in counted.items()
    }
    result = {t.conversation_id: [0, 0, 0] for t in conversations}
    free_used: dict[date, int] = defaultdict(int)
    week_days: dict[tuple[int, int], set[date]] = defaultdict(set)
    prepaid_left = contract.prepaid_ms or 0
    for ms in moments:
        day = days[bisect.bisect_right(midnights, ms)]
        for conversation in ranked:
            if ms not in talking[conversation.conversation_id]:
                continue
            tier = 2
            slots = week_days[day.isocalendar()[:2]]
            slot_ok = (
                contract.free_days_per_week is None
                or day in slots
                or len(slots) < contract.free_days_per_week
            )
            if contract.free_daily_ms is not None and slot_ok and free_used[day] < contract.free_daily_ms:
                free_used[day] += 1
                slots.add(day)
                tier = 0
            elif prepaid_left > 0:
                prepaid_left -= 1
                tier = 1
            result[conversation.conversation_id][tier] += 1
    return {cid: (free, prepaid, paid) for cid, (free, prepaid, paid) in result.items()}


@settings(max_examples=60, deadline=None)
@given(
    contracts(max_minutes=1), talks(max_count=3, max_piece_ms=45_000, span_ms=20_000), st.sampled_from(ZONES)
)
def test_closed_form_matches_simulation(contract: Contract, conversations: list[Talk], zone: str) -> None:
    charges = {
        c.conversation_id: (c.free_ms, c.prepaid_ms, c.paid_ms)
        for c in rate_contract(contract, zone, conversations)
    }
    assert charges == simulate(contract, zone, conversations)


@settings(max_examples=200, deadline=None)
@given(contracts(), talks(max_count=8, span_ms=2 * 86_400_000), st.sampled_from(ZONES), st.data())
def test_rating_from_prior_usage_equals_rating_everything(
    contract: Contract, conversations: list[Talk], zone: str, data: st.DataObject
) -> None:
    """The ledger's shortcut: conversations that all ended before a frontier are summarised by
    their usage, and only the rest is rated again. Exact when no rated conversation overlaps
    the frontier, which the frontier's choice guarantees."""
    full = {charge.conversation_id: charge for charge in rate_contract(contract, zone, conversations)}

    def end(talk: Talk) -> int:
        return max([talk.started_ms] + [interval.end_ms for interval in talk.intervals])

    frontier = data.draw(st.sampled_from(conversations)).started_ms
    while (earlier := min(t.started_ms for t in conversations if end(t) >= frontier)) < frontier:
        frontier = earlier
    rerated = [t for t in conversations if t.started_ms >= frontier]
    free_by_day: dict[date, int] = defaultdict(int)
    prepaid = 0
    for talk in conversations:
        if talk.started_ms < frontier:
            prepaid += full[talk.conversation_id].prepaid_ms
            for usage in full[talk.conversation_id].days:
                free_by_day[usage.day] += usage.free_ms
    partial = rate_contract(contract, zone, rerated, PriorUsage(free_by_day, prepaid))
    assert partial == [full[charge.conversation_id] for charge in partial]
    assert {charge.conversation_id for charge in partial} == {t.conversation_id for t in rerated}


ALL_ZONES = sorted(zoneinfo.available_timezones())


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(ALL_ZONES),
    st.integers(to_ms(datetime(1990, 1, 1, tzinfo=UTC)), to_ms(datetime(2100, 1, 1, tzinfo=UTC))),
)
def test_local_date_is_the_date_astimezone_gives(zone_name: str, moment: int) -> None:
    """`local_date` reads the zone's offset once per hour (for speed); whatever the zone and the
    instant, DST changes included, it is the date the clock on the wall shows."""
    zone = ZoneInfo(zone_name)
    for ms in (moment, moment - moment % 3_600_000, moment - moment % 3_600_000 - 1):
        assert local_date(ms, zone) == from_ms(ms).astimezone(zone).date()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_ZONES), st.dates(date(1990, 1, 1), date(2099, 12, 31)))
def test_a_local_midnight_is_the_first_instant_of_its_day(zone_name: str, day: date) -> None:
    zone = ZoneInfo(zone_name)
    midnight = local_midnight_ms(day, zone)
    assert local_date(midnight, zone) == day
    assert local_date(midnight - 1, zone) < day


@pytest.mark.parametrize(
    "zone_name, around",
    [
        ("Europe/Berlin", "2026-10-25T01:00:00+00:00"),  # on a UTC hour
        ("America/St_Johns", "2026-03-08T05:30:00+00:00"),  # half past: the hour's offset changes
        ("Australia/Lord_Howe", "2026-04-05T15:00:00+00:00"),  # a 30-minute DST
        ("Asia/Beirut", "2026-10-24T21:00:00+00:00"),  # back from 00:00 to 23:00: dates go backwards
    ],
)
def test_local_date_minute_by_minute_across_a_dst_change(zone_name: str, around: str) -> None:
    zone = ZoneInfo(zone_name)
    middle = to_ms(datetime.fromisoformat(around))
    for ms in range(middle - 86_400_000, middle + 86_400_000, 60_000):
        assert local_date(ms, zone) == from_ms(ms).astimezone(zone).date(), from_ms(ms)


@settings(max_examples=200, deadline=None)
@given(contracts(), talks(max_count=10, span_ms=3 * 86_400_000), st.sampled_from(ZONES), st.data())
def test_rating_in_batches_cut_at_frontiers_equals_rating_everything(
    contract: Contract, conversations: list[Talk], zone: str, data: st.DataObject
) -> None:
    """What `rerate` does with a long history: rate window after window, carrying the allowances
    in memory. Cut only where no conversation straddles (every earlier one has ended)."""
    whole = rate_client([contract], zone, conversations)

    def end(talk: Talk) -> int:
        return max([talk.started_ms] + [interval.end_ms for interval in talk.intervals])

    ordered = sorted(conversations, key=lambda t: (t.started_ms, t.conversation_id))
    cuts = [
        index
        for index in range(1, len(ordered))
        if ordered[index].started_ms > max(end(t) for t in ordered[:index])
    ]
    chosen = sorted(data.draw(st.sets(st.sampled_from(cuts))) if cuts else set())
    rater = ClientRater([contract], zone)
    charges: list[Charge] = []
    uncovered: list[str] = []
    for first, last in pairwise([0, *chosen, len(ordered)]):
        batch = rater.rate(ordered[first:last])
        charges += batch.charges
        uncovered += batch.uncovered
    assert sorted(charges, key=lambda c: c.conversation_id) == sorted(
        whole.charges, key=lambda c: c.conversation_id
    )
    assert sorted(uncovered) == sorted(whole.uncovered)
