"""Rating: from measured talk and a contract's rules to free, prepaid and paid time and money.

Theory of operation
===================

This module is pure: no I/O, no clock, no logging. It receives a client's contracts, the
client's IANA time zone and the client's conversations (as `Talk`: conversation id, start and
talk intervals in integer epoch milliseconds), and returns one `Charge` per conversation. The
same input always gives the same output, whatever the order of the conversations, so the store
can re-rate a whole contract after every new conversation and post only the differences.

Which contract. A conversation is rated under exactly one contract of its client: among the
contracts valid on the client-local date the conversation *started* and covering its line (an
empty `lines` covers every line), the one that names the line explicitly wins over an all-lines
contract; then the one that started most recently (`valid_from`); then the smallest
`contract_id`. A conversation no contract covers is reported as uncovered, not charged. A
conversation that runs past its contract's `valid_to` is still rated whole under it.

Which seconds count. `talk` includes hold. When the contract's `hold_billable` is false, hold
intervals are *excluded*: they are recorded but neither consume allowances nor are paid. A
conversation whose counted talk is shorter than `short_call_seconds` is excluded entirely: it is
neither billed nor consumes any allowance. So for every charge
    free_ms + prepaid_ms + paid_ms + excluded_ms = talk_ms.
Conversations without talk (unanswered) get no charge at all.

Order of consumption. Each counted millisecond is taken from the first pool that has some left:
the free daily allowance, then the prepaid package, then paid time (billed at the rate, or
flagged as over quota when `overage` is `flag`). Allowances are consumed in the order the
seconds were talked, not in the order conversations ended: the counted intervals of all the
contract's conversations are swept together along the time line. Where k conversations talk at
once, each elapsed millisecond consumes k milliseconds of allowance, and within one millisecond
the conversations draw in rank order (start time, then conversation id). The allocation inside
a stretch of constant k is computed in closed form (`_share`), and it is exactly what a
millisecond-by-millisecond simulation gives (a property test checks this). Hence the free
seconds of a day can never exceed its cap, even with overlapping conversations.

Days and weeks are the client's local ones (`zoneinfo`): the time line is also cut at every
local midnight, so a conversation across midnight draws from both days, and DST days simply
have 23 or 25 hours. A local day takes one of the week's `free_days_per_week` slots (ISO weeks,
Monday first) when it consumes its first free millisecond; once the slots of a week are taken,
other days of that week get no free time. The prepaid package (`prepaid_minutes`) is one
package for the whole contract period; a package renewed monthly is a new contract row.

Money. Free and prepaid are consumed in exact milliseconds; rounding applies only to the paid
part of each conversation: `billable_seconds` = the paid milliseconds raised to at least
`minimum_billable_seconds`, then rounded *up* to a multiple of `billing_increment_seconds`
(a conversation with no paid time has 0 billable seconds, the minimum does not apply). The
amount is billable_seconds / 60 × rate, rounded half up to 0.01 once per conversation. With
`overage = flag` the paid part is kept (raw `paid_ms`), `over_quota` is true, and
`billable_seconds` and `amount` are 0: the support manager decides.

Rating can start in the middle of a contract's life: `PriorUsage` says what conversations
rated earlier consumed (free per day, prepaid in total). This is exact when all of those ended
before the first conversation now rated started, which is how the ledger uses it.

Each charge also records the moments its conversation switched from one tier to the next
(`tier_changes`, a conversation across midnight may go paid → free again) and its talk, free,
prepaid and paid milliseconds per local day (`days`) so that daily views stay exact.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from itertools import pairwise
from typing import Literal
from zoneinfo import ZoneInfo

from accounting.contracts import Contract
from accounting.conversations import Interval, Talk, from_ms, to_ms
from accounting.values import value_class

Tier = Literal["free", "prepaid", "paid"]

CENT = Decimal("0.01")


@value_class
class DayUsage:
    """One conversation's milliseconds on one client-local day."""

    day: date
    talk_ms: int
    free_ms: int
    prepaid_ms: int
    paid_ms: int


@value_class
class TierChange:
    at_ms: int
    tier: Tier


@value_class
class Charge:
    conversation_id: str
    contract_id: str
    day: date
    talk_ms: int
    hold_ms: int
    excluded_ms: int
    free_ms: int
    prepaid_ms: int
    paid_ms: int
    billable_seconds: int
    amount: Decimal
    currency: str | None
    over_quota: bool
    short_call: bool
    tier_changes: tuple[TierChange, ...]
    days: tuple[DayUsage, ...]


@value_class
class PriorUsage:
    """What conversations rated earlier consumed of a contract's allowances, when they all
    ended before the first conversation now being rated started (see `ledger`): free
    milliseconds per local day (a day with some free use holds one of its week's slots) and
    prepaid milliseconds in total."""

    free_by_day: Mapping[date, int] = field(default_factory=dict)
    prepaid_ms: int = 0


@value_class
class ClientRating:
    charges: tuple[Charge, ...]
    uncovered: tuple[str, ...]
    """Conversations with talk that no contract of the client covers."""


def rate_client(
    contracts: Iterable[Contract],
    timezone: str,
    talks: Iterable[Talk],
    only: frozenset[str] | None = None,
    prior: Mapping[str, PriorUsage] | None = None,
) -> ClientRating:
    """Rate a client's conversations; with `only`, just the conversations of those contracts;
    `prior` gives, per contract, what earlier conversations not in `talks` consumed."""
    return ClientRater(contracts, timezone, only, prior).rate(talks)


class ClientRater:
    """Rates a client's conversations in consecutive batches, carrying what each batch consumed
    of the allowances into the next: rating batch after batch gives what rating them all at once
    gives, as long as every conversation of a batch started after every conversation of the
    batches before it ended (the ledger's frontiers guarantee that). A whole-history rerate rates
    window after window this way without reading the running state back between them."""

    def __init__(
        self,
        contracts: Iterable[Contract],
        timezone: str,
        only: frozenset[str] | None = None,
        prior: Mapping[str, PriorUsage] | None = None,
    ) -> None:
        self.zone = ZoneInfo(timezone)
        self.contracts = list(contracts)
        self.only = only
        self.prior = prior or {}
        self.pools: dict[str, _Pools] = {}

    def rate(self, talks: Iterable[Talk]) -> ClientRating:
        """The next batch's charges (see the class comment for what a batch must be)."""
        groups: dict[str, list[Talk]] = defaultdict(list)
        uncovered: list[str] = []
        for talk in sorted(talks, key=_rank):
            if talk.talk_ms == 0:
                continue
            contract = choose_contract(self.contracts, talk, self.zone)
            if contract is None:
                uncovered.append(talk.conversation_id)
            else:
                groups[contract.contract_id].append(talk)
        by_id = {contract.contract_id: contract for contract in self.contracts}
        charges: list[Charge] = []
        for contract_id in sorted(groups):
            if self.only is None or contract_id in self.only:
                contract = by_id[contract_id]
                pools = self.pools.get(contract_id)
                if pools is None:
                    pools = self.pools[contract_id] = _Pools(
                        contract, self.prior.get(contract_id) or PriorUsage()
                    )
                charges.extend(_rate_sorted(contract, self.zone, groups[contract_id], pools))
        return ClientRating(tuple(charges), tuple(uncovered))


def choose_contract(contracts: Sequence[Contract], talk: Talk, zone: ZoneInfo) -> Contract | None:
    """The contract a conversation is rated under (see the module comment), or None."""
    day = local_date(talk.started_ms, zone)
    covering = [contract for contract in contracts if contract.covers(day, talk.line)]
    if not covering:
        return None
    return min(covering, key=lambda c: (not c.lines, -c.valid_from.toordinal(), c.contract_id))


def rate_contract(
    contract: Contract, timezone: str, talks: Iterable[Talk], prior: PriorUsage | None = None
) -> list[Charge]:
    """One charge per conversation, all rated together under `contract`, after `prior`."""
    return _rate_sorted(
        contract, ZoneInfo(timezone), sorted(talks, key=_rank), _Pools(contract, prior or PriorUsage())
    )


def _rate_sorted(contract: Contract, zone: ZoneInfo, ordered: list[Talk], pools: _Pools) -> list[Charge]:
    """Rate conversations in rank order, drawing from (and using up) `pools`."""
    counted = [_counted_intervals(contract, talk) for talk in ordered]
    meters = [_Meter() for _ in ordered]
    for start, end, active in _stretches([intervals for intervals, _ in counted], zone):
        pools.draw(local_date(start, zone), start, end - start, [meters[index] for index in active])
    return [
        _charge(contract, zone, talk, meter, short)
        for talk, (_, short), meter in zip(ordered, counted, meters, strict=True)
    ]


def billable_seconds(contract: Contract, paid_ms: int) -> int:
    """The paid part after the minimum and the increment (rounded up); 0 when nothing is paid."""
    if paid_ms <= 0:
        return 0
    increment_ms = contract.billing_increment_seconds * 1000
    raised = max(paid_ms, contract.minimum_billable_seconds * 1000)
    return -(-raised // increment_ms) * contract.billing_increment_seconds


def price(contract: Contract, seconds: int) -> Decimal:
    """seconds / 60 × rate, rounded half up to 0.01 (once per conversation)."""
    rate = contract.rate_per_minute or Decimal(0)
    return (Decimal(seconds) * rate / 60).quantize(CENT, rounding=ROUND_HALF_UP)


def local_date(ms: int, zone: ZoneInfo) -> date:
    """The client-local date of an instant: its UTC offset read once per zone and hour (rating
    asks this for every stretch of talk, and `astimezone` is what made rating slow)."""
    offset = _hour_offset_ms(zone, ms // _HOUR_MS)
    if offset is None:  # the offset changes within this hour
        return from_ms(ms).astimezone(zone).date()
    number = (ms + offset) // _DAY_MS
    day = _DATES.get(number)
    if day is None:
        if len(_DATES) >= _DATES_KEPT:
            _DATES.clear()
        day = _DATES[number] = date.fromordinal(_EPOCH_ORDINAL + number)
    return day


@lru_cache(maxsize=1 << 15)
def local_midnight_ms(day: date, zone: ZoneInfo) -> int:
    """The first instant of a local day. Where midnight itself does not exist (a DST jump at
    00:00), `fold=0` reads it with the offset before the jump, which is the jump's instant."""
    return to_ms(datetime.combine(day, time(), tzinfo=zone))


_DATES: dict[int, date] = {}
"""Dates by their number of days since 1970 (building a date was half of `local_date`)."""
_DATES_KEPT = 1 << 16

_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@lru_cache(maxsize=1 << 15)
def _hour_offset_ms(zone: ZoneInfo, hour: int) -> int | None:
    """The zone's UTC offset during a UTC hour (epoch hours), or None when it changes within it.
    No time zone changes its offset twice within an hour, so equal offsets at both ends mean one
    offset throughout. (The cache is a few MB at most: 32k hours.)"""
    first = from_ms(hour * _HOUR_MS).astimezone(zone).utcoffset()
    last = from_ms((hour + 1) * _HOUR_MS - 1).astimezone(zone).utcoffset()
    if first is None or first != last:
        return None
    return first // timedelta(milliseconds=1)


def _rank(talk: Talk) -> tuple[int, str]:
    return talk.started_ms, talk.conversation_id


def _counted_intervals(contract: Contract, talk: Talk) -> tuple[list[Interval], bool]:
    """The intervals that count as talk, and whether the conversation is a short call."""
    intervals = [i for i in talk.intervals if i.ms > 0 and (contract.hold_billable or not i.hold)]
    counted_ms = sum(interval.ms for interval in intervals)
    if contract.short_call_seconds is not None and counted_ms < contract.short_call_seconds * 1000:
        return [], True
    return intervals, False


def _stretches(counted: Sequence[Sequence[Interval]], zone: ZoneInfo) -> Iterator[tuple[int, int, list[int]]]:
    """(start, end, active conversation indexes) for each stretch of constant activity within
    one local day, in time order."""
    changes: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for index, intervals in enumerate(counted):
        for interval in intervals:
            changes[interval.start_ms].append((1, index))
            changes[interval.end_ms].append((-1, index))
    if not changes:
        return
    moments = sorted(set(changes) | set(_midnights(min(changes), max(changes), zone)))
    active: set[int] = set()
    for start, end in pairwise(moments):
        # Ends before starts: one conversation's adjacent segments share a boundary.
        for delta, index in sorted(changes.get(start, ())):
            if delta < 0:
                active.discard(index)
            else:
                active.add(index)
        if active:
            yield start, end, sorted(active)


def _midnights(start_ms: int, end_ms: int, zone: ZoneInfo) -> Iterator[int]:
    day = local_date(start_ms, zone) + timedelta(days=1)
    while (midnight := local_midnight_ms(day, zone)) < end_ms:
        yield midnight
        day += timedelta(days=1)


def _week(day: date) -> tuple[int, int]:
    year, week, _ = day.isocalendar()
    return year, week


def _share(taken: int, rank: int, active: int) -> int:
    """How many of the first `taken` milliseconds drawn by `active` conversations at once fall
    to the one with this rank: the draws go round the conversations one millisecond each."""
    return taken // active + (1 if rank < taken % active else 0)


@dataclass(slots=True)
class _Meter:
    """What one conversation has drawn so far."""

    tiers: dict[Tier, int] = field(default_factory=lambda: {"free": 0, "prepaid": 0, "paid": 0})
    days: dict[date, list[int]] = field(default_factory=dict)
    changes: list[TierChange] = field(default_factory=list)

    def add(self, day: date, start: int, free: int, prepaid: int, paid: int) -> None:
        usage = self.days.get(day)
        if usage is None:
            usage = self.days[day] = [0, 0, 0]
        at = start
        # Written out tier by tier: this runs for every stretch of every conversation.
        if free:
            self._enter("free", at)
            self.tiers["free"] += free
            usage[0] += free
            at += free
        if prepaid:
            self._enter("prepaid", at)
            self.tiers["prepaid"] += prepaid
            usage[1] += prepaid
            at += prepaid
        if paid:
            self._enter("paid", at)
            self.tiers["paid"] += paid
            usage[2] += paid

    def _enter(self, tier: Tier, at: int) -> None:
        if not self.changes or self.changes[-1].tier != tier:
            self.changes.append(TierChange(at, tier))


class _Pools:
    """The contract's allowances: free per local day (with the week's day slots) and prepaid."""

    def __init__(self, contract: Contract, prior: PriorUsage) -> None:
        self.free_cap = contract.free_daily_ms
        self.week_limit = contract.free_days_per_week
        self.prepaid_left = max(0, (contract.prepaid_ms or 0) - prior.prepaid_ms)
        self.free_used: dict[date, int] = defaultdict(int, prior.free_by_day)
        self.week_days: dict[tuple[int, int], set[date]] = defaultdict(set)
        for day, free in prior.free_by_day.items():
            if free > 0:
                self.week_days[_week(day)].add(day)

    def draw(self, day: date, start: int, length: int, meters: Sequence[_Meter]) -> None:
        """`len(meters)` conversations talk together for `length` ms from `start` on `day`."""
        active = len(meters)
        demand = active * length
        free = self._take_free(day, demand)
        prepaid = min(self.prepaid_left, demand - free)
        self.prepaid_left -= prepaid
        for rank, meter in enumerate(meters):
            own_free = _share(free, rank, active)
            up_to_prepaid = _share(free + prepaid, rank, active)
            meter.add(day, start, own_free, up_to_prepaid - own_free, length - up_to_prepaid)

    def _take_free(self, day: date, demand: int) -> int:
        if self.free_cap is None:
            return 0
        days = self.week_days[_week(day)]
        if self.week_limit is not None and day not in days and len(days) >= self.week_limit:
            return 0
        taken = min(self.free_cap - self.free_used[day], demand)
        if taken > 0:
            self.free_used[day] += taken
            days.add(day)
        return taken


def _charge(contract: Contract, zone: ZoneInfo, talk: Talk, meter: _Meter, short: bool) -> Charge:
    free, prepaid, paid = meter.tiers["free"], meter.tiers["prepaid"], meter.tiers["paid"]
    over_quota = contract.overage == "flag" and paid > 0
    seconds = 0 if contract.overage == "flag" else billable_seconds(contract, paid)
    return Charge(
        conversation_id=talk.conversation_id,
        contract_id=contract.contract_id,
        day=local_date(talk.started_ms, zone),
        talk_ms=talk.talk_ms,
        hold_ms=talk.hold_ms,
        excluded_ms=talk.talk_ms - free - prepaid - paid,
        free_ms=free,
        prepaid_ms=prepaid,
        paid_ms=paid,
        billable_seconds=seconds,
        amount=price(contract, seconds),
        currency=contract.currency,
        over_quota=over_quota,
        short_call=short,
        tier_changes=tuple(meter.changes),
        days=_days(talk, meter, zone),
    )


def _days(talk: Talk, meter: _Meter, zone: ZoneInfo) -> tuple[DayUsage, ...]:
    talk_by_day: dict[date, int] = {}
    for interval in talk.intervals:
        for day, ms in _split_by_day(interval, zone):
            talk_by_day[day] = talk_by_day.get(day, 0) + ms
    if len(talk_by_day) == 1 and talk_by_day.keys() >= meter.days.keys():  # talked on one day
        [(day, talk_ms)] = talk_by_day.items()
        free, prepaid, paid = meter.days.get(day, (0, 0, 0))
        return (DayUsage(day, talk_ms, free, prepaid, paid),)
    days = sorted(set(talk_by_day) | set(meter.days))
    return tuple(DayUsage(day, talk_by_day.get(day, 0), *meter.days.get(day, (0, 0, 0))) for day in days)


def _split_by_day(interval: Interval, zone: ZoneInfo) -> Iterator[tuple[date, int]]:
    start = interval.start_ms
    day = local_date(start, zone)
    if interval.end_ms <= local_midnight_ms(day + _ONE_DAY, zone):  # most intervals: one day
        if interval.end_ms > start:
            yield day, interval.end_ms - start
        return
    for midnight in _midnights(interval.start_ms, interval.end_ms, zone):
        yield local_date(start, zone), midnight - start
        start = midnight
    if interval.end_ms > start:
        yield local_date(start, zone), interval.end_ms - start


_ONE_DAY = timedelta(days=1)
