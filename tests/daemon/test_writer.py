"""The conversation writer: spool first, database second, nothing lost or counted twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from daemon.writer import ConversationWriter, FatalStorageError, Spool
from telephony.ami import Backoff


class Outage(ConnectionError):
    pass


class FlakyDatabase:
    """An in-memory stand-in for the accounting store: idempotent on conversation_id, like the real one."""

    def __init__(self, down_for: int = 0, poison: str | None = None) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.down_for = down_for
        self.poison = poison

    async def record(self, conversation: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls <= self.down_for:
            raise Outage("connection refused")
        if conversation["conversation_id"] == self.poison:
            raise ValueError("talk_seconds is negative")
        self.rows.setdefault(conversation["conversation_id"], conversation)


def conversation(n: int) -> dict[str, Any]:
    return {"conversation_id": f"pbx:{n}", "talk_seconds": float(n)}


def writer(database: FlakyDatabase, spool: Spool, delays: list[float] | None = None) -> ConversationWriter:
    async def sleep(delay: float) -> None:
        if delays is not None:
            delays.append(delay)
        await asyncio.sleep(0)

    return ConversationWriter(
        database.record,
        spool,
        lambda error: isinstance(error, ConnectionError),
        backoff=Backoff(0.5, 4.0, rng=lambda: 1.0),
        sleep=sleep,
    )


async def test_an_outage_delays_writes_in_order_and_loses_nothing(tmp_path: Path) -> None:
    database, delays = FlakyDatabase(down_for=5), []
    spool = Spool(tmp_path)
    subject = writer(database, spool, delays)
    task = asyncio.create_task(subject.run())
    for n in range(1, 4):
        await subject.submit(conversation(n))
    assert await subject.drain(5)
    task.cancel()
    assert list(database.rows) == ["pbx:1", "pbx:2", "pbx:3"]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]  # capped exponential backoff
    assert spool.pending() == []
    assert subject.written == 3


async def test_a_crash_before_commit_is_resumed_from_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    down = FlakyDatabase(down_for=10**6)
    first = writer(down, spool)
    task = asyncio.create_task(first.run())
    await first.submit(conversation(1))
    await first.submit(conversation(2))
    assert not await first.drain(0.05)
    task.cancel()  # the daemon dies with the database still down
    await asyncio.gather(task, return_exceptions=True)

    database = FlakyDatabase()
    second = writer(database, Spool(tmp_path))
    assert await second.resume() == 2
    task = asyncio.create_task(second.run())
    assert await second.drain(5)
    task.cancel()
    assert sorted(database.rows) == ["pbx:1", "pbx:2"]
    assert Spool(tmp_path).pending() == []


async def test_bad_data_is_set_aside_with_its_reason_and_the_queue_goes_on(tmp_path: Path) -> None:
    database = FlakyDatabase(poison="pbx:2")
    spool = Spool(tmp_path)
    subject = writer(database, spool)
    task = asyncio.create_task(subject.run())
    for n in (1, 2, 3):
        await subject.submit(conversation(n))
    assert await subject.drain(5)
    task.cancel()
    assert sorted(database.rows) == ["pbx:1", "pbx:3"]
    (rejected,) = [json.loads(line) for line in spool.rejected_path.read_text().splitlines()]
    assert rejected["conversation"]["conversation_id"] == "pbx:2"
    assert "negative" in rejected["reason"]
    assert subject.rejected == 1


def test_a_torn_last_line_and_duplicates_in_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(conversation(1))
    spool.append(conversation(1))
    with spool.path.open("a") as handle:
        handle.write('{"conversation_id": "pbx:2", "talk')  # power cut mid-write
    assert spool.pending() == [conversation(1)]


@pytest.mark.parametrize("count", [0, 1, 50])
async def test_spool_is_compacted_once_everything_is_written(tmp_path: Path, count: int) -> None:
    database, spool = FlakyDatabase(), Spool(tmp_path)
    subject = writer(database, spool)
    task = asyncio.create_task(subject.run())
    for n in range(count):
        await subject.submit(conversation(n))
    assert await subject.drain(5)
    task.cancel()
    assert len(database.rows) == count
    assert spool.pending() == []


async def test_a_fatal_storage_error_stops_the_writer_and_keeps_the_conversation(tmp_path: Path) -> None:
    async def outdated_schema(_: dict[str, Any]) -> None:
        raise FatalStorageError("the database schema is older than this talkmeter")

    spool = Spool(tmp_path)
    subject = ConversationWriter(outdated_schema, spool, lambda error: False)
    await subject.submit(conversation(1))
    with pytest.raises(FatalStorageError):
        await subject.run()
    assert spool.pending() == [conversation(1)]
    assert not spool.rejected_path.exists()
