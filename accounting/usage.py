"""The ledger's running state: what the ledger sums to per contract and day, week and in total. Pure.

Theory of operation
===================

The ledger is the truth, but summing it is what made recording slow down as a contract aged and
the views slow down as the ledger grew. So the database keeps, beside the ledger, what it sums
to (`migrations/0003_running_usage.sql` describes the tables), written in the same transaction
as the ledger rows; this module says what to write, and nothing here does I/O.

Every ledger key (conversation, contract) has a current value, a `LedgerState` (the sum of its
rows, see `postings`). A value *contributes* to its contract's running state:

- on each client-local day it talked (`days`): its talk, free, prepaid and paid milliseconds;
- on the day it started (`day`): one conversation when it has talk, its billable seconds, its amount.

The running state of a contract is the sum of the contributions of all its keys: per day
(`usage_days`), per month (`usage_months`) and in total (`usage_totals`), the same sums over the
month's or all days, and per ISO week with any day row (`usage_weeks`: how many of the week's
days have free time, which is what `free_days_per_week` limits, and their free milliseconds). A
posting moves one key from its value before to its value after (`Posting.current`), so the
running state moves by contribution(after) − contribution(before): that is `plan_usage`, a pure
diff like `postings.plan_postings`. Day, month and total changes are additive;
a week's day count is not (a day counts once however many conversations took free time on it),
so it is computed from each touched day's free time before and after. `summarise` computes the
whole running state from the keys' values directly; tests prove that the diffs, applied in any
recording order, always equal it, and `talkmeter check-ledger` compares the tables with the
ledger the same way.

The rater reads it back through `prior_usage`: what the conversations that started before a
rating frontier consumed, from the running state minus what the keys from the frontier on
contribute to the frontier's day (see `ledger` for why that is exact).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, cast

from accounting.postings import LedgerState
from accounting.rating import PriorUsage
from accounting.values import value_class

DayKey = tuple[str, date]
"""(contract_id, client-local day); for weeks the ISO week's Monday, for months their first day."""

ZERO = Decimal("0.00")


@value_class
class Usage:
    """Additive usage of a contract on one day, or in total."""

    talk_ms: int = 0
    free_ms: int = 0
    prepaid_ms: int = 0
    paid_ms: int = 0
    conversations: int = 0
    billable_seconds: int = 0
    amount: Decimal = ZERO

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.talk_ms + other.talk_ms,
            self.free_ms + other.free_ms,
            self.prepaid_ms + other.prepaid_ms,
            self.paid_ms + other.paid_ms,
            self.conversations + other.conversations,
            self.billable_seconds + other.billable_seconds,
            self.amount + other.amount,
        )

    def __neg__(self) -> Usage:
        return Usage(
            -self.talk_ms,
            -self.free_ms,
            -self.prepaid_ms,
            -self.paid_ms,
            -self.conversations,
            -self.billable_seconds,
            -self.amount,
        )

    def __sub__(self, other: Usage) -> Usage:
        return self + -other

    def is_zero(self) -> bool:
        return self == Usage()


@value_class
class Week:
    """A contract's ISO week: days with free time (slots taken) and their free milliseconds."""

    free_days: int = 0
    free_ms: int = 0

    def __add__(self, other: Week) -> Week:
        return Week(self.free_days + other.free_days, self.free_ms + other.free_ms)


@value_class
class Running:
    """Running state (or changes to it): per (contract, day), per (contract, week), per contract,
    per (contract, month)."""

    days: dict[DayKey, Usage] = field(default_factory=dict)
    weeks: dict[DayKey, Week] = field(default_factory=dict)
    totals: dict[str, Usage] = field(default_factory=dict)
    months: dict[DayKey, Usage] = field(default_factory=dict)


Change = tuple[str, LedgerState | None, LedgerState]
"""(contract_id, the key's value before (None for a new key), its value after)"""


def week_of(day: date) -> date:
    """The Monday of the day's ISO week."""
    return day - timedelta(days=day.weekday())


def month_of(day: date) -> date:
    return day.replace(day=1)


def contribution(contract_id: str, value: LedgerState) -> dict[DayKey, Usage]:
    """What one key's value adds to its contract's day rows."""
    sums: dict[DayKey, list[int | Decimal]] = {}
    _add_contribution(sums, contract_id, value, 1)
    return {key: _usage(values) for key, values in sums.items()}


def _add_contribution(
    sums: dict[DayKey, list[int | Decimal]], contract_id: str, value: LedgerState, sign: int
) -> None:
    """Add what one key's value adds to its contract's day rows, times `sign`, to `sums`: per day,
    (talk, free, prepaid, paid, conversations, billable seconds, amount). Plain lists, not
    `Usage`: a whole-history rerate changes thousands of keys, and dataclass arithmetic was most
    of `plan_usage`'s cost."""
    for day, (talk, free, prepaid, paid) in value.days.items():
        row = sums.get((contract_id, day))
        if row is None:
            sums[(contract_id, day)] = [sign * talk, sign * free, sign * prepaid, sign * paid, 0, 0, ZERO]
        else:
            row[0] += sign * talk
            row[1] += sign * free
            row[2] += sign * prepaid
            row[3] += sign * paid
    conversations = 1 if value.talk_ms != 0 else 0
    if conversations or value.billable_seconds or value.amount:
        row = sums.setdefault((contract_id, value.day), [0, 0, 0, 0, 0, 0, ZERO])
        row[4] += sign * conversations
        row[5] += sign * value.billable_seconds
        row[6] += sign * value.amount


def _usage(values: list[int | Decimal]) -> Usage:
    """The `Usage` of a list `_add_contribution` summed (six ints, then the amount)."""
    return Usage(*cast(list[Any], values))


def plan_usage(changes: Iterable[Change], days_before: Mapping[DayKey, Usage]) -> Running:
    """The changes to add to the running state when keys move from their value before to after.

    `days_before` must hold the running state of every day the changes touch (a missing day has
    no row yet); the week counts are derived from it."""
    sums: dict[DayKey, list[int | Decimal]] = {}
    for contract_id, before, after in changes:
        _add_contribution(sums, contract_id, after, 1)
        if before is not None:
            _add_contribution(sums, contract_id, before, -1)
    changed: dict[DayKey, Usage] = {}
    weeks: dict[DayKey, list[int]] = {}
    totals: dict[str, list[int | Decimal]] = {}
    months: dict[DayKey, list[int | Decimal]] = {}
    new_rows: set[DayKey] = set()
    for key, values in sorted(sums.items()):
        if not any(values):
            continue
        changed[key] = _usage(values)
        contract_id, day = key
        week, month = (contract_id, week_of(day)), (contract_id, month_of(day))
        existing = days_before.get(key)
        old_free = 0 if existing is None else existing.free_ms
        counted = (old_free + values[1] > 0) - (old_free > 0)
        _add_into(weeks, week, (counted, values[1]))
        _add_into(totals, contract_id, values)
        _add_into(months, month, values)
        if existing is None:
            new_rows.add(week)
            new_rows.add(month)
    # A week or month has a row as soon as one of its days has one (weekly_usage lists weeks without
    # free time too), so a new day writes its week and month even when their figures do not change.
    return Running(
        changed,
        {key: Week(*week) for key, week in weeks.items() if any(week) or key in new_rows},
        {key: _usage(total) for key, total in totals.items() if any(total)},
        {key: _usage(month) for key, month in months.items() if any(month) or key in new_rows},
    )


def _add_into(sums: dict[Any, list[Any]], key: Any, values: Sequence[Any]) -> None:
    row = sums.get(key)
    if row is None:
        sums[key] = list(values)
    else:
        for index, value in enumerate(values):
            row[index] += value


def apply(state: Running, changes: Running) -> Running:
    """The running state after adding `changes` (rows that reach zero are kept, as in the tables)."""
    days, weeks, totals, months = dict(state.days), dict(state.weeks), dict(state.totals), dict(state.months)
    for key, usage in changes.days.items():
        days[key] = days.get(key, Usage()) + usage
    for key, week in changes.weeks.items():
        weeks[key] = weeks.get(key, Week()) + week
    for contract_id, total in changes.totals.items():
        totals[contract_id] = totals.get(contract_id, Usage()) + total
    for key, usage in changes.months.items():
        months[key] = months.get(key, Usage()) + usage
    return Running(days, weeks, totals, months)


def summarise(values: Iterable[tuple[str, LedgerState]]) -> Running:
    """The running state of a ledger whose keys have these (contract_id, value) values."""
    days: dict[DayKey, Usage] = defaultdict(Usage)
    for contract_id, value in values:
        for key, usage in contribution(contract_id, value).items():
            days[key] += usage
    weeks: dict[DayKey, Week] = defaultdict(Week)
    totals: dict[str, Usage] = defaultdict(Usage)
    months: dict[DayKey, Usage] = defaultdict(Usage)
    for (contract_id, day), usage in days.items():
        weeks[(contract_id, week_of(day))] += Week(1 if usage.free_ms > 0 else 0, usage.free_ms)
        totals[contract_id] += usage
        months[(contract_id, month_of(day))] += usage
    return Running(dict(days), dict(weeks), dict(totals), dict(months))


def without_zeros(state: Running) -> Running:
    """The same state with all-zero rows dropped (tables keep them; sums of a ledger do not)."""
    return Running(
        {key: usage for key, usage in state.days.items() if not usage.is_zero()},
        {key: week for key, week in state.weeks.items() if week != Week()},
        {key: usage for key, usage in state.totals.items() if not usage.is_zero()},
        {key: usage for key, usage in state.months.items() if not usage.is_zero()},
    )


def prior_usage(
    contract_id: str,
    frontier_day: date,
    days: Mapping[DayKey, Usage],
    total: Usage,
    later: Iterable[LedgerState],
) -> PriorUsage:
    """What the contract's conversations started before a rating frontier consumed.

    `frontier_day` is the client-local day of the frontier; `days` the contract's running days
    from a week before it on (up to any day after it); `total` its running total less what the
    days after the last of `days` used; `later` the current values
    of its keys whose conversations started at or after the frontier: at least all of those that
    started on the frontier's day. Conversations before the frontier all ended before it (that is
    what a frontier is), so they used nothing after its day, and on its day they used what the
    running state holds less what the later keys hold there."""
    later_on_day = [value.days.get(frontier_day, (0, 0, 0, 0)) for value in later]
    later_free = sum(counts[1] for counts in later_on_day)
    later_prepaid = sum(counts[2] for counts in later_on_day)
    free_by_day: dict[date, int] = {}
    for offset in range(7, -1, -1):
        day = frontier_day - timedelta(days=offset)
        free = days.get((contract_id, day), Usage()).free_ms - (later_free if offset == 0 else 0)
        if free:
            free_by_day[day] = free
    prepaid_after = sum(
        usage.prepaid_ms
        for (owner, day), usage in days.items()
        if owner == contract_id and day > frontier_day
    )
    return PriorUsage(free_by_day, total.prepaid_ms - prepaid_after - later_prepaid)
