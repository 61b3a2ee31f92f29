"""A database at the schema before the running state (migrations 0001-0002), with a ledger in it,
migrated forward: every row stays, every view gives the same figures, the running state equals
what the ledger sums to, and recording goes on."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from accounting_helpers import contract, talk

from accounting import audit, store
from accounting.contracts import Client, Contract
from accounting.conversations import Talk, from_ms
from accounting.ledger import record_conversation, rerate
from accounting.migrate import migrate, migrations_dir
from accounting.postings import Key, LedgerState, Posting, plan_postings
from accounting.rating import choose_contract, rate_contract

pytestmark = pytest.mark.db

CLIENTS = [
    Client("C1", "Romashka LLC", "Europe/Moscow", ("+74951234567",)),
    Client("C2", "Vasilek JSC", "Asia/Yekaterinburg", ("+73432000000",)),
]
CONTRACTS = [
    contract(free_daily_minutes=10, free_days_per_week=2, prepaid_minutes=30, rate_per_minute=2),
    contract(contract_id="K2", client_id="C2", free_daily_minutes=5, rate_per_minute="1.50",
             billing_increment_seconds=60, valid_to=date(2026, 11, 30)),
    contract(contract_id="K3", client_id="C2", valid_from=date(2026, 12, 1), prepaid_minutes=20),
]  # fmt: skip
VIEWS = {
    "conversation_charges": "conversation_id, contract_id",
    "daily_usage": "client_id, day",
    "monthly_statement": "client_id, month",
    "line_quality": "line, day",
    "unmatched_conversations": "conversation_id",
}


@pytest.fixture
async def old_database(empty_dsn: str, tmp_path: Path) -> AsyncIterator[asyncpg.Connection]:
    """An empty database migrated with 0001-0002 only."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name in ("0001_initial.sql", "0002_rating_frontier.sql"):
        shutil.copy(migrations_dir() / name, folder / name)
    conn = await asyncpg.connect(empty_dsn)
    await migrate(conn, folder)
    yield conn
    await conn.close()


def history(rng: random.Random) -> list[tuple[Client, Talk]]:
    """Conversations of both clients around the end of November, some across midnight."""
    items = []
    for index in range(60):
        client = rng.choice(CLIENTS)
        day = date(2026, 11, 24) + timedelta(days=rng.randrange(12))
        hour = rng.choice([9, 12, 15, 23])
        offset = "+03:00" if client.client_id == "C1" else "+05:00"
        start = f"{day.isoformat()}T{hour:02d}:{rng.randrange(60):02d}:00{offset}"
        pieces = [(rng.uniform(0, 20), rng.uniform(1, 1200))]
        if rng.random() < 0.3:
            pieces.append((pieces[0][0] + pieces[0][1], rng.uniform(5, 300), True))
        items.append((client, talk(f"{client.client_id}-{index}", start, *pieces, line="74950000000")))
    return items


def old_ledger(items: list[tuple[Client, Talk]], rng: random.Random) -> list[tuple[str, Posting]]:
    """The ledger rows recording these in a random order gives: each recording re-rates the
    client's contracts over everything recorded so far and posts the differences."""
    order = list(items)
    rng.shuffle(order)
    recorded: dict[str, list[Talk]] = {client.client_id: [] for client in CLIENTS}
    values: dict[Key, LedgerState] = {}
    rows: list[tuple[str, Posting]] = []
    for client, new in order:
        recorded[client.client_id].append(new)
        for rules in (k for k in CONTRACTS if k.client_id == client.client_id):
            desired = {
                (c.conversation_id, c.contract_id): c
                for c in rate_contract(rules, client.timezone, _covered(rules, client, recorded))
            }
            posted = {key: value for key, value in values.items() if key[1] == rules.contract_id}
            for posting in plan_postings(desired, posted):
                rows.append((client.client_id, posting))
                values[(posting.conversation_id, posting.contract_id)] = posting.current
    return rows


def _covered(rules: Contract, client: Client, recorded: dict[str, list[Talk]]) -> list[Talk]:
    zone = ZoneInfo(client.timezone)
    mine = [k for k in CONTRACTS if k.client_id == client.client_id]
    return [t for t in recorded[client.client_id] if choose_contract(mine, t, zone) == rules]


async def write_old(
    conn: asyncpg.Connection, items: list[tuple[Client, Talk]], rows: list[tuple[str, Posting]]
) -> None:
    for client in CLIENTS:
        await conn.execute(
            "INSERT INTO talkmeter.clients (client_id, name, timezone) VALUES ($1, $2, $3)",
            client.client_id, client.name, client.timezone,
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO talkmeter.client_numbers (client_id, number) VALUES ($1, $2)",
            [(client.client_id, number) for number in client.numbers],
        )
    for rules in CONTRACTS:
        await store.save_contract(conn, rules)
    talks = [*items, (CLIENTS[0], talk("lost", "2026-11-25T10:00:00+03:00", line="74950000000"))]
    for client, item in talks:
        ended = max([item.started_ms] + [i.end_ms for i in item.intervals]) + 1000
        await conn.execute(
            """INSERT INTO talkmeter.conversations (conversation_id, pbx, direction, client_number,
                   client_number_raw, line, consultants, started_at, answered_at, ended_at, wait_ms, talk_ms,
                   hold_ms, estimated, client_id, match_status)
               VALUES ($1, 'default', 'inbound', $2, $2, $3, '{101}', $4, $5, $6, $7, $8, $9, false, $10,
                       'matched')""",
            item.conversation_id, client.numbers[0], item.line, from_ms(item.started_ms),
            from_ms(item.intervals[0].start_ms) if item.intervals else None, from_ms(ended),
            (item.intervals[0].start_ms - item.started_ms) if item.intervals else None,
            item.talk_ms, item.hold_ms, client.client_id,
        )  # fmt: skip
        for position, interval in enumerate(item.intervals):
            await conn.execute(
                "INSERT INTO talkmeter.conversation_segments VALUES ($1, $2, '101', $3, $4, $5)",
                item.conversation_id, position, from_ms(interval.start_ms), from_ms(interval.end_ms),
                interval.hold,
            )  # fmt: skip
    await conn.execute(
        """INSERT INTO talkmeter.conversations (conversation_id, pbx, direction, client_number,
               client_number_raw, line, consultants, started_at, ended_at, talk_ms, hold_ms, estimated,
               match_status)
           VALUES ('anon', 'default', 'inbound', NULL, 'anonymous', '74950000000', '{101}',
                   '2026-11-26 10:00+03', '2026-11-26 10:05+03', 300000, 0, false, 'withheld')"""
    )
    for client_id, posting in rows:
        value = posting.value
        charge_id = await conn.fetchval(
            """INSERT INTO talkmeter.charges (conversation_id, contract_id, client_id, kind, reason, day,
                   talk_ms, hold_ms, excluded_ms, free_ms, prepaid_ms, paid_ms, billable_seconds, amount,
                   currency, over_quota, short_call, tier_changes)
               VALUES ($1, $2, $3, $4, 'old', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                       $17::jsonb)
               RETURNING charge_id""",
            posting.conversation_id, posting.contract_id, client_id, posting.kind, value.day, value.talk_ms,
            value.hold_ms, value.excluded_ms, value.free_ms, value.prepaid_ms, value.paid_ms,
            value.billable_seconds, value.amount, value.currency, value.over_quota, value.short_call,
            json.dumps([{"at": at, "tier": tier} for at, tier in value.tier_changes]),
        )  # fmt: skip
        for day, counts in value.days.items():
            await conn.execute(
                "INSERT INTO talkmeter.charge_days (charge_id, day, talk_ms, free_ms, prepaid_ms, paid_ms) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                charge_id, day, *counts,
            )  # fmt: skip


async def figures(conn: asyncpg.Connection, columns: dict[str, list[str]]) -> dict[str, list[Any]]:
    return {
        view: [tuple(row) for row in await conn.fetch(
            f"SELECT {', '.join(columns[view])} FROM talkmeter.{view} ORDER BY {order}")]
        for view, order in VIEWS.items()
    }  # fmt: skip


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    tables = ("conversations", "conversation_segments", "charges", "charge_days", "contracts", "clients")
    return {t: await conn.fetchval(f"SELECT count(*) FROM talkmeter.{t}") for t in tables}


async def test_an_existing_ledger_keeps_every_row_and_every_figure(
    old_database: asyncpg.Connection, empty_dsn: str
) -> None:
    conn = old_database
    rng = random.Random(42)
    items = history(rng)
    rows = old_ledger(items, rng)
    assert any(posting.kind == "adjustment" for _, posting in rows)
    await write_old(conn, items, rows)
    old_columns = {
        view: [r["column_name"] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'talkmeter' "
            "AND table_name = $1 ORDER BY ordinal_position", view)]
        for view in VIEWS
    }  # fmt: skip
    before, rows_before = await figures(conn, old_columns), await counts(conn)
    assert all(before.values())

    await migrate(conn)

    assert await counts(conn) == rows_before
    assert await figures(conn, old_columns) == before
    for client in CLIENTS:
        assert await audit.check_client(conn, client.client_id) == []
    await conn.execute("DELETE FROM talkmeter.pending_rerates")
    async with asyncpg.create_pool(empty_dsn, min_size=1, max_size=2) as pool:
        assert (await rerate(pool, full=True)).postings == 0
        data = {
            "conversation_id": "after",
            "direction": "inbound",
            "client_number": "+74951234567",
            "line": "74950000000",
            "started_at": "2026-12-06T10:00:00+03:00",
            "ended_at": "2026-12-06T10:10:00+03:00",
            "segments": [{"start": "2026-12-06T10:00:01+03:00", "end": "2026-12-06T10:10:00+03:00"}],
        }
        assert (await record_conversation(pool, data)).status == "rated"
    assert await audit.check_client(conn, "C1") == []
