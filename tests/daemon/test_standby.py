"""Two `talkmeter run` services following one PBX into one PostgreSQL, both alive (in one process).

The kill -9 tests of the standby set-up run real processes (tests/faults); this one checks the
steady state: each conversation is stored once, measured exactly, by whichever instance came first,
and the other instance's identical version changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from daemon.commands.replay import measure_capture
from daemon.metrics import Metrics
from daemon.service import Database, claim_state_directory, serve
from daemon.settings import ConfigError, Settings
from telephony.simulator import AmiSimulator, load_trace
from tests.standby import CountingDatabase, instance_settings

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "tests" / "traces"
SECRET = "standby-secret"
GUARD = 30.0

pytestmark = pytest.mark.db


async def test_both_instances_alive_store_each_conversation_once_as_measured(
    db_dsn: str, tmp_path: Path
) -> None:
    trace_path = TRACES / "concurrent_20.ami"
    expected = len(measure_capture(trace_path, Settings()))
    truth = json.loads(trace_path.with_suffix(".json").read_text())["truth"]["conversations"]
    async with AmiSimulator(load_trace(trace_path), secret=SECRET, speed=0, start_clients=2) as sim:
        stop = asyncio.Event()
        services = {name: CountingDatabase(db_dsn, expected) for name in ("pbx-a", "pbx-b")}
        metrics = {name: Metrics() for name in services}
        tasks = [
            asyncio.create_task(
                serve(
                    instance_settings(name, sim.port, db_dsn, tmp_path, SECRET),
                    stop,
                    database,
                    stop_grace=0.5,
                    metrics=metrics[name],
                )
            )
            for name, database in services.items()
        ]
        try:
            async with asyncio.timeout(GUARD):
                pending = {asyncio.create_task(database.done.wait()) for database in services.values()}
                while pending:
                    done, pending = await asyncio.wait(
                        pending | set(tasks), return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done & set(tasks):
                        raise AssertionError(f"a service stopped: {task.result()}")  # or raises why
                    pending -= set(tasks)
        finally:
            stop.set()
            async with asyncio.timeout(GUARD):
                await asyncio.gather(*tasks)
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch(
            "SELECT conversation_id, instance, estimated, talk_ms, client_number FROM talkmeter.conversations"
        )
        aside = await conn.fetchval("SELECT count(*) FROM talkmeter.conversation_versions")
    finally:
        await conn.close()
    assert len(rows) == expected and aside == 0
    assert not any(row["estimated"] for row in rows)
    assert {row["instance"] for row in rows} <= {"pbx-a", "pbx-b"}
    answered = sorted(row["talk_ms"] for row in rows if row["talk_ms"])
    assert answered == pytest.approx(
        sorted(c["talk_seconds"] * 1000 for c in truth if c["talk_seconds"]), abs=10
    )
    outcomes: dict[str, int] = {}
    for database in services.values():
        for result in database.results:
            outcomes[result.version] = outcomes.get(result.version, 0) + 1
    assert outcomes == {"first": expected, "identical": expected}
    reported = sum(
        m.registry.get_sample_value("talkmeter_conversation_versions_total", {"outcome": "identical"}) or 0
        for m in metrics.values()
    )
    assert reported == expected


async def test_two_instances_on_one_host_cannot_share_a_spool(db_dsn: str, tmp_path: Path) -> None:
    """A second talkmeter on the same spool_dir would resubmit and resume the first one's calls."""
    shared = tmp_path / "shared"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_THE_LOCK, str(shared / "default"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(GUARD):
            assert await holder.stdout.readline() == b"held\n"
        with pytest.raises(ConfigError, match=r"default is in use by talkmeter instance 'pbx-a' \(pid \d+\)"):
            await serve(
                Settings(
                    ami_port=9, ami_secret=SECRET, database_url=db_dsn, spool_dir=shared, instance="pbx-b"
                ),
                asyncio.Event(),
                Database(db_dsn),
            )
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        await holder.wait()
    with claim_state_directory(shared / "default", "pbx-b"):
        assert "pbx-b" in (shared / "default" / "lock").read_text()


HOLD_THE_LOCK = """
import sys
from pathlib import Path
from daemon.service import claim_state_directory
with claim_state_directory(Path(sys.argv[1]), "pbx-a"):
    print("held", flush=True)
    sys.stdin.read()
"""
