"""What talkmeter loses under faults: the figures behind "nothing lost" (prints, asserts nothing).

Usage: .venv/bin/python benchmarks/faults.py [--seeds N] [--quick]

Every scenario runs real `talkmeter run` processes (or the service in this process) against the AMI
simulator and a PostgreSQL database of its own (created from the migrations, dropped after), and
compares the ledger with the traces' SIP truth (tests/traces/*.json). It uses the fault harness of
the test suite (tests/faults/harness.py). Figures:

1. kill -9 at random moments (seeded: seeds 1..N, 5 kills each), concurrent_20 and long_call at 10x:
   talk lost per kill (trace seconds, all calls together, and the worst single call), conversations
   lost or doubled;
2. conversations lost or doubled under every other fault: PostgreSQL refusing, PostgreSQL half-open,
   the spool's disk full (checkpoint first, spool append first), a torn spool, malformed spool and
   checkpoint files, hostile Timestamps and caller IDs, 10 MB garbage lines on the AMI link;
3. peak RSS (VmHWM) of `talkmeter run` following concurrent_20, without and with 4 x 10 MB of
   garbage on the link;
4. how long a task's death takes to stop the service: from the `service.task_died` line to the
   process's exit, and from the disk filling up to the exit (checkpoint interval 0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accounting.migrate import migrate  # noqa: E402
from daemon.journal import encode  # noqa: E402
from daemon.logging import configure_logging  # noqa: E402
from daemon.service import Checkpoints  # noqa: E402
from daemon.writer import Spool  # noqa: E402
from telephony.simulator import parse_trace  # noqa: E402
from tests.db import admin, dsn_for, unique_name  # noqa: E402
from tests.faults.harness import (  # noqa: E402
    Comparison,
    Harness,
    PgProxy,
    compare,
    full_disk,
    hostile,
    ledger,
    serve_until_recorded,
    truth,
)

KILLS = 5


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    name = unique_name("tm_bench_faults")
    await admin(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(dsn_for(name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield dsn_for(name)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def workdir() -> Any:
    with tempfile.TemporaryDirectory(prefix="talkmeter-faults-") as path:
        yield Path(path)


# --- 1. kill -9 ------------------------------------------------------------------------------------


async def kill_run(trace: str, seed: int) -> tuple[Comparison, int]:
    rng = random.Random(seed)
    async with database() as dsn:
        with workdir() as work:
            async with Harness(trace, dsn, work) as harness:
                moments = sorted(rng.sample(range(1, len(harness.trace.events)), KILLS))
                await harness.start()
                for moment in moments:
                    await harness.daemon.wait_for_log("pipeline.resync")
                    await harness.simulator.reached(moment)
                    await harness.kill_and_restart()
                await harness.replayed()
                rows = await _recorded_or_what_arrived(harness, len(truth(trace)))
    return compare(rows, truth(trace)), KILLS


async def _recorded_or_what_arrived(harness: Harness, count: int) -> list[asyncpg.Record]:
    try:
        return await harness.recorded(count)
    except TimeoutError:
        return await ledger(harness.dsn)


# --- 2. every other fault ---------------------------------------------------------------------------


async def pg_fault(kind: str) -> Comparison:
    expected = truth("concurrent_20")
    async with database() as dsn, PgProxy(dsn) as proxy:
        with workdir() as work:
            async with Harness(
                "concurrent_20", proxy.dsn, work, settings={"database_timeout": 0.5}
            ) as harness:
                await harness.start()
                await harness.daemon.wait_for_log("conversation.recorded")
                if kind == "refused":
                    await proxy.refuse()
                else:
                    proxy.stall()
                await harness.replayed()
                await proxy.heal()
                await _recorded_or_what_arrived(harness, len(expected))
            rows = await ledger(dsn)
    return compare(rows, expected)


async def disk_full(first: str) -> tuple[Comparison, float, float]:
    """(result, task_died -> exit seconds, disk full -> exit seconds)."""
    expected = truth("concurrent_20")
    interval = {"checkpoint": 0.5, "spool": 60.0}[first]
    async with database() as dsn:
        with workdir() as work:
            async with Harness(
                "concurrent_20", dsn, work, settings={"checkpoint_interval": interval}
            ) as harness:
                directory = harness.spool_of(0)
                files = [Checkpoints(directory).temporary, Spool(directory).temporary]
                if first == "spool":
                    files.append(Spool(directory).path)
                with full_disk(work / "spool-0", files, now=False) as disk:
                    await harness.start()
                    await harness.daemon.wait_for_log(
                        "conversation.recorded" if first == "checkpoint" else "pipeline.resync"
                    )
                    filled = time.time()
                    disk.fill()
                    await harness.daemon.exited()
                    exited = time.time()
                    (death,) = harness.daemon.events("service.task_died")
                    died = datetime.fromisoformat(death["timestamp"]).timestamp()
                    disk.free()
                    await harness.start()
                    rows = await _recorded_or_what_arrived(harness, len(expected))
                    await harness.replayed()
    return compare(rows, expected), exited - died, exited - filled


async def in_process(
    name: str, prepare: Callable[[Path], None] | None, data: bytes | None = None, *, renumbered: bool = False
) -> Comparison:
    """The service in this process on trace `name` (or its hostile `data`). `renumbered`: the
    caller ID was destroyed on purpose, so rows are matched to the truth in start order."""
    expected = truth(name)
    async with database() as dsn:
        with workdir() as work:
            if prepare is not None:
                prepare(work / "default")
            trace = parse_trace(data) if data is not None else name
            await serve_until_recorded(trace, dsn, work, count=len(expected))
            rows: list[Any] = await ledger(dsn)
    if renumbered and len(rows) == len(expected):
        rows = [
            {**row, "client_number": true["client_number"]} for row, true in zip(rows, expected, strict=True)
        ]
    return compare(rows, expected)


def torn_spool(directory: Path) -> None:
    directory.mkdir(parents=True)
    earlier = {"conversation_id": "default:earlier"}
    (directory / "pending.records").write_bytes(encode(earlier)[:20])


def malformed_files(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "pending.jsonl").write_bytes(b'[1, 2]\n{}\n{"conversation_id": "\xff"}\n')
    (directory / "open.json").write_bytes(b'[1, {"uniqueid": "1.1"}]')


async def garbage(with_garbage: bool) -> tuple[Comparison, int]:
    """(result, peak RSS in kB) of one talkmeter following concurrent_20."""
    expected = truth("concurrent_20")
    async with database() as dsn:
        with workdir() as work:
            async with Harness("concurrent_20", dsn, work) as harness:
                await harness.start()
                await harness.daemon.wait_for_log("pipeline.resync")
                events = len(harness.trace.events)
                if with_garbage:
                    for n, end in enumerate([b"\r\n", b"", b"\r\n", b""], 1):
                        await harness.simulator.reached(events * n // 5)
                        harness.simulator.send_raw(b"\xff" * 10_000_000 + end)
                rows = await _recorded_or_what_arrived(harness, len(expected))
                await harness.replayed()
                assert harness.daemon.process is not None
                peak = peak_rss_kb(harness.daemon.process.pid)
    return compare(rows, expected), peak


def peak_rss_kb(pid: int) -> int:
    """VmHWM of a process (kB): its peak resident memory so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


# --- the report --------------------------------------------------------------------------------------


def line(label: str, value: str) -> None:
    print(f"{label:<62} {value}", flush=True)


def verdict(result: Comparison) -> str:
    return f"lost {len(result.lost)}, doubled {len(result.doubled)}, worst talk error {result.worst:.3f} s"


async def run(seeds: int, quick: bool) -> None:
    configure_logging("error")
    print("1. kill -9 at random moments (10x replay, checkpoint every 5 s of trace time)")
    for trace in ("concurrent_20", "long_call"):
        lost = doubled = 0
        per_kill, worst = [], 0.0
        for seed in range(1, seeds + 1):
            result, kills = await kill_run(trace, seed)
            lost, doubled = lost + len(result.lost), doubled + len(result.doubled)
            per_kill.append(result.talk_lost / kills)
            worst = max(worst, result.worst)
        line(
            f"   {trace}: {seeds} runs x {KILLS} kills",
            f"talk lost per kill {statistics.mean(per_kill):.2f} s (max {max(per_kill):.2f}), "
            f"worst call {worst:.2f} s; lost {lost}, doubled {doubled}",
        )
    print("2. conversations lost or doubled under every other fault")
    scenarios: list[tuple[str, Callable[[], Awaitable[Comparison]]]] = [
        ("PostgreSQL refusing connections during calls", lambda: pg_fault("refused")),
        ("PostgreSQL half-open during calls", lambda: pg_fault("half-open")),
        ("torn spool at start", lambda: in_process("inbound_answered", torn_spool)),
        ("malformed spool and checkpoint files at start", lambda: in_process("hold", malformed_files)),
        ("Timestamp nan on a BridgeEnter", lambda: in_process("long_call", None, hostile(
            "long_call", "BridgeEnter", "PJSIP/trunk-0000006f", "Timestamp", "nan"))),
        ("Timestamp inf on a Hangup", lambda: in_process("long_call", None, hostile(
            "long_call", "Hangup", "PJSIP/trunk-0000006f", "Timestamp", "inf"))),
        ("caller ID with a NUL byte", lambda: in_process("inbound_answered", None, hostile(
            "inbound_answered", "Newchannel", "PJSIP/trunk-00000000", "CallerIDNum", "+74951234567\x00"))),
        ("caller ID of 500 KB", lambda: in_process("inbound_answered", None, hostile(
            "inbound_answered", "Newchannel", "PJSIP/trunk-00000000", "CallerIDNum", "7" * 500_000),
            renumbered=True)),
    ]  # fmt: skip
    for label, scenario in scenarios:
        line(f"   {label}", verdict(await scenario()))
    deaths, fills = [], []
    for first in ("checkpoint", "spool"):
        for _ in range(1 if quick else 3):
            result, died, filled = await disk_full(first)
            deaths.append(died)
            fills.append(filled)
        line(f"   spool disk full ({first} fails first), then freed", verdict(result))
    clean, clean_rss = await garbage(False)
    dirty, dirty_rss = await garbage(True)
    line("   4 x 10 MB garbage lines on the AMI link", verdict(dirty))
    print("3. peak RSS of talkmeter run (VmHWM), concurrent_20")
    line("   without garbage", f"{clean_rss / 1024:.1f} MB ({verdict(clean)})")
    line("   with 4 x 10 MB garbage lines", f"{dirty_rss / 1024:.1f} MB")
    print("4. a task's death (disk full) to the process's exit")
    line("   service.task_died -> exit", f"median {statistics.median(deaths):.3f} s, max {max(deaths):.3f} s")
    line(
        "   disk full -> exit (checkpoint every 0.5 s)",
        f"median {statistics.median(fills):.3f} s, max {max(fills):.3f} s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="kill -9 runs per trace (default 3)")
    parser.add_argument("--quick", action="store_true", help="one disk-full run per case instead of three")
    args = parser.parse_args()
    asyncio.run(run(args.seeds, args.quick))


if __name__ == "__main__":
    main()
