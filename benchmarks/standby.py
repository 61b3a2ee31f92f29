"""The standby set-up's figures: talk lost per kill -9 with one instance and with two, and what
the second instance costs PostgreSQL.

Usage: .venv/bin/python benchmarks/standby.py [--seeds N] [--copies N] [--trace PATH]

1. Talk lost per kill -9. `concurrent_20` and `long_call` are replayed at 10x by the AMI simulator,
   followed by real `talkmeter run` processes (the fault harness of the test suite,
   tests/faults/harness.py) into a database of their own. In each run one talkmeter is killed five
   times, once in each fifth of the trace, and started again after 1 to 8 s of trace time (from a
   seeded RNG: seeds 1..N, the same kills with one instance and with two). The PBX goes on while it
   is dead, as a real one does. The ledger is compared, conversation by conversation, with what
   talkmeter measures on the trace uninterrupted (`replay --dry-run`): the talk lost is what the
   conversations in the ledger miss, plus the whole talk of those missing from it; the largest
   difference of one call from the traces' SIP truth is printed too.
2. What the second instance costs PostgreSQL. The real `concurrent_20` capture, concatenated N times
   (default 5, each copy with its own Uniqueids and later timestamps), is replayed as fast as
   possible and followed by the service (in this process, with its own pool, spool and instance
   name), first one, then two following the same simulated PBX, each time into a fresh database
   where every caller is a client with a contract (free minutes, prepaid, paid), so that every
   conversation is rated. Printed per conversation, from PostgreSQL's own counters for that
   database (pg_stat_database and pg_stat_user_tables, read once every connection is closed):
   transactions committed (the connection pool's reset when a connection is given back is one of
   them), rows inserted, updated and deleted, and the rows written per table; then what the second
   instance added, and the notifications claimed (the same number: none sent twice). Once with the
   alerts off, once on (their call-start notices and the board of quota_now; no thresholds).

Every database is created on the PostgreSQL of TALKMETER_TEST_DATABASE_URL, as the tests' are,
and dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import asyncpg  # noqa: E402
import structlog  # noqa: E402
from faults import database, workdir  # noqa: E402
from pipeline import build_stream  # noqa: E402

from accounting.conversations import parse_conversation  # noqa: E402
from daemon.commands.replay import measure_capture  # noqa: E402
from daemon.metrics import Metrics  # noqa: E402
from daemon.service import Database, serve  # noqa: E402
from daemon.settings import Settings  # noqa: E402
from telephony.simulator import AmiSimulator, Trace, TraceEvent, parse_trace  # noqa: E402
from tests.faults.harness import Harness, callers_are_clients, compare, ledger, truth  # noqa: E402

SECRET = "bench"
GUARD = 300.0
COUNTERS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted")


KILLS = 5
DOWN = (1.0, 8.0)  # seconds of trace time a killed talkmeter stays down


# --- 1. talk lost per kill -9 -----------------------------------------------------------------------


def kill_plan(events: list[TraceEvent], rng: random.Random) -> list[tuple[int, int]]:
    """(events sent when it is killed, events sent when it is started again), once in each fifth."""
    times = [event.at for event in events]
    first, last = times[0], times[-1]
    plan = []
    for kill in range(KILLS):
        low, high = first + (last - first) * kill / KILLS, first + (last - first) * (kill + 1) / KILLS
        at = rng.uniform(low, (low + high) / 2)
        back = min(at + rng.uniform(*DOWN), high)
        plan.append((bisect.bisect_left(times, at) + 1, bisect.bisect_left(times, back) + 1))
    return plan


@dataclass
class Losses:
    """The ledger after a run against what an uninterrupted talkmeter measures (milliseconds)."""

    lost_ms: int = 0  # talk missing from the ledger (whole conversations included)
    added_ms: int = 0  # talk the ledger has beyond the measurement
    missing: int = 0  # conversations not in the ledger
    doubled: int = 0  # conversations in it twice (or not in the measurement)
    estimated: int = 0  # conversations kept flagged estimated
    worst_vs_truth: float = 0.0  # the largest difference from the SIP truth, seconds, of one call


def measured(trace: str) -> dict[str, int]:
    """Talk per conversation id as talkmeter measures the trace uninterrupted (`replay --dry-run`)."""
    conversations = measure_capture(ROOT / "tests" / "traces" / f"{trace}.ami", Settings())
    return {c.conversation_id: parse_conversation(c.to_json()).talk.talk_ms for c in conversations}


async def kill_run(trace: str, seed: int, instances: int, baseline: dict[str, int]) -> Losses:
    rng = random.Random(seed)
    async with database() as dsn:
        with workdir() as work:
            async with Harness(trace, dsn, work, instances=instances) as harness:
                harness.simulator.pause_when_alone = False  # the PBX goes on while a talkmeter is dead
                victim = harness.daemons[rng.randrange(instances)]
                plan = kill_plan(harness.trace.events, rng)
                await harness.start()
                for kill_at, back_at in plan:
                    await harness.simulator.reached(kill_at)
                    victim.kill()
                    await victim.exited()
                    await harness.simulator.reached(back_at)
                    await victim.start()
                    await victim.wait_for_log("pipeline.resync", since=len(victim.lines))
                await harness.replayed()
                for daemon in harness.daemons:
                    await daemon.stop()  # SIGTERM: everything read is written
            rows = await ledger(dsn)
    losses = Losses(worst_vs_truth=compare(rows, truth(trace)).worst)
    stored = {row["conversation_id"]: row for row in rows}
    for conversation_id, talk_ms in baseline.items():
        row = stored.pop(conversation_id, None)
        if row is None:
            losses.missing += 1
            losses.lost_ms += talk_ms
            continue
        losses.lost_ms += max(0, talk_ms - row["talk_ms"])
        losses.added_ms += max(0, row["talk_ms"] - talk_ms)
        losses.estimated += row["estimated"]
    losses.doubled = len(stored)
    return losses


async def kills(seeds: int) -> None:
    print(
        f"1. talk lost per kill -9 ({KILLS} kills per run, each {DOWN[0]:g} to {DOWN[1]:g} s down, "
        f"seeds 1..{seeds}, 10x replay), against an uninterrupted talkmeter's measurement"
    )
    for trace in ("concurrent_20", "long_call"):
        baseline = measured(trace)
        for instances in (1, 2):
            runs = [await kill_run(trace, seed, instances, baseline) for seed in range(1, seeds + 1)]
            per_kill = [run.lost_ms / 1000 / KILLS for run in runs]
            print(
                f"   {trace}, {instances} instance(s): talk lost per kill {statistics.mean(per_kill):.3f} s "
                f"(per run: {', '.join(f'{value:.3f}' for value in per_kill)}); talk added "
                f"{sum(run.added_ms for run in runs) / 1000:.3f} s; conversations lost "
                f"{sum(run.missing for run in runs)}, doubled {sum(run.doubled for run in runs)}, "
                f"left estimated {sum(run.estimated for run in runs)}; worst call against the SIP truth "
                f"{max(run.worst_vs_truth for run in runs):.3f} s"
            )


# --- 2. what the second instance costs PostgreSQL ----------------------------------------------------


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


async def one_run(
    trace: Trace, expected: int, numbers: list[str], instances: int, alerts: bool
) -> dict[str, Any]:
    async with database() as dsn:
        await callers_are_clients(dsn, numbers)
        before, tables_before = await counters(dsn)
        with workdir() as spool:
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
                                spool_dir=spool / f"instance-{index}",
                                instance=f"instance-{index}",
                                alerts={"enabled": alerts},
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
            notifications = await conn.fetchval("SELECT count(*) FROM talkmeter.notifications")
        finally:
            await conn.close()
    return {
        "instances": instances,
        "stored": stored,
        "notifications": notifications,
        "elapsed": elapsed,
        **{key: after[key] - before[key] for key in COUNTERS},
        "tables": {t: tables_after[t] - tables_before.get(t, 0) for t in tables_after},
    }


def report(run: dict[str, Any], conversations: int) -> None:
    per = {key: run[key] / conversations for key in COUNTERS}
    print(
        f"      {run['instances']} instance(s): {run['stored']} conversations stored, "
        f"{per['xact_commit']:.2f} transactions, {per['tup_inserted']:.2f} rows inserted, "
        f"{per['tup_updated']:.2f} updated, {per['tup_deleted']:.2f} deleted per conversation "
        f"({run['elapsed']:.1f} s to record them all)"
    )
    written = {table: n / conversations for table, n in sorted(run["tables"].items()) if n}
    print(
        "         rows written per conversation, by table: "
        + ", ".join(f"{t} {n:.2f}" for t, n in written.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="kill -9 runs per trace and set-up (default 3)")
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
    asyncio.run(kills(args.seeds))
    conversations = 20 * args.copies
    print(f"2. what the second instance costs PostgreSQL: {args.trace.name} x{args.copies} "
          f"({conversations} conversations), speed 0")  # fmt: skip
    for alerts in (False, True):
        print(f"   alerts {'on (call-start notices, the board of quota_now)' if alerts else 'off'}:")
        alone = asyncio.run(one_run(trace, conversations, numbers, 1, alerts))
        report(alone, conversations)
        pair = asyncio.run(one_run(trace, conversations, numbers, 2, alerts))
        report(pair, conversations)
        extra = {key: (pair[key] - alone[key]) / conversations for key in COUNTERS}
        print(
            f"      the second instance adds per conversation: {extra['xact_commit']:.2f} transactions, "
            f"{extra['tup_inserted'] + extra['tup_updated'] + extra['tup_deleted']:.2f} rows written; "
            f"notifications claimed: {alone['notifications']} with one, {pair['notifications']} with two"
        )


if __name__ == "__main__":
    main()
