"""Two instances record the same conversations (the standby set-up), on real PostgreSQL.

The ledger keeps one conversation per id, the best version (see accounting/versions.py): an exact
measurement supersedes an estimated one through adjustment rows, the superseded version is kept
for audit, a repeated measurement is a no-op, a different exact one is a logged disagreement, and
whatever order or concurrency the versions arrive in, the ledger ends as if only the best version
had ever been recorded.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from itertools import count
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from accounting_helpers import contract, conversation_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from accounting import audit, store
from accounting.contracts import Client
from accounting.conversations import Talk, parse_conversation
from accounting.ledger import RetryableStorageError, record_conversation, rerate
from accounting.rating import rate_contract
from tests.db import admin, unique_name

pytestmark = pytest.mark.db

IVAN, OLGA = "+74951234567", "+74959876543"
START = "2026-11-24T10:00:00+03:00"
RULES: dict[str, Any] = {"free_daily_minutes": 1, "prepaid_minutes": 2, "rate_per_minute": "1.20"}


async def seed(conn: asyncpg.Connection) -> None:
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", (IVAN,)))
    await store.save_client(conn, Client("C2", "Vasilek JSC", "Europe/Moscow", (OLGA,)))
    await store.save_contract(conn, contract(**RULES))
    await store.save_contract(conn, contract(contract_id="K2", client_id="C2", **RULES))


def measured(
    conversation_id: str,
    instance: str,
    *pieces: tuple[float, float],
    estimated: bool = False,
    number: str = IVAN,
    start: str = START,
) -> dict[str, Any]:
    data = conversation_dict(conversation_id, start, *pieces, number=number)
    return {**data, "instance": instance, "estimated": estimated}


async def ledger(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT conversation_id, client_id, contract_id, talk_seconds, free_seconds, prepaid_seconds, "
        "paid_seconds, billable_seconds, amount FROM talkmeter.conversation_charges ORDER BY 1, 3"
    )
    return [tuple(row) for row in rows]


async def kept(conn: asyncpg.Connection, conversation_id: str) -> asyncpg.Record:
    return await conn.fetchrow(
        "SELECT instance, estimated, talk_ms, client_id FROM talkmeter.conversations "
        "WHERE conversation_id = $1",
        conversation_id,
    )


async def running_state_agrees(conn: asyncpg.Connection) -> None:
    """`talkmeter check-ledger`: the running state equals what the ledger sums to."""
    for client_id in ("C1", "C2", "C9"):
        assert await audit.check_client(conn, client_id) == []


async def versions(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT conversation_id, instance, outcome, compared_with, estimated, talk_ms "
        "FROM talkmeter.conversation_versions ORDER BY set_aside_at"
    )
    return [tuple(row) for row in rows]


async def charge_rows(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT conversation_id, kind, talk_ms, amount FROM talkmeter.charges ORDER BY charge_id"
    )
    return [tuple(row) for row in rows]


async def test_an_exact_version_supersedes_the_estimated_one_through_adjustments(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    # Instance a was killed 40 s into the call and, restarted, closed it at its checkpoint.
    first = await record_conversation(pool, measured("msk:1", "a", (2, 40), estimated=True))
    assert (first.status, first.version) == ("rated", "first")
    estimated_ledger = await ledger(conn)
    with capture_logs() as logs:
        second = await record_conversation(pool, measured("msk:1", "b", (2, 250)))
    assert (second.status, second.version, second.client_id, second.contract_id) == (
        "rated",
        "superseded",
        "C1",
        "K1",
    )
    assert dict(await kept(conn, "msk:1")) == {
        "instance": "b",
        "estimated": False,
        "talk_ms": 250_000,
        "client_id": "C1",
    }
    assert await ledger(conn) == [
        (
            "msk:1",
            "C1",
            "K1",
            Decimal("250.000"),
            Decimal("60.000"),
            Decimal("120.000"),
            Decimal("70.000"),
            70,
            Decimal("1.40"),
        )
    ]
    assert estimated_ledger[0][3] == Decimal("40.000")
    # The ledger was corrected by appending, never by editing: the charge of 40 s stays.
    assert await charge_rows(conn) == [
        ("msk:1", "charge", 40_000, Decimal("0.00")),
        ("msk:1", "adjustment", 210_000, Decimal("1.40")),
    ]
    assert await versions(conn) == [("msk:1", "a", "superseded", "b", True, 40_000)]
    stored = json.loads(await conn.fetchval("SELECT record FROM talkmeter.conversation_versions"))
    assert stored["estimated"] is True and stored["talk_seconds"] == 40.0 and stored["instance"] == "a"
    [line] = [entry for entry in logs if entry["event"] == "conversation.superseded"]
    assert (line["kept_instance"], line["instance"], line["kept_talk_ms"], line["talk_ms"]) == (
        "a",
        "b",
        40_000,
        250_000,
    )
    assert (await rerate(pool)).postings == 0  # the ledger equals a full re-rating
    await running_state_agrees(conn)


async def test_an_estimated_version_after_the_exact_one_changes_nothing_and_is_kept_for_audit(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    await record_conversation(pool, measured("msk:1", "b", (2, 250)))
    before = (await ledger(conn), await charge_rows(conn))
    late = await record_conversation(pool, measured("msk:1", "a", (2, 40), estimated=True))
    assert (late.status, late.version, late.postings) == ("duplicate", "not_better", 0)
    assert (await ledger(conn), await charge_rows(conn)) == before
    assert dict(await kept(conn, "msk:1"))["instance"] == "b"
    assert await versions(conn) == [("msk:1", "a", "not_better", "b", True, 40_000)]
    # Sent again from a's spool after a crash: stored once.
    await record_conversation(pool, measured("msk:1", "a", (2, 40), estimated=True))
    assert len(await versions(conn)) == 1


async def test_the_same_measurement_from_the_other_instance_is_a_no_op(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    await record_conversation(pool, measured("msk:1", "a", (2, 250)))
    before = (await ledger(conn), await charge_rows(conn))
    again = await record_conversation(pool, measured("msk:1", "b", (2, 250.0004)))  # within 1 ms
    assert (again.status, again.version, again.postings) == ("duplicate", "identical", 0)
    assert (await ledger(conn), await charge_rows(conn), await versions(conn)) == (*before, [])
    assert dict(await kept(conn, "msk:1"))["instance"] == "a"


async def test_a_different_exact_version_is_a_disagreement_the_first_stays(
    pool: asyncpg.Pool, conn: asyncpg.Connection, db_dsn: str
) -> None:
    await seed(conn)
    await record_conversation(pool, measured("msk:1", "a", (2, 250)))
    before = (await ledger(conn), await charge_rows(conn))
    with capture_logs() as logs:
        other = await record_conversation(pool, measured("msk:1", "b", (2, 251.5)))
    assert (other.status, other.version) == ("duplicate", "disagreed")
    assert (await ledger(conn), await charge_rows(conn)) == before
    [line] = [entry for entry in logs if entry["event"] == "conversation.instances_disagree"]
    assert line["log_level"] == "warning"
    assert (line["kept_instance"], line["instance"], line["kept_talk_ms"], line["talk_ms"]) == (
        "a",
        "b",
        250_000,
        251_500,
    )
    assert line["differences"]["talk_ms"] == (250_000, 251_500)
    # The accountants see it.
    name = unique_name("tm_login")
    await admin(f"CREATE ROLE {name} LOGIN PASSWORD 'pw' IN ROLE talkmeter_accountant")
    try:
        parts = urlsplit(db_dsn)
        accountant = await asyncpg.connect(
            urlunsplit(parts._replace(netloc=f"{name}:pw@{parts.hostname}:{parts.port}"))
        )
        try:
            [row] = await accountant.fetch("SELECT * FROM talkmeter.instance_disagreements")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await accountant.fetch("SELECT * FROM talkmeter.conversation_versions")
        finally:
            await accountant.close()
    finally:
        await admin(f"DROP ROLE {name}")
    assert (row["conversation_id"], row["kept_instance"], row["other_instance"]) == ("msk:1", "a", "b")
    assert (row["kept_talk_seconds"], row["other_talk_seconds"], row["talk_difference_seconds"]) == (
        Decimal("250.000"),
        Decimal("251.500"),
        Decimal("1.500"),
    )


async def test_a_version_that_changes_the_client_moves_the_charge(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    await record_conversation(pool, measured("msk:1", "a", (2, 100), estimated=True, number=IVAN))
    result = await record_conversation(pool, measured("msk:1", "b", (2, 100), number=OLGA))
    assert (result.status, result.client_id, result.version) == ("rated", "C2", "superseded")
    assert [(row[0], row[1], row[3]) for row in await ledger(conn)] == [("msk:1", "C2", Decimal("100.000"))]
    assert (await rerate(pool)).postings == 0
    await running_state_agrees(conn)


async def test_a_superseding_start_moves_the_keys_of_every_client_that_had_the_conversation(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """C1 keeps a key reversed to zero after the number moved to C2; the exact version, a minute
    later, must move that key too, or C1 gaining the conversation back would post its 'charge'
    row a second time (the key not found at the conversation's start)."""
    await seed(conn)
    await record_conversation(pool, measured("msk:1", "a", (2, 40), estimated=True))
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", ()))
    await store.save_client(conn, Client("C2", "Vasilek JSC", "Europe/Moscow", (OLGA, IVAN)))
    await rerate(pool)
    later = measured("msk:1", "b", (2, 40), start="2026-11-24T10:01:00+03:00")
    assert (await record_conversation(pool, later)).version == "superseded"
    starts = await conn.fetch(
        "SELECT DISTINCT k.started_at = c.started_at AS same FROM talkmeter.current_charges k "
        "JOIN talkmeter.conversations c USING (conversation_id)"
    )
    assert [row["same"] for row in starts] == [True]
    await store.save_client(conn, Client("C2", "Vasilek JSC", "Europe/Moscow", (OLGA,)))
    await store.save_client(conn, Client("C1", "Romashka LLC", "Europe/Moscow", (IVAN,)))
    await rerate(pool)
    assert [(row[0], row[1], row[3]) for row in await ledger(conn)] == [("msk:1", "C1", Decimal("40.000"))]
    assert (await rerate(pool, full=True)).postings == 0
    await running_state_agrees(conn)


async def test_check_ledger_finds_a_key_whose_start_is_not_its_conversations(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await seed(conn)
    await record_conversation(pool, measured("msk:1", "a", (2, 40)))
    await conn.execute("UPDATE talkmeter.current_charges SET started_at = started_at - interval '1 minute'")
    [mismatch] = await audit.check_client(conn, "C1")
    assert (mismatch.table, mismatch.key) == ("current_charges", "msk:1/K1")
    assert "started_at" in str(mismatch)


async def test_an_exact_version_starting_the_day_before_moves_the_conversation_to_that_day(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Adopted after a restart, a call's start is known to the second only (CoreShowChannels'
    Duration): the estimated version may start after local midnight, the exact one before it."""
    await seed(conn)
    late = measured("msk:1", "a", (0.5, 80), estimated=True, start="2026-11-24T00:00:01+03:00")
    await record_conversation(pool, late)
    exact = measured("msk:1", "b", (0.5, 82), start="2026-11-23T23:59:59+03:00")
    assert (await record_conversation(pool, exact)).version == "superseded"
    days = await conn.fetch(
        "SELECT day, conversations, talk_seconds, free_seconds FROM talkmeter.daily_usage "
        "WHERE client_id = 'C1' ORDER BY day"
    )
    # Its talk is split by the day it was talked; the conversation belongs to the day it started.
    assert [tuple(row) for row in days] == [
        (date(2026, 11, 23), 1, Decimal("0.500"), Decimal("0.500")),
        (date(2026, 11, 24), 0, Decimal("81.500"), Decimal("60.000")),
    ]
    [charge] = await conn.fetch("SELECT day, talk_seconds FROM talkmeter.conversation_charges")
    assert (charge["day"], charge["talk_seconds"]) == (date(2026, 11, 23), Decimal("82.000"))
    assert (await rerate(pool)).postings == 0
    await running_state_agrees(conn)


async def test_a_superseding_start_moves_the_conversation_to_its_line_day(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """line_quality counts the conversation on the day (settings.line_timezone, Moscow) it started:
    the exact version's, not the estimated one's."""
    await seed(conn)
    late = measured("msk:1", "a", (0.5, 80), estimated=True, start="2026-11-24T00:00:01+03:00")
    await record_conversation(pool, late)
    exact = measured("msk:1", "b", (0.5, 82), start="2026-11-23T23:59:59+03:00")
    assert (await record_conversation(pool, exact)).version == "superseded"
    days = await conn.fetch("SELECT day, offered FROM talkmeter.line_quality")
    assert [tuple(row) for row in days] == [(date(2026, 11, 23), 1)]


async def test_supersedes_moving_conversations_both_ways_may_deadlock_and_are_retried(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Superseding takes the old client's lock, then the new one's: two supersedes moving
    conversations between two clients in opposite directions can wait for each other. PostgreSQL
    detects it and aborts one; that one is a RetryableStorageError (nothing written) and its
    retry succeeds. Here the other side is played by a session holding C2 and asking for C1."""
    await seed(conn)
    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=1) as daemon:
        await record_conversation(daemon, measured("msk:1", "a", (2, 40), estimated=True))
        moving = measured("msk:1", "b", (2, 40), number=OLGA)  # from C1 to C2
        await conn.execute("SET deadlock_timeout = '10s'")  # so the daemon is the one aborted
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(1952541801, hashtext('C2'))")
            writing = asyncio.create_task(record_conversation(daemon, moving))
            waiting = (
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            while await conn.fetchval(waiting) is None:  # noqa: ASYNC110 (polls the server)
                await asyncio.sleep(0.01)
            await conn.execute("SELECT pg_advisory_xact_lock(1952541801, hashtext('C1'))")
            with pytest.raises(RetryableStorageError, match="DeadlockDetectedError"):
                await writing
        assert dict(await kept(conn, "msk:1"))["instance"] == "a"
        assert (await record_conversation(daemon, moving)).version == "superseded"
    await running_state_agrees(conn)


async def test_the_writer_role_can_supersede(db_dsn: str, conn: asyncpg.Connection) -> None:
    await seed(conn)

    async def as_writer(connection: asyncpg.Connection) -> None:
        await connection.execute("SET ROLE talkmeter_writer")

    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=1, init=as_writer) as writer:
        await record_conversation(writer, measured("msk:1", "a", (2, 40), estimated=True))
        assert (await record_conversation(writer, measured("msk:1", "b", (2, 250)))).version == "superseded"
        await record_conversation(writer, measured("msk:1", "b", (2, 251.5)))  # and sets aside
    assert dict(await kept(conn, "msk:1"))["talk_ms"] == 250_000


# --- concurrency: two instances, the same conversations, at the same moment -----------------------


def day_of_two_instances(
    seed: int, conversations: int = 12
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What instances a and b send for one day of overlapping calls of one client: both measure
    every call; a few of each instance's are estimated (cut short, or started late) and a few of
    a's are missing (a was down and not restarted). No call is estimated by both."""
    rng = random.Random(seed)
    sent: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    for index in range(conversations):
        minute, second, ms = rng.randrange(60), rng.randrange(60), rng.randrange(1000)
        start = f"2026-11-24T{9 + index // 4:02d}:{minute:02d}:{second:02d}.{ms:03d}+03:00"
        wait, length = rng.uniform(0, 20), rng.uniform(20, 400)
        exact = (wait, length)
        flawed = rng.choice(["a", "b", None, None])
        for instance in ("a", "b"):
            if instance == flawed:
                if instance == "a" and rng.random() < 0.3:
                    continue  # never sent
                cut = rng.uniform(1, length)
                piece = rng.choice([(wait, cut), (wait + length - cut, cut)])
                sent[instance].append(measured(f"msk:{index}", instance, piece, estimated=True, start=start))
            else:
                sent[instance].append(measured(f"msk:{index}", instance, exact, start=start))
    return sent["a"], sent["b"]


async def record_all(pool: asyncpg.Pool, conversations: list[dict[str, Any]]) -> None:
    await asyncio.gather(*(record_conversation(pool, data) for data in conversations))


@pytest.mark.parametrize("seed_value", [1, 2, 3])
async def test_two_instances_writing_at_once_end_as_if_only_the_exact_versions_were_recorded(
    db_dsn: str, conn: asyncpg.Connection, seed_value: int
) -> None:
    await seed(conn)
    from_a, from_b = day_of_two_instances(seed_value)
    random.Random(seed_value).shuffle(from_a)
    random.Random(-seed_value).shuffle(from_b)
    async with (
        asyncpg.create_pool(db_dsn, min_size=3, max_size=3) as instance_a,
        asyncpg.create_pool(db_dsn, min_size=3, max_size=3) as instance_b,
    ):
        await asyncio.gather(record_all(instance_a, from_a), record_all(instance_b, from_b))
    best = {
        data["conversation_id"]: data
        for data in sorted(from_a + from_b, key=lambda data: data["estimated"], reverse=True)
    }
    expected = rate_contract(
        contract(**RULES), "Europe/Moscow", [parse_conversation(data).talk for data in best.values()]
    )
    assert [(row[0], row[3], row[8]) for row in await ledger(conn)] == sorted(
        (charge.conversation_id, Decimal(charge.talk_ms) / 1000, charge.amount) for charge in expected
    )
    flags = await conn.fetch("SELECT conversation_id, estimated FROM talkmeter.conversations")
    assert len(flags) == len(best) and not any(row["estimated"] for row in flags)
    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=1) as pool:
        assert (await rerate(pool)).postings == 0
    await running_state_agrees(conn)


# --- any arrival order, on PostgreSQL ---------------------------------------------------------------

_EXAMPLES = count()
_EXACT: dict[str, Talk] = {}


@pytest.fixture
async def shared_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """One database for every example: each example is a conversation of its own of client C9,
    all on one morning, so they draw on the same allowances."""
    async with asyncpg.create_pool(db_dsn, min_size=2, max_size=4) as created:
        async with created.acquire() as connection:
            await store.save_client(connection, Client("C9", "Example", "Europe/Moscow", ()))
            await store.save_contract(connection, contract(contract_id="K9", client_id="C9", **RULES))
        yield created


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    length=st.floats(10, 300),
    offset=st.integers(0, 600),
    cuts=st.lists(st.tuples(st.floats(1, 300), st.booleans()), max_size=2),
    exact_copies=st.integers(1, 2),
    concurrent=st.booleans(),
    data=st.data(),
)
async def test_any_order_of_versions_leaves_the_ledger_equal_to_rating_the_exact_ones(
    shared_pool: asyncpg.Pool,
    length: float,
    offset: int,
    cuts: list[tuple[float, bool]],
    exact_copies: int,
    concurrent: bool,
    data: st.DataObject,
) -> None:
    example = next(_EXAMPLES)
    conversation_id, number = f"msk:{example}", f"+7495{example:07d}"
    start = f"2026-11-24T10:{offset // 60:02d}:{offset % 60:02d}+03:00"
    sent = [
        measured(conversation_id, f"exact-{n}", (2, length), number=number, start=start)
        for n in range(exact_copies)
    ]
    for index, (drawn, late) in enumerate(cuts):  # closed where the link was lost, or adopted late
        cut = min(drawn, length)
        piece = (2 + length - cut, cut) if late else (2, cut)
        sent.append(
            measured(conversation_id, f"estimated-{index}", piece, estimated=True, number=number, start=start)
        )
    order = data.draw(st.permutations(sent))
    async with shared_pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO talkmeter.client_numbers (client_id, number) VALUES ('C9', $1)", number
        )
    if concurrent:
        await record_all(shared_pool, order)
    else:
        for version in order:
            await record_conversation(shared_pool, version)
    async with shared_pool.acquire() as connection:
        row = await kept(connection, conversation_id)
        assert not row["estimated"] and row["instance"].startswith("exact-")
        rows = await connection.fetch(
            "SELECT conversation_id, talk_seconds, free_seconds, prepaid_seconds, paid_seconds, amount "
            "FROM talkmeter.conversation_charges WHERE client_id = 'C9' ORDER BY conversation_id"
        )
        assert await audit.check_client(connection, "C9") == []
    # Every example so far, each by its exact version only, rated together: what the ledger must say.
    _EXACT[conversation_id] = parse_conversation(sent[0]).talk
    expected = rate_contract(
        contract(contract_id="K9", client_id="C9", **RULES), "Europe/Moscow", list(_EXACT.values())
    )
    assert sorted(tuple(record) for record in rows) == sorted(
        (
            charge.conversation_id,
            Decimal(charge.talk_ms) / 1000,
            Decimal(charge.free_ms) / 1000,
            Decimal(charge.prepaid_ms) / 1000,
            Decimal(charge.paid_ms) / 1000,
            charge.amount,
        )
        for charge in expected
        if charge.talk_ms
    )
