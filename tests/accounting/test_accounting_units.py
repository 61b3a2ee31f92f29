"""Small pure pieces: ledger postings, numbers, the query file, the conversation dict, and the
dependency rule (the rating core imports no I/O, accounting imports nothing of the call model)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from accounting_helpers import contract, conversation_dict, talk
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting import store
from accounting.conversations import InvalidConversation, parse_conversation
from accounting.postings import LedgerState, Posting, plan_postings, state_of
from accounting.queries import parse_queries
from accounting.rating import rate_contract
from telephony.numbers import normalize as normalize_number

MSK = "Europe/Moscow"


def test_a_new_key_gets_one_charge_row() -> None:
    [charge] = rate_contract(
        contract(rate_per_minute=1), MSK, [talk("x", "2026-11-24T10:00:00+03:00", (0, 90))]
    )
    [posting] = plan_postings({("x", "K1"): charge}, {})
    assert (posting.kind, posting.value.paid_ms, posting.value.amount) == ("charge", 90_000, Decimal("1.50"))


def test_an_agreeing_ledger_gets_nothing() -> None:
    [charge] = rate_contract(
        contract(rate_per_minute=1), MSK, [talk("x", "2026-11-24T10:00:00+03:00", (0, 90))]
    )
    assert plan_postings({("x", "K1"): charge}, {("x", "K1"): state_of(charge)}) == []


def test_a_change_is_posted_as_differences() -> None:
    [old] = rate_contract(contract(rate_per_minute=1), MSK, [talk("x", "2026-11-24T10:00:00+03:00", (0, 90))])
    [new] = rate_contract(
        contract(rate_per_minute=1, free_daily_minutes=1),
        MSK,
        [talk("x", "2026-11-24T10:00:00+03:00", (0, 90))],
    )
    [posting] = plan_postings({("x", "K1"): new}, {("x", "K1"): state_of(old)})
    value = posting.value
    assert posting.kind == "adjustment"
    assert (value.free_ms, value.paid_ms, value.talk_ms, value.amount) == (
        60_000,
        -60_000,
        0,
        Decimal("-1.00"),
    )
    assert value.days == {date(2026, 11, 24): (0, 60_000, 0, -60_000)}
    assert value.tier_changes == state_of(new).tier_changes


def test_a_key_rating_no_longer_gives_is_reversed_once() -> None:
    [charge] = rate_contract(
        contract(rate_per_minute=1), MSK, [talk("x", "2026-11-24T10:00:00+03:00", (0, 90))]
    )
    have = state_of(charge)
    [posting] = plan_postings({}, {("x", "K1"): have})
    assert (posting.kind, posting.value.paid_ms, posting.value.amount) == (
        "adjustment",
        -90_000,
        Decimal("-1.50"),
    )
    reversed_state = LedgerState(day=have.day, currency=have.currency)
    assert plan_postings({}, {("x", "K1"): reversed_state}) == []
    assert plan_postings({}, {("x", "K1"): replace(reversed_state, days={have.day: (0, 0, 0, 0)})}) == []


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        ("84951234567", "+74951234567"),
        ("74951234567", "+74951234567"),
        ("+7 (495) 123-45-67", "+74951234567"),
        ("4951234567", "+74951234567"),
        ("8 (916) 555-12-34", "+79165551234"),
        ("+44 20 7946 0958", "+442079460958"),
        ("12345", None),
        ("anonymous", None),
        ("", None),
    ],
)
def test_numbers_people_write_become_e164(raw: str, number: str | None) -> None:
    assert normalize_number(raw) == number


def test_query_file_parser() -> None:
    queries = parse_queries("-- name: a\nSELECT 1;\n\n-- a section comment\n-- name: b\nSELECT $1;\n")
    assert queries == {"a": "SELECT 1;", "b": "SELECT $1;"}
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_conversation_dict_is_validated() -> None:
    good = conversation_dict("x", "2026-11-24T10:00:00+03:00", (1.5, 10), (11.5, 5, True))
    parsed = parse_conversation(good)
    assert (parsed.talk.talk_ms, parsed.talk.hold_ms, parsed.wait_ms) == (15_000, 5_000, 1500)
    for broken in (
        {**good, "direction": "sideways"},
        {**good, "started_at": "2026-11-24T10:00:00"},  # no offset
        {**good, "segments": list(reversed(good["segments"]))},
        {key: value for key, value in good.items() if key != "ended_at"},
    ):
        with pytest.raises(InvalidConversation):
            parse_conversation(broken)


def test_text_is_cleaned_and_bounded_before_the_database() -> None:
    """A NUL byte sent a whole conversation to rejected.jsonl (PostgreSQL text cannot hold one),
    unbilled; a 500 KB caller ID was stored verbatim."""
    data = conversation_dict("x\x00", "2026-11-24T10:00:00+03:00", (0, 1))
    data.update(client_number_raw="+7495\x00123" + "4" * 500_000, consultants=["10\x001"], line="7495\x1b0")
    parsed = parse_conversation(data)
    assert (parsed.conversation_id, parsed.consultants, parsed.line) == ("x", ("101",), "74950")
    assert parsed.client_number_raw.startswith("+7495123") and len(parsed.client_number_raw) == 256


def test_microseconds_round_half_up_to_milliseconds() -> None:
    data = conversation_dict("x", "2026-11-24T10:00:00.000500+03:00", (0, 1))
    data["segments"][0]["start"] = "2026-11-24T07:00:00.000500+00:00"
    data["segments"][0]["end"] = "2026-11-24T07:00:01.000499+00:00"
    assert parse_conversation(data).talk.talk_ms == 999


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        ("accounting.rating accounting.contracts accounting.conversations accounting.postings", "asyncpg"),
        (
            "accounting.rating accounting.ledger accounting.importer accounting.reports accounting.migrate",
            "telephony.calls",
        ),
    ],
)
def test_dependency_rule(modules: str, forbidden: str) -> None:
    script = f"import sys, {', '.join(modules.split())}; sys.exit({forbidden!r} in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 0


ledger_states = st.builds(
    LedgerState,
    day=st.dates(date(2000, 1, 1), date(2100, 1, 1)),
    talk_ms=st.integers(-(10**12), 10**12),
    hold_ms=st.integers(-(10**12), 10**12),
    excluded_ms=st.integers(-(10**12), 10**12),
    free_ms=st.integers(-(10**12), 10**12),
    prepaid_ms=st.integers(-(10**12), 10**12),
    paid_ms=st.integers(-(10**12), 10**12),
    billable_seconds=st.integers(-(10**9), 10**9),
    amount=st.decimals(-(10**12), 10**12, places=2),
    currency=st.none() | st.text(max_size=3),
    over_quota=st.booleans(),
    short_call=st.booleans(),
    tier_changes=st.lists(st.tuples(st.text(), st.sampled_from(["free", "prepaid", "paid"])), max_size=3).map(
        tuple
    ),
    days=st.dictionaries(
        st.dates(date(2000, 1, 1), date(2100, 1, 1)),
        st.tuples(*[st.integers(-(10**12), 10**12)] * 4),
        max_size=3,
    ),
)


@settings(max_examples=300, deadline=None)
@given(ledger_states, ledger_states, st.text(), st.text())
def test_the_post_statement_reads_what_was_posted(
    value: LedgerState, current: LedgerState, conversation_id: str, contract_id: str
) -> None:
    """`store.post` writes its JSON by hand (for speed); whatever the strings hold, it must be the
    JSON of exactly these values, amounts as exact text."""
    posting = Posting(conversation_id, contract_id, "adjustment", value, current)
    text = store.post_document([posting])
    [row] = json.loads(text)
    assert row.pop("position") == 0
    assert (row.pop("conversation_id"), row.pop("contract_id"), row.pop("kind")) == (
        conversation_id,
        contract_id,
        "adjustment",
    )
    assert _read_back(row.pop("current")) == current
    assert _read_back(row) == value


def _read_back(members: dict[str, Any]) -> LedgerState:
    return LedgerState(
        day=date.fromisoformat(members.pop("day")),
        amount=Decimal(members.pop("amount")),
        tier_changes=tuple((change["at"], change["tier"]) for change in members.pop("tier_changes")),
        days={date.fromisoformat(day): tuple(counts) for day, counts in members.pop("days").items()},
        **members,
    )
