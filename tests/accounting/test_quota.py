"""Tables of quota-planning cases: when each alert is crossed, to the millisecond."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
from accounting_helpers import contract

from accounting.contracts import Contract
from accounting.conversations import Interval, to_ms
from accounting.quota import (
    AlertKey,
    LiveConversation,
    OpenStretch,
    Plan,
    Settled,
    SettledDay,
    plan,
)

MSK = "Europe/Moscow"
T0 = to_ms(datetime.fromisoformat("2026-11-24T10:00:00+03:00"))  # a Tuesday
TODAY = date(2026, 11, 24)
TERM = date(2026, 1, 1)
SEC, MIN = 1000, 60_000


def talking(cid: str, since: int, *closed: tuple[int, int, bool], hold: bool = False) -> LiveConversation:
    """A conversation talking (or held) since `since`, after the closed intervals given."""
    intervals = tuple(Interval(start, end, on_hold) for start, end, on_hold in closed)
    start = intervals[0].start_ms if intervals else since
    return LiveConversation(cid, start, intervals, OpenStretch(since, hold))


def crossings(result: Plan) -> dict[tuple[str, int], int | None]:
    """(kind, percent) → moment of everything crossed, and of the next crossing."""
    found = {(c.key.kind, c.key.percent): c.at_ms for c in result.crossed}
    if result.next is not None:
        found[(result.next.key.kind, result.next.key.percent)] = result.next.at_ms
    return found


def daily(percent: int, day: date = TODAY) -> AlertKey:
    return AlertKey("K1", "daily", percent, day)


def run(terms: Contract, live: list[LiveConversation], now: int, settled: Settled | None = None,
        zone: str = MSK, raised: tuple[AlertKey, ...] = ()) -> Plan:  # fmt: skip
    return plan(terms, zone, settled or Settled(), live, now, raised)


FREE_10 = {"free_daily_minutes": 10, "alert_thresholds": (80, 100)}


def test_one_conversation_crosses_80_then_100_percent_of_the_daily_cap() -> None:
    result = run(contract(**FREE_10), [talking("a", T0)], T0 + 1 * MIN)
    assert result.crossed == ()
    assert result.next is not None and result.next.key == daily(80)
    assert result.next.at_ms == T0 + 8 * MIN and result.wake_ms == T0 + 8 * MIN
    later = run(contract(**FREE_10), [talking("a", T0)], T0 + 8 * MIN)
    assert [(c.key, c.at_ms) for c in later.crossed] == [(daily(80), T0 + 8 * MIN)]
    assert later.next is not None and (later.next.key, later.next.at_ms) == (daily(100), T0 + 10 * MIN)


def test_two_conversations_together_cross_earlier_than_either_alone() -> None:
    # a talks from 10:00, b from 10:02: 8 minutes of the day are counted at 10:05 (5 + 3).
    both = run(contract(**FREE_10), [talking("a", T0), talking("b", T0 + 2 * MIN)], T0 + 3 * MIN)
    assert both.next is not None and both.next.at_ms == T0 + 5 * MIN
    alone = run(contract(**FREE_10), [talking("a", T0)], T0 + 3 * MIN)
    assert alone.next is not None and alone.next.at_ms == T0 + 8 * MIN


def test_an_odd_millisecond_shared_by_two_conversations_is_rounded_up() -> None:
    # 480,001 ms needed at 2 per millisecond: at 240,001 ms the day has 480,002.
    terms = contract(free_daily_minutes=10, alert_thresholds=(80,))
    settled = Settled({TODAY: SettledDay(free_ms=-1)})  # one millisecond less than nothing
    result = run(terms, [talking("a", T0), talking("b", T0)], T0, settled)
    assert result.next is not None and result.next.at_ms == T0 + 240_001


@pytest.mark.parametrize(
    ("hold_billable", "expected"),
    [(True, T0 + 8 * MIN), (False, T0 + 10 * MIN)],
    ids=["hold billable: counts", "hold not billable: delays the crossing"],
)
def test_hold_counts_only_where_billable(hold_billable: bool, expected: int) -> None:
    # Two minutes of hold (10:01-10:03), talking again since 10:03.
    terms = contract(**FREE_10, hold_billable=hold_billable)
    held = talking("a", T0 + 3 * MIN, (T0, T0 + MIN, False), (T0 + MIN, T0 + 3 * MIN, True))
    result = run(terms, [held], T0 + 4 * MIN)
    assert result.next is not None and result.next.at_ms == expected


def test_a_conversation_on_unbillable_hold_now_plans_nothing() -> None:
    terms = contract(**FREE_10, hold_billable=False)
    result = run(terms, [talking("a", T0 + MIN, (T0, T0 + MIN, False), hold=True)], T0 + 2 * MIN)
    assert (result.next, result.wake_ms) == (None, None)
    assert result.standing.free_used_ms == MIN


def test_80_and_100_percent_of_the_prepaid_package() -> None:
    terms = contract(prepaid_minutes=100, alert_thresholds=(80, 100), rate_per_minute=2)
    settled = Settled(prepaid_ms=75 * MIN)
    result = run(terms, [talking("a", T0)], T0 + 6 * MIN, settled)
    assert crossings(result) == {("prepaid", 80): T0 + 5 * MIN, ("prepaid", 100): T0 + 25 * MIN}
    end = run(terms, [talking("a", T0)], T0 + 25 * MIN, settled)
    assert crossings(end) == {
        ("prepaid", 80): T0 + 5 * MIN,
        ("prepaid", 100): T0 + 25 * MIN,
        ("overrun", 0): T0 + 25 * MIN + 1,
    }
    assert all(c.key.period_start == TERM for c in end.crossed)


def test_the_package_is_measured_after_the_daily_allowance() -> None:
    terms = contract(free_daily_minutes=10, prepaid_minutes=10, alert_thresholds=(50,), rate_per_minute=2)
    result = run(terms, [talking("a", T0)], T0 + MIN)
    assert crossings(result) == {("daily", 50): T0 + 5 * MIN}
    later = run(terms, [talking("a", T0)], T0 + 12 * MIN)
    assert crossings(later) == {("daily", 50): T0 + 5 * MIN, ("prepaid", 50): T0 + 15 * MIN}


BOTH = {"free_daily_minutes": 10, "prepaid_minutes": 5}
OVERRUN_CASES = [
    pytest.param({"free_daily_minutes": 10}, Settled(), T0 + 10 * MIN + 1, TODAY, id="daily allowance only"),
    pytest.param(BOTH, Settled(), T0 + 15 * MIN + 1, TODAY, id="daily allowance, then the package"),
    pytest.param(BOTH, Settled(prepaid_ms=5 * MIN), T0 + 10 * MIN + 1, TODAY, id="package used up before"),
    pytest.param({"prepaid_minutes": 5}, Settled(), T0 + 5 * MIN + 1, TERM, id="package only: the term"),
]


@pytest.mark.parametrize(("rules", "settled", "expected", "period"), OVERRUN_CASES)
@pytest.mark.parametrize("overage", ["bill", "flag"])
def test_overrun_is_the_first_paid_millisecond_of_its_period(
    rules: dict[str, Any], settled: Settled, expected: int, period: date, overage: str
) -> None:
    terms = contract(**rules, rate_per_minute=2, overage=overage)
    result = run(terms, [talking("a", T0)], T0 + MIN, settled)
    assert result.next is not None
    assert (result.next.key, result.next.at_ms) == (AlertKey("K1", "overrun", 0, period), expected)


def test_a_contract_without_allowances_never_alerts() -> None:
    result = run(contract(rate_per_minute=2, alert_thresholds=(80,)), [talking("a", T0)], T0 + MIN)
    assert (result.crossed, result.next) == ((), None)
    assert result.standing.paid_now


def test_the_day_resets_at_the_clients_local_midnight() -> None:
    # Vladivostok is UTC+10: its midnight is 14:00 UTC. Talking since 13:55 UTC with the day's
    # allowance nearly used: the old day's 100 % at 13:57 (and paid time right after), then the
    # new day starts from zero.
    zone = "Asia/Vladivostok"
    start = to_ms(datetime.fromisoformat("2026-11-24T13:55:00+00:00"))
    settled = Settled({date(2026, 11, 24): SettledDay(free_ms=8 * MIN)})
    result = run(contract(**FREE_10), [talking("a", start)], start + 3 * MIN, settled, zone)
    assert [(c.key, c.at_ms) for c in result.crossed] == [
        (daily(80, date(2026, 11, 24)), None),
        (daily(100, date(2026, 11, 24)), start + 2 * MIN),
        (AlertKey("K1", "overrun", 0, date(2026, 11, 24)), start + 2 * MIN + 1),
    ]
    midnight = to_ms(datetime.fromisoformat("2026-11-25T00:00:00+10:00"))
    assert result.next is not None
    assert (result.next.key, result.next.at_ms) == (daily(80, date(2026, 11, 25)), midnight + 8 * MIN)
    assert result.standing.day == date(2026, 11, 24)


def test_a_dst_day_is_one_period_of_25_hours() -> None:
    # Berlin, 25 October 2026: the clocks go back at 03:00. A call from 02:50 CEST to 02:10 CET
    # (80 minutes of wall time later) stays within one local day.
    zone = "Europe/Berlin"
    start = to_ms(datetime.fromisoformat("2026-10-25T02:50:00+02:00"))
    terms = contract(free_daily_minutes=100, alert_thresholds=(80,))
    result = run(terms, [talking("a", start)], start + MIN, None, zone)
    assert result.next is not None
    assert result.next.key == daily(80, date(2026, 10, 25))
    assert result.next.at_ms == start + 80 * MIN


def test_a_day_without_a_free_day_slot_has_no_daily_alerts_and_overruns_at_once() -> None:
    terms = contract(free_daily_minutes=10, free_days_per_week=2, alert_thresholds=(80,), rate_per_minute=2)
    monday, sunday = date(2026, 11, 23), date(2026, 11, 22)  # Sunday is last week
    settled = Settled({monday: SettledDay(free_ms=MIN), sunday: SettledDay(free_ms=MIN),
                       date(2026, 11, 20): SettledDay(free_ms=MIN)})  # fmt: skip
    tuesday = run(terms, [talking("a", T0)], T0 + MIN, settled)
    assert crossings(tuesday) == {("daily", 80): T0 + 8 * MIN}
    week_full = Settled({**settled.days, TODAY: SettledDay(free_ms=MIN)})
    wednesday = T0 + 24 * 60 * MIN
    result = run(terms, [talking("a", wednesday)], wednesday + MIN, week_full)
    new = [c for c in result.crossed if c.at_ms is not None]
    overrun = AlertKey("K1", "overrun", 0, date(2026, 11, 25))
    assert [(c.key, c.at_ms) for c in new] == [(overrun, wednesday + 1)]
    assert result.next is not None and result.next.key.period_start == date(2026, 11, 26)  # its own day
    assert result.standing.free_left_ms == 0 and result.standing.free_days_used == 2


def test_a_short_call_counts_all_at_once_when_it_stops_being_short() -> None:
    # 30 s of short-call rule; the allowance has 20 s left before 100 %: crossed at 30 s, not 20 s.
    terms = contract(free_daily_minutes=10, short_call_seconds=30, alert_thresholds=(100,))
    settled = Settled({TODAY: SettledDay(free_ms=10 * MIN - 20 * SEC)})
    result = run(terms, [talking("a", T0)], T0 + 10 * SEC, settled)
    assert result.next is not None and result.next.at_ms == T0 + 30 * SEC
    assert result.standing.counted_today_ms == 10 * MIN - 20 * SEC


def test_usage_already_recorded_is_crossed_without_a_moment() -> None:
    settled = Settled({TODAY: SettledDay(free_ms=10 * MIN)})
    result = run(contract(**FREE_10), [], T0, settled)
    assert [(c.key, c.at_ms) for c in result.crossed] == [(daily(80), None), (daily(100), None)]
    assert (result.next, result.wake_ms) == (None, None)


def test_alerts_already_raised_are_skipped_and_the_next_one_planned() -> None:
    result = run(contract(**FREE_10), [talking("a", T0)], T0 + 9 * MIN, raised=(daily(80),))
    assert result.crossed == ()
    assert result.next is not None and result.next.key == daily(100)


def test_the_horizon_is_the_end_of_the_next_local_day() -> None:
    terms = contract(free_daily_minutes=10, alert_thresholds=(80,))
    tomorrow = TODAY + timedelta(days=1)
    overruns = (AlertKey("K1", "overrun", 0, TODAY), AlertKey("K1", "overrun", 0, tomorrow))
    result = run(terms, [talking("a", T0)], T0 + 9 * MIN, raised=(daily(80), *overruns))
    midnight = to_ms(datetime.fromisoformat("2026-11-25T00:00:00+03:00"))
    assert result.next is not None and result.next.at_ms == midnight + 8 * MIN
    far = run(terms, [talking("a", T0)], T0 + 9 * MIN, raised=(daily(80), daily(80, tomorrow), *overruns))
    assert far.next is None
    assert far.wake_ms == to_ms(datetime.fromisoformat("2026-11-26T00:00:00+03:00"))


def test_standing_counts_live_talk() -> None:
    terms = contract(free_daily_minutes=10, free_days_per_week=2, prepaid_minutes=30, rate_per_minute=2)
    settled = Settled({TODAY: SettledDay(free_ms=6 * MIN)}, prepaid_ms=4 * MIN)
    now = run(terms, [talking("a", T0), talking("b", T0)], T0 + 3 * MIN, settled).standing
    assert (now.counted_today_ms, now.free_used_ms, now.free_left_ms) == (12 * MIN, 10 * MIN, 0)
    assert (now.free_days_used, now.free_days_per_week) == (1, 2)
    assert (now.prepaid_used_ms, now.prepaid_left_ms) == (6 * MIN, 24 * MIN)
    assert (now.paid_ms, now.paid_now) == (0, False)
