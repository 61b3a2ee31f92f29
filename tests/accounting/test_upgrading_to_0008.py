"""A database at migration 0007 with the stale rows its code could leave behind, migrated to
0008: each is repaired, and the ledger then agrees with a full re-rating."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from accounting_helpers import contract, conversation_dict

from accounting import audit, store
from accounting.contracts import Client
from accounting.ledger import record_conversation, rerate
from accounting.migrate import load_migrations, migrate, migrations_dir

pytestmark = pytest.mark.db

IVAN = "+74951234567"
START = "2026-11-24T10:00:00+03:00"


@pytest.fixture
async def at_0007(empty_dsn: str, tmp_path: Path) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Connection]]:
    """A database migrated with 0001-0007 only, with one client and one rated conversation."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for migration in load_migrations():
        if migration.version <= 7:
            shutil.copy(migrations_dir() / migration.file_name, folder / migration.file_name)
    async with asyncpg.create_pool(empty_dsn, min_size=1, max_size=2) as pool, pool.acquire() as conn:
        await migrate(conn, folder)
        await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", (IVAN,)))
        await store.save_contract(conn, contract(free_daily_minutes=1, rate_per_minute="1.20"))
        await rerate(pool)
        yield pool, conn


def measured(instance: str, start: str, estimated: bool) -> dict[str, Any]:
    return {
        **conversation_dict("msk:1", start, (2, 40), number=IVAN),
        "instance": instance,
        "estimated": estimated,
    }


async def test_keys_left_at_a_superseded_start_are_moved_to_their_conversations(
    at_0007: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, conn = at_0007
    await record_conversation(pool, measured("a", START, estimated=True))
    await record_conversation(pool, measured("b", "2026-11-24T10:01:00+03:00", estimated=False))
    # What 0007's replace_conversation left for a key of a client the conversation had left.
    await conn.execute("UPDATE talkmeter.current_charges SET started_at = '2026-11-24T10:00:00+03:00'")
    assert await audit.check_client(conn, "C1") != []
    await migrate(conn)
    assert await audit.check_client(conn, "C1") == []
    assert (await rerate(pool, full=True)).postings == 0


async def test_line_days_left_at_a_superseded_start_are_recomputed(
    at_0007: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, conn = at_0007
    await record_conversation(pool, measured("a", "2026-11-24T00:00:01+03:00", estimated=True))
    await record_conversation(pool, measured("b", "2026-11-23T23:59:59+03:00", estimated=False))
    line_day = "SELECT line_day FROM talkmeter.conversations"
    assert str(await conn.fetchval(line_day)) == "2026-11-24"  # 0007 set it on insert only
    await migrate(conn)
    assert str(await conn.fetchval(line_day)) == "2026-11-23"
