"""From "what the ledger says" and "what rating says now" to the rows to append. Pure.

The ledger is append-only. For each (conversation, contract) key the sum of its rows is its
current value. When rating now gives something else (a conversation that talked earlier arrived
later, a contract or number changed, a conversation moved to another client), one adjustment
row carrying the differences is appended; when rating gives nothing for a posted key any more,
the adjustment reverses it to zero. A key never posted gets its one 'charge' row. Nothing is
posted when the ledger already agrees, which is what makes recording and re-rating idempotent.
Each posting also carries the key's value once its row is appended (`current`), which is what
`talkmeter.current_charges` holds for the key and what `usage` derives the running state from.
"""

from __future__ import annotations

from dataclasses import field, replace
from datetime import date
from decimal import Decimal
from typing import Literal

from accounting.conversations import from_ms
from accounting.rating import Charge
from accounting.values import value_class

Key = tuple[str, str]
"""(conversation_id, contract_id)"""

DayCounts = tuple[int, int, int, int]
"""talk, free, prepaid, paid milliseconds of one local day"""


@value_class
class LedgerState:
    """The value of one key: additive amounts, and the non-additive facts as of the latest row."""

    day: date
    talk_ms: int = 0
    hold_ms: int = 0
    excluded_ms: int = 0
    free_ms: int = 0
    prepaid_ms: int = 0
    paid_ms: int = 0
    billable_seconds: int = 0
    amount: Decimal = Decimal("0.00")
    currency: str | None = None
    over_quota: bool = False
    short_call: bool = False
    tier_changes: tuple[tuple[str, str], ...] = ()
    days: dict[date, DayCounts] = field(default_factory=dict)

    def normalised(self) -> LedgerState:
        """The same value without all-zero days."""
        if all(any(counts) for counts in self.days.values()):
            return self
        return replace(self, days={day: counts for day, counts in self.days.items() if any(counts)})

    def reversed(self) -> LedgerState:
        """The value a key must reach when rating no longer gives it anything."""
        return LedgerState(day=self.day, currency=self.currency)


@value_class
class Posting:
    conversation_id: str
    contract_id: str
    kind: Literal["charge", "adjustment"]
    value: LedgerState
    """Full value for a charge, differences for an adjustment."""
    current: LedgerState
    """The key's value (the sum of its rows) once this row is appended."""


def state_of(charge: Charge) -> LedgerState:
    return LedgerState(
        day=charge.day,
        talk_ms=charge.talk_ms,
        hold_ms=charge.hold_ms,
        excluded_ms=charge.excluded_ms,
        free_ms=charge.free_ms,
        prepaid_ms=charge.prepaid_ms,
        paid_ms=charge.paid_ms,
        billable_seconds=charge.billable_seconds,
        amount=charge.amount,
        currency=charge.currency,
        over_quota=charge.over_quota,
        short_call=charge.short_call,
        tier_changes=tuple((iso_ms(change.at_ms), change.tier) for change in charge.tier_changes),
        days={
            d.day: (d.talk_ms, d.free_ms, d.prepaid_ms, d.paid_ms)
            for d in charge.days
            if d.talk_ms or d.free_ms or d.prepaid_ms or d.paid_ms
        },
    )


def plan_postings(desired: dict[Key, Charge], posted: dict[Key, LedgerState]) -> list[Posting]:
    """The rows that make the ledger say what `desired` says, in a deterministic order."""
    postings: list[Posting] = []
    for key in sorted(set(desired) | set(posted)):
        have = posted.get(key)
        want = state_of(desired[key]) if key in desired else None
        if have is None:
            if want is not None:
                postings.append(Posting(*key, "charge", want, want))
            continue
        have = have.normalised()
        target = want if want is not None else have.reversed()
        if target != have:
            postings.append(Posting(*key, "adjustment", difference(target, have), target))
    return postings


def difference(target: LedgerState, have: LedgerState) -> LedgerState:
    days: dict[date, DayCounts] = {}
    for day in sorted(target.days.keys() | have.days.keys()):
        new, old = target.days.get(day, _NO_COUNTS), have.days.get(day, _NO_COUNTS)
        delta = (new[0] - old[0], new[1] - old[1], new[2] - old[2], new[3] - old[3])
        if any(delta):
            days[day] = delta
    return LedgerState(
        day=target.day,
        talk_ms=target.talk_ms - have.talk_ms,
        hold_ms=target.hold_ms - have.hold_ms,
        excluded_ms=target.excluded_ms - have.excluded_ms,
        free_ms=target.free_ms - have.free_ms,
        prepaid_ms=target.prepaid_ms - have.prepaid_ms,
        paid_ms=target.paid_ms - have.paid_ms,
        billable_seconds=target.billable_seconds - have.billable_seconds,
        amount=target.amount - have.amount,
        currency=target.currency,
        over_quota=target.over_quota,
        short_call=target.short_call,
        tier_changes=target.tier_changes,
        days=days,
    )


_NO_COUNTS: DayCounts = (0, 0, 0, 0)


def iso_ms(ms: int) -> str:
    return from_ms(ms).isoformat(timespec="milliseconds")
