"""`talkmeter run` end to end: the AMI simulator on one side, a real PostgreSQL on the other."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from accounting.ledger import RecordResult
from daemon.cli import main
from daemon.service import Checkpoints, Database, serve
from daemon.settings import Settings
from daemon.supervision import TaskDied
from daemon.writer import FatalStorageError, Spool
from telephony.effects import Effect, TalkStarted
from telephony.simulator import AmiSimulator, load_trace
from tests.db import fetch

TRACES = Path(__file__).resolve().parents[1] / "traces"
SECRET = "service-secret"
GUARD = 15.0
UNREACHABLE = "postgresql://postgres@127.0.0.1:9/nothing"  # the discard port: connection refused


class WatchedDatabase(Database):
    """The real store, telling the test when a write succeeded or failed."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.recorded = asyncio.Event()
        self.failed = asyncio.Event()

    async def record(self, conversation: dict[str, Any]) -> RecordResult:
        try:
            result = await super().record(conversation)
        except Exception:
            self.failed.set()
            raise
        self.recorded.set()
        return result


def settings(port: int, dsn: str, spool: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {"ami_reconnect_min": 0.05, "ami_reconnect_max": 0.2, **extra}
    return Settings(ami_port=port, ami_secret=SECRET, database_url=dsn, spool_dir=spool, **values)


def truth(name: str) -> dict[str, Any]:
    return json.loads((TRACES / f"{name}.json").read_text())["truth"]["conversations"][0]


async def rows(dsn: str) -> list[asyncpg.Record]:
    return await fetch(
        dsn,
        "SELECT conversation_id, talk_ms, hold_ms, estimated, match_status, consultants "
        "FROM talkmeter.conversations ORDER BY started_at",
    )


async def run_until(event: asyncio.Event, config: Settings, database: Database, **options: Any) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop, database, stop_grace=0.5, **options))
    async with asyncio.timeout(GUARD):
        waiter = asyncio.create_task(event.wait())
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task in done:
            task.result()  # the service died: show why
    stop.set()
    async with asyncio.timeout(GUARD):
        await task


async def test_the_service_records_what_the_pbx_says(db_dsn: str, tmp_path: Path) -> None:
    async with AmiSimulator(load_trace(TRACES / "inbound_answered.ami"), secret=SECRET, speed=0) as sim:
        database = WatchedDatabase(db_dsn)
        await run_until(database.recorded, settings(sim.port, db_dsn, tmp_path), database)
    (row,) = await rows(db_dsn)
    assert row["talk_ms"] / 1000 == pytest.approx(truth("inbound_answered")["talk_seconds"], abs=0.2)
    assert (row["estimated"], row["match_status"], row["consultants"]) == (False, "unknown", ["101"])


async def test_a_database_outage_loses_nothing(db_dsn: str, tmp_path: Path) -> None:
    async with AmiSimulator(load_trace(TRACES / "hold.ami"), secret=SECRET, speed=0) as sim:
        down = WatchedDatabase(UNREACHABLE)
        await run_until(down.failed, settings(sim.port, UNREACHABLE, tmp_path), down)
        assert len(Spool(tmp_path / "default").pending()) == 1
        # The service stopped with PostgreSQL still down; it starts again once it is back.
        back = WatchedDatabase(db_dsn)
        await run_until(back.recorded, settings(sim.port, db_dsn, tmp_path), back)
    (row,) = await rows(db_dsn)
    expected = truth("hold")
    assert row["talk_ms"] / 1000 == pytest.approx(expected["talk_seconds"], abs=0.2)
    assert row["hold_ms"] / 1000 == pytest.approx(expected["hold_seconds"], abs=0.2)
    assert (tmp_path / "default" / "pending.records").read_bytes() == b""


async def test_a_restart_mid_call_resumes_the_call(db_dsn: str, tmp_path: Path) -> None:
    trace = load_trace(TRACES / "long_call.ami")
    bridged = next(
        n
        for n, item in enumerate(trace.items, 1)
        if b"Event: BridgeEnter" in item.raw and b"PJSIP/trunk" in item.raw
    )
    async with AmiSimulator(trace, secret=SECRET, speed=0) as sim:
        sim.drop_after(bridged)  # the replay waits there for the next login
        talking = asyncio.Event()

        def on_effect(effect: Effect) -> None:
            if isinstance(effect, TalkStarted):
                talking.set()

        slow = settings(sim.port, db_dsn, tmp_path, ami_reconnect_min=30.0, ami_reconnect_max=30.0)
        first = WatchedDatabase(db_dsn)
        await run_until(talking, slow, first, on_effect=on_effect)
        saved = Checkpoints(tmp_path / "default").load()
        assert [c["client_number"] for c in saved] == ["+74951234567"]

        second = WatchedDatabase(db_dsn)
        await run_until(second.recorded, settings(sim.port, db_dsn, tmp_path), second)
    (row,) = await rows(db_dsn)
    assert row["estimated"] is True
    assert row["talk_ms"] / 1000 == pytest.approx(truth("long_call")["talk_seconds"], abs=1.0)


async def test_the_service_refuses_to_start_on_an_outdated_schema(empty_dsn: str, tmp_path: Path) -> None:
    stop = asyncio.Event()
    with pytest.raises(FatalStorageError, match="talkmeter migrate"):
        async with asyncio.timeout(GUARD):
            await serve(settings(9, empty_dsn, tmp_path), stop, stop_grace=0.5)
    assert not (tmp_path / "default" / "pending.records").exists()


async def test_a_schema_found_outdated_later_stops_the_service_and_keeps_the_call(
    empty_dsn: str, tmp_path: Path
) -> None:
    """PostgreSQL was down at start; when it answers, its schema turns out to be missing."""

    class ComesBackWithoutSchema(WatchedDatabase):
        def __init__(self) -> None:
            super().__init__(UNREACHABLE)

        async def record(self, conversation: dict[str, Any]) -> None:
            self._dsn = empty_dsn  # the database is back, but nobody ran `talkmeter migrate`
            await super().record(conversation)

    async with AmiSimulator(load_trace(TRACES / "direct_dial.ami"), secret=SECRET, speed=0) as sim:
        stop = asyncio.Event()
        config = settings(sim.port, UNREACHABLE, tmp_path)
        with pytest.raises(TaskDied, match="talkmeter migrate") as died:
            async with asyncio.timeout(GUARD):
                await serve(config, stop, ComesBackWithoutSchema(), stop_grace=0.5)
    assert died.value.task == "writer" and isinstance(died.value.error, FatalStorageError)
    assert len(Spool(tmp_path / "default").pending()) == 1


async def test_replay_without_dry_run_records_and_is_idempotent(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TALKMETER_DATABASE_URL", db_dsn)
    capture = str(TRACES / "caller_id_formats.ami")
    assert await asyncio.to_thread(main, ["replay", capture, "--json"]) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert await asyncio.to_thread(main, ["replay", capture]) == 0
    second = capsys.readouterr().out
    assert [outcome["status"] for outcome in first] == ["unknown"] * 4 + ["withheld", "unknown"]
    assert [line.split("\t")[1] for line in second.splitlines()[:6]] == ["duplicate"] * 6
    # For people: the totals of what was measured, and what became of it.
    assert "\nall                         6         6  0:00:18" in second
    assert second.endswith("\nrecorded: 6 duplicate\n")
    assert len(await rows(db_dsn)) == 6


def test_replay_into_a_database_without_the_schema_says_what_to_do(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TALKMETER_DATABASE_URL", empty_dsn)
    assert main(["replay", str(TRACES / "hold.ami")]) == 2
    assert "talkmeter migrate" in capsys.readouterr().err
