"""record_conversation, the append-only ledger, the unmatched queue and rerate on real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from accounting_helpers import contract, conversation_dict
from structlog.testing import capture_logs

from accounting import store
from accounting.contracts import Client
from accounting.conversations import parse_conversation
from accounting.ledger import RetryableStorageError, assign_conversation, record_conversation, rerate
from accounting.rating import rate_contract

pytestmark = pytest.mark.db

IVAN = "+74951234567"
SHARED = "+74957778899"


async def seed(conn: asyncpg.Connection, **rules: Any) -> None:
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", (IVAN, SHARED)))
    await store.save_client(conn, Client("C2", "Vasilek JSC", "Europe/Moscow", (SHARED,)))
    await store.save_contract(conn, contract(**{"free_daily_minutes": 15, "rate_per_minute": 2, **rules}))


async def charges_of(conn: asyncpg.Connection, conversation_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM talkmeter.conversation_charges WHERE conversation_id = $1 ORDER BY contract_id",
        conversation_id,
    )


async def ledger_rows(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM talkmeter.charges"))


async def test_a_conversation_is_rated_and_posted(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed(conn)
    result = await record_conversation(
        pool, conversation_dict("x1", "2026-11-24T10:00:00+03:00", (3.5, 1200))
    )
    assert (result.status, result.client_id, result.contract_id, result.postings) == ("rated", "C1", "K1", 1)
    [row] = await charges_of(conn, "x1")
    assert row["client_name"] == "Romashka LLC"
    assert row["talk_seconds"] == Decimal("1200.000")
    assert (row["free_seconds"], row["prepaid_seconds"], row["paid_seconds"]) == (
        Decimal("900.000"),
        Decimal("0.000"),
        Decimal("300.000"),
    )
    assert (row["billable_seconds"], row["amount"], row["currency"]) == (300, Decimal("10.00"), "RUB")
    assert row["consultants"] == ["101"] and row["line"] == "74950000000" and row["client_number"] == IVAN
    assert [change["tier"] for change in json.loads(row["tier_changes"])] == ["free", "paid"]


async def test_recording_twice_changes_nothing(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed(conn)
    data = conversation_dict("x1", "2026-11-24T10:00:00+03:00", (0, 60))
    assert (await record_conversation(pool, data)).status == "rated"
    before = await ledger_rows(conn)
    again = await record_conversation(pool, data)
    assert again.status == "duplicate" and again.postings == 0
    assert await ledger_rows(conn) == before == 1


async def test_ledger_refuses_update_delete_and_truncate(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    await record_conversation(pool, conversation_dict("x1", "2026-11-24T10:00:00+03:00", (0, 60)))
    for statement in (
        "UPDATE talkmeter.charges SET amount = 0",
        "DELETE FROM talkmeter.charges",
        "TRUNCATE talkmeter.charges CASCADE",
        "UPDATE talkmeter.charge_days SET free_ms = 0",
        "DELETE FROM talkmeter.charge_days",
    ):
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute(statement)
    assert await ledger_rows(conn) == 1


async def test_a_later_arriving_overlap_adjusts_the_earlier_charge(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn, free_daily_minutes=12, rate_per_minute=1)
    # B (10:05-10:15) ends first and is recorded alone: 10 free minutes. A (10:00-10:20) talked
    # earlier, so when it arrives B's free time shrinks, through an adjustment row.
    b = conversation_dict("b", "2026-11-24T10:05:00+03:00", (0, 600))
    a = conversation_dict("a", "2026-11-24T10:00:00+03:00", (0, 1200))
    await record_conversation(pool, b)
    [alone] = await charges_of(conn, "b")
    assert alone["free_seconds"] == Decimal("600.000")
    result = await record_conversation(pool, a)
    assert result.postings == 2
    expected = {
        c.conversation_id: c
        for c in rate_contract(
            contract(free_daily_minutes=12, rate_per_minute=1),
            "Europe/Moscow",
            [parse_conversation(a).talk, parse_conversation(b).talk],
        )
    }
    for conversation_id in ("a", "b"):
        [row] = await charges_of(conn, conversation_id)
        assert row["free_seconds"] * 1000 == expected[conversation_id].free_ms
        assert row["amount"] == expected[conversation_id].amount
    kinds = await conn.fetch("SELECT conversation_id, kind FROM talkmeter.charges ORDER BY charge_id")
    assert [(r["conversation_id"], r["kind"]) for r in kinds] == [
        ("b", "charge"),
        ("a", "charge"),
        ("b", "adjustment"),
    ]
    daily = await conn.fetchrow("SELECT * FROM talkmeter.daily_usage WHERE client_id = 'C1'")
    assert daily["free_seconds"] == Decimal("720.000") and daily["free_cap_seconds"] == 720


@pytest.mark.parametrize(
    ("number", "reason"),
    [(None, "withheld"), ("+74990000000", "unknown"), (SHARED, "ambiguous")],
)
async def test_unattributable_numbers_wait_in_the_queue(
    pool: asyncpg.Pool, conn: asyncpg.Connection, number: str | None, reason: str
) -> None:
    await seed(conn)
    result = await record_conversation(
        pool, conversation_dict("q1", "2026-11-24T10:00:00+03:00", (2, 90), number=number)
    )
    assert result.status == reason and result.client_id is None
    [row] = await conn.fetch("SELECT * FROM talkmeter.unmatched_conversations")
    assert (row["conversation_id"], row["reason"], row["talk_seconds"]) == ("q1", reason, Decimal("90.000"))
    if reason == "ambiguous":
        assert row["candidate_clients"] == ["C1", "C2"]
    assert await ledger_rows(conn) == 0


async def test_assigning_a_number_then_rerate_bills_the_queue(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    stranger = "+74990000000"
    await record_conversation(
        pool, conversation_dict("q1", "2026-11-24T10:00:00+03:00", (2, 1200), number=stranger)
    )
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", (IVAN, SHARED, stranger)))
    summary = await rerate(pool)
    assert summary.postings == 1
    [row] = await charges_of(conn, "q1")
    assert row["client_id"] == "C1" and row["paid_seconds"] == Decimal("300.000")
    assert await conn.fetch("SELECT * FROM talkmeter.unmatched_conversations") == []
    assert (await rerate(pool)).postings == 0  # re-rating again changes nothing


async def test_moving_a_number_reverses_and_recharges(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed(conn)
    await store.save_contract(conn, contract(contract_id="K2", client_id="C2", rate_per_minute=3))
    await record_conversation(pool, conversation_dict("x1", "2026-11-24T10:00:00+03:00", (0, 1200)))
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", (SHARED,)))
    await store.save_client(conn, Client("C2", "Vasilek JSC", "Europe/Moscow", (IVAN,)))
    await rerate(pool)
    rows = await conn.fetch(
        "SELECT client_id, contract_id, kind, amount FROM talkmeter.charges ORDER BY charge_id"
    )
    assert [tuple(r) for r in rows] == [
        ("C1", "K1", "charge", Decimal("10.00")),
        ("C1", "K1", "adjustment", Decimal("-10.00")),
        ("C2", "K2", "charge", Decimal("60.00")),
    ]
    [row] = await charges_of(conn, "x1")
    assert (row["client_id"], row["amount"]) == ("C2", Decimal("60.00"))


async def test_a_number_changed_in_place_moves_its_conversations(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """An UPDATE of client_numbers.number (not the importer's delete and insert) must queue the
    old number's conversations too: they no longer belong to the client."""
    await seed(conn)
    await conn.execute("DELETE FROM talkmeter.client_numbers WHERE number = $1", SHARED)
    await rerate(pool)
    await record_conversation(pool, conversation_dict("x1", "2026-11-24T10:00:00+03:00", (2, 100)))
    await conn.execute("UPDATE talkmeter.client_numbers SET number = '+74950000001' WHERE number = $1", IVAN)
    assert [row["client_id"] for row in await conn.fetch("SELECT * FROM talkmeter.pending_rerates")] == ["C1"]
    await rerate(pool)
    assert await charges_of(conn, "x1") == []
    [row] = await conn.fetch("SELECT conversation_id, reason FROM talkmeter.unmatched_conversations")
    assert tuple(row) == ("x1", "unknown")
    assert (await rerate(pool, full=True)).postings == 0


async def test_quota_now_counts_no_free_days_left_without_a_weekly_limit(conn: asyncpg.Connection) -> None:
    """GREATEST ignores NULL: a contract without free_days_per_week showed 0 days left, which
    reads as none left; it shows none (NULL), as weekly_usage and the alerts' payload do."""
    await seed(conn, valid_from=date(2020, 1, 1))
    await store.save_contract(
        conn, contract(contract_id="K2", client_id="C2", valid_from=date(2020, 1, 1), free_daily_minutes=5,
                       free_days_per_week=2)
    )  # fmt: skip
    rows = await conn.fetch(
        "SELECT contract_id, free_days_per_week, free_days_used, free_days_left FROM talkmeter.quota_now "
        "ORDER BY contract_id"
    )
    assert [tuple(row) for row in rows] == [("K1", None, 0, None), ("K2", 2, 0, 2)]


async def test_assignment_of_a_withheld_conversation(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed(conn)
    await record_conversation(
        pool, conversation_dict("w1", "2026-11-24T10:00:00+03:00", (1, 60), number=None)
    )
    await assign_conversation(pool, "w1", "C1", "caller said she is from Romashka")
    await rerate(pool, "C1")
    [row] = await charges_of(conn, "w1")
    assert row["client_id"] == "C1" and row["free_seconds"] == Decimal("60.000")
    with pytest.raises(LookupError):
        await assign_conversation(pool, "nope", "C1", None)


async def test_no_contract_waits_until_a_contract_covers_it(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn, valid_from=date(2026, 12, 1))
    result = await record_conversation(pool, conversation_dict("n1", "2026-11-24T10:00:00+03:00", (1, 60)))
    assert result.status == "no_contract"
    [row] = await conn.fetch("SELECT * FROM talkmeter.unmatched_conversations")
    assert (row["reason"], row["client_id"]) == ("no_contract", "C1")
    await store.save_contract(
        conn, contract(valid_from=date(2026, 11, 1), free_daily_minutes=15, rate_per_minute=2)
    )
    await rerate(pool)
    assert len(await charges_of(conn, "n1")) == 1
    assert await conn.fetch("SELECT * FROM talkmeter.unmatched_conversations") == []


async def test_contract_change_is_rerated_through_adjustments(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    await record_conversation(pool, conversation_dict("x1", "2026-11-24T10:00:00+03:00", (0, 1200)))
    await store.save_contract(conn, contract(free_daily_minutes=5, rate_per_minute=2))
    assert (await rerate(pool)).postings == 1
    [row] = await charges_of(conn, "x1")
    assert (row["free_seconds"], row["amount"]) == (Decimal("300.000"), Decimal("30.00"))
    assert await ledger_rows(conn) == 2


async def test_unanswered_conversations_are_stored_for_line_quality(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    for index, wait in enumerate((2, 4, 6, 8)):
        await record_conversation(
            pool, conversation_dict(f"ok{index}", "2026-11-24T10:00:00+03:00", (wait, 30))
        )
    result = await record_conversation(pool, conversation_dict("lost", "2026-11-24T23:30:00+03:00"))
    assert result.status == "unanswered"
    [row] = await conn.fetch("SELECT * FROM talkmeter.line_quality")
    assert (row["line"], row["day"], row["offered"], row["answered"], row["abandoned"]) == (
        "74950000000",
        date(2026, 11, 24),
        5,
        4,
        1,
    )
    assert row["median_wait_seconds"] == Decimal("5.000")
    assert row["p90_wait_seconds"] == Decimal("7.400")
    assert row["talk_seconds"] == Decimal("120.000")
    assert await conn.fetch("SELECT * FROM talkmeter.unmatched_conversations") == []


async def test_daily_and_monthly_views_at_month_end(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed(
        conn, free_daily_minutes=10, prepaid_minutes=30, rate_per_minute=2, billing_increment_seconds=60
    )
    # Across midnight on the last day of November: 20 min, 10 free on each day.
    await record_conversation(pool, conversation_dict("m1", "2026-11-30T23:50:00+03:00", (0, 1200)))
    # 25 min on 29 November: 10 free, 15 prepaid.
    await record_conversation(pool, conversation_dict("m2", "2026-11-29T12:00:00+03:00", (0, 1500)))
    # 30 min on 1 December: m1 already took that day's 10 free minutes; 15 prepaid minutes are
    # left (10 + 10 free for m1, 10 free + 15 prepaid for m2), then 15 minutes are paid.
    await record_conversation(pool, conversation_dict("m3", "2026-12-01T12:00:00+03:00", (0, 1800)))
    daily = {
        r["day"]: r for r in await conn.fetch("SELECT * FROM talkmeter.daily_usage WHERE client_id = 'C1'")
    }
    assert daily[date(2026, 11, 30)]["free_seconds"] == Decimal("600.000")
    assert daily[date(2026, 12, 1)]["free_seconds"] == Decimal("600.000")
    assert daily[date(2026, 12, 1)]["free_cap_seconds"] == 600
    assert daily[date(2026, 12, 1)]["talk_seconds"] == Decimal("2400.000")  # 10 min of m1 + m3
    assert daily[date(2026, 11, 30)]["conversations"] == 1 and daily[date(2026, 12, 1)]["conversations"] == 1
    november = await conn.fetchrow(
        "SELECT * FROM talkmeter.monthly_statement WHERE client_id = 'C1' AND month = '2026-11-01'"
    )
    assert november["conversations"] == 2
    assert november["talk_seconds"] == Decimal("2100.000")  # 25 min + the 10 November minutes of m1
    assert november["free_seconds"] == Decimal("1200.000")
    assert november["prepaid_seconds"] == Decimal("900.000")
    assert november["prepaid_remaining_seconds"] == Decimal("900.000")
    december = await conn.fetchrow(
        "SELECT * FROM talkmeter.monthly_statement WHERE client_id = 'C1' AND month = '2026-12-01'"
    )
    assert december["prepaid_remaining_seconds"] == Decimal("0.000")
    assert december["prepaid_seconds"] == Decimal("900.000")
    assert (december["billable_seconds"], december["amount"]) == (900, Decimal("30.00"))


async def test_a_lost_connection_is_retryable_and_writes_nothing(
    pool: asyncpg.Pool, conn: asyncpg.Connection, db_dsn: str
) -> None:
    await seed(conn)
    data = conversation_dict("r1", "2026-11-24T10:00:00+03:00", (0, 60))
    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=1) as fragile:
        # Hold the client's rating lock so the write stops mid-transaction, then kill its backend.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(1952541801, hashtext('C1'))")
            writing = asyncio.create_task(record_conversation(fragile, data))
            # pg_locks is cluster-wide: other test runs on the same server wait on locks too.
            waiting = (
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            while (pid := await conn.fetchval(waiting)) is None:  # noqa: ASYNC110 (polls the server)
                await asyncio.sleep(0.01)
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(RetryableStorageError):
                await writing
        assert await conn.fetchval("SELECT count(*) FROM talkmeter.conversations") == 0
        assert (await record_conversation(fragile, data)).status == "rated"


async def test_roles_grant_what_each_needs(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed(conn)
    await record_conversation(pool, conversation_dict("x1", "2026-11-24T10:00:00+03:00", (0, 60)))
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE talkmeter_accountant")
        assert len(await conn.fetch("SELECT * FROM talkmeter.conversation_charges")) == 1
        for view in (
            "daily_usage",
            "monthly_statement",
            "unmatched_conversations",
            "line_quality",
            "weekly_usage",
            "client_contracts",
        ):
            await conn.fetch(f"SELECT * FROM talkmeter.{view}")
    # Accountants append what rerate computes, but change no ledger row, fact or contract term.
    refused = {
        "talkmeter_accountant": (
            "UPDATE talkmeter.charges SET amount = 0",
            "DELETE FROM talkmeter.charge_days",
            "UPDATE talkmeter.conversations SET talk_ms = 0",
            "INSERT INTO talkmeter.conversations SELECT * FROM talkmeter.conversations",
            "UPDATE talkmeter.contracts SET rate_per_minute = 0",
            "DELETE FROM talkmeter.contracts",
            "UPDATE talkmeter.clients SET name = 'x'",
            "DELETE FROM talkmeter.client_numbers",
        ),
        "talkmeter_writer": (
            "DELETE FROM talkmeter.charges",
            "UPDATE talkmeter.contracts SET rate_per_minute = 0",
            "SELECT talkmeter.end_contract('K1', '2026-12-31')",
        ),
    }
    for role, statements in refused.items():
        for statement in statements:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ROLE {role}")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)


async def test_the_writer_role_can_record(db_dsn: str, conn: asyncpg.Connection) -> None:
    await seed(conn)

    async def as_writer(connection: asyncpg.Connection) -> None:
        await connection.execute("SET ROLE talkmeter_writer")

    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=1, init=as_writer) as writer:
        result = await record_conversation(
            writer, conversation_dict("x1", "2026-11-24T10:00:00+03:00", (0, 1200))
        )
        await record_conversation(writer, conversation_dict("x0", "2026-11-24T09:59:00+03:00", (0, 600)))
    assert result.status == "rated"
    assert await ledger_rows(conn) == 3


async def test_one_canonical_log_line_per_conversation(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    await seed(conn)
    with capture_logs() as logs:
        await record_conversation(pool, conversation_dict("x1", "2026-11-24T10:00:00+03:00", (0, 1200)))
    assert logs == [
        {
            "event": "conversation.recorded",
            "log_level": "info",
            "conversation_id": "x1",
            "status": "rated",
            "client_id": "C1",
            "contract_id": "K1",
            "talk_ms": 1_200_000,
            "amount": "10.00",
            "postings": 1,
            "instance": None,
            "version": "first",
        }
    ]


async def test_recording_in_any_order_leaves_nothing_for_rerate(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Each recording re-rates only from its frontier; the ledger must still equal a full re-rating."""
    rules: dict[str, Any] = {
        "free_daily_minutes": 10,
        "free_days_per_week": 2,
        "prepaid_minutes": 30,
        "rate_per_minute": 1,
        "billing_increment_seconds": 30,
        "short_call_seconds": 5,
    }
    await seed(conn, **rules)
    rng = random.Random(11)
    days, hours, minutes = [22, 23, 24, 25, 29, 30], range(8, 23), range(60)
    starts = [
        f"2026-11-{rng.choice(days)}T{rng.choice(hours):02d}:{rng.choice(minutes):02d}:00+03:00"
        for _ in range(30)
    ]
    conversations = [
        conversation_dict(f"c{i}", start, (rng.uniform(0, 10), rng.uniform(1, 1500)))
        for i, start in enumerate(starts)
    ]
    rng.shuffle(conversations)
    for data in conversations:
        await record_conversation(pool, data)
    assert (await rerate(pool)).postings == 0
    expected = rate_contract(
        contract(**rules), "Europe/Moscow", [parse_conversation(d).talk for d in conversations]
    )
    for charge in expected:
        [row] = await charges_of(conn, charge.conversation_id)
        assert (row["free_seconds"] * 1000, row["prepaid_seconds"] * 1000, row["amount"]) == (
            charge.free_ms,
            charge.prepaid_ms,
            charge.amount,
        )
