"""The running state on a real PostgreSQL: it equals what the ledger sums to in any recording
order, the check finds any difference, recording reads no more as a contract ages, the views'
filters reach indexes, and rerate reads the range that changed only."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from accounting_helpers import contract, conversation_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rating_properties import ZONES, contracts, talks

from accounting import audit, ledger, store
from accounting.contracts import Client, Contract
from accounting.conversations import Talk, from_ms, parse_conversation, to_ms
from accounting.ledger import record_conversation, rerate
from accounting.postings import state_of
from accounting.rating import Charge, rate_client, rate_contract
from tests.db import admin, dsn_for, unique_name

pytestmark = pytest.mark.db

NUMBER = "+74951234567"


def as_dict(talk: Talk) -> dict[str, Any]:
    """The call tracker's dict for a Talk of the rating tests."""
    ended = max([talk.started_ms] + [interval.end_ms for interval in talk.intervals])
    return {
        "conversation_id": talk.conversation_id,
        "direction": "inbound",
        "client_number": NUMBER,
        "line": "74950000000",
        "started_at": from_ms(talk.started_ms).isoformat(),
        "ended_at": from_ms(ended).isoformat(),
        "segments": [
            {"start": from_ms(i.start_ms).isoformat(), "end": from_ms(i.end_ms).isoformat(), "hold": i.hold}
            for i in talk.intervals
        ],
    }


async def record_in_order(template: str, rules: Contract, zone: str, arrival: list[Talk]) -> None:
    name = unique_name("tm_orders")
    await admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        async with asyncpg.create_pool(dsn_for(name), min_size=1, max_size=2) as pool, pool.acquire() as conn:
            await store.save_client(conn, Client("C", "Client", zone, (NUMBER,)))
            await store.save_contract(conn, rules)
            for talk in arrival:
                await record_conversation(pool, as_dict(talk))
            assert await audit.check_client(conn, "C") == []
            rows = await conn.fetch("SELECT * FROM talkmeter.current_charges WHERE talk_ms <> 0")
            current = {row["conversation_id"]: row for row in rows}
            expected = [charge for charge in rate_contract(rules, zone, arrival) if charge.talk_ms]
            assert set(current) == {charge.conversation_id for charge in expected}
            for charge in expected:
                row = current[charge.conversation_id]
                want = state_of(charge)
                assert (row["free_ms"], row["prepaid_ms"], row["paid_ms"], row["amount"], row["day"]) == (
                    want.free_ms,
                    want.prepaid_ms,
                    want.paid_ms,
                    want.amount,
                    want.day,
                )
            assert (await rerate(pool, full=True)).postings == 0
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contracts(), talks(max_count=7, span_ms=2 * 86_400_000), st.sampled_from(ZONES), st.randoms())
def test_any_recording_order_keeps_the_running_state_equal_to_the_ledger(
    template_db: str, rules: Contract, conversations: list[Talk], zone: str, random: Any
) -> None:
    arrival = list(conversations)
    random.shuffle(arrival)
    asyncio.run(record_in_order(template_db, rules, zone, arrival))


RULES: dict[str, Any] = {
    "free_daily_minutes": 10,
    "free_days_per_week": 3,
    "prepaid_minutes": 60,
    "rate_per_minute": 2,
    "billing_increment_seconds": 30,
}


async def seed(conn: asyncpg.Connection, **rules: Any) -> None:
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", (NUMBER,)))
    await store.save_contract(conn, contract(**{**RULES, **rules}))
    await conn.execute("DELETE FROM talkmeter.pending_rerates")  # as if `rerate` had run since


def day_of(day: date, hour: int, seconds: float, name: str | None = None) -> dict[str, Any]:
    start = f"{day.isoformat()}T{hour:02d}:00:00+03:00"
    return conversation_dict(name or f"{day.isoformat()}-{hour}", start, (1, seconds))


async def test_check_ledger_finds_what_differs_from_the_ledger(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    for hour in (9, 10, 11):
        await record_conversation(pool, day_of(date(2026, 11, 24), hour, 400))
    assert await audit.check_client(conn, "C1") == []
    await conn.execute("UPDATE talkmeter.usage_days SET free_ms = free_ms + 1")
    await conn.execute(
        "UPDATE talkmeter.current_charges SET amount = amount + 1 WHERE conversation_id = '2026-11-24-10'"
    )
    found = await audit.check_client(conn, "C1")
    assert sorted((m.table, m.key) for m in found) == [
        ("current_charges", "2026-11-24-10/K1"),
        ("usage_days", "K1/2026-11-24"),
    ]
    assert "the ledger sums to" in str(found[0])


async def rows_read(conn: asyncpg.Connection) -> int:
    """Table and index rows the server has read in this database so far."""
    await conn.execute("SELECT pg_stat_force_next_flush()")  # flushed before this answer returns
    async with conn.transaction():
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        tables = await conn.fetchval("SELECT sum(seq_tup_read) FROM pg_stat_user_tables")
        indexes = await conn.fetchval("SELECT sum(idx_tup_read) FROM pg_stat_user_indexes")
    return int(tables + indexes)


async def reads_of_a_recording(pool: asyncpg.Pool, data: dict[str, Any]) -> int:
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")  # as autovacuum would have by then
        before = await rows_read(conn)
    await record_conversation(pool, data)
    async with pool.acquire() as conn:
        return await rows_read(conn) - before


async def no_seqscan(conn: asyncpg.Connection) -> None:
    await conn.execute("SET enable_seqscan = off")


async def test_a_recording_reads_no_more_as_the_contract_ages(db_dsn: str, conn: asyncpg.Connection) -> None:
    """Was: recording summed the contract's ledger (prior usage) and walked its conversations
    from the oldest (the frontier), so it slowed down as the contract aged. Counted with index
    scans forced (a tiny table would be read whole anyway), the rows a recording reads stay the
    same whatever the history before the recorded conversation's week."""
    await seed(conn)
    # One pool connection, so its statistics are flushed by `rows_read` on the same backend.
    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=1, setup=no_seqscan) as pool:
        history = [date(2026, 6, 1) + timedelta(days=n) for n in range(150)]
        for day in history[:10]:
            await record_conversation(pool, day_of(day, 10, 700))
        young = await reads_of_a_recording(pool, day_of(date(2026, 11, 23), 12, 500))
        for day in history[10:]:
            for hour in (9, 11):
                await record_conversation(pool, day_of(day, hour, 700))
        old = await reads_of_a_recording(pool, day_of(date(2026, 11, 25), 12, 500))
    assert old <= young + 5, (young, old)


def scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from scans(child)


BIG_TABLES = {
    "conversations",
    "conversation_segments",
    "charges",
    "charge_days",
    "current_charges",
    "usage_days",
    "usage_weeks",
    "usage_months",
}
PARTIAL_INDEXES = {"conversations_unmatched"}  # hold only the rows the view wants


async def big_table_scans(conn: asyncpg.Connection, sql: str) -> list[tuple[str, str, str]]:
    """(table, how, condition) of every scan of a table that grows with the history."""
    plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql))[0]["Plan"]
    return [
        (
            node["Relation Name"],
            f"{node['Node Type']} {node.get('Index Name', '')}".strip(),
            node.get("Index Cond") or node.get("Recheck Cond") or "",
        )
        for node in scans(plan)
        if node.get("Relation Name") in BIG_TABLES
    ]


async def plan_only_history(conn: asyncpg.Connection) -> None:
    """Three thousand conversations over a year with a current charge and usage each, and
    statistics, so the planner sees a history (the figures are not a ledger's)."""
    await conn.execute(
        """INSERT INTO talkmeter.conversations (
               conversation_id, pbx, direction, client_number, client_number_raw, line, consultants,
               started_at, answered_at, ended_at, wait_ms, talk_ms, hold_ms, estimated, client_id,
               match_status)
           SELECT 'bulk' || n, 'default', 'inbound', CASE WHEN n % 10 = 0 THEN NULL ELSE $1 END, '',
                  '74950000000', '{}', t, t + interval '5 s', t + interval '3 min', 5000, 175000, 0, false,
                  CASE WHEN n % 10 = 0 THEN NULL ELSE 'C1' END,
                  CASE WHEN n % 10 = 0 THEN 'withheld' ELSE 'matched' END
             FROM generate_series(1, 3000) n,
                  LATERAL (SELECT timestamptz '2026-09-01 09:00+03' + n * interval '175 min') s(t)""",
        NUMBER,
    )
    await conn.execute(
        """INSERT INTO talkmeter.current_charges (
               client_id, conversation_id, contract_id, started_at, day, talk_ms, hold_ms, excluded_ms,
               free_ms, prepaid_ms, paid_ms, billable_seconds, amount, currency, over_quota, short_call,
               tier_changes, days, postings, last_charge_id)
           SELECT 'C1', conversation_id, 'K1', started_at, (started_at AT TIME ZONE 'Europe/Moscow')::date,
                  talk_ms, 0, 0, 0, 0, talk_ms, 180, 6.00, 'RUB', false, false, '[]', '{}', 1, 1
             FROM talkmeter.conversations WHERE client_id = 'C1'"""
    )
    await conn.execute(
        """INSERT INTO talkmeter.usage_days (client_id, contract_id, day, talk_ms, conversations)
           SELECT client_id, contract_id, day, sum(talk_ms), count(*)
             FROM talkmeter.current_charges GROUP BY client_id, contract_id, day"""
    )
    await conn.execute(
        """INSERT INTO talkmeter.usage_months (client_id, contract_id, month, talk_ms, conversations)
           SELECT client_id, contract_id, month, sum(talk_ms), sum(conversations)
             FROM talkmeter.usage_days GROUP BY client_id, contract_id, month"""
    )
    await conn.execute("ANALYZE")


VIEW_FILTERS = {
    "conversation_charges for a client-month": (
        "SELECT * FROM talkmeter.conversation_charges "
        "WHERE client_id = 'C1' AND day >= '2026-10-01' AND day < '2026-11-01'"
    ),
    "conversation_charges for a day": "SELECT * FROM talkmeter.conversation_charges WHERE day = '2026-10-14'",
    "daily_usage for a client-month": (
        "SELECT * FROM talkmeter.daily_usage "
        "WHERE client_id = 'C1' AND day >= '2026-10-01' AND day < '2026-11-01'"
    ),
    "daily_usage for a day": "SELECT * FROM talkmeter.daily_usage WHERE day = '2026-10-14'",
    "monthly_statement for a month": "SELECT * FROM talkmeter.monthly_statement WHERE month = '2026-10-01'",
    "line_quality for a day": "SELECT * FROM talkmeter.line_quality WHERE day = '2026-10-14'",
    "unmatched_conversations": "SELECT * FROM talkmeter.unmatched_conversations",
}


@pytest.mark.parametrize("name", sorted(VIEW_FILTERS))
async def test_view_filters_reach_an_index(conn: asyncpg.Connection, name: str) -> None:
    """Was: the views summed the whole ledger (client_id computed by an aggregate, the day of
    line_quality an expression), so no filter reached an index. With sequential scans and
    whole-table joins disabled (at this size they are cheaper), a table is still read whole only
    where no index can serve the filter."""
    await seed(conn)
    await plan_only_history(conn)
    for method in ("seqscan", "hashjoin", "mergejoin"):
        await conn.execute(f"SET enable_{method} = off")
    found = await big_table_scans(conn, VIEW_FILTERS[name])
    assert found, "the view reads no table that grows"
    for table, how, condition in found:
        partial = how.split()[-1] in PARTIAL_INDEXES
        assert how != "Seq Scan" and (condition or partial), (table, how, condition)


async def test_rerate_after_a_contract_end_reads_only_what_follows_it(
    pool: asyncpg.Pool, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: settle_client loaded the client's whole history to re-rate it. Ending a contract
    changes the days after the new end only, and rerate reads just those."""
    await seed(conn, free_days_per_week=None, prepaid_minutes=None)
    days = [date(2026, 11, 2) + timedelta(days=n) for n in range(20)]
    for day in days:
        await record_conversation(pool, day_of(day, 10, 900))
    reads: list[datetime] = []
    real_load_talks, real_load_current = store.load_talks, store.load_current

    async def load_talks(
        conn: asyncpg.Connection, client_id: str, since: Any, until: Any, **flags: Any
    ) -> Any:
        reads.append(since)
        return await real_load_talks(conn, client_id, since, until, **flags)

    async def load_current(
        conn: asyncpg.Connection, client_id: str, ids: Any, since: Any, until: Any = None
    ) -> Any:
        reads.append(since)
        return await real_load_current(conn, client_id, ids, since, until)

    monkeypatch.setattr(store, "load_talks", load_talks)
    monkeypatch.setattr(store, "load_current", load_current)
    await conn.execute("UPDATE talkmeter.contracts SET valid_to = '2026-11-16' WHERE contract_id = 'K1'")
    summary = await rerate(pool)
    first_after = datetime.fromisoformat("2026-11-17T00:00:00+03:00")
    assert reads and min(reads) >= first_after
    assert summary.postings == 5  # the five conversations after the end are reversed
    reversed_ids = await conn.fetch("SELECT conversation_id FROM talkmeter.charges WHERE kind = 'adjustment'")
    assert sorted(r["conversation_id"] for r in reversed_ids) == [f"{d.isoformat()}-10" for d in days[15:]]
    assert await audit.check_client(conn, "C1") == []


async def test_rerate_after_a_number_moves_reads_only_from_its_first_conversation(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    stranger = "+74990000000"
    await record_conversation(pool, day_of(date(2026, 11, 2), 10, 600))
    await record_conversation(
        pool, conversation_dict("late", "2026-11-20T10:00:00+03:00", (1, 600), number=stranger)
    )
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", (NUMBER, stranger)))
    [mark] = await conn.fetch("SELECT client_id, since FROM talkmeter.pending_rerates")
    assert mark["client_id"] == "C1" and mark["since"] == datetime.fromisoformat("2026-11-20T10:00:00+03:00")
    assert (await rerate(pool)).postings == 1
    assert await conn.fetch("SELECT * FROM talkmeter.pending_rerates") == []
    assert await audit.check_client(conn, "C1") == []


def shuffled_history(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    conversations = []
    for index in range(40):
        day = date(2026, 11, 16) + timedelta(days=rng.randrange(14))
        start = datetime.fromisoformat(
            f"{day.isoformat()}T{rng.randrange(9, 22):02d}:{rng.randrange(60):02d}:00+03:00"
        )
        conversations.append(
            conversation_dict(f"h{index}", start.isoformat(), (rng.uniform(0, 9), rng.uniform(5, 1500)))
        )
    rng.shuffle(conversations)
    return conversations


async def test_a_full_rerate_in_windows_equals_rating_everything(
    pool: asyncpg.Pool, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rerate re-rates a long range window by window, each from the running state the previous
    one left; with windows of three conversations the result must still be the whole contract's
    rating."""
    await seed(conn)
    conversations = shuffled_history(3)
    for data in conversations:
        await record_conversation(pool, data)
    await store.save_contract(conn, contract(**{**RULES, "free_daily_minutes": 7, "prepaid_minutes": 30}))
    monkeypatch.setattr(ledger, "WINDOW", 3)
    monkeypatch.setattr(ledger, "FIRST_WINDOW", 3)
    assert (await rerate(pool)).postings > 0
    expected = rate_contract(
        contract(**{**RULES, "free_daily_minutes": 7, "prepaid_minutes": 30}),
        "Europe/Moscow",
        [parse_conversation(data).talk for data in conversations],
    )
    assert await charged(conn) == splits(expected)
    assert await audit.check_client(conn, "C1") == []


async def charged(conn: asyncpg.Connection) -> dict[tuple[str, str], tuple[int, int, int, Decimal]]:
    """Each ledger key with talk: its free, prepaid and paid milliseconds and its amount."""
    rows = await conn.fetch("SELECT * FROM talkmeter.current_charges WHERE talk_ms <> 0")
    return {
        (r["conversation_id"], r["contract_id"]): (r["free_ms"], r["prepaid_ms"], r["paid_ms"], r["amount"])
        for r in rows
    }


def splits(charges: Iterable[Charge]) -> dict[tuple[str, str], tuple[int, int, int, Decimal]]:
    return {
        (c.conversation_id, c.contract_id): (c.free_ms, c.prepaid_ms, c.paid_ms, c.amount) for c in charges
    }


@pytest.mark.parametrize("connections", [1, 2])
async def test_a_windowed_rerate_of_two_contracts_with_weekly_limits_equals_rating_everything(
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
    db_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    connections: int,
) -> None:
    """The windowed rerate rates each window in a thread while the last one is written, carrying
    the allowances in memory: with a weekly limit, a daily cap, a prepaid package and a second
    contract for one line (from the middle of the range), windows of two conversations must
    still give the whole client's rating, and the running state must match the ledger; whether
    the windows ahead are read on a second connection of the pool or, with one, on its own."""
    await seed(conn)
    rng = random.Random(11)
    conversations = []
    for index in range(36):
        day = date(2026, 11, 2) + timedelta(days=rng.randrange(21))
        start = datetime.fromisoformat(
            f"{day.isoformat()}T{rng.randrange(9, 21):02d}:{rng.randrange(60):02d}:00+03:00"
        )
        line = rng.choice(["74950000000", "74950000001"])
        conversations.append(
            conversation_dict(
                f"w{index}", start.isoformat(), (rng.uniform(0, 9), rng.uniform(5, 1300)), line=line
            )
        )
    for data in conversations:
        await record_conversation(pool, data)
    everyone = contract(**{**RULES, "free_daily_minutes": 9, "free_days_per_week": 2, "prepaid_minutes": 25})
    one_line = contract(
        **{
            **RULES,
            "contract_id": "K2",
            "valid_from": date(2026, 11, 12),
            "lines": ("74950000001",),
            "free_daily_minutes": 4,
        }
    )
    await store.save_contract(conn, everyone)
    await store.save_contract(conn, one_line)
    monkeypatch.setattr(ledger, "WINDOW", 2)
    monkeypatch.setattr(ledger, "FIRST_WINDOW", 2)
    readers: list[asyncpg.Connection | None] = []
    spare = ledger._spare

    @asynccontextmanager
    async def watched(of: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection | None]:
        async with spare(of) as reader:
            readers.append(reader)
            yield reader

    monkeypatch.setattr(ledger, "_spare", watched)
    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=connections) as own:
        assert (await rerate(own)).postings > 0
    assert [reader is not None for reader in readers] == [connections == 2]
    expected = rate_client(
        [everyone, one_line], "Europe/Moscow", [parse_conversation(data).talk for data in conversations]
    )
    assert {c.contract_id for c in expected.charges} == {"K1", "K2"}
    assert await charged(conn) == splits(expected.charges)
    assert await audit.check_client(conn, "C1") == []


async def test_rerating_a_conversation_whose_segments_were_pruned_changes_nothing(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Retention may delete old segments (see the README); a rerate that reaches those
    conversations must refuse rather than take their talk for zero and reverse their charges."""
    await seed(conn)
    await record_conversation(pool, day_of(date(2026, 10, 5), 10, 600))
    await conn.execute(
        "DELETE FROM talkmeter.conversation_segments s USING talkmeter.conversations c "
        "WHERE c.conversation_id = s.conversation_id AND c.started_at < '2026-11-01'"
    )
    await record_conversation(pool, day_of(date(2026, 11, 24), 10, 600))  # after it: rated as usual
    rows = await conn.fetchval("SELECT count(*) FROM talkmeter.charges")
    with pytest.raises(store.PrunedConversation, match="2026-10-05-10 of C1"):
        await rerate(pool, full=True)
    assert await conn.fetchval("SELECT count(*) FROM talkmeter.charges") == rows == 2
    assert await audit.check_client(conn, "C1") == []


async def test_what_a_ledger_row_names_stays_referenced_through_its_key(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Migration 0009 stopped checking a ledger row's conversation, contract and client row by
    row: its key in current_charges references them. None of them can be deleted while charged,
    and a ledger row appended without its key is what check-ledger reports."""
    await seed(conn)
    await record_conversation(pool, day_of(date(2026, 11, 24), 10, 600))
    await conn.execute("DELETE FROM talkmeter.conversation_segments")  # as retention may
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="current_charges"):
        await conn.execute("DELETE FROM talkmeter.conversations WHERE conversation_id = '2026-11-24-10'")
    with pytest.raises(asyncpg.ForeignKeyViolationError):  # the key, and the running state, name it
        await conn.execute("DELETE FROM talkmeter.contracts WHERE contract_id = 'K1'")
    assert await audit.check_client(conn, "C1") == []
    await conn.execute(
        """INSERT INTO talkmeter.charges (conversation_id, contract_id, client_id, kind, reason, day,
               talk_ms, hold_ms, excluded_ms, free_ms, prepaid_ms, paid_ms, billable_seconds, amount,
               currency, over_quota, short_call, tier_changes)
           SELECT conversation_id, 'K1', 'C1', 'adjustment', 'by hand', day, 0, 0, 0, 0, 0, 0, 0, 5,
                  'RUB', false, false, '[]'
             FROM talkmeter.current_charges"""
    )
    [mismatch] = [m for m in await audit.check_client(conn, "C1") if m.table == "current_charges"]
    assert mismatch.key == "2026-11-24-10/K1"


async def test_times_read_for_rating_round_to_milliseconds_as_parsing_does(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """load_talks has PostgreSQL turn times into epoch milliseconds; on the half millisecond they
    must round as `to_ms` does when a conversation is parsed, or a re-rate would differ from the
    recording."""
    await seed(conn)
    data = {
        **conversation_dict("halves", "2026-11-24T10:00:00+03:00", (1, 60)),
        "started_at": "2026-11-24T10:00:00.000500+03:00",
        "ended_at": "2026-11-24T10:01:01.999500+03:00",
        "segments": [
            {
                "start": "2026-11-24T10:00:01.000499+03:00",
                "end": "2026-11-24T10:00:30.001500+03:00",
                "hold": False,
            },
            {
                "start": "2026-11-24T10:00:30.001500+03:00",
                "end": "2026-11-24T10:01:01.999501+03:00",
                "hold": True,
            },
        ],
    }
    await record_conversation(pool, data)
    loaded = await store.load_talks(conn, "C1", datetime.fromisoformat("2026-11-24T00:00:00+03:00"), None)
    parsed = parse_conversation(data)
    assert loaded.talks == [parsed.talk]
    assert loaded.ends_ms == {"halves": to_ms(parsed.ended_at)}
