"""Two daemons (two pools, several connections each) rate the same client's overlapping
conversations at the same moment: the caps must hold exactly, and the ledger must end equal to
rating all the conversations at once."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from accounting_helpers import contract, conversation_dict

from accounting import store
from accounting.contracts import Client
from accounting.conversations import parse_conversation
from accounting.ledger import record_conversation, rerate
from accounting.rating import rate_contract

pytestmark = pytest.mark.db

RULES: dict[str, Any] = {
    "free_daily_minutes": 15,
    "free_days_per_week": 2,
    "prepaid_minutes": 60,
    "rate_per_minute": "1.50",
    "billing_increment_seconds": 60,
}


def busy_client_conversations(count: int, seed: int) -> list[dict[str, Any]]:
    """Conversations of one client over three days, many of them overlapping."""
    rng = random.Random(seed)
    origin = datetime.fromisoformat("2026-11-23T09:00:00+03:00")
    conversations = []
    for index in range(count):
        start = origin + timedelta(
            days=rng.randrange(3), minutes=rng.randrange(0, 120), milliseconds=rng.randrange(1000)
        )
        pieces = [(rng.uniform(0, 20), rng.uniform(30, 900))]
        if rng.random() < 0.3:
            pieces.append((pieces[0][0] + pieces[0][1], rng.uniform(5, 120), True))
        conversations.append(conversation_dict(f"pbx{index % 2}:{index}", start.isoformat(), *pieces))
    return conversations


async def write_all(pool: asyncpg.Pool, conversations: list[dict[str, Any]]) -> list[str]:
    results = await asyncio.gather(*(record_conversation(pool, data) for data in conversations))
    return [result.status for result in results]


async def test_two_daemons_keep_caps_exact(db_dsn: str, conn: asyncpg.Connection) -> None:
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", ("+74951234567",)))
    await store.save_contract(conn, contract(**RULES))
    conversations = busy_client_conversations(40, seed=7)
    first, second = conversations[0::2], conversations[1::2]
    random.Random(1).shuffle(first)
    random.Random(2).shuffle(second)
    async with (
        asyncpg.create_pool(db_dsn, min_size=4, max_size=4) as daemon_a,
        asyncpg.create_pool(db_dsn, min_size=4, max_size=4) as daemon_b,
    ):
        statuses = await asyncio.gather(write_all(daemon_a, first), write_all(daemon_b, second))
    assert {status for batch in statuses for status in batch} == {"rated"}

    expected = {
        charge.conversation_id: charge
        for charge in rate_contract(
            contract(**RULES), "Europe/Moscow", [parse_conversation(d).talk for d in conversations]
        )
    }
    rows = await conn.fetch("SELECT * FROM talkmeter.conversation_charges")
    assert len(rows) == len(conversations)
    for row in rows:
        charge = expected[row["conversation_id"]]
        assert row["free_seconds"] * 1000 == charge.free_ms
        assert row["prepaid_seconds"] * 1000 == charge.prepaid_ms
        assert row["paid_seconds"] * 1000 == charge.paid_ms
        assert (row["billable_seconds"], row["amount"]) == (charge.billable_seconds, charge.amount)

    daily = await conn.fetch("SELECT day, free_seconds FROM talkmeter.daily_usage WHERE client_id = 'C1'")
    assert all(row["free_seconds"] <= 15 * 60 for row in daily)
    used_days: dict[tuple[int, int], int] = defaultdict(int)
    for row in daily:
        if row["free_seconds"] > 0:
            used_days[row["day"].isocalendar()[:2]] += 1
    assert max(used_days.values()) == 2  # the limit is reached, and not exceeded
    assert sum(Decimal(c.prepaid_ms) for c in expected.values()) == 60 * 60_000
    total_prepaid = await conn.fetchval("SELECT sum(prepaid_seconds) FROM talkmeter.conversation_charges")
    assert total_prepaid == Decimal(3600)


async def test_the_same_conversation_from_two_daemons_is_posted_once(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", ("+74951234567",)))
    await store.save_contract(conn, contract(**RULES))
    conversations = busy_client_conversations(12, seed=3)
    async with (
        asyncpg.create_pool(db_dsn, min_size=3, max_size=3) as daemon_a,
        asyncpg.create_pool(db_dsn, min_size=3, max_size=3) as daemon_b,
    ):
        a, b = await asyncio.gather(write_all(daemon_a, conversations), write_all(daemon_b, conversations))
    assert all({x, y} == {"rated", "duplicate"} for x, y in zip(a, b, strict=True))
    assert await conn.fetchval("SELECT count(*) FROM talkmeter.charges WHERE kind = 'charge'") == 12
    day_rows = await conn.fetch("SELECT day, free_seconds FROM talkmeter.daily_usage")
    assert all(row["free_seconds"] <= 900 for row in day_rows)
    assert {row["day"] for row in day_rows} <= {date(2026, 11, 23), date(2026, 11, 24), date(2026, 11, 25)}


async def test_rerate_while_daemons_write(db_dsn: str, conn: asyncpg.Connection) -> None:
    """An accountant's rerate (after a number moved in) runs while both daemons record."""
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", ("+74951234567",)))
    await store.save_contract(conn, contract(**RULES))
    conversations = busy_client_conversations(30, seed=5)
    stranger = [
        conversation_dict(f"s{i}", f"2026-11-24T1{i}:00:00+03:00", (1, 400), number="+74990000000")
        for i in range(5)
    ]
    async with (
        asyncpg.create_pool(db_dsn, min_size=3, max_size=3) as daemon_a,
        asyncpg.create_pool(db_dsn, min_size=3, max_size=3) as daemon_b,
        asyncpg.create_pool(db_dsn + "?role=talkmeter_accountant", min_size=1, max_size=1) as accountant,
    ):
        assert await accountant.fetchval("SELECT current_user") == "talkmeter_accountant"
        await write_all(daemon_a, stranger)
        await store.save_client(
            conn, Client("C1", "Romashka LLC", "Europe/Moscow", ("+74951234567", "+74990000000"))
        )
        await asyncio.gather(
            write_all(daemon_a, conversations[0::2]),
            write_all(daemon_b, conversations[1::2]),
            rerate(accountant),
        )
        # Whatever the interleaving, a full re-rating afterwards finds nothing left to correct.
        assert (await rerate(accountant)).postings == 0
    expected = rate_contract(
        contract(**RULES), "Europe/Moscow", [parse_conversation(d).talk for d in conversations + stranger]
    )
    rows = {r["conversation_id"]: r for r in await conn.fetch("SELECT * FROM talkmeter.conversation_charges")}
    assert len(rows) == len(expected) == 35
    for charge in expected:
        row = rows[charge.conversation_id]
        assert (row["free_seconds"] * 1000, row["prepaid_seconds"] * 1000, row["amount"]) == (
            charge.free_ms,
            charge.prepaid_ms,
            charge.amount,
        )
