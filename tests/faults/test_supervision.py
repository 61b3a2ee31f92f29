"""Supervision that cannot hang: a task's death stops the service, a stop that hangs is forced."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.service import Checkpoints, Database, _close_alerts, serve
from daemon.supervision import StopForced, TaskDied, cancel_within
from daemon.writer import Spool
from telephony.effects import Effect, TalkStarted
from telephony.simulator import AmiSimulator, load_trace

from .harness import GUARD, ROOT, SECRET, TRACES, Harness, full_disk, settings


def simulator(trace: str, speed: float) -> AmiSimulator:
    return AmiSimulator(load_trace(TRACES / f"{trace}.ami"), secret=SECRET, speed=speed)


class DeafDatabase(Database):
    """A store whose driver swallows cancellation (as `asyncio.wait_for` can in Python 3.11)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def record(self, conversation: dict[str, Any]) -> None:
        self.writing.set()
        while not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()


async def test_a_dying_checkpointer_stops_the_service_whatever_the_timers(
    db_dsn: str, tmp_path: Path
) -> None:
    """The spool's disk fills up mid-call: the checkpointer dies. With a ping due when it died, the
    keepalive swallowed its cancel and the service hung for good; ping and checkpoint share one
    interval here, the timing that hung."""
    spool = tmp_path / "spool"
    async with simulator("long_call", speed=10) as sim:
        config = settings(sim.port, db_dsn, spool, checkpoint_interval=0.3, ami_ping_interval=0.3)
        with full_disk(spool, [Checkpoints(spool / "default").temporary], now=False) as disk:

            def fill_when_talking(effect: Effect) -> None:
                if isinstance(effect, TalkStarted):
                    disk.fill()

            with capture_logs() as logs, pytest.raises(TaskDied) as died:
                async with asyncio.timeout(GUARD):
                    await serve(config, asyncio.Event(), on_effect=fill_when_talking, stop_grace=0.5)
    assert died.value.task == "checkpointer"
    assert isinstance(died.value.error, OSError) and died.value.error.errno == errno.ENOSPC
    (line,) = [entry for entry in logs if entry["event"] == "service.task_died"]
    assert line["task"] == "checkpointer" and "No space left" in line["error"]


async def test_a_stop_that_does_not_finish_in_time_is_forced(db_dsn: str, tmp_path: Path) -> None:
    database = DeafDatabase(db_dsn)
    async with simulator("inbound_answered", speed=0) as sim:
        stop = asyncio.Event()
        service = asyncio.create_task(
            serve(settings(sim.port, db_dsn, tmp_path), stop, database, stop_grace=0.2)
        )
        try:
            async with asyncio.timeout(GUARD):
                await database.writing.wait()  # the writer is now inside the deaf driver
            with capture_logs() as logs:
                stop.set()
                with pytest.raises(StopForced) as forced:
                    async with asyncio.timeout(GUARD):
                        await service
        finally:
            database.release.set()  # the forced stop left the writer behind: let it end now
            left = [task for task in asyncio.all_tasks() if task.get_name() == "writer"]
            await cancel_within(left, GUARD)
    assert forced.value.tasks == ["writer"]
    assert any(entry["event"] == "service.stop_forced" for entry in logs)
    assert len(Spool(tmp_path / "default").pending()) == 1  # kept for the next start


async def test_the_process_exits_non_zero_when_a_task_dies(db_dsn: str, tmp_path: Path) -> None:
    timing = {"checkpoint_interval": 0.3, "ami_ping_interval": 0.3}
    async with Harness("concurrent_20", db_dsn, tmp_path, settings=timing) as harness:
        spool = tmp_path / "spool-0"
        with full_disk(spool, [Checkpoints(harness.spool_of(0)).temporary], now=False) as disk:
            await harness.start()
            await harness.daemon.wait_for_log("conversation.recorded")  # calls are going on
            disk.fill()
            code = await harness.daemon.exited(GUARD)
    daemon = harness.daemon
    assert code == 1, daemon.tail()
    (line,) = daemon.events("service.task_died")
    assert line["task"] in ("checkpointer", "spool") and "No space left" in line["error"]
    assert len(daemon.lines) == len([raw for raw in daemon.raw if raw.strip()])  # JSON lines only


async def test_sigterm_stops_the_process_cleanly(db_dsn: str, tmp_path: Path) -> None:
    async with Harness("long_call", db_dsn, tmp_path, speed=1) as harness:
        await harness.start()
        await harness.daemon.wait_for_log("pipeline.resync")
        code = await harness.daemon.terminate(GUARD)
    assert code == 0, harness.daemon.tail()
    assert harness.daemon.events("service.stopped")
    assert not harness.daemon.events("service.task_died")


@pytest.mark.parametrize("failure", ['StopForced(["deaf"])', 'TaskDied("spool", OSError(28, "full"))'])
def test_a_forced_stop_or_a_task_death_ends_the_process_at_once(failure: str) -> None:
    """asyncio.run's own clean-up would wait for a task that ignores its cancel as long as the
    service did: after StopForced, or a task's death (was: asyncio.run's clean-up, unbounded), the
    command leaves at once, with status 1."""
    script = """
import asyncio, contextlib
import daemon.commands.run as command
from daemon.supervision import StopForced, TaskDied

async def deaf() -> None:
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)

async def service_that_could_not_stop(settings) -> None:
    asyncio.get_running_loop().create_task(deaf(), name="deaf")
    await asyncio.sleep(0)
    raise FAILURE

command.run_until_signalled = service_that_could_not_stop
asyncio.run(command._run_or_exit(None))
print("asyncio.run returned")
"""
    done = subprocess.run(
        [sys.executable, "-c", script.replace("FAILURE", failure)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, ""), done.stderr


async def test_alerts_that_do_not_let_go_force_the_stop_within_its_bound() -> None:
    """Was: a timeout around the engine's close, which still waited for a delivery that ignored its
    cancel as long as that delivery liked."""

    class DeafAlerts:
        async def close(self) -> None:
            for _ in range(50):
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.1)

    started = asyncio.get_running_loop().time()
    with capture_logs() as logs:
        let_go = await _close_alerts(DeafAlerts(), bound=0.2)  # type: ignore[arg-type]
    assert let_go is False
    assert asyncio.get_running_loop().time() - started < 1.0  # not the 5 s the delivery wanted
    assert [entry["event"] for entry in logs] == ["alerts.close_timeout"]
