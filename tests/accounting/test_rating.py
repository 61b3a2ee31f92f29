"""Tables of rating cases: every rule, then combinations, checked to the millisecond and kopeck."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from accounting_helpers import contract, talk

from accounting.conversations import to_ms
from accounting.rating import (
    Charge,
    local_midnight_ms,
    rate_client,
    rate_contract,
)

MSK = "Europe/Moscow"
DAY = "2026-11-24T10:00:00+03:00"  # a Tuesday
MIN = 60_000


def rate_one(rules: dict[str, Any], *pieces: tuple[float, float] | tuple[float, float, bool]) -> Charge:
    [charge] = rate_contract(contract(**rules), MSK, [talk("a", DAY, *pieces)])
    return charge


# (rules, pieces, free_ms, prepaid_ms, paid_ms, billable_seconds, amount)
SINGLE_CONVERSATION_CASES = [
    pytest.param({"rate_per_minute": 2}, [(0, 90)], 0, 0, 90_000, 90, "3.00", id="per-second counter"),
    pytest.param(
        {"rate_per_minute": 2, "billing_increment_seconds": 60},
        [(0, 61)],
        0,
        0,
        61_000,
        120,
        "4.00",
        id="per started minute",
    ),
    pytest.param(
        {"rate_per_minute": 2, "billing_increment_seconds": 60},
        [(0, 60)],
        0,
        0,
        60_000,
        60,
        "2.00",
        id="exact minute is not rounded up",
    ),
    pytest.param(
        {"rate_per_minute": 2, "minimum_billable_seconds": 60},
        [(0, 10)],
        0,
        0,
        10_000,
        60,
        "2.00",
        id="minimum billable",
    ),
    pytest.param(
        {"rate_per_minute": 2, "minimum_billable_seconds": 45, "billing_increment_seconds": 30},
        [(0, 10)],
        0,
        0,
        10_000,
        60,
        "2.00",
        id="minimum then increment",
    ),
    pytest.param(
        {"rate_per_minute": 2, "billing_increment_seconds": 60},
        [(0, 60.001)],
        0,
        0,
        60_001,
        120,
        "4.00",
        id="one millisecond over starts a minute",
    ),
    pytest.param({"free_daily_minutes": 15}, [(0, 600)], 600_000, 0, 0, 0, "0.00", id="free within cap"),
    pytest.param(
        {"free_daily_minutes": 15, "rate_per_minute": 3},
        [(0, 1200)],
        900_000,
        0,
        300_000,
        300,
        "15.00",
        id="free cap then paid",
    ),
    pytest.param(
        {"free_daily_minutes": 5, "prepaid_minutes": 10, "rate_per_minute": 1},
        [(0, 1200)],
        300_000,
        600_000,
        300_000,
        300,
        "5.00",
        id="free then prepaid then paid",
    ),
    pytest.param(
        {"prepaid_minutes": 10, "rate_per_minute": 1, "billing_increment_seconds": 60},
        [(0, 600.5)],
        0,
        600_000,
        500,
        60,
        "1.00",
        id="rounding applies to the paid part only",
    ),
    pytest.param(
        {"free_daily_minutes": 15, "rate_per_minute": 1, "minimum_billable_seconds": 60},
        [(0, 600)],
        600_000,
        0,
        0,
        0,
        "0.00",
        id="no paid time, no minimum",
    ),
    pytest.param({"rate_per_minute": "1.00"}, [(0, 1)], 0, 0, 1000, 1, "0.02", id="1/60 rounds half up"),
    pytest.param(
        {"rate_per_minute": "0.30"}, [(0, 1)], 0, 0, 1000, 1, "0.01", id="0.005 rounds half up, not even"
    ),
    pytest.param({"rate_per_minute": "0.30"}, [(0, 3)], 0, 0, 3000, 3, "0.02", id="0.015 rounds half up"),
    pytest.param(
        {"rate_per_minute": "1.00", "billing_increment_seconds": 1},
        [(0, 0.4)],
        0,
        0,
        400,
        1,
        "0.02",
        id="sub-second paid rounds up to a second",
    ),
    pytest.param(
        {"free_daily_minutes": 15, "rate_per_minute": 2, "overage": "flag"},
        [(0, 1000)],
        900_000,
        0,
        100_000,
        0,
        "0.00",
        id="overage flag keeps paid seconds at amount 0",
    ),
    pytest.param(
        {"rate_per_minute": 2, "hold_billable": False},
        [(0, 30), (30, 20, True), (50, 10)],
        0,
        0,
        40_000,
        40,
        "1.33",
        id="hold not billable",
    ),
    pytest.param(
        {"rate_per_minute": 2, "hold_billable": True},
        [(0, 30), (30, 20, True), (50, 10)],
        0,
        0,
        60_000,
        60,
        "2.00",
        id="hold billable",
    ),
    pytest.param(
        {"rate_per_minute": 2, "short_call_seconds": 10}, [(0, 9.999)], 0, 0, 0, 0, "0.00", id="short call"
    ),
    pytest.param(
        {"rate_per_minute": 2, "short_call_seconds": 10},
        [(0, 10)],
        0,
        0,
        10_000,
        10,
        "0.33",
        id="exactly the short threshold is billed",
    ),
    pytest.param(
        {"rate_per_minute": 2, "short_call_seconds": 10, "hold_billable": False},
        [(0, 5), (5, 30, True), (35, 4)],
        0,
        0,
        0,
        0,
        "0.00",
        id="short once hold is excluded",
    ),
    pytest.param(
        {"free_daily_minutes": 0, "rate_per_minute": 2},
        [(0, 30)],
        0,
        0,
        30_000,
        30,
        "1.00",
        id="zero free minutes",
    ),
    pytest.param(
        {
            "free_daily_minutes": 1,
            "prepaid_minutes": 1,
            "rate_per_minute": 3,
            "billing_increment_seconds": 60,
            "minimum_billable_seconds": 90,
        },
        [(0, 125)],
        60_000,
        60_000,
        5_000,
        120,
        "6.00",
        id="combination: free, prepaid, minimum then started minute",
    ),
    pytest.param(
        {"free_daily_minutes": 1, "rate_per_minute": 3, "hold_billable": False, "short_call_seconds": 30},
        [(0, 20), (20, 100, True), (120, 50)],
        60_000,
        0,
        10_000,
        10,
        "0.50",
        id="combination: hold excluded, long enough, free then paid",
    ),
    pytest.param(
        {"free_daily_minutes": 1, "prepaid_minutes": 1, "rate_per_minute": 3, "overage": "flag"},
        [(0, 150)],
        60_000,
        60_000,
        30_000,
        0,
        "0.00",
        id="combination: free, prepaid, then flagged",
    ),
    pytest.param(
        {"prepaid_minutes": 1},
        [(0, 90)],
        0,
        60_000,
        30_000,
        0,
        "0.00",
        id="prepaid exhausted without a rate is flagged",
    ),
]


@pytest.mark.parametrize(
    ("rules", "pieces", "free", "prepaid", "paid", "billable", "amount"), SINGLE_CONVERSATION_CASES
)
def test_single_conversation(
    rules: dict[str, Any],
    pieces: list[tuple[float, float]],
    free: int,
    prepaid: int,
    paid: int,
    billable: int,
    amount: str,
) -> None:
    charge = rate_one(rules, *pieces)
    assert (charge.free_ms, charge.prepaid_ms, charge.paid_ms) == (free, prepaid, paid)
    assert charge.billable_seconds == billable
    assert charge.amount == Decimal(amount)
    assert charge.free_ms + charge.prepaid_ms + charge.paid_ms + charge.excluded_ms == charge.talk_ms


def test_overage_flag_marks_over_quota() -> None:
    charge = rate_one({"free_daily_minutes": 1, "overage": "flag"}, (0, 61))
    assert charge.over_quota and charge.paid_ms == 1000 and charge.amount == 0
    within = rate_one({"free_daily_minutes": 1, "overage": "flag"}, (0, 59))
    assert not within.over_quota


def test_short_call_consumes_no_allowance() -> None:
    rules = contract(free_daily_minutes=1, short_call_seconds=10, rate_per_minute=1)
    short = talk("a", "2026-11-24T10:00:00+03:00", (0, 9))
    long = talk("b", "2026-11-24T11:00:00+03:00", (0, 60))
    first, second = rate_contract(rules, MSK, [short, long])
    assert first.short_call and first.excluded_ms == 9000 and first.free_ms == 0
    assert second.free_ms == 60_000 and second.paid_ms == 0


def test_sequential_conversations_share_the_daily_cap() -> None:
    rules = contract(free_daily_minutes=15, rate_per_minute=1)
    first, second = rate_contract(
        rules,
        MSK,
        [
            talk("a", "2026-11-24T10:00:00+03:00", (0, 600)),
            talk("b", "2026-11-24T12:00:00+03:00", (0, 600)),
        ],
    )
    assert first.free_ms == 600_000
    assert (second.free_ms, second.paid_ms) == (300_000, 300_000)


def test_order_is_the_order_of_talk_not_of_input() -> None:
    rules = contract(free_daily_minutes=15, rate_per_minute=1)
    late = talk("z-late", "2026-11-24T12:00:00+03:00", (0, 600))
    early = talk("a-early", "2026-11-24T09:00:00+03:00", (0, 600))
    by_id = {c.conversation_id: c for c in rate_contract(rules, MSK, [late, early])}
    assert by_id["a-early"].free_ms == 600_000
    assert by_id["z-late"].free_ms == 300_000


def test_overlapping_conversations_draw_at_once() -> None:
    # A talks 10:00-10:10, B 10:05-10:15, 12 free minutes. A alone takes 5; then both draw the
    # remaining 7 together, 3.5 each; the rest is paid.
    rules = contract(free_daily_minutes=12, rate_per_minute=1)
    a, b = rate_contract(
        rules,
        MSK,
        [
            talk("a", "2026-11-24T10:00:00+03:00", (0, 600)),
            talk("b", "2026-11-24T10:05:00+03:00", (0, 600)),
        ],
    )
    assert a.free_ms == 510_000 and a.paid_ms == 90_000
    assert b.free_ms == 210_000 and b.paid_ms == 390_000
    assert a.free_ms + b.free_ms == 12 * MIN
    switch = to_ms(datetime.fromisoformat("2026-11-24T10:08:30+03:00"))
    assert [(c.at_ms, c.tier) for c in a.tier_changes] == [
        (a.tier_changes[0].at_ms, "free"),
        (switch, "paid"),
    ]
    assert [(c.at_ms, c.tier) for c in b.tier_changes][1] == (switch, "paid")


def test_overlap_splits_an_odd_millisecond_deterministically() -> None:
    rules = contract(free_daily_minutes=1, rate_per_minute=1)
    a, b = rate_contract(
        rules,
        MSK,
        [
            talk("a", "2026-11-24T10:00:00+03:00", (0, 59.999)),
            talk("b", "2026-11-24T10:00:59.999+03:00", (0, 10)),
        ],
    )
    # One millisecond of free time is left when B starts, after A has ended: B takes it.
    assert a.free_ms == 59_999 and b.free_ms == 1
    c, d = rate_contract(
        rules,
        MSK,
        [
            talk("c", "2026-11-24T10:00:00+03:00", (0, 30.0005)),
            talk("d", "2026-11-24T10:00:00+03:00", (0, 30.0005)),
        ],
    )
    # 60 000 ms shared by two: 30 000 each, no odd millisecond. With 60 001 ms of demand at the
    # switch, the odd one goes to the earlier rank (c, by id).
    assert (c.free_ms, d.free_ms) == (30_000, 30_000)
    e, f = rate_contract(
        contract(free_daily_minutes=1, rate_per_minute=1, billing_increment_seconds=1),
        MSK,
        [
            talk("e", "2026-11-24T10:00:00+03:00", (0, 0.001), (0.001, 40)),
            talk("f", "2026-11-24T10:00:00.001+03:00", (0, 40)),
        ],
    )
    # e alone for 1 ms, then both draw 59 999 ms: 30 000 to e (rank first), 29 999 to f.
    assert (e.free_ms, f.free_ms) == (30_001, 29_999)


def test_days_per_week_limit() -> None:
    rules = contract(free_daily_minutes=15, free_days_per_week=2, rate_per_minute=1)
    mon, tue, wed = rate_contract(
        rules,
        MSK,
        [
            talk("mon", "2026-11-23T10:00:00+03:00", (0, 300)),
            talk("tue", "2026-11-24T10:00:00+03:00", (0, 300)),
            talk("wed", "2026-11-25T10:00:00+03:00", (0, 300)),
        ],
    )
    assert mon.free_ms == tue.free_ms == 300_000
    assert (wed.free_ms, wed.paid_ms) == (0, 300_000)


def test_a_used_day_keeps_its_slot_and_a_new_week_resets() -> None:
    rules = contract(free_daily_minutes=15, free_days_per_week=1, rate_per_minute=1)
    charges = rate_contract(
        rules,
        MSK,
        [
            talk("mon1", "2026-11-23T10:00:00+03:00", (0, 300)),
            talk("mon2", "2026-11-23T15:00:00+03:00", (0, 300)),
            talk("sun", "2026-11-29T23:00:00+03:00", (0, 300)),
            talk("next-mon", "2026-11-30T00:30:00+03:00", (0, 300)),
        ],
    )
    assert [c.free_ms for c in charges] == [300_000, 300_000, 0, 300_000]


def test_a_day_without_free_use_takes_no_slot() -> None:
    # Monday's only call is short, so Monday does not take the single weekly slot.
    rules = contract(free_daily_minutes=15, free_days_per_week=1, short_call_seconds=10, rate_per_minute=1)
    mon, tue = rate_contract(
        rules,
        MSK,
        [
            talk("mon", "2026-11-23T10:00:00+03:00", (0, 5)),
            talk("tue", "2026-11-24T10:00:00+03:00", (0, 300)),
        ],
    )
    assert mon.short_call and tue.free_ms == 300_000


def test_week_is_the_clients_local_iso_week() -> None:
    # Sunday 23:30 in Vladivostok is Sunday 16:30 in Moscow... and Monday 00:30 in Vladivostok
    # is still Sunday in UTC: the week boundary follows the client's zone.
    rules = contract(free_daily_minutes=15, free_days_per_week=1, rate_per_minute=1)
    sun, mon = rate_contract(
        rules,
        "Asia/Vladivostok",
        [
            talk("sun", "2026-11-29T23:30:00+10:00", (0, 300)),
            talk("mon", "2026-11-30T00:30:00+10:00", (0, 300)),
        ],
    )
    assert sun.free_ms == 300_000 and mon.free_ms == 300_000


def test_conversation_across_local_midnight_draws_from_both_days() -> None:
    rules = contract(free_daily_minutes=15, rate_per_minute=1)
    [charge] = rate_contract(rules, MSK, [talk("a", "2026-11-24T23:50:00+03:00", (0, 1200))])
    assert charge.free_ms == 1_200_000 and charge.paid_ms == 0
    assert [(d.day, d.talk_ms, d.free_ms) for d in charge.days] == [
        (date(2026, 11, 24), 600_000, 600_000),
        (date(2026, 11, 25), 600_000, 600_000),
    ]
    assert charge.day == date(2026, 11, 24)


def test_midnight_reopens_free_time_after_paid() -> None:
    rules = contract(free_daily_minutes=5, rate_per_minute=1)
    [charge] = rate_contract(rules, MSK, [talk("a", "2026-11-24T23:50:00+03:00", (0, 1200))])
    assert [c.tier for c in charge.tier_changes] == ["free", "paid", "free", "paid"]
    assert charge.free_ms == 600_000 and charge.paid_ms == 600_000


def test_midnight_in_the_clients_zone_not_moscow() -> None:
    rules = contract(free_daily_minutes=15, rate_per_minute=1)
    # 23:50 in Moscow is 20:50 UTC and 21:50 in Berlin: no midnight inside for a Berlin client.
    [charge] = rate_contract(rules, "Europe/Berlin", [talk("a", "2026-11-24T23:50:00+03:00", (0, 1200))])
    assert charge.free_ms == 900_000 and len(charge.days) == 1


@pytest.mark.parametrize(
    ("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (date(2026, 11, 24), 24)]
)
def test_dst_days_have_23_or_25_hours(day: date, hours: int) -> None:
    zone = ZoneInfo("Europe/Berlin")
    length = local_midnight_ms(date.fromordinal(day.toordinal() + 1), zone) - local_midnight_ms(day, zone)
    assert length == hours * 3_600_000


def test_a_25_hour_day_has_one_cap() -> None:
    rules = contract(free_daily_minutes=60, rate_per_minute=1)
    # From 00:30 to 23:30 local on the 25-hour day: 24 hours of talk, one day, one cap.
    [charge] = rate_contract(rules, "Europe/Berlin", [talk("a", "2026-10-25T00:30:00+02:00", (0, 24 * 3600))])
    assert [d.day for d in charge.days] == [date(2026, 10, 25)]
    assert charge.free_ms == 3_600_000


def test_midnight_that_does_not_exist() -> None:
    # America/Santiago jumps from 00:00 to 01:00 on 2026-09-06: the day starts at the jump.
    zone = ZoneInfo("America/Santiago")
    start = local_midnight_ms(date(2026, 9, 6), zone)
    assert start == to_ms(datetime.fromisoformat("2026-09-06T04:00:00+00:00"))
    rules = contract(free_daily_minutes=10, rate_per_minute=1)
    [charge] = rate_contract(rules, "America/Santiago", [talk("a", "2026-09-05T23:55:00-04:00", (0, 600))])
    assert [(d.day, d.free_ms) for d in charge.days] == [
        (date(2026, 9, 5), 300_000),
        (date(2026, 9, 6), 300_000),
    ]


def test_prepaid_carries_over_days_and_is_never_negative() -> None:
    rules = contract(prepaid_minutes=10, rate_per_minute=1)
    charges = rate_contract(
        rules,
        MSK,
        [
            talk("a", "2026-11-02T10:00:00+03:00", (0, 360)),
            talk("b", "2026-11-20T10:00:00+03:00", (0, 360)),
        ],
    )
    assert [c.prepaid_ms for c in charges] == [360_000, 240_000]
    assert charges[1].paid_ms == 120_000


def test_tier_changes_name_each_switch() -> None:
    charge = rate_one({"free_daily_minutes": 1, "prepaid_minutes": 1, "rate_per_minute": 1}, (0, 150))
    start = to_ms(datetime.fromisoformat(DAY))
    assert [(c.at_ms - start, c.tier) for c in charge.tier_changes] == [
        (0, "free"),
        (60_000, "prepaid"),
        (120_000, "paid"),
    ]


def test_hold_excluded_in_the_middle_keeps_the_timeline() -> None:
    # With hold not billable, the hold stretch does not draw, so the cap runs out later.
    rules = contract(free_daily_minutes=1, rate_per_minute=1, hold_billable=False)
    [charge] = rate_contract(rules, MSK, [talk("a", DAY, (0, 30), (30, 60, True), (90, 60))])
    start = to_ms(datetime.fromisoformat(DAY))
    assert charge.excluded_ms == 60_000 and charge.hold_ms == 60_000
    assert [(c.at_ms - start, c.tier) for c in charge.tier_changes] == [(0, "free"), (120_000, "paid")]


# --- choosing the contract --------------------------------------------------------------------


def test_line_specific_contract_wins_over_all_lines() -> None:
    general = contract(contract_id="general", rate_per_minute=1)
    hotline = contract(contract_id="hotline", rate_per_minute=5, lines=frozenset({"74950000001"}))
    on_hotline = talk("a", DAY, (0, 60), line="74950000001")
    on_main = talk("b", DAY, (0, 60), line="74950000000")
    rating = rate_client([general, hotline], MSK, [on_hotline, on_main])
    assert {(c.conversation_id, c.contract_id) for c in rating.charges} == {
        ("a", "hotline"),
        ("b", "general"),
    }


def test_newest_contract_wins_then_smallest_id() -> None:
    old = contract(contract_id="old", rate_per_minute=1, valid_from=date(2026, 1, 1))
    new = contract(contract_id="new", rate_per_minute=2, valid_from=date(2026, 11, 1))
    twin = contract(contract_id="aaa", rate_per_minute=3, valid_from=date(2026, 11, 1))
    rating = rate_client([old, new, twin], MSK, [talk("a", DAY, (0, 60))])
    assert [c.contract_id for c in rating.charges] == ["aaa"]


def test_validity_is_by_local_start_date_inclusive() -> None:
    ended = contract(contract_id="k", rate_per_minute=1, valid_to=date(2026, 11, 24))
    # 23:59 Moscow on the last valid day is covered, and the conversation is rated whole.
    inside = talk("a", "2026-11-24T23:59:00+03:00", (0, 120))
    after = talk("b", "2026-11-25T00:00:00+03:00", (0, 60))
    unanswered = talk("c", "2026-11-25T00:00:00+03:00")
    rating = rate_client([ended], MSK, [inside, after, unanswered])
    assert [(c.conversation_id, c.paid_ms) for c in rating.charges] == [("a", 120_000)]
    assert rating.uncovered == ("b",)


def test_only_rates_the_named_contracts() -> None:
    a = contract(contract_id="a", rate_per_minute=1, lines=frozenset({"1"}))
    b = contract(contract_id="b", rate_per_minute=1, lines=frozenset({"2"}))
    rating = rate_client(
        [a, b],
        MSK,
        [talk("x", DAY, (0, 60), line="1"), talk("y", DAY, (0, 60), line="2")],
        only=frozenset({"b"}),
    )
    assert [c.conversation_id for c in rating.charges] == ["y"]
