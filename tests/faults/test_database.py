"""PostgreSQL refusing connections, or going half-open, while calls go on.

The service talks to PostgreSQL through a TCP relay the test controls (`PgProxy`); what finally
arrived in the database is compared with the trace's truth.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from daemon.service import serve
from telephony.simulator import AmiSimulator, load_trace

from .harness import GUARD, SECRET, TRACES, PgProxy, compare, ledger, settings, truth

TRACE = "concurrent_20"


async def until_recorded(dsn: str, count: int, service: asyncio.Task[None]) -> None:
    async with asyncio.timeout(GUARD):
        while len(await ledger(dsn)) < count:
            if service.done():
                service.result()
                raise AssertionError("the service stopped on its own")
            await asyncio.sleep(0.05)  # polls the database: nothing tells us when a row lands


async def run_through_fault(db_dsn: str, tmp_path: Path, fault: str) -> list[str]:
    """Play the trace; once the first conversation is recorded, `fault` the database until the
    PBX has sent everything, then heal it. Returns the log events of the service."""
    expected = truth(TRACE)
    async with PgProxy(db_dsn) as proxy:
        trace = load_trace(TRACES / f"{TRACE}.ami")
        async with AmiSimulator(trace, secret=SECRET, speed=10) as sim:
            config = settings(sim.port, proxy.dsn, tmp_path, database_timeout=0.5)
            stop = asyncio.Event()
            with capture_logs() as logs:
                service = asyncio.create_task(serve(config, stop, stop_grace=2.0))
                await until_recorded(db_dsn, 1, service)
                if fault == "refuse":
                    await proxy.refuse()
                else:
                    proxy.stall()
                async with asyncio.timeout(GUARD):
                    await sim.finished.wait()  # every call ended while PostgreSQL was away
                await proxy.heal()
                await until_recorded(db_dsn, len(expected), service)
                stop.set()
                async with asyncio.timeout(GUARD):
                    await service
    result = compare(await ledger(db_dsn), expected)
    assert (result.lost, result.doubled) == ([], []) and result.worst <= 0.2, result.summary()
    return [entry["event"] for entry in logs]


async def test_postgresql_refusing_connections_during_calls_loses_nothing(
    db_dsn: str, tmp_path: Path
) -> None:
    events = await run_through_fault(db_dsn, tmp_path, "refuse")
    assert "writer.database_unavailable" in events


async def test_a_half_open_postgresql_is_noticed_logged_and_retried(db_dsn: str, tmp_path: Path) -> None:
    """Was: no command timeout on the pool; the writer waited for ever on a half-open link, and
    said nothing."""
    events = await run_through_fault(db_dsn, tmp_path, "stall")
    assert "database.stalled" in events and "writer.database_unavailable" in events
