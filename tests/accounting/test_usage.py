"""The running state as a pure diff: in any recording order it equals what the ledger sums to, and
rating from it (frontier and prior usage) equals rating everything at once."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal
from zoneinfo import ZoneInfo

from accounting_helpers import contract, talk
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rating_properties import ZONES, contracts, talks

from accounting.contracts import Contract
from accounting.conversations import Talk
from accounting.postings import Key, LedgerState, Posting, plan_postings, state_of
from accounting.rating import local_date, rate_contract
from accounting.usage import (
    Running,
    Usage,
    Week,
    apply,
    plan_usage,
    prior_usage,
    summarise,
    week_of,
    without_zeros,
)

MSK = "Europe/Moscow"


def fold(postings: list[Posting]) -> dict[Key, LedgerState]:
    """The ledger's value of each key: the latest row's `current` (checked against the sums)."""
    values: dict[Key, LedgerState] = {}
    for posting in postings:
        values[(posting.conversation_id, posting.contract_id)] = posting.current
    return values


def sums(postings: list[Posting]) -> dict[Key, tuple[int, int, int, int, int, Decimal]]:
    """The additive columns summed over the ledger rows, the way the database sums them."""
    totals: dict[Key, tuple[int, int, int, int, int, Decimal]] = {}
    for p in postings:
        v = p.value
        row = (v.talk_ms, v.free_ms, v.prepaid_ms, v.paid_ms, v.billable_seconds, v.amount)
        old = totals.get((p.conversation_id, p.contract_id), (0, 0, 0, 0, 0, Decimal(0)))
        totals[(p.conversation_id, p.contract_id)] = tuple(a + b for a, b in zip(old, row, strict=True))  # type: ignore[assignment]
    return totals


def end_of(item: Talk) -> int:
    return max([item.started_ms] + [interval.end_ms for interval in item.intervals])


class Ledger:
    """The recording algorithm of accounting/ledger.py over in-memory state: frontier, prior usage
    from the running state, rating from the frontier, postings and running-state changes."""

    def __init__(self, rules: Contract, zone: str) -> None:
        self.contract, self.zone = rules, zone
        self.arrived: list[Talk] = []
        self.postings: list[Posting] = []
        self.current: dict[Key, LedgerState] = {}
        self.running = Running()

    def frontier(self, start: int) -> int:
        while True:
            earliest = min((t.started_ms for t in self.arrived if end_of(t) >= start), default=start)
            if earliest >= start:
                return start
            start = earliest

    def record(self, new: Talk) -> None:
        self.arrived.append(new)
        front = self.frontier(new.started_ms)
        day = local_date(front, ZoneInfo(self.zone))
        rerated = [t for t in self.arrived if t.started_ms >= front]
        started = {t.conversation_id: t.started_ms for t in self.arrived}
        posted = {key: value for key, value in self.current.items() if started[key[0]] >= front}
        cid = self.contract.contract_id
        prior = prior_usage(
            cid, day, self.running.days, self.running.totals.get(cid, Usage()), posted.values()
        )
        desired = {
            (c.conversation_id, c.contract_id): c
            for c in rate_contract(self.contract, self.zone, rerated, prior)
        }
        postings = plan_postings(desired, posted)
        changes = [
            (p.contract_id, posted.get((p.conversation_id, p.contract_id)), p.current) for p in postings
        ]
        self.running = apply(self.running, plan_usage(changes, self.running.days))
        self.postings.extend(postings)
        self.current.update(fold(postings))


@settings(max_examples=120, deadline=None)
@given(contracts(), talks(max_count=7, span_ms=3 * 86_400_000), st.sampled_from(ZONES), st.randoms())
def test_running_state_equals_the_ledger_in_any_recording_order(
    rules: Contract, conversations: list[Talk], zone: str, random: st.SearchStrategy[object]
) -> None:
    arrival = list(conversations)
    random.shuffle(arrival)  # type: ignore[attr-defined]
    ledger = Ledger(rules, zone)
    for new in arrival:
        ledger.record(new)
        values = [(key[1], value) for key, value in ledger.current.items()]
        assert without_zeros(ledger.running) == without_zeros(summarise(values))
        assert {
            key: sums([p for p in ledger.postings if (p.conversation_id, p.contract_id) == key])[key]
            for key in ledger.current
        } == {
            key: (v.talk_ms, v.free_ms, v.prepaid_ms, v.paid_ms, v.billable_seconds, v.amount)
            for key, v in ledger.current.items()
        }
    # ... and the ledger equals rating every conversation at once, whatever the order.
    expected = {
        (c.conversation_id, c.contract_id): state_of(c)
        for c in rate_contract(rules, zone, conversations)
        if c.talk_ms
    }
    assert {key: value for key, value in ledger.current.items() if value.talk_ms} == expected


def value(
    day: str, *days: tuple[str, int, int, int, int], billable: int = 0, amount: str = "0"
) -> LedgerState:
    return LedgerState(
        day=date.fromisoformat(day),
        talk_ms=sum(d[1] for d in days),
        free_ms=sum(d[2] for d in days),
        prepaid_ms=sum(d[3] for d in days),
        paid_ms=sum(d[4] for d in days),
        billable_seconds=billable,
        amount=Decimal(amount),
        days={date.fromisoformat(d[0]): d[1:] for d in days},
    )


NOV_30, DEC_1 = date(2026, 11, 30), date(2026, 12, 1)


def test_a_conversation_across_midnight_counts_on_both_days_and_once_on_its_start() -> None:
    across = value(
        "2026-11-30", ("2026-11-30", 600, 600, 0, 0), ("2026-12-01", 900, 300, 0, 600), billable=600
    )
    changes = plan_usage([("K1", None, across)], {})
    assert changes.days == {
        ("K1", NOV_30): Usage(600, 600, 0, 0, 1, 600, Decimal(0)),
        ("K1", DEC_1): Usage(900, 300, 0, 600),
    }
    assert changes.totals == {"K1": Usage(1500, 900, 0, 600, 1, 600, Decimal(0))}
    # 30 November is a Monday, 1 December the Tuesday of the same week: two free days.
    assert changes.weeks == {("K1", NOV_30): Week(2, 900)}


def test_a_day_counts_once_in_its_week_whatever_the_conversations() -> None:
    first = value("2026-12-01", ("2026-12-01", 100, 100, 0, 0))
    second = value("2026-12-01", ("2026-12-01", 50, 50, 0, 0))
    state = apply(Running(), plan_usage([("K1", None, first)], {}))
    changes = plan_usage([("K1", None, second)], state.days)
    assert changes.weeks == {("K1", NOV_30): Week(0, 50)}
    # Reversing both gives the slot back.
    state = apply(state, changes)
    back = plan_usage(
        [("K1", first, replace(first.reversed())), ("K1", second, second.reversed())], state.days
    )
    assert back.weeks == {("K1", NOV_30): Week(-1, -150)}
    assert without_zeros(apply(state, back)) == Running()


def test_a_key_that_moves_day_moves_its_money() -> None:
    before = value("2026-11-30", ("2026-11-30", 60, 0, 0, 60), billable=60, amount="2.00")
    after = value("2026-12-01", ("2026-12-01", 60, 0, 0, 60), billable=60, amount="2.00")
    changes = plan_usage([("K1", before, after)], {("K1", NOV_30): Usage(60, 0, 0, 60, 1, 60, Decimal(2))})
    assert changes.days[("K1", NOV_30)] == Usage(-60, 0, 0, -60, -1, -60, Decimal(-2))
    assert changes.days[("K1", DEC_1)] == Usage(60, 0, 0, 60, 1, 60, Decimal(2))
    assert "K1" not in changes.totals  # the contract's totals did not change


def test_prior_usage_takes_the_frontier_day_minus_what_later_keys_used_there() -> None:
    days = {
        ("K1", date(2026, 11, 16)): Usage(free_ms=10, prepaid_ms=1),  # more than a week before
        ("K1", date(2026, 11, 23)): Usage(free_ms=20, prepaid_ms=2),
        ("K1", date(2026, 11, 24)): Usage(free_ms=30, prepaid_ms=4),
        ("K1", date(2026, 11, 25)): Usage(free_ms=40, prepaid_ms=8),  # after the frontier's day
        ("K2", date(2026, 11, 24)): Usage(free_ms=99, prepaid_ms=99),  # another contract
    }
    later = [value("2026-11-24", ("2026-11-24", 7, 5, 3, 0), ("2026-11-25", 40, 32, 8, 0))]
    prior = prior_usage("K1", date(2026, 11, 24), days, Usage(prepaid_ms=15), later)
    assert prior.free_by_day == {date(2026, 11, 23): 20, date(2026, 11, 24): 25}
    assert prior.prepaid_ms == 15 - 8 - 3


def test_recording_from_the_running_state_matches_a_whole_rating() -> None:
    rules = contract(free_daily_minutes=10, free_days_per_week=1, prepaid_minutes=5, rate_per_minute=1)
    items = [
        talk("a", "2026-11-24T10:00:00+03:00", (0, 500)),
        talk("b", "2026-11-24T10:05:00+03:00", (0, 600)),
        talk("c", "2026-11-25T09:00:00+03:00", (0, 900)),
        talk("d", "2026-11-24T23:55:00+03:00", (0, 700)),
    ]
    ledger = Ledger(rules, MSK)
    for item in (items[2], items[1], items[3], items[0]):
        ledger.record(item)
    expected = {(c.conversation_id, c.contract_id): state_of(c) for c in rate_contract(rules, MSK, items)}
    assert ledger.current == expected
    assert ledger.running.weeks[("K1", week_of(date(2026, 11, 24)))].free_days == 1
