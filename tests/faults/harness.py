"""The fault harness: a PBX (the AMI simulator), N `talkmeter run` processes, PostgreSQL, the truth.

A fault test breaks something on purpose and then compares what arrived in PostgreSQL with the
trace's ground truth (tests/traces/<name>.json, measured from the SIP messages, not from AMI).

* `Harness` runs the simulator in the test's event loop (so a test can cue faults on it) and
  `instances` real `talkmeter run` processes (`Daemon`) against the test's database, each with its
  own spool directory and `instance` name (`talkmeter-<index>`, as the daemons are named). The
  simulator holds the replay while no talkmeter is logged in (`pause_when_alone`): a kill -9 then
  costs only what talkmeter itself loses (state since the last checkpoint, events in flight), never
  the calls a dead service could not see; with several instances it starts the replay once all of
  them are logged in, and holds it only when none is. The trace plays
  `speed` times faster than recorded; checkpoint and reconnect intervals shrink to match.
* `Daemon` starts, kills (SIGKILL), stops (SIGTERM) and waits for one process, and reads its JSON
  log lines as they come (`wait_for_log`), so tests wait on what the service says, never on sleeps.
* `full_disk` makes a directory's file system full: a tiny tmpfs filled to the last block when the
  test may mount (root, as in CI), otherwise /dev/full behind the files the service writes by
  replacing (its checkpoint and the spool's compaction): either way writes fail with ENOSPC.
* `PgProxy` is a TCP relay in front of PostgreSQL that can refuse connections or go half-open.
* `compare` matches ledger rows with the truth: lost, doubled, and the talk lost or added per
  conversation.
* `seeded` gives a test its RNG for the moments of its faults, and prints the seed that replays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from accounting import store
from accounting.contracts import Client, Contract
from daemon.service import serve
from daemon.settings import Settings
from telephony.simulator import AmiSimulator, Trace, load_trace
from tests.db import fetch

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "tests" / "traces"
SECRET = "fault-harness-secret"
GUARD = 30.0  # seconds: only reached when a test is failing

LogLine = dict[str, Any]


# --- seeded faults ---------------------------------------------------------------------------------


def seeded(what: str) -> tuple[random.Random, str]:
    """An RNG for the moments of the faults of one test, and the line naming its seed (printed now,
    and meant for every failure message): `TALKMETER_FAULT_SEED=<seed>` replays the same faults."""
    chosen = os.environ.get("TALKMETER_FAULT_SEED")
    value = int(chosen) if chosen else random.SystemRandom().randrange(2**32)
    replay = f"{what} seed {value} (replay with TALKMETER_FAULT_SEED={value})"
    print(replay)
    return random.Random(value), replay


# --- the truth and the ledger ---------------------------------------------------------------------


async def callers_are_clients(dsn: str, numbers: Iterable[str]) -> list[str]:
    """Every caller is a client with a contract (a free minute a day, two prepaid, then paid), so
    that every conversation is rated; returns the client ids."""
    clients = []
    conn = await asyncpg.connect(dsn)
    try:
        for index, number in enumerate(sorted(set(numbers))):
            client = f"client{index:03d}"
            await store.save_client(conn, Client(client, client, "Europe/Moscow", (number,)))
            contract = Contract(
                contract_id=f"{client}-2026",
                client_id=client,
                valid_from=date(2020, 1, 1),
                free_daily_minutes=1,
                prepaid_minutes=2,
                rate_per_minute=Decimal("2.50"),
                currency="RUB",
                overage="bill",
            )
            await store.save_contract(conn, contract)
            clients.append(client)
    finally:
        await conn.close()
    return clients


def truth(name: str) -> list[dict[str, Any]]:
    """The conversations of a trace as measured from SIP (see tests/traces/README.md)."""
    return list(json.loads((TRACES / f"{name}.json").read_text())["truth"]["conversations"])


async def ledger(dsn: str) -> list[asyncpg.Record]:
    """Every conversation that arrived in PostgreSQL, in start order."""
    return await fetch(
        dsn,
        "SELECT conversation_id, client_number, client_number_raw, talk_ms, hold_ms, estimated, "
        "consultants, started_at, ended_at FROM talkmeter.conversations ORDER BY started_at, conversation_id",
    )


@dataclass
class Comparison:
    """The ledger against the truth, one entry per truth conversation."""

    lost: list[dict[str, Any]] = field(default_factory=list)  # truth conversations with no row
    doubled: list[str] = field(default_factory=list)  # rows beyond the truth's count for a number
    talk_error: list[float] = field(default_factory=list)  # row talk - true talk, seconds, per match

    @property
    def talk_lost(self) -> float:
        return -sum(error for error in self.talk_error if error < 0)

    @property
    def worst(self) -> float:
        return max((abs(error) for error in self.talk_error), default=0.0)

    def summary(self) -> str:
        return (
            f"lost={len(self.lost)} doubled={len(self.doubled)} talk_lost={self.talk_lost:.3f}s "
            f"worst_error={self.worst:.3f}s"
        )


def compare(rows: list[asyncpg.Record], expected: list[dict[str, Any]]) -> Comparison:
    """Match rows to truth by client number, in start order (the traces' numbers tell calls apart)."""
    result = Comparison()
    by_number: dict[str | None, list[asyncpg.Record]] = {}
    for row in rows:
        by_number.setdefault(row["client_number"], []).append(row)
    for conversation in expected:
        candidates = by_number.get(conversation["client_number"], [])
        if not candidates:
            result.lost.append(conversation)
            continue
        row = candidates.pop(0)
        result.talk_error.append(row["talk_ms"] / 1000 - conversation["talk_seconds"])
    result.doubled = [row["conversation_id"] for left in by_number.values() for row in left]
    return result


def hostile(name: str, event: str, channel: str, header: str, value: str) -> bytes:
    """Trace `name` with `header` of the first `event` about `channel` set to `value`."""
    data = (TRACES / f"{name}.ami").read_bytes()
    frames = data.split(b"\r\n\r\n")
    for index, frame in enumerate(frames):
        if frame.lstrip(b"\r\n").startswith(f"Event: {event}\r\n".encode()) and (
            f"\r\nChannel: {channel}\r\n".encode() in frame + b"\r\n"
        ):
            pattern = re.compile(rb"(\r\n" + header.encode() + rb": )[^\r]*")
            frames[index], count = pattern.subn(lambda m: m.group(1) + value.encode(), frame, count=1)
            assert count == 1, f"{event} of {channel} has no {header}"
            return b"\r\n\r\n".join(frames)
    raise AssertionError(f"no {event} about {channel} in {name}")


# --- the service in-process --------------------------------------------------------------------


def settings(port: int, dsn: str, spool: Path, **extra: Any) -> Settings:
    """Settings for a service in this process against the simulator on `port`."""
    values: dict[str, Any] = {"ami_reconnect_min": 0.05, "ami_reconnect_max": 0.2, **extra}
    return Settings(ami_port=port, ami_secret=SECRET, database_url=dsn, spool_dir=spool, **values)


async def serve_until_recorded(trace: str | Trace, dsn: str, spool: Path, count: int, **extra: Any) -> None:
    """Run the service in this process on `trace` (at full speed) until the ledger holds `count`
    conversations, then stop it; a service that dies raises its error."""
    played = load_trace(TRACES / f"{trace}.ami") if isinstance(trace, str) else trace
    async with AmiSimulator(played, secret=SECRET, speed=0) as sim:
        stop = asyncio.Event()
        service = asyncio.create_task(serve(settings(sim.port, dsn, spool, **extra), stop, stop_grace=2.0))
        async with asyncio.timeout(GUARD):
            while len(await ledger(dsn)) < count:
                if service.done():
                    service.result()  # the service died: say why
                    raise AssertionError("the service stopped on its own")
                await asyncio.sleep(0.05)  # polls the database: nothing tells us when a row lands
        stop.set()
        async with asyncio.timeout(GUARD):
            await service


# --- one `talkmeter run` process ------------------------------------------------------------------


class Daemon:
    """One `talkmeter run` process; its stderr JSON log lines are collected as they come."""

    def __init__(self, name: str, env: Mapping[str, str], changed: asyncio.Condition | None = None) -> None:
        """`changed` is notified on every log line and exit (shared by a harness's daemons)."""
        self.name = name
        self.env = dict(env)
        self.lines: list[LogLine] = []
        self.raw: list[str] = []  # non-JSON stderr (tracebacks), for failure messages
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._changed = changed or asyncio.Condition()
        self._pump: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon.cli", "run",
            cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.starts += 1
        self._pump = asyncio.create_task(self._read(self.process), name=f"{self.name}-log")

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)

    async def terminate(self, within: float = GUARD) -> int | None:
        """SIGTERM, then the exit code (None if it did not exit `within` seconds)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        return await self.exited(within)

    async def exited(self, within: float = GUARD) -> int | None:
        """The exit code, once the process has ended and its log is read; None after `within` s."""
        assert self.process is not None and self._pump is not None
        try:
            async with asyncio.timeout(within):
                code = await self.process.wait()
                await self._pump
        except TimeoutError:
            return None
        return code

    async def stop(self) -> None:
        """Whatever state it is in: gone afterwards."""
        if self.running:
            if await self.terminate(5.0) is None:
                self.kill()
                await self.exited()
        elif self._pump is not None:
            await asyncio.wait([self._pump], timeout=5.0)

    def events(self, name: str) -> list[LogLine]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait_for_log(
        self, match: Callable[[LogLine], bool] | str, within: float = GUARD, *, since: int = 0
    ) -> LogLine:
        """The first log line (from index `since`) that `match`es (an event name or a predicate)."""
        test = (lambda line: line.get("event") == match) if isinstance(match, str) else match
        async with asyncio.timeout(within), self._changed:
            while True:
                found = next((line for line in self.lines[since:] if test(line)), None)
                if found is not None:
                    return found
                if not self.running and self._pump is not None and self._pump.done():
                    raise AssertionError(f"{self.name} exited without logging it; stderr: {self.tail()}")
                await self._changed.wait()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.raw[-lines:])

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                line = json.loads(text)
                if isinstance(line, dict):
                    self.lines.append(line)
            async with self._changed:
                self._changed.notify_all()
        await process.wait()
        async with self._changed:
            self._changed.notify_all()


# --- the harness ----------------------------------------------------------------------------------


class Harness:
    """The simulator replaying `trace`, and `instances` talkmeter processes recording into `dsn`."""

    def __init__(
        self,
        trace: str | Trace,
        dsn: str,
        workdir: Path,
        *,
        instances: int = 1,
        speed: float = 10.0,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        self.trace_name = trace if isinstance(trace, str) else None
        self.trace = load_trace(TRACES / f"{trace}.ami") if isinstance(trace, str) else trace
        self.dsn = dsn
        self.workdir = workdir
        self.speed = speed
        # Intervals in wall-clock seconds, shrunk with the speed so that they mean the same in
        # trace time: a 5 s checkpoint at 10x speed is 0.5 s.
        self.settings: dict[str, object] = {
            "checkpoint_interval": 5.0 / max(speed, 1.0),
            "ami_reconnect_min": 0.05,
            "ami_reconnect_max": 0.2,
            # Our event clock runs at 1x between two answers to its pings while the replay runs at
            # `speed`: ping often, so that it lags the PBX's clock by a second of trace time at most.
            "ami_ping_interval": 1.0 / max(speed, 1.0),
            **(settings or {}),
        }
        self.instances = instances
        # The talk a kill or a death may lose, in trace seconds: a call that started talking after
        # the last checkpoint is counted from the next snapshot, and one that ended while the
        # process was down is closed at the last checkpoint. That is the checkpoint interval, plus
        # how far the checkpoint's time may lag the PBX's (the ping interval, at this speed), plus
        # the events already read when the process went (a tenth of a second, at this speed).
        lag = float(self.settings["ami_ping_interval"]) + 0.1  # type: ignore[arg-type]
        self.loss_bound = (float(self.settings["checkpoint_interval"]) + lag) * max(speed, 1.0)  # type: ignore[arg-type]
        # With several instances (a standby), the replay starts once all are logged in, so that each
        # sees every call from its start; after that it waits for nobody but when nobody is left.
        self.simulator = AmiSimulator(
            self.trace, secret=SECRET, speed=speed, pause_when_alone=True, start_clients=instances
        )
        self.daemons: list[Daemon] = []
        self.changed = asyncio.Condition()

    async def __aenter__(self) -> Harness:
        await self.simulator.start()
        self.daemons = [self._daemon(index) for index in range(self.instances)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for daemon in self.daemons:
            await daemon.stop()
        await self.simulator.stop()

    @property
    def daemon(self) -> Daemon:
        return self.daemons[0]

    def env(self, index: int, **overrides: object) -> dict[str, str]:
        values = {
            "ami_port": self.simulator.port,
            "ami_secret": SECRET,
            "database_url": self.dsn,
            "spool_dir": self.workdir / f"spool-{index}",
            "instance": f"talkmeter-{index}",
            **self.settings,
            **overrides,
        }
        env = {key: value for key, value in os.environ.items() if not key.startswith("TALKMETER_")}
        env.update({f"TALKMETER_{key.upper()}": str(value) for key, value in values.items()})
        env["PYTHONPATH"] = str(ROOT)
        return env

    def spool_of(self, index: int = 0) -> Path:
        """The spool directory of instance `index` (its PBX sub-directory)."""
        return self.workdir / f"spool-{index}" / "default"

    async def start(self) -> None:
        for daemon in self.daemons:
            await daemon.start()

    async def replayed(self, within: float = GUARD) -> None:
        async with asyncio.timeout(within):
            await self.simulator.finished.wait()

    async def recorded(self, count: int, within: float = GUARD) -> list[asyncpg.Record]:
        """The ledger once `count` conversations are logged as recorded (fails after `within` s)."""

        def done() -> bool:
            ids = {
                line["conversation_id"]
                for daemon in self.daemons
                for line in daemon.events("conversation.recorded")
            }
            if len(ids) < count and not any(daemon.running for daemon in self.daemons):
                raise AssertionError(f"no talkmeter running; {len(ids)} of {count} recorded")
            return len(ids) >= count

        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(done)
        return await ledger(self.dsn)

    async def kill_and_restart(self, index: int = 0) -> float:
        """kill -9 instance `index` and start it again; returns when it was killed, in trace time."""
        daemon = self.daemons[index]
        at = self.simulator.now()
        daemon.kill()
        code = await daemon.exited()
        assert code == -signal.SIGKILL, f"{daemon.name} exited with {code} before the kill: {daemon.tail()}"
        await daemon.start()
        return at

    def _daemon(self, index: int) -> Daemon:
        return Daemon(f"talkmeter-{index}", self.env(index), self.changed)


# --- a full disk ---------------------------------------------------------------------------------


class FullDisk:
    """`directory` on a file system that can be filled (`fill`) and given room again (`free`).

    As root (CI) it is a tmpfs of its own, filled to the last block. Otherwise /dev/full stands in
    for the files in `replaced` (a file that exists is set aside and put back by `free`); only
    files the service opens afresh for each write may be replaced while it runs.
    """

    def __init__(self, directory: Path, replaced: list[Path]) -> None:
        self.directory = directory
        self.replaced = replaced
        self.mounted = _mount_tmpfs(directory)
        self._filler = directory / ".filler"

    def fill(self) -> None:
        if self.mounted:
            descriptor = os.open(self._filler, os.O_WRONLY | os.O_CREAT)
            try:
                with contextlib.suppress(OSError):  # until ENOSPC
                    while os.write(descriptor, b"\0" * 4096):
                        pass
            finally:
                os.close(descriptor)
            return
        for path in self.replaced:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix != ".tmp" and path.exists() and not path.is_symlink():
                path.rename(_aside(path))  # a data file: put back by `free`
            # A temporary file exists only while the service writes it: wait for its rename.
            deadline = time.monotonic() + GUARD
            while True:
                try:
                    os.symlink("/dev/full", path)
                    break
                except FileExistsError:
                    assert time.monotonic() < deadline, f"{path} never went away"
                    time.sleep(0.001)

    def free(self) -> None:
        if self.mounted:
            self._filler.unlink(missing_ok=True)
            return
        for path in self.replaced:
            if path.is_symlink():
                path.unlink()
            if _aside(path).exists():
                _aside(path).rename(path)

    def release(self) -> None:
        """Unmount, keeping what was written in the plain directory below."""
        self.free()
        if self.mounted:
            keep = self.directory.with_name(self.directory.name + ".kept")
            shutil.copytree(self.directory, keep, symlinks=True, dirs_exist_ok=True)
            subprocess.run(["umount", "-l", str(self.directory)], check=False, capture_output=True)
            shutil.copytree(keep, self.directory, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(keep)
            self.mounted = False


@contextlib.contextmanager
def full_disk(directory: Path, replaced: list[Path], *, now: bool = True) -> Iterator[FullDisk]:
    """`directory` with no space left (from the start, or from `fill()` on when `now` is false)."""
    directory.mkdir(parents=True, exist_ok=True)
    disk = FullDisk(directory, replaced)
    try:
        if now:
            disk.fill()
        yield disk
    finally:
        disk.release()


def _aside(path: Path) -> Path:
    return path.with_name(path.name + ".aside")


def _mount_tmpfs(directory: Path) -> bool:
    # TALKMETER_TEST_NO_TMPFS=1 tries the /dev/full way as root too (what a non-root run does).
    if os.geteuid() != 0 or shutil.which("mount") is None or os.environ.get("TALKMETER_TEST_NO_TMPFS"):
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(directory)],
        check=False, capture_output=True,
    )  # fmt: skip
    return done.returncode == 0


# --- PostgreSQL that refuses or goes half-open -----------------------------------------------------


class PgProxy:
    """A TCP relay to PostgreSQL on a port of its own; `refuse()`, `stall()`, `heal()` on cue.

    Refusing closes the listening socket and every relayed connection (a PostgreSQL restart);
    stalling keeps every connection open but relays nothing more, and new connections are accepted
    and stall too (a half-open link: the packets vanish, nobody says so). While stalled, a client
    that gives up is not noticed by the server either: its side stays open until `heal`.
    """

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._dsn = parts
        self.port = 0
        self.stalled = False
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self._parked: list[asyncio.StreamWriter] = []  # server sides kept open by a stall

    @property
    def dsn(self) -> str:
        """The same database, through the proxy."""
        user = f"{self._dsn.username}@" if self._dsn.username else ""
        return self._dsn._replace(netloc=f"{user}127.0.0.1:{self.port}").geturl()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        for writer in [*self._connections, *self._parked]:
            writer.transport.abort()
        self._parked.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def stall(self) -> None:
        self.stalled = True

    async def heal(self) -> None:
        self.stalled = False
        for writer in self._parked:
            writer.transport.abort()
        self._parked.clear()
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        self.stalled = False
        await self.refuse()
        for relay in list(self._relays):
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def __aenter__(self) -> PgProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._connections.update({writer, upstream_writer})
        relays = [
            asyncio.create_task(self._relay(reader, upstream_writer)),
            asyncio.create_task(self._relay(upstream_reader, writer)),
        ]
        self._relays.update(relays)
        try:
            await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for relay in relays:
                relay.cancel()
            await asyncio.gather(*relays, return_exceptions=True)
            self._relays.difference_update(relays)
            self._connections.difference_update({writer, upstream_writer})
            writer.transport.abort()
            if self.stalled:
                self._parked.append(upstream_writer)  # the server does not hear of it
            else:
                upstream_writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.stalled:
                writer.write(data)
                await writer.drain()
