"""The quota planner's closed form against a millisecond-by-millisecond simulation, and against
rating itself: at the moment the planner names, rating the talk cut there shows the threshold
reached, and one millisecond earlier it does not."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from test_rating_properties import ZONES

from accounting.contracts import Contract
from accounting.conversations import Interval, Talk, to_ms
from accounting.quota import (
    AlertKey,
    LiveConversation,
    OpenStretch,
    Settled,
    alert_keys,
    plan,
    settled_of,
    threshold_ms,
)
from accounting.rating import local_date, local_midnight_ms, rate_contract

# Close to local midnights (Moscow, Berlin, Santiago, Kolkata, UTC) and around DST changes.
ORIGINS = [
    "2026-11-24T20:59:50+00:00",
    "2026-10-24T21:59:55+00:00",
    "2026-09-06T03:59:50+00:00",
    "2026-11-24T18:29:52+00:00",
    "2026-11-29T23:59:50+00:00",
    "2026-11-25T09:00:00+00:00",
]
SIMULATED_MS = 12_000
PERCENTS = st.sampled_from([50, 80, 100, 120]) | st.integers(1, 150)


@dataclass(frozen=True)
class Case:
    contract: Contract
    zone: str
    settled_talks: list[Talk]
    live: list[LiveConversation]
    now: int

    def settled(self) -> Settled:
        return settled_of(rate_contract(self.contract, self.zone, self.settled_talks))


@st.composite
def alerting_contracts(draw: st.DrawFn) -> Contract:
    """Contracts of a minute or two, nearly always with something to alert on."""
    free = draw(st.sampled_from([None, 0, 1, 1, 2, 2]))
    rate = draw(st.none() | st.just(Decimal("2.00")))
    return Contract(
        contract_id="K",
        client_id="C",
        valid_from=date(2026, 1, 1),
        free_daily_minutes=free,
        free_days_per_week=draw(st.none() | st.integers(1, 3)) if free is not None else None,
        prepaid_minutes=draw(st.sampled_from([None, 0, 1, 2])),
        rate_per_minute=rate,
        currency="RUB" if rate is not None else None,
        short_call_seconds=draw(st.none() | st.integers(0, 8)),
        overage=draw(st.sampled_from(["bill", "flag"])) if rate is not None else "flag",
        hold_billable=draw(st.booleans()),
        alert_thresholds=tuple(draw(st.lists(PERCENTS, min_size=1, max_size=3, unique=True))),
    )


def near_thresholds(contract: Contract) -> list[int]:
    """Settled totals just short of where some alert is crossed, so that live talk crosses it."""
    cap, package = contract.free_daily_ms or 0, contract.prepaid_ms or 0
    totals = [cap + package, 0]
    for percent in contract.alert_thresholds:
        totals += [-(-cap * percent // 100), cap + -(-package * percent // 100)]
    return totals


@st.composite
def cases(draw: st.DrawFn) -> Case:
    contract = draw(alerting_contracts())
    zone = draw(st.sampled_from(ZONES))
    origin = to_ms(datetime.fromisoformat(draw(st.sampled_from(ORIGINS))))
    total = max(0, draw(st.sampled_from(near_thresholds(contract))) - draw(st.integers(0, 8_000)))
    settled_talks = []
    at = origin - draw(st.integers(0, 1_800_000))
    parts = draw(st.integers(0, 3))
    for number in range(parts):
        length = total // parts + draw(st.integers(0, 500))
        settled_talks.append(Talk(f"s{number}", at, None, (Interval(at, at + length, number == 2),)))
        at += length + draw(st.integers(0, 60_000))
    origin = max(origin, at + 1)  # every settled conversation ended before the live ones started
    live = []
    latest = origin
    for number in range(draw(st.integers(1, 3))):
        start = origin + draw(st.integers(0, 8_000))
        moment = start + draw(st.integers(0, 2_000))
        intervals = []
        for _ in range(draw(st.integers(0, 2))):
            length = draw(st.integers(0, 6_000))
            intervals.append(Interval(moment, moment + length, draw(st.booleans())))
            moment += length + draw(st.integers(0, 1_500))
        stretch = OpenStretch(moment, draw(st.booleans())) if draw(st.booleans()) else None
        live.append(LiveConversation(f"l{number}", start, tuple(intervals), stretch))
        latest = max(latest, moment)
    now = latest + draw(st.integers(0, 4_000))
    return Case(contract, zone, settled_talks, live, now)


# --- the step-by-step model ---------------------------------------------------------------------


class StepModel:
    """Totals brought forward one millisecond at a time, by the definitions of the alerts: a day
    takes a free-day slot with its first counted millisecond (if the week has one left), each
    counted millisecond beyond the day's free allowance goes to the package, then is paid."""

    def __init__(self, contract: Contract, settled: Settled) -> None:
        self.contract = contract
        self.cap = contract.free_daily_ms or 0
        self.package = contract.prepaid_ms or 0
        self.counted: dict[date, int] = defaultdict(int)
        self.slotted: dict[date, bool] = {}
        self.slots: dict[tuple[int, int], set[date]] = defaultdict(set)
        self.paid: dict[date, int] = defaultdict(int)
        self.beyond = settled.prepaid_ms + settled.paid_ms
        self.paid_total = settled.paid_ms
        for day, usage in settled.days.items():
            self.counted[day] = usage.counted_ms
            self.paid[day] = usage.paid_ms
            if usage.counted_ms > 0:
                self.slotted[day] = usage.free_ms > 0
                if usage.free_ms > 0:
                    self.slots[day.isocalendar()[:2]].add(day)

    def count_one(self, day: date) -> None:
        if day not in self.slotted:
            week = self.slots[day.isocalendar()[:2]]
            limit = self.contract.free_days_per_week
            self.slotted[day] = self.cap > 0 and (limit is None or len(week) < limit)
            if self.slotted[day]:
                week.add(day)
        self.counted[day] += 1
        if self.counted[day] > (self.cap if self.slotted[day] else 0):
            self.beyond += 1
            if self.beyond > self.package:
                self.paid[day] += 1
                self.paid_total += 1

    def reached(self, key: AlertKey) -> bool:
        if key.kind == "daily":
            day = key.period_start
            return bool(self.slotted.get(day)) and self.counted[day] >= threshold_ms(self.contract, key)
        if key.kind == "prepaid":
            return self.beyond >= threshold_ms(self.contract, key)
        if self.cap > 0:
            return self.paid[key.period_start] > 0
        return self.paid_total > 0


def counted_intervals(contract: Contract, conversation: LiveConversation, until: int) -> list[Interval]:
    return [i for i in conversation.cut(until) if i.ms > 0 and (contract.hold_billable or not i.hold)]


def simulate(case: Case, until: int) -> dict[AlertKey, int | None]:
    """Every millisecond, every conversation that counts adds one millisecond to its own talk; one
    that has reached the short-call length adds it to the totals (all of its talk so far at once,
    the first time, in the order it was talked). After each millisecond every alert is checked."""
    contract, zone, settled = case.contract, ZoneInfo(case.zone), case.settled()
    short = (contract.short_call_seconds or 0) * 1000
    model = StepModel(contract, settled)
    start = min(c.started_ms for c in case.live)
    days = {*settled.days, local_date(start, zone), local_date(until, zone)}
    keys = sorted({key for day in days for key in alert_keys(contract, day)})
    found: dict[AlertKey, int | None] = {key: None for key in keys if model.reached(key)}
    talking = [(c.conversation_id, counted_intervals(contract, c, until)) for c in case.live]
    own: dict[str, list[date]] = {cid: [] for cid, _ in talking}
    midnights = [local_midnight_ms(local_date(start, zone) + timedelta(days=n), zone) for n in range(1, 4)]
    day_of = [local_date(start, zone) + timedelta(days=n) for n in range(4)]
    for ms in range(start, until):
        day = day_of[sum(1 for m in midnights if m <= ms)]
        for cid, intervals in talking:
            if not any(i.start_ms <= ms < i.end_ms for i in intervals):
                continue
            own[cid].append(day)
            if len(own[cid]) == short:
                for talked_day in own[cid]:
                    model.count_one(talked_day)
            elif len(own[cid]) > short:
                model.count_one(day)
        for key in keys:
            if key not in found and model.reached(key):
                found[key] = ms + 1
    return found


@settings(max_examples=150, deadline=None)
@given(cases())
def test_the_closed_form_matches_the_step_by_step_model(case: Case) -> None:
    result = plan(case.contract, case.zone, case.settled(), case.live, case.now)
    until = case.now + SIMULATED_MS
    expected = simulate(case, until)
    crossed_by_now = {key: at for key, at in expected.items() if at is None or at <= case.now}
    assert {c.key: c.at_ms for c in result.crossed} == crossed_by_now
    later = sorted((at, key) for key, at in expected.items() if at is not None and at > case.now)
    if later:
        assert result.next is not None
        assert (result.next.at_ms, result.next.key) == later[0]
    else:
        assert result.next is None or result.next.at_ms is None or result.next.at_ms >= until


# --- agreement with rating -------------------------------------------------------------------------


def cut_talks(case: Case, at: int) -> list[Talk]:
    return [
        *case.settled_talks,
        *(Talk(c.conversation_id, c.started_ms, None, c.cut(at)) for c in case.live),
    ]


def reached_by_rating(case: Case, key: AlertKey, at: int) -> bool:
    """Rate everything talked before `at` and read the alert's measure off the charges."""
    contract = case.contract
    charges = rate_contract(contract, case.zone, cut_talks(case, at))
    free: dict[date, int] = defaultdict(int)
    counted: dict[date, int] = defaultdict(int)
    paid: dict[date, int] = defaultdict(int)
    for charge in charges:
        for usage in charge.days:
            free[usage.day] += usage.free_ms
            counted[usage.day] += usage.free_ms + usage.prepaid_ms + usage.paid_ms
            paid[usage.day] += usage.paid_ms
    if key.kind == "daily":
        return free[key.period_start] > 0 and counted[key.period_start] >= threshold_ms(contract, key)
    if key.kind == "prepaid":
        beyond = sum(c.prepaid_ms + c.paid_ms for c in charges)
        return beyond >= threshold_ms(contract, key)
    if contract.free_daily_ms:
        return paid[key.period_start] > 0
    return sum(c.paid_ms for c in charges) > 0


def crossings(case: Case) -> Iterator[tuple[AlertKey, int]]:
    result = plan(case.contract, case.zone, case.settled(), case.live, case.now)
    for crossing in [*result.crossed, *([result.next] if result.next else [])]:
        if crossing.at_ms is not None:
            yield crossing.key, crossing.at_ms


@settings(max_examples=150, deadline=None)
@given(cases())
def test_rating_the_talk_cut_at_the_crossing_shows_it_and_a_millisecond_before_does_not(case: Case) -> None:
    for key, at in crossings(case):
        assert reached_by_rating(case, key, at), (key, at)
        assert not reached_by_rating(case, key, at - 1), (key, at)
