"""Real AMI traces through the call tracker (as `talkmeter replay --dry-run` prints them) into the
ledger: every conversation is stored, answered or not, and rated or queued."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from accounting_helpers import contract

from accounting import store
from accounting.contracts import Client
from accounting.ledger import record_conversation
from daemon.commands.replay import measure_capture
from daemon.settings import Settings

pytestmark = pytest.mark.db

TRACES = Path(__file__).resolve().parents[1] / "traces"
OFFICE_NUMBERS = tuple(f"+749510000{n:02d}" for n in range(1, 21))


def replayed(name: str) -> list[dict[str, Any]]:
    conversations = measure_capture(TRACES / f"{name}.ami", Settings())
    # Through JSON, exactly as the dry run prints them.
    return [json.loads(json.dumps(conversation.to_json())) for conversation in conversations]


async def test_traces_are_stored_rated_and_queued(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await store.save_client(conn, Client("IVAN", "Ivan Petrov IP", "Europe/Moscow", ("+74951234567",)))
    await store.save_client(conn, Client("OFFICE", "Twenty lines LLC", "Europe/Moscow", OFFICE_NUMBERS))
    await store.save_contract(conn, contract(contract_id="K-IVAN", client_id="IVAN", rate_per_minute=2))
    await store.save_contract(
        conn, contract(contract_id="K-OFFICE", client_id="OFFICE", free_daily_minutes=1, rate_per_minute=1)
    )
    conversations = [
        c
        for name in ("caller_id_formats", "concurrent_20", "inbound_abandoned", "hold")
        for c in replayed(name)
    ]
    results = [await record_conversation(pool, data) for data in conversations]
    statuses = [result.status for result in results]
    assert statuses.count("rated") == 4 + 20 + 1  # four IVAN calls, the office, the hold call
    assert sorted(s for s in statuses if s != "rated") == ["unanswered", "unknown", "withheld"]

    stored = await conn.fetch("SELECT conversation_id, talk_ms FROM talkmeter.conversations")
    assert len(stored) == len(conversations)
    talk = {row["conversation_id"]: row["talk_ms"] for row in stored}
    for data in conversations:
        # Each segment boundary is rounded to the millisecond once, the printed total once.
        assert abs(talk[data["conversation_id"]] - Decimal(str(data["talk_seconds"])) * 1000) <= 1

    office = await conn.fetch("SELECT * FROM talkmeter.daily_usage WHERE client_id = 'OFFICE'")
    # Twenty overlapping calls share one free minute, exactly.
    assert [row["free_seconds"] for row in office] == [Decimal("60.000")]
    unmatched = await conn.fetch(
        "SELECT reason, client_number FROM talkmeter.unmatched_conversations ORDER BY 1"
    )
    assert [tuple(row) for row in unmatched] == [("unknown", "+74957778899"), ("withheld", None)]
    quality = await conn.fetch("SELECT sum(offered) AS o, sum(abandoned) AS a FROM talkmeter.line_quality")
    assert (quality[0]["o"], quality[0]["a"]) == (len(conversations), 1)

    rows = await conn.fetchval("SELECT count(*) FROM talkmeter.charges")
    again = [await record_conversation(pool, data) for data in conversations]
    assert {result.status for result in again} == {"duplicate"}
    assert await conn.fetchval("SELECT count(*) FROM talkmeter.charges") == rows
