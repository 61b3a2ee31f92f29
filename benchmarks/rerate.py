"""Where a whole-history rerate spends its time, measured again and again on the same ledger.

Usage: .venv/bin/python benchmarks/rerate.py [--database talkmeter_bench_ledger_10000000]
       [--client bench-c0257] [--runs 7] [--timeline]

It needs a database kept by `benchmarks/ledger.py --keep` (its typical client is bench-c0257 at
10M). Each run raises the client's rate by one in a transaction, re-rates the client's whole
history as `talkmeter rerate` does (a second connection reading ahead), and rolls back: the
ledger is the same for every run, so the runs compare. It prints each run's time, the time
spent in each step (steps of different windows overlap, so they add up to more than the run),
the process's CPU time (Python's share: the rest is PostgreSQL and waiting), and the median;
with --timeline, when each step of the last run started and ended, on the main thread (M) or in
the rating thread (T).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from accounting import ledger, store  # noqa: E402

STORE_STEPS = ("load_talks", "load_current", "load_usage", "post", "add_usage", "set_match_statuses")
LEDGER_STEPS = ("_open", "_plan", "_apply")


class Steps:
    """Wraps the rerate's steps to record when each ran and on which thread."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float, str]] = []

    def wrap(self, module: Any, name: str) -> None:
        function = getattr(module, name)
        record = self.events.append

        def where() -> str:
            return "M" if threading.current_thread() is threading.main_thread() else "T"

        wrapper: Callable[..., Any]
        if asyncio.iscoroutinefunction(function):

            @functools.wraps(function)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    record((name, started, time.perf_counter(), where()))

        else:

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    record((name, started, time.perf_counter(), where()))

        setattr(module, name, wrapper)


async def one_run(dsn: str, client_id: str, steps: Steps) -> tuple[float, float, int]:
    conn = await asyncpg.connect(dsn)
    reader = await asyncpg.connect(dsn)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute(
            "UPDATE talkmeter.contracts SET rate_per_minute = rate_per_minute + 1 WHERE client_id = $1",
            client_id,
        )
        steps.events.clear()
        started, cpu = time.perf_counter(), time.process_time()
        posted, _ = await ledger._rerate_client(conn, client_id, reader)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await transaction.rollback()
        return elapsed * 1000, cpu * 1000, posted
    finally:
        await reader.close()
        await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    dsn = f"postgresql://{args.user}@{args.host}/{args.database}"
    steps = Steps()
    for name in STORE_STEPS:
        steps.wrap(store, name)
    for name in LEDGER_STEPS:
        steps.wrap(ledger, name)
    times, cpus = [], []
    for run in range(args.runs):
        elapsed, cpu, posted = await one_run(dsn, args.client, steps)
        times.append(elapsed)
        cpus.append(cpu)
        spent: dict[str, float] = defaultdict(float)
        for name, start, end, _ in steps.events:
            spent[name] += (end - start) * 1000
        by_step = ", ".join(
            f"{name} {ms:.0f}" for name, ms in sorted(spent.items(), key=lambda item: -item[1])
        )
        print(f"run {run + 1}: {elapsed:7.0f} ms, CPU {cpu:5.0f} ms, {posted:,} rows; {by_step}")
    print(
        f"whole-history rerate of {args.client}: median {statistics.median(times):.0f} ms "
        f"(min {min(times):.0f}, max {max(times):.0f}) over {args.runs} runs; "
        f"CPU of this process median {statistics.median(cpus):.0f} ms"
    )
    if args.timeline:
        origin = min(start for _, start, _, _ in steps.events)
        for name, start, end, thread in sorted(steps.events, key=lambda event: event[1]):
            print(f"  {thread} {name:20} {1000 * (start - origin):7.0f} -> {1000 * (end - origin):7.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="talkmeter_bench_ledger_10000000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--client", default="bench-c0257", help="the typical client at 10M")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--timeline", action="store_true")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
