"""Quota planning: what a contract has left now, and when its next alert threshold will be crossed.

Theory of operation
===================

This module is pure (no I/O, no clock): the daemon gives it a contract, the client's time zone,
the usage already *settled* in the ledger, the conversations *in progress* with their talk so far
and whether they are talking (or on hold) right now, and the time `now`. It answers which alert
thresholds are crossed by `now`, and at which moment the next one will be crossed if every
conversation goes on as it is; the daemon sets a timer for that moment and asks again when it
fires, or as soon as anything changes (a conversation starts or ends, a hold starts or stops).

What is measured. Rating (`accounting.rating`) draws every counted millisecond from the free
daily allowance, then the prepaid package, then paid time. Alerts follow the same counting:
hold counts only where `hold_billable`, a conversation whose counted talk is still shorter than
`short_call_seconds` counts nothing (and all of its talk so far counts at once, at the moment it
reaches that length), and k conversations of one client talking together count k milliseconds
per elapsed millisecond. Three kinds of alert, each at most once per period:

- `daily` p: the counted talk of one client-local day reaches p % of `free_daily_minutes`, on a
  day that holds one of the week's free-day slots (a day refused by `free_days_per_week` has no
  allowance to measure). Up to 100 % this is the free allowance consumed; above 100 % (the
  contract may ask for up to 1000 %) it is the talk of the day measured against the allowance.
  Period: the local day (days and weeks are the client's, so DST days have 23 or 25 hours).
- `prepaid` p: the counted talk beyond the free allowance over the contract's term reaches p %
  of `prepaid_minutes` (up to 100 %, the package consumed). Period: the contract's term.
- `overrun`: the first millisecond of paid (or, with `overage = flag`, over-quota) time in a
  period: the local day when the contract has a daily allowance, else the contract's term.
  A contract without any allowance has nothing to overrun and raises no `overrun`.

Why totals are enough. For each of these measures only per-day totals matter: a slotted day's
free time is min(cap, counted talk of the day), the package takes min(package, the rest), and
the slots of a week go to its first days with counted talk. So the order in which overlapping
conversations draw (which rating needs for each conversation's own split) does not change when
a threshold is crossed, and the settled usage can be taken as it is: per local day free, prepaid
and paid milliseconds, and the term's prepaid and paid totals (the running usage state).

The closed form. The time line from the first conversation in progress is cut at every change:
an interval of talk starting or ending, a conversation reaching the short-call length, a local
midnight. Within one stretch k conversations count and every measure is a piecewise-linear
function of the day's counted talk C, so a threshold is crossed when C reaches a value C* known
in advance; from C0 at the stretch's start that is at `start + ceil((C* - C0) / k)`: the first
whole millisecond at which rating the talk cut there would show the threshold reached. After
`now` the open stretches are extended (the projection) up to the end of the next local day; past
that horizon the daemon simply plans again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from itertools import pairwise
from typing import Literal
from zoneinfo import ZoneInfo

from accounting.contracts import Contract
from accounting.conversations import Interval
from accounting.rating import Charge, local_date, local_midnight_ms

AlertKind = Literal["daily", "prepaid", "overrun"]


@dataclass(frozen=True, slots=True, order=True)
class AlertKey:
    """One alert of one contract in one period: raised at most once, ever."""

    contract_id: str
    kind: AlertKind
    percent: int
    """The threshold in percent; 0 for `overrun`."""
    period_start: date
    """The client-local day, or the contract's `valid_from` for its term."""


@dataclass(frozen=True, slots=True)
class SettledDay:
    """What recorded conversations consumed on one client-local day (milliseconds)."""

    free_ms: int = 0
    prepaid_ms: int = 0
    paid_ms: int = 0

    @property
    def counted_ms(self) -> int:
        return self.free_ms + self.prepaid_ms + self.paid_ms


@dataclass(frozen=True, slots=True)
class Settled:
    """The contract's usage by recorded conversations: per local day (the days of the periods in
    play and the rest of their ISO weeks, for the free-day slots) and over the whole term."""

    days: Mapping[date, SettledDay] = field(default_factory=dict)
    prepaid_ms: int = 0
    paid_ms: int = 0


@dataclass(frozen=True, slots=True)
class OpenStretch:
    """The talk (or hold) going on right now, since `start_ms`."""

    start_ms: int
    hold: bool


@dataclass(frozen=True, slots=True)
class LiveConversation:
    """A conversation in progress: its finished intervals and what it is doing now."""

    conversation_id: str
    started_ms: int
    intervals: tuple[Interval, ...] = ()
    open: OpenStretch | None = None

    def cut(self, at_ms: int) -> tuple[Interval, ...]:
        """The talk up to `at_ms`, if it went on as it is until then (intervals never overlap)."""
        intervals = [i for i in self.intervals if i.start_ms < at_ms]
        if self.open is not None and self.open.start_ms < at_ms:
            intervals.append(Interval(self.open.start_ms, at_ms, self.open.hold))
        return tuple(Interval(i.start_ms, min(i.end_ms, at_ms), i.hold) for i in intervals)


@dataclass(frozen=True, slots=True)
class Crossing:
    key: AlertKey
    at_ms: int | None
    """When it was (or will be) crossed; None when the settled usage alone crossed it."""


@dataclass(frozen=True, slots=True)
class Standing:
    """What the contract has used and has left at one moment (milliseconds and days)."""

    day: date
    counted_today_ms: int
    free_cap_ms: int | None
    free_used_ms: int
    free_left_ms: int
    free_days_per_week: int | None
    free_days_used: int
    prepaid_ms: int | None
    prepaid_used_ms: int
    prepaid_left_ms: int
    paid_ms: int
    """Paid (or over-quota) time over the term."""
    paid_now: bool
    """Talk now goes into paid (or over-quota) time: the allowances are used up."""


@dataclass(frozen=True, slots=True)
class Plan:
    crossed: tuple[Crossing, ...]
    """Thresholds crossed by `now` that were not raised yet, in the order they were crossed."""
    next: Crossing | None
    """The next threshold to be crossed if nothing changes, within the horizon."""
    wake_ms: int | None
    """When to plan again: the next crossing, or the horizon while talk goes on; None when
    nothing counts any more."""
    standing: Standing


def plan(
    contract: Contract,
    timezone: str,
    settled: Settled,
    live: Iterable[LiveConversation],
    now_ms: int,
    raised: Iterable[AlertKey] = (),
) -> Plan:
    """Which thresholds are crossed by `now_ms`, and which is next (see the module comment)."""
    zone = ZoneInfo(timezone)
    horizon = local_midnight_ms(local_date(now_ms, zone) + timedelta(days=2), zone)
    conversations = list(live)
    sweep = _Sweep(contract, zone, settled, frozenset(raised))
    sweep.run(conversations, now_ms, horizon)
    counting = any(c.open is not None and (contract.hold_billable or not c.open.hold) for c in conversations)
    crossed = tuple(sorted((c for c in sweep.found if c.at_ms is None or c.at_ms <= now_ms), key=_moment))
    upcoming = [c for c in sweep.found if c.at_ms is not None and c.at_ms > now_ms]
    upcoming_next = min(upcoming, key=_moment, default=None)
    wake = upcoming_next.at_ms if upcoming_next is not None else (horizon if counting else None)
    assert sweep.standing is not None
    return Plan(crossed, upcoming_next, wake, sweep.standing)


def settled_of(charges: Iterable[Charge]) -> Settled:
    """What rated conversations consumed, as the ledger's running state holds it."""
    days: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    prepaid = paid = 0
    for charge in charges:
        prepaid, paid = prepaid + charge.prepaid_ms, paid + charge.paid_ms
        for usage in charge.days:
            totals = days[usage.day]
            totals[0] += usage.free_ms
            totals[1] += usage.prepaid_ms
            totals[2] += usage.paid_ms
    return Settled({day: SettledDay(*totals) for day, totals in days.items()}, prepaid, paid)


def alert_keys(contract: Contract, day: date) -> list[AlertKey]:
    """Every alert the contract can raise in the periods around one local day."""
    keys = []
    cap, package = contract.free_daily_ms or 0, contract.prepaid_ms or 0
    for percent in sorted(set(contract.alert_thresholds)):
        if cap > 0:
            keys.append(AlertKey(contract.contract_id, "daily", percent, day))
        if package > 0:
            keys.append(AlertKey(contract.contract_id, "prepaid", percent, contract.valid_from))
    if cap > 0:
        keys.append(AlertKey(contract.contract_id, "overrun", 0, day))
    elif package > 0:
        keys.append(AlertKey(contract.contract_id, "overrun", 0, contract.valid_from))
    return keys


def is_term(contract: Contract, key: AlertKey) -> bool:
    """Whether the alert's period is the contract's term (else it is one local day)."""
    return key.kind == "prepaid" or (key.kind == "overrun" and not contract.free_daily_ms)


def threshold_ms(contract: Contract, key: AlertKey) -> int:
    """The amount of the measured time at which a percentage is reached (rounded up)."""
    whole = (contract.free_daily_ms if key.kind == "daily" else contract.prepaid_ms) or 0
    return -(-whole * key.percent // 100)


def _moment(crossing: Crossing) -> tuple[int, AlertKey]:
    return (crossing.at_ms if crossing.at_ms is not None else -1), crossing.key


def _week(day: date) -> tuple[int, int]:
    year, week, _ = day.isocalendar()
    return year, week


# --- the sweep --------------------------------------------------------------------------------

_Moment = Callable[[int], int]
"""`moment(n)`: when the n-th millisecond counted in the current stretch or lump is counted."""


@dataclass(slots=True)
class _Target:
    """One alert the sweep watches for (created once per sweep, so no key is hashed per stretch)."""

    key: AlertKey
    threshold: int
    done: bool = False


@dataclass(frozen=True, slots=True)
class _Piece:
    """A conversation's counted talk, split where it is counted at once (the short-call lump)
    and where it is counted as it goes."""

    lump_at: int | None
    lump: tuple[Interval, ...]
    running: tuple[Interval, ...]


class _Sweep:
    """The contract's allowances, brought forward in time order; records crossings as it goes."""

    def __init__(self, contract: Contract, zone: ZoneInfo, settled: Settled, raised: frozenset[AlertKey]):
        self.contract = contract
        self.zone = zone
        self.cap = contract.free_daily_ms or 0
        self.week_limit = contract.free_days_per_week
        self.package = contract.prepaid_ms or 0
        self.short_ms = (contract.short_call_seconds or 0) * 1000
        self.raised = raised
        self.counted: dict[date, int] = defaultdict(int)
        self.slotted: dict[date, bool] = {}
        self.week_days: dict[tuple[int, int], set[date]] = defaultdict(set)
        self.paid_days: set[date] = set()
        self.beyond_free = settled.prepaid_ms + settled.paid_ms
        self.found: list[Crossing] = []
        self.standing: Standing | None = None
        term_keys = [key for key in alert_keys(contract, contract.valid_from) if is_term(contract, key)]
        self._term = [_Target(key, threshold_ms(contract, key)) for key in term_keys]
        self._days: dict[date, list[_Target]] = {}
        for day, usage in settled.days.items():
            self.counted[day] = usage.counted_ms
            if usage.counted_ms > 0:
                self.slotted[day] = usage.free_ms > 0
            if usage.free_ms > 0:
                self.week_days[_week(day)].add(day)
            if usage.paid_ms > 0:
                self.paid_days.add(day)
        self._check_settled(settled)

    # the run

    def run(self, live: Sequence[LiveConversation], now: int, horizon: int) -> None:
        """Sweep from the first conversation's start to `horizon`, taking `standing` at `now`."""
        changes: dict[int, list[tuple[int, tuple[Interval, ...]]]] = defaultdict(list)
        for piece in (self._piece(conversation, horizon) for conversation in live):
            if piece.lump_at is not None:
                changes[piece.lump_at].append((0, piece.lump))
            for interval in piece.running:
                changes[interval.start_ms].append((1, ()))
                changes[interval.end_ms].append((-1, ()))
        start = min([now, *changes])
        moments = sorted({now, horizon, *changes, *self._midnights(start, horizon)})
        rate = 0
        for moment, following in pairwise(moments):
            for delta, lump in sorted(changes.get(moment, ()), key=lambda change: change[0]):
                rate += delta
                if lump:
                    self._lump(moment, lump)
            if moment == now:
                self.standing = self._standing(now, rate)
            if rate > 0:
                self._stretch(moment, following, rate)

    def _piece(self, conversation: LiveConversation, horizon: int) -> _Piece:
        counted = [
            i for i in conversation.cut(horizon) if i.ms > 0 and (self.contract.hold_billable or not i.hold)
        ]
        if self.short_ms == 0:
            return _Piece(None, (), tuple(counted))
        reached = 0
        for index, interval in enumerate(counted):
            if reached + interval.ms >= self.short_ms:
                at = interval.start_ms + self.short_ms - reached
                before = (*counted[:index], replace(interval, end_ms=at))
                after = (replace(interval, start_ms=at), *counted[index + 1 :])
                return _Piece(at, before, tuple(i for i in after if i.ms > 0))
            reached += interval.ms
        return _Piece(None, (), ())  # a short call so far, and it will stay one: counts nothing

    def _midnights(self, start: int, end: int) -> Iterator[int]:
        day = local_date(start, self.zone) + timedelta(days=1)
        while (midnight := local_midnight_ms(day, self.zone)) < end:
            yield midnight
            day += timedelta(days=1)

    # drawing

    def _stretch(self, start: int, end: int, rate: int) -> None:
        """`rate` conversations count from `start` to `end`, within one local day."""
        day = local_date(start, self.zone)
        self._add(day, rate * (end - start), lambda need: start + -(-need // rate))

    def _lump(self, at: int, lump: tuple[Interval, ...]) -> None:
        """A conversation stops being a short call at `at`: its talk so far counts at once."""
        by_day: dict[date, int] = defaultdict(int)
        for interval in lump:
            for day, ms in self._split_by_day(interval):
                by_day[day] += ms
        for day in sorted(by_day):
            self._add(day, by_day[day], lambda need: at)

    def _split_by_day(self, interval: Interval) -> Iterator[tuple[date, int]]:
        start = interval.start_ms
        for midnight in self._midnights(interval.start_ms, interval.end_ms):
            yield local_date(start, self.zone), midnight - start
            start = midnight
        if interval.end_ms > start:
            yield local_date(start, self.zone), interval.end_ms - start

    def _add(self, day: date, amount: int, moment: _Moment) -> None:
        """Count `amount` more milliseconds on `day`; `moment(n)` is when the n-th of them is."""
        if amount <= 0:
            return
        day_cap = self._cap_of(day)
        before = self.counted[day]
        others = self.beyond_free - max(0, before - day_cap)
        for target, needed in self._targets(day, day_cap, others):
            if needed <= before:
                self._record(target, moment(1))
            elif needed <= before + amount:
                self._record(target, moment(needed - before))
        self.counted[day] = before + amount
        self.beyond_free = others + max(0, before + amount - day_cap)

    def _cap_of(self, day: date) -> int:
        """The day's free allowance; the first counted millisecond of a day decides its slot."""
        if day not in self.slotted:
            days = self.week_days[_week(day)]
            has_slot = self.week_limit is None or len(days) < self.week_limit
            self.slotted[day] = self.cap > 0 and has_slot
            if self.slotted[day]:
                days.add(day)
        return self.cap if self.slotted[day] else 0

    def _targets(self, day: date, day_cap: int, others: int) -> Iterator[tuple[_Target, int]]:
        """Each alert that `day`'s counted talk can still cross, with the counted talk of the day
        at which it is crossed (`others`: the talk beyond free on the other days of the term)."""
        for target in self._day_targets(day):
            if target.done:
                continue
            if target.key.kind == "daily":
                if day_cap > 0:
                    yield target, target.threshold
            else:  # the overrun of the day: paid time on this day
                yield target, day_cap + max(1, self.package + 1 - others)
        for target in self._term:
            if target.done:
                continue
            if target.key.kind == "prepaid":
                yield target, day_cap + target.threshold - others
            else:  # the overrun of the term
                yield target, day_cap + self.package + 1 - others

    def _day_targets(self, day: date) -> list[_Target]:
        targets = self._days.get(day)
        if targets is None:
            keys = [key for key in alert_keys(self.contract, day) if not is_term(self.contract, key)]
            targets = self._days[day] = [_Target(key, threshold_ms(self.contract, key)) for key in keys]
        return targets

    def _check_settled(self, settled: Settled) -> None:
        """Thresholds the recorded conversations crossed on their own (found when recorded)."""
        for day in sorted(settled.days):
            for target in self._day_targets(day):
                if target.key.kind == "daily":
                    reached = bool(self.slotted.get(day)) and self.counted[day] >= target.threshold
                else:
                    reached = day in self.paid_days
                if reached:
                    self._record(target, None)
        for target in self._term:
            if target.key.kind == "prepaid":
                reached = self.beyond_free >= target.threshold
            else:
                reached = settled.paid_ms > 0
            if reached:
                self._record(target, None)

    def _record(self, target: _Target, at: int | None) -> None:
        if not target.done:
            target.done = True
            if target.key not in self.raised:
                self.found.append(Crossing(target.key, at))

    # what is left

    def _standing(self, now: int, rate: int) -> Standing:
        day = local_date(now, self.zone)
        counted = self.counted[day]
        if day in self.slotted:
            day_cap = self.cap if self.slotted[day] else 0
        else:
            week = self.week_days[_week(day)]
            day_cap = self.cap if self.week_limit is None or len(week) < self.week_limit else 0
        free_used = min(day_cap, counted)
        package_used = min(self.package, self.beyond_free)
        paid_now = rate > 0 and free_used >= day_cap and package_used >= self.package
        return Standing(
            day=day,
            counted_today_ms=counted,
            free_cap_ms=self.contract.free_daily_ms,
            free_used_ms=free_used,
            free_left_ms=day_cap - free_used,
            free_days_per_week=self.week_limit,
            free_days_used=len(self.week_days[_week(day)]),
            prepaid_ms=self.contract.prepaid_ms,
            prepaid_used_ms=package_used,
            prepaid_left_ms=self.package - package_used,
            paid_ms=max(0, self.beyond_free - self.package),
            paid_now=paid_now,
        )
