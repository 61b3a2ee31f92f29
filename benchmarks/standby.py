"""What a standby instance costs PostgreSQL: writes per conversation with one and with two instances.

Usage: .venv/bin/python benchmarks/standby.py [--copies N] [--trace PATH]

The real `concurrent_20` capture (20 concurrent queue calls), concatenated N times (default 5, each
copy with its own Uniqueids and later timestamps: N x 20 distinct calls), is replayed as fast as
possible by the AMI simulator and followed by `talkmeter run` services (in this process, each with
its own connection pool, spool and instance name), first one, then two following the same
simulated PBX. Each run writes into a fresh database of its own (created here on the PostgreSQL of
TALKMETER_TEST_DATABASE_URL, as the tests' are, and dropped after), where every caller is a client
with a contract (free minutes, prepaid, paid), so that every conversation is rated.

Printed per conversation, from PostgreSQL's own counters for that database (pg_stat_database and
pg_stat_user_tables, read once every connection is closed): transactions committed (the connection
pool's reset when a connection is given back is one of them), rows inserted, updated and deleted,
and the rows written per table; then what the second instance added.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import date
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import asyncpg  # noqa: E402
import structlog  # noqa: E402
from pipeline import build_stream  # noqa: E402

from accounting import store  # noqa: E402
from accounting.contracts import Client, Contract  # noqa: E402
from accounting.migrate import migrate  # noqa: E402
from daemon.metrics import Metrics  # noqa: E402
from daemon.service import Database, serve  # noqa: E402
from daemon.settings import Settings  # noqa: E402
from telephony.simulator import AmiSimulator, Trace, parse_trace  # noqa: E402
from tests.db import admin, dsn_for, unique_name  # noqa: E402

SECRET = "bench"
GUARD = 300.0
COUNTERS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted")


class Counting(Database):
    """The real store; `done` is set after `expected` conversations went through it."""

    def __init__(self, dsn: str, expected: int) -> None:
        super().__init__(dsn)
        self.expected, self.count, self.done = expected, 0, asyncio.Event()

    async def record(self, conversation: dict[str, Any]) -> Any:
        result = await super().record(conversation)
        self.count += 1
        if self.count >= self.expected:
            self.done.set()
        return result


async def prepare(dsn: str, numbers: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        for index, number in enumerate(sorted(set(numbers))):
            client = f"client{index:03d}"
            await store.save_client(conn, Client(client, client, "Europe/Moscow", (number,)))
            await store.save_contract(conn, contract_for(client))
    finally:
        await conn.close()


def contract_for(client_id: str) -> Contract:
    return Contract(
        contract_id=f"{client_id}-2026",
        client_id=client_id,
        valid_from=date(2020, 1, 1),
        free_daily_minutes=1,
        prepaid_minutes=2,
        rate_per_minute=Decimal("2.50"),
        currency="RUB",
        overage="bill",
    )


async def counters(dsn: str) -> tuple[dict[str, int], dict[str, int]]:
    """The database's counters and the rows inserted per table, once they stop moving (backends
    report at exit, a moment after their connection closes)."""
    conn = await asyncpg.connect(dsn)
    try:
        previous = None
        deadline = time.monotonic() + 10.0
        while True:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            row = await conn.fetchrow(
                f"SELECT {', '.join(COUNTERS)} FROM pg_stat_database WHERE datname = current_database()"
            )
            tables = await conn.fetch(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS writes FROM pg_stat_user_tables "
                "WHERE schemaname = 'talkmeter'"
            )
            now = (
                {name: int(row[name]) for name in COUNTERS},
                {t["relname"]: int(t["writes"]) for t in tables},
            )
            if now == previous or time.monotonic() > deadline:
                return now
            previous = now
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def one_run(trace: Trace, expected: int, numbers: list[str], instances: int) -> dict[str, Any]:
    name = unique_name("tm_bench_standby")
    await admin(f'CREATE DATABASE "{name}"')
    dsn = dsn_for(name)
    try:
        await prepare(dsn, numbers)
        before, tables_before = await counters(dsn)
        with TemporaryDirectory() as spool:
            async with AmiSimulator(trace, secret=SECRET, speed=0, start_clients=instances) as simulator:
                stop = asyncio.Event()
                databases = [Counting(dsn, expected) for _ in range(instances)]
                started = time.perf_counter()
                services = [
                    asyncio.create_task(
                        serve(
                            Settings(
                                ami_port=simulator.port,
                                ami_secret=SECRET,
                                database_url=dsn,
                                spool_dir=Path(spool) / f"instance-{index}",
                                instance=f"instance-{index}",
                            ),
                            stop,
                            database,
                            stop_grace=1.0,
                            metrics=Metrics(),
                        )
                    )
                    for index, database in enumerate(databases)
                ]
                try:
                    async with asyncio.timeout(GUARD):
                        await asyncio.gather(*(database.done.wait() for database in databases))
                    elapsed = time.perf_counter() - started
                finally:
                    stop.set()
                    await asyncio.gather(*services, return_exceptions=True)
        after, tables_after = await counters(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM talkmeter.conversations")
        finally:
            await conn.close()
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {
        "instances": instances,
        "stored": stored,
        "elapsed": elapsed,
        **{key: after[key] - before[key] for key in COUNTERS},
        "tables": {t: tables_after[t] - tables_before.get(t, 0) for t in tables_after},
    }


def report(run: dict[str, Any], conversations: int) -> None:
    per = {key: run[key] / conversations for key in COUNTERS}
    print(
        f"{run['instances']} instance(s): {run['stored']} conversations stored, "
        f"{per['xact_commit']:.2f} transactions, {per['tup_inserted']:.2f} rows inserted, "
        f"{per['tup_updated']:.2f} updated, {per['tup_deleted']:.2f} deleted per conversation "
        f"({run['elapsed']:.1f} s to record them all)"
    )
    written = {table: n / conversations for table, n in sorted(run["tables"].items()) if n}
    print(
        "    rows written per conversation, by table: "
        + ", ".join(f"{t} {n:.2f}" for t, n in written.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=5, help="times the trace is repeated (default 5)")
    parser.add_argument("--trace", type=Path, default=ROOT / "tests" / "traces" / "concurrent_20.ami")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    stream, _ = build_stream(args.trace, args.copies)
    trace = parse_trace(stream)
    numbers = sorted(
        {
            line.split(b": ", 1)[1].decode()
            for line in stream.split(b"\r\n")
            if line.startswith(b"CallerIDNum: +")
        }
    )
    conversations = 20 * args.copies
    print(f"standby cost: {args.trace.name} x{args.copies} ({conversations} conversations), speed 0")
    alone = asyncio.run(one_run(trace, conversations, numbers, 1))
    report(alone, conversations)
    pair = asyncio.run(one_run(trace, conversations, numbers, 2))
    report(pair, conversations)
    extra = {key: (pair[key] - alone[key]) / conversations for key in COUNTERS}
    print(
        f"the second instance adds per conversation: {extra['xact_commit']:.2f} transactions, "
        f"{extra['tup_inserted'] + extra['tup_updated'] + extra['tup_deleted']:.2f} rows written"
    )


if __name__ == "__main__":
    main()
