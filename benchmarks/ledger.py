"""How the ledger behaves as it grows: recording latency, views and rerate on N conversations.

Usage: .venv/bin/python benchmarks/ledger.py [--conversations 1000000] [--keep] [--reuse]
       (see --help; the large run is --conversations 10000000)

It builds a database of its own (`talkmeter_bench_ledger_<N>`, dropped at the end unless --keep;
--reuse measures a kept one again) holding N conversations across 1,000 clients, loaded with COPY:
conversations, segments, the ledger (charges, charge days; about 5 % of the keys corrected by an
adjustment row), the keys' current values and the running state. Every charge is what the rating
core gives (rated day by day from the running state, as recording does), so the ledger is one
talkmeter could have written; a sample of clients is then checked with `check-ledger`.

The traffic is the same at every size: about 2,000 conversations a day in the clients' daytime,
09:00-20:00 local, 12 % unanswered, 7 % without a client (withheld or unknown numbers), a fifth
with a hold. A bigger N is a longer history (1M is 16 months, 10M 13 years), so flat figures
across sizes mean the cost follows the range asked for, not the history. One client (`bench-big`)
has 550 conversations a day for its last ~180 days: a contract with 100,000 conversations of
history (N/10 below 1M).

Measured, each printed as it is taken:
1. recording latency (`record_conversation`, the daemon's path) of a day of new conversations,
   550 of them overlapping as busy support lines do, recorded in the order they end: (a) into a
   fresh contract, (b) into bench-big's contract;
2. recordings per second with 8 writer processes at once (one connection each; random clients);
3. the views, each for one client-month, one day, and the month's statement of all clients;
4. rerate of one client: after its contract ends a month early (the range that changed), and
   after its rate changes (its whole history; three times, and their median).
PostgreSQL is measured as configured (the figures name shared_buffers and work_mem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import structlog  # noqa: E402

from accounting import audit, store  # noqa: E402
from accounting.contracts import Client, Contract  # noqa: E402
from accounting.conversations import Interval, Talk, from_ms  # noqa: E402
from accounting.ledger import record_conversation, rerate  # noqa: E402
from accounting.migrate import migrate  # noqa: E402
from accounting.postings import LedgerState, difference, state_of  # noqa: E402
from accounting.rating import PriorUsage, local_midnight_ms, rate_contract  # noqa: E402
from accounting.usage import Usage, Week, contribution, week_of  # noqa: E402

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PER_DAY = 2_000
BIG_PER_DAY = 550
BIG_HISTORY = 100_000
ZONES = ["Europe/Moscow"] * 8 + ["Asia/Yekaterinburg", "Asia/Novosibirsk"]
LINES = [f"7495000000{i}" for i in range(5)]
LINE_ZONE = ZoneInfo("Europe/Moscow")  # settings.line_timezone as migrated
CONSULTANTS = [str(100 + i) for i in range(50)]
BATCH = 40_000  # conversations per COPY batch


def dsn_of(admin: str, database: str) -> str:
    return admin.rsplit("/", 1)[0] + "/" + database


# ===== the synthetic firm ===================================================================


@dataclass
class Firm:
    clients: list[Client]
    contracts: dict[str, Contract]
    weights: list[float]
    first_day: date
    days: int
    big_from: date
    """bench-big talks from this day on."""


def make_firm(conversations: int, clients: int, rng: random.Random) -> Firm:
    big_history = min(BIG_HISTORY, conversations // 10)
    big_days = max(1, math.ceil(big_history / BIG_PER_DAY))
    days = max(big_days, math.ceil((conversations - big_history) / PER_DAY))
    first_day = date(2026, 10, 31) - timedelta(days=days - 1)
    people: list[Client] = []
    contracts: dict[str, Contract] = {}
    for index in range(clients):
        client_id = "bench-big" if index == 0 else f"bench-c{index:04d}"
        zone = "Europe/Moscow" if index == 0 else rng.choice(ZONES)
        numbers = (f"+7495{index:07d}", f"+7496{index:07d}") if index % 3 == 0 else (f"+7495{index:07d}",)
        people.append(Client(client_id, f"Client {index}", zone, numbers))
        contracts[client_id] = _contract(client_id, first_day, rng, big=index == 0)
    weights = [0.0] + [1 / (rank**0.8) for rank in range(1, clients)]
    return Firm(people, contracts, weights, first_day, days, first_day + timedelta(days=days - big_days))


def _contract(client_id: str, first_day: date, rng: random.Random, big: bool) -> Contract:
    contract_id = client_id.replace("bench-", "bench-k")
    if big:
        return Contract(
            contract_id, client_id, first_day, free_daily_minutes=120, free_days_per_week=5,
            rate_per_minute=Decimal("2.50"), currency="RUB", billing_increment_seconds=60,
            minimum_billable_seconds=60, short_call_seconds=10, overage="bill",
        )  # fmt: skip
    free = rng.choice([None, None, 15, 30, 60])
    rate = rng.choice([None, Decimal("1.50"), Decimal("2.00"), Decimal("3.00"), Decimal("2.40")])
    return Contract(
        contract_id,
        client_id,
        first_day,
        free_daily_minutes=free,
        free_days_per_week=rng.choice([None, 5]) if free is not None else None,
        prepaid_minutes=rng.choice([None, None, 600, 3000, 100_000]),
        rate_per_minute=rate,
        currency="RUB" if rate is not None else None,
        billing_increment_seconds=rng.choice([1, 30, 60]),
        minimum_billable_seconds=rng.choice([0, 0, 60]),
        short_call_seconds=rng.choice([None, 5, 10]),
        overage="bill" if rate is not None else "flag",
        hold_billable=rng.random() < 0.7,
    )


@dataclass
class Call:
    """One synthetic conversation, as the call tracker would report it."""

    client: Client | None  # None: withheld or unknown number
    number: str | None
    started_ms: int
    wait_ms: int
    intervals: tuple[Interval, ...]
    line: str | None
    consultant: str
    conversation_id: str = ""

    @property
    def ended_ms(self) -> int:
        return self.intervals[-1].end_ms if self.intervals else self.started_ms + self.wait_ms

    @property
    def talk(self) -> Talk:
        return Talk(self.conversation_id, self.started_ms, self.line, self.intervals)

    def as_dict(self) -> dict[str, Any]:
        """The call tracker's JSON dict (what record_conversation takes)."""
        iso = lambda ms: from_ms(ms).isoformat()  # noqa: E731
        return {
            "conversation_id": self.conversation_id,
            "pbx": "bench",
            "direction": "inbound" if self.line else "outbound",
            "client_number": self.number,
            "client_number_raw": (self.number or "anonymous").lstrip("+"),
            "line": self.line,
            "consultants": [self.consultant] if self.intervals else [],
            "started_at": iso(self.started_ms),
            "answered_at": iso(self.intervals[0].start_ms) if self.intervals else None,
            "ended_at": iso(self.ended_ms),
            "wait_seconds": self.wait_ms / 1000,
            "segments": [
                {
                    "consultant": self.consultant,
                    "start": iso(i.start_ms),
                    "end": iso(i.end_ms),
                    "hold": i.hold,
                }
                for i in self.intervals
            ],
            "estimated": False,
        }


def make_call(client: Client | None, day: date, zone: ZoneInfo, rng: random.Random) -> Call:
    opening = local_midnight_ms(day, zone) + 9 * 3_600_000
    start = opening + rng.randrange(11 * 3_600_000)
    wait = rng.randrange(2_000, 60_000)
    intervals: tuple[Interval, ...] = ()
    if rng.random() >= 0.12:
        talk = min(int(rng.lognormvariate(11.9, 0.9)), 2 * 3_600_000)  # median ~2.5 min
        at = start + wait
        if rng.random() < 0.2 and talk > 60_000:
            first, held = talk // 2, rng.randrange(10_000, 120_000)
            intervals = (
                Interval(at, at + first, False),
                Interval(at + first, at + first + held, True),
                Interval(at + first + held, at + held + talk, False),
            )
        else:
            intervals = (Interval(at, at + talk, False),)
    if client is None:
        number = None if rng.random() < 0.5 else f"+7499{rng.randrange(10**7):07d}"
    else:
        number = rng.choice(client.numbers)
    line = rng.choice(LINES) if rng.random() < 0.85 else None
    return Call(client, number, start, wait, intervals, line, rng.choice(CONSULTANTS))


def day_of_calls(firm: Firm, day: date, rng: random.Random, count: int) -> list[Call]:
    calls: list[Call] = []
    picked = rng.choices(range(len(firm.clients)), firm.weights, k=count)
    for index in picked:
        client = firm.clients[index] if rng.random() >= 0.07 else None
        zone = ZoneInfo(firm.clients[index].timezone)
        calls.append(make_call(client, day, zone, rng))
    if day >= firm.big_from:
        big = firm.clients[0]
        calls += [make_call(big, day, ZoneInfo(big.timezone), rng) for _ in range(BIG_PER_DAY)]
    return calls


# ===== the ledger talkmeter would have written ==============================================


@dataclass
class ContractState:
    """One contract's running state while the history is generated."""

    free_by_day: dict[date, int] = field(default_factory=dict)
    prepaid_ms: int = 0
    days: dict[date, Usage] = field(default_factory=lambda: defaultdict(Usage))
    weeks: dict[date, Week] = field(default_factory=lambda: defaultdict(Week))
    months: dict[date, Usage] = field(default_factory=lambda: defaultdict(Usage))
    total: Usage = field(default_factory=Usage)


@dataclass
class Rows:
    conversations: list[tuple[Any, ...]] = field(default_factory=list)
    segments: list[tuple[Any, ...]] = field(default_factory=list)
    charges: list[tuple[Any, ...]] = field(default_factory=list)
    charge_days: list[tuple[Any, ...]] = field(default_factory=list)
    current: list[tuple[Any, ...]] = field(default_factory=list)
    usage_days: list[tuple[Any, ...]] = field(default_factory=list)
    usage_weeks: list[tuple[Any, ...]] = field(default_factory=list)
    usage_totals: list[tuple[Any, ...]] = field(default_factory=list)
    usage_months: list[tuple[Any, ...]] = field(default_factory=list)


COLUMNS = {
    "conversations": (
        "conversation_id", "pbx", "direction", "client_number", "client_number_raw", "line",
        "consultants", "started_at", "answered_at", "ended_at", "wait_ms", "talk_ms", "hold_ms",
        "estimated", "recorded_at", "client_id", "match_status", "line_day",
    ),
    "conversation_segments": ("conversation_id", "position", "consultant", "start_at", "end_at", "hold"),
    "charges": (
        "conversation_id", "contract_id", "client_id", "kind", "reason", "posted_at", "day", "talk_ms",
        "hold_ms", "excluded_ms", "free_ms", "prepaid_ms", "paid_ms", "billable_seconds", "amount",
        "currency", "over_quota", "short_call", "tier_changes",
    ),
    "charge_days": ("charge_id", "client_id", "day", "talk_ms", "free_ms", "prepaid_ms", "paid_ms"),
    "current_charges": (
        "client_id", "conversation_id", "contract_id", "started_at", "day", "talk_ms", "hold_ms",
        "excluded_ms", "free_ms", "prepaid_ms", "paid_ms", "billable_seconds", "amount", "currency",
        "over_quota", "short_call", "tier_changes", "days", "postings", "last_charge_id",
    ),
    "usage_days": (
        "client_id", "contract_id", "day", "talk_ms", "free_ms", "prepaid_ms", "paid_ms", "conversations",
        "billable_seconds", "amount",
    ),
    "usage_weeks": ("client_id", "contract_id", "week", "free_days", "free_ms"),
    "usage_months": (
        "client_id", "contract_id", "month", "talk_ms", "free_ms", "prepaid_ms", "paid_ms", "conversations",
        "billable_seconds", "amount",
    ),
    "usage_totals": (
        "client_id", "contract_id", "talk_ms", "free_ms", "prepaid_ms", "paid_ms", "conversations",
        "billable_seconds", "amount",
    ),
}  # fmt: skip


class History:
    """Generates the firm's history day by day and turns it into table rows."""

    def __init__(self, firm: Firm, rng: random.Random) -> None:
        self.firm, self.rng = firm, rng
        self.states = {client.client_id: ContractState() for client in firm.clients}
        self.next_conversation = 0
        self.next_charge = 1  # charges.charge_id is an identity: rows get 1, 2, ... in COPY order
        self.conversations = 0

    def days(self) -> Iterator[tuple[date, list[Call]]]:
        for offset in range(self.firm.days):
            day = self.firm.first_day + timedelta(days=offset)
            yield day, day_of_calls(self.firm, day, self.rng, PER_DAY)

    def add_day(self, day: date, calls: list[Call], rows: Rows) -> None:
        calls.sort(key=lambda call: call.started_ms)
        for call in calls:
            call.conversation_id = f"bench:{self.next_conversation:010d}"
            self.next_conversation += 1
            rows.conversations.append(_conversation_row(call))
            rows.segments += [
                (
                    call.conversation_id,
                    position,
                    call.consultant,
                    from_ms(i.start_ms),
                    from_ms(i.end_ms),
                    i.hold,
                )
                for position, i in enumerate(call.intervals)
            ]
        self.conversations += len(calls)
        by_client: dict[str, list[Call]] = defaultdict(list)
        for call in calls:
            if call.client is not None and call.intervals:
                by_client[call.client.client_id].append(call)
        charged: list[tuple[Call, Any]] = []
        for client_id, talks in by_client.items():
            client = talks[0].client
            assert client is not None
            state = self.states[client_id]
            prior = PriorUsage(
                {d: f for d, f in state.free_by_day.items() if d >= day - timedelta(days=7)}, state.prepaid_ms
            )
            by_id = {call.conversation_id: call for call in talks}
            rated = rate_contract(
                self.firm.contracts[client_id], client.timezone, [c.talk for c in talks], prior
            )
            charged += [(by_id[charge.conversation_id], charge) for charge in rated]
        charged.sort(key=lambda item: item[0].ended_ms)
        for call, charge in charged:
            assert call.client is not None
            self._post(call.client, call, charge, rows)
        for client in self.firm.clients:
            self._close_day(client, day, rows)

    def _post(self, client: Client, call: Call, charge: Any, rows: Rows) -> None:
        value = state_of(charge)
        contract_id = charge.contract_id
        ledger_rows: list[tuple[str, LedgerState]] = [("charge", value)]
        if value.free_ms >= 1_000 and self.rng.random() < 0.05:
            # Recorded first without the overlap that took a second of its free time.
            first = _move_free_to_paid(value)
            ledger_rows = [("charge", first), ("adjustment", difference(value, first))]
        for position, (kind, row) in enumerate(ledger_rows):
            posted = from_ms(call.ended_ms) + timedelta(seconds=1 + position * 60)
            rows.charges.append(
                (charge.conversation_id, contract_id, client.client_id, kind, "bench", posted, row.day,
                 row.talk_ms, row.hold_ms, row.excluded_ms, row.free_ms, row.prepaid_ms, row.paid_ms,
                 row.billable_seconds, row.amount, row.currency, row.over_quota, row.short_call,
                 json.dumps([{"at": at, "tier": tier} for at, tier in row.tier_changes]))
            )  # fmt: skip
            rows.charge_days += [
                (self.next_charge, client.client_id, d, *counts) for d, counts in sorted(row.days.items())
            ]
            self.next_charge += 1
        rows.current.append(
            (client.client_id, charge.conversation_id, contract_id, from_ms(call.started_ms), value.day,
             value.talk_ms,
             value.hold_ms, value.excluded_ms, value.free_ms, value.prepaid_ms, value.paid_ms,
             value.billable_seconds, value.amount, value.currency, value.over_quota, value.short_call,
             json.dumps([{"at": at, "tier": tier} for at, tier in value.tier_changes]),
             json.dumps({d.isoformat(): list(c) for d, c in sorted(value.days.items())}),
             len(ledger_rows), self.next_charge - 1)
        )  # fmt: skip
        state = self.states[client.client_id]
        for (_, d), usage in contribution(contract_id, value).items():
            state.days[d] += usage
        state.prepaid_ms += value.prepaid_ms

    def _close_day(self, client: Client, day: date, rows: Rows) -> None:
        state = self.states[client.client_id]
        usage = state.days.pop(day, None)
        contract_id = self.firm.contracts[client.client_id].contract_id
        if usage is None:
            return
        rows.usage_days.append(
            (client.client_id, contract_id, day, usage.talk_ms, usage.free_ms, usage.prepaid_ms,
             usage.paid_ms,
             usage.conversations, usage.billable_seconds, usage.amount)
        )  # fmt: skip
        state.total += usage
        state.months[day.replace(day=1)] += usage
        state.free_by_day[day] = usage.free_ms
        for old in [d for d in state.free_by_day if d < day - timedelta(days=8)]:
            del state.free_by_day[old]
        state.weeks[week_of(day)] += Week(1 if usage.free_ms > 0 else 0, usage.free_ms)

    def finish(self, rows: Rows) -> None:
        for client in self.firm.clients:
            state = self.states[client.client_id]
            contract_id = self.firm.contracts[client.client_id].contract_id
            rows.usage_months += [
                (client.client_id, contract_id, month, u.talk_ms, u.free_ms, u.prepaid_ms, u.paid_ms,
                 u.conversations, u.billable_seconds, u.amount)
                for month, u in sorted(state.months.items())
            ]  # fmt: skip
            rows.usage_weeks += [
                (client.client_id, contract_id, week, w.free_days, w.free_ms)
                for week, w in sorted(state.weeks.items())
            ]
            if state.total != Usage():
                t = state.total
                rows.usage_totals.append(
                    (client.client_id, contract_id, t.talk_ms, t.free_ms, t.prepaid_ms, t.paid_ms,
                     t.conversations,
                     t.billable_seconds, t.amount)
                )  # fmt: skip


def _move_free_to_paid(value: LedgerState) -> LedgerState:
    days = dict(value.days)
    key = next(day for day, counts in days.items() if counts[1] >= 1_000)
    talk, free, prepaid, paid = days[key]
    days[key] = (talk, free - 1_000, prepaid, paid + 1_000)
    return LedgerState(
        day=value.day, talk_ms=value.talk_ms, hold_ms=value.hold_ms, excluded_ms=value.excluded_ms,
        free_ms=value.free_ms - 1_000, prepaid_ms=value.prepaid_ms, paid_ms=value.paid_ms + 1_000,
        billable_seconds=value.billable_seconds + 1, amount=value.amount + Decimal("0.05"),
        currency=value.currency, over_quota=value.over_quota, short_call=value.short_call,
        tier_changes=value.tier_changes, days=days,
    )  # fmt: skip


def _conversation_row(call: Call) -> tuple[Any, ...]:
    talk = sum(i.ms for i in call.intervals)
    hold = sum(i.ms for i in call.intervals if i.hold)
    if call.client is not None:
        client_id, status = call.client.client_id, "matched"
    else:
        client_id, status = None, "withheld" if call.number is None else "unknown"
    answered = from_ms(call.intervals[0].start_ms) if call.intervals else None
    line_day = from_ms(call.started_ms).astimezone(LINE_ZONE).date()
    return (
        call.conversation_id, "bench", "inbound" if call.line else "outbound", call.number,
        (call.number or "anonymous").lstrip("+"), call.line, [call.consultant] if call.intervals else [],
        from_ms(call.started_ms), answered, from_ms(call.ended_ms), call.wait_ms, talk, hold, False,
        from_ms(call.ended_ms + 500), client_id, status, line_day,
    )  # fmt: skip


# ===== building the database ================================================================


async def build(admin: str, database: str, conversations: int, clients: int, seed: int) -> Firm:
    rng = random.Random(seed)
    firm = make_firm(conversations, clients, rng)
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{database}"')
    await conn.close()
    dsn = dsn_of(admin, database)
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    indexes = await _drop_secondary_indexes(conn)
    await conn.execute("SET session_replication_role = replica")  # no FK checks or triggers while loading
    await conn.copy_records_to_table(
        "clients", schema_name="talkmeter", records=[(c.client_id, c.name, c.timezone) for c in firm.clients],
        columns=("client_id", "name", "timezone"),
    )  # fmt: skip
    await conn.copy_records_to_table(
        "client_numbers", schema_name="talkmeter", columns=("client_id", "number"),
        records=[(c.client_id, n) for c in firm.clients for n in c.numbers],
    )  # fmt: skip
    for contract in firm.contracts.values():
        await store.save_contract(conn, contract)
    await conn.execute("DELETE FROM talkmeter.pending_rerates")
    await conn.close()

    history = History(firm, rng)
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4, setup=_replica)
    started = time.monotonic()
    rows = Rows()
    pending = 0
    for day, calls in history.days():
        history.add_day(day, calls, rows)
        pending += len(calls)
        if pending >= BATCH:
            await _copy(pool, rows)
            rows, pending = Rows(), 0
            done = history.conversations
            rate = done / (time.monotonic() - started)
            print(f"  loaded {done:>11,} conversations ({rate:,.0f}/s)", end="\r", flush=True)
    history.finish(rows)
    await _copy(pool, rows)
    await pool.close()
    print(f"  loaded {history.conversations:>11,} conversations in {time.monotonic() - started:,.0f} s")
    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    for sql in indexes:
        await conn.execute(sql)
    print(f"  indexes rebuilt in {time.monotonic() - started:,.0f} s")
    assert await conn.fetchval("SELECT max(charge_id) = count(*) FROM talkmeter.charges")
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('talkmeter.charges', 'charge_id'), $1)", history.next_charge - 1
    )
    started = time.monotonic()
    await conn.execute("VACUUM (ANALYZE)")
    print(f"  VACUUM ANALYZE in {time.monotonic() - started:,.0f} s")
    await _check_sample(conn, firm)
    await conn.execute(
        'COMMENT ON DATABASE "'
        + database
        + '" IS '
        + _literal(json.dumps({"conversations": conversations, "seed": seed}))
    )
    await conn.close()
    return firm


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _replica(conn: asyncpg.Connection) -> None:
    await conn.execute("SET session_replication_role = replica")


async def _copy(pool: asyncpg.Pool, rows: Rows) -> None:
    tables = {
        "conversations": rows.conversations, "conversation_segments": rows.segments, "charges": rows.charges,
        "charge_days": rows.charge_days, "current_charges": rows.current, "usage_days": rows.usage_days,
        "usage_weeks": rows.usage_weeks, "usage_totals": rows.usage_totals, "usage_months": rows.usage_months,
    }  # fmt: skip

    async def one(table: str, records: list[tuple[Any, ...]]) -> None:
        if records:
            async with pool.acquire() as conn:
                await conn.copy_records_to_table(
                    table, schema_name="talkmeter", records=records, columns=COLUMNS[table]
                )

    # charges first and alone: their identity values must follow the generation order.
    await one("charges", tables.pop("charges"))
    await asyncio.gather(*(one(table, records) for table, records in tables.items()))


async def _drop_secondary_indexes(conn: asyncpg.Connection) -> list[str]:
    """Drop the indexes no constraint needs (they are built once after the load); returns their DDL."""
    rows = await conn.fetch(
        """SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS ddl
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
            WHERE c.relnamespace = 'talkmeter'::regnamespace
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"""
    )
    for row in rows:
        await conn.execute(f"DROP INDEX {row['name']}")
    return [row["ddl"] for row in rows]


async def _check_sample(conn: asyncpg.Connection, firm: Firm) -> None:
    """The generated running state equals what the generated ledger sums to (a sample of clients)."""
    started = time.monotonic()
    sample = [firm.clients[0].client_id] + [c.client_id for c in random.Random(1).sample(firm.clients[1:], 5)]
    for client_id in sample:
        mismatches = await audit.check_client(conn, client_id)
        assert not mismatches, mismatches[:3]
    print(
        f"  check-ledger of {len(sample)} clients (bench-big among them): agrees "
        f"({time.monotonic() - started:.1f} s)"
    )


# ===== measuring ============================================================================


def quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


async def measure_recording(dsn: str, firm: Firm, count: int, run: str) -> None:
    """The same calls, shifted to each client, recorded alternately into (a) and (b): each pair
    meets the same machine, so the two differ by the contract's history only."""
    rng = random.Random(run)
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool, pool.acquire() as conn:
        fresh = Client(
            f"bench-fresh-{run}", "Fresh client", "Europe/Moscow", (f"+7491{rng.randrange(10**7):07d}",)
        )
        await store.save_client(conn, fresh)
        like_big = firm.contracts["bench-big"]
        await store.save_contract(conn, replace(like_big, contract_id=f"bench-kfresh-{run}",
                                                client_id=fresh.client_id))  # fmt: skip
        await conn.execute("DELETE FROM talkmeter.pending_rerates WHERE client_id = $1", fresh.client_id)
        big = firm.clients[0]
        history = await conn.fetchval(
            "SELECT count(*) FROM talkmeter.current_charges WHERE client_id = $1", big.client_id
        )
        day = await last_day(conn, big.client_id) + timedelta(days=1)
    calls: list[Call] = []
    for offset in range(math.ceil(count / BIG_PER_DAY)):
        calls += [
            make_call(big, day + timedelta(days=offset), ZoneInfo(big.timezone), rng)
            for _ in range(BIG_PER_DAY)
        ]
    calls.sort(key=lambda c: c.ended_ms)
    latencies: dict[str, list[float]] = {"a": [], "b": []}
    async with (
        asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool_a,
        asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool_b,
    ):
        for index, call in enumerate(calls[:count]):
            for label, client, pool in (("a", fresh, pool_a), ("b", big, pool_b)):
                data = replace(call, client=client, number=client.numbers[0],
                               conversation_id=f"bench-rec-{run}-{label}-{index}").as_dict()  # fmt: skip
                started = time.perf_counter()
                await record_conversation(pool, data)
                latencies[label].append((time.perf_counter() - started) * 1000)
    p99 = {}
    for label, title in (("a", "(a) fresh contract"), ("b", f"(b) contract with {history:,} conversations")):
        values = latencies[label]
        p99[label] = percentile(values, 0.99)
        print(f"recording {title:<42} p50 {percentile(values, 0.5):6.2f} ms  p99 {p99[label]:6.2f} ms  "
              f"({len(values)} recordings)")  # fmt: skip
    print(
        f"recording p99 ratio (b)/(a){'':<26} {p99['b'] / p99['a']:6.2f}x   target: p99 < 20 ms, ratio < 1.5"
    )


async def last_day(conn: asyncpg.Connection, client_id: str) -> date:
    """The local day of the client's last conversation (Moscow; the bench days are whole)."""
    moment = await conn.fetchval(
        "SELECT max(started_at) FROM talkmeter.conversations WHERE client_id = $1", client_id
    )
    return moment.astimezone(ZoneInfo("Europe/Moscow")).date() if moment else date(2026, 10, 31)


def _writer(dsn: str, payload: list[dict[str, Any]], barrier: Any, results: Any) -> None:
    quiet()

    async def go() -> None:
        async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
            barrier.wait()
            started = time.perf_counter()
            for data in payload:
                await record_conversation(pool, data)
            results.put((len(payload), time.perf_counter() - started))

    asyncio.run(go())


async def measure_concurrency(dsn: str, firm: Firm, writers: int, per_writer: int, run: str) -> None:
    rng = random.Random(run + "concurrent")
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool, pool.acquire() as conn:
        day = await last_day(conn, firm.clients[1].client_id) + timedelta(days=3)
    calls = []
    for index in range(writers * per_writer):
        client = firm.clients[rng.randrange(1, len(firm.clients))]
        call = make_call(client, day, ZoneInfo(client.timezone), rng)
        call.conversation_id = f"bench-par-{run}-{index}"
        calls.append(call)
    calls.sort(key=lambda c: c.ended_ms)
    payloads = [[c.as_dict() for c in calls[w::writers]] for w in range(writers)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(writers), context.Queue()
    processes = [context.Process(target=_writer, args=(dsn, p, barrier, results)) for p in payloads]
    for process in processes:
        process.start()
    outcomes = [results.get() for _ in processes]
    for process in processes:
        process.join()
    total = sum(count for count, _ in outcomes)
    elapsed = max(seconds for _, seconds in outcomes)
    print(
        f"recordings per second, {writers} writer processes{'':<13} {total / elapsed:8,.0f} /s  "
        f"({total} in {elapsed:.1f} s)"
    )


CHARGES = "SELECT * FROM talkmeter.conversation_charges"
DAILY = "SELECT * FROM talkmeter.daily_usage"
MONTHLY = "SELECT * FROM talkmeter.monthly_statement"
CLIENT_MONTH = " WHERE client_id = $1 AND day >= $2 AND day < $3"
VIEW_CASES = [
    ("conversation_charges, client-month (typical)", CHARGES + CLIENT_MONTH, "typical-month"),
    ("conversation_charges, client-month (bench-big)", CHARGES + CLIENT_MONTH, "big-month"),
    ("conversation_charges, one day (all clients)", CHARGES + " WHERE day = $1", "day"),
    ("daily_usage, client-month", DAILY + CLIENT_MONTH, "typical-month"),
    ("daily_usage, one day (all clients)", DAILY + " WHERE day = $1", "day"),
    ("monthly_statement, one client", MONTHLY + " WHERE client_id = $1 AND month = $2", "client-month1"),
    ("monthly_statement, the whole month", MONTHLY + " WHERE month = $1", "month"),
    ("line_quality, one day", "SELECT * FROM talkmeter.line_quality WHERE day = $1", "day"),
    ("line_quality, the month per line (README query)",
     "SELECT line, sum(offered), sum(abandoned), max(p90_wait_seconds) FROM talkmeter.line_quality "
     "WHERE day >= $1 AND day < $2 GROUP BY line", "month-range"),
    ("weekly_usage, one client", "SELECT * FROM talkmeter.weekly_usage WHERE client_id = $1", "typical"),
    ("client_contracts, all", "SELECT * FROM talkmeter.client_contracts", "none"),
    ("unmatched_conversations, whole queue", "SELECT * FROM talkmeter.unmatched_conversations", "none"),
]  # fmt: skip


async def measure_views(dsn: str, firm: Firm) -> None:
    """Each view five times: the median time to fetch the rows into Python, and the server's
    execution time (EXPLAIN ANALYZE), which leaves out sending and decoding them."""
    conn = await asyncpg.connect(dsn)
    typical, big = typical_client(firm).client_id, firm.clients[0].client_id
    month, next_month, day = date(2026, 10, 1), date(2026, 11, 1), date(2026, 10, 14)
    arguments: dict[str, tuple[Any, ...]] = {
        "typical-month": (typical, month, next_month),
        "big-month": (big, month, next_month),
        "day": (day,),
        "client-month1": (typical, month),
        "month": (month,),
        "month-range": (month, next_month),
        "typical": (typical,),
        "none": (),
    }
    for label, sql, kind in VIEW_CASES:
        args = arguments[kind]
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            rows = await conn.fetch(sql, *args)
            timings.append((time.perf_counter() - started) * 1000)
        plan = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, *args))
        server = plan[0]["Execution Time"]
        print(
            f"view {label:<50} {statistics.median(timings):8.1f} ms  "
            f"(server {server:.1f} ms, {len(rows):,} rows)"
        )
    await conn.close()


def typical_client(firm: Firm) -> Client:
    """A client of median size whose contract bills paid time (a rate and no prepaid package)."""
    paying = [
        c
        for c in firm.clients[1:]
        if (k := firm.contracts[c.client_id]).rate_per_minute and not k.prepaid_minutes
    ]
    return paying[len(paying) // 2 - len(paying) // 4]


NEW_RATE = "UPDATE talkmeter.contracts SET rate_per_minute = rate_per_minute + 1 WHERE contract_id = $1"


async def measure_rerate(dsn: str, firm: Firm, big: bool) -> None:
    client = typical_client(firm)
    contract = firm.contracts[client.client_id]
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:  # as `talkmeter rerate`
        async with pool.acquire() as conn:
            history = await conn.fetchval(
                "SELECT count(*) FROM talkmeter.current_charges WHERE client_id = $1", client.client_id
            )
            last = await last_day(conn, client.client_id)
            end = max(contract.valid_from, last - timedelta(days=30))
            await conn.fetchval("SELECT talkmeter.end_contract($1, $2)", contract.contract_id, end)
        await timed_rerate(
            pool, client.client_id, f"contract ended 30 days early ({history:,} conversations)"
        )
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE talkmeter.contracts SET valid_to = NULL WHERE contract_id = $1", contract.contract_id
            )
        await timed_rerate(pool, client.client_id, "contract reopened")
        # Three new rates in a row: one rerate on a shared machine is one draw of its noise.
        timings = []
        for _ in range(3):
            async with pool.acquire() as conn:
                await conn.execute(NEW_RATE, contract.contract_id)
            timings.append(await timed_rerate(pool, client.client_id, "new rate: the whole history"))
        median = statistics.median(timings)
        print(f"rerate {client.client_id}, new rate: the whole history, median of 3 {median:8.1f} ms")
        async with pool.acquire() as conn:
            mismatches = await audit.check_client(conn, client.client_id)
        print(
            f"check-ledger {client.client_id} after these rerates: "
            f"{'agrees' if not mismatches else mismatches[:2]}"
        )
        if big:
            async with pool.acquire() as conn:
                await conn.execute(
                    "UPDATE talkmeter.contracts SET rate_per_minute = rate_per_minute + 1 "
                    "WHERE contract_id = 'bench-kbig'"
                )
            await timed_rerate(pool, "bench-big", "new rate: the whole history")


async def timed_rerate(pool: asyncpg.Pool, client_id: str, what: str) -> float:
    started = time.perf_counter()
    summary = await rerate(pool, client_id)
    elapsed = (time.perf_counter() - started) * 1000
    print(f"rerate {client_id}, {what:<44} {elapsed:8.1f} ms  ({summary.postings:,} ledger rows)")
    return elapsed


async def settings_of(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    values = [
        await conn.fetchval(f"SHOW {name}") for name in ("shared_buffers", "work_mem", "effective_cache_size")
    ]
    size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
    await conn.close()
    return (
        f"PostgreSQL shared_buffers {values[0]}, work_mem {values[1]}, "
        f"effective_cache_size {values[2]}; database {size}"
    )


async def main_async(args: argparse.Namespace) -> None:
    quiet()
    database = args.database or f"talkmeter_bench_ledger_{args.conversations}"
    dsn = dsn_of(args.admin_dsn, database)
    rng_seed = args.seed
    if args.reuse:
        firm = make_firm(args.conversations, args.clients, random.Random(rng_seed))
        print(f"reusing {database}")
    else:
        print(f"building {database}: {args.conversations:,} conversations, {args.clients} clients")
        started = time.monotonic()
        firm = await build(args.admin_dsn, database, args.conversations, args.clients, rng_seed)
        print(f"  built in {time.monotonic() - started:,.0f} s")
    print(await settings_of(dsn))
    if args.build_only:
        return
    run = f"{int(time.time())}"
    try:
        if not args.views_only:
            await measure_recording(dsn, firm, args.recordings, run)
            await measure_concurrency(dsn, firm, 8, args.recordings // 4, run)
        await measure_views(dsn, firm)
        if not args.views_only:
            await measure_rerate(dsn, firm, args.rerate_big)
    finally:
        if not (args.keep or args.build_only):
            conn = await asyncpg.connect(args.admin_dsn)
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=1_000)
    parser.add_argument("--recordings", type=int, default=1_100, help="per recording scenario")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--database", help="default talkmeter_bench_ledger_<N>")
    parser.add_argument(
        "--admin-dsn", default=ADMIN_DSN, help="a superuser connection (builds use COPY as replica)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument(
        "--reuse", action="store_true", help="measure a database kept by an earlier --keep run"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build (and keep) the database, measure nothing"
    )
    parser.add_argument("--views-only", action="store_true")
    parser.add_argument("--rerate-big", action="store_true", help="also re-rate bench-big's whole history")
    main_args = parser.parse_args()
    asyncio.run(main_async(main_args))


if __name__ == "__main__":
    main()
