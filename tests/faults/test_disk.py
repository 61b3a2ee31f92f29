"""The spool's disk misbehaving: slow, full, torn by a crash, or holding damaged files at start.

Each test compares what arrived in PostgreSQL with the trace's truth.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from daemon.journal import DiskThread, encode
from daemon.live import Pipeline
from daemon.service import Checkpoints, _checkpoint_forever
from daemon.writer import ConversationWriter, Spool
from telephony.simulator import AmiSimulator, load_trace
from tests.daemon.test_spool import checkpoint_items

from .harness import (
    GUARD,
    SECRET,
    TRACES,
    FullDisk,
    Harness,
    LogLine,
    compare,
    full_disk,
    ledger,
    serve_until_recorded,
    settings,
    truth,
)

TALK_TOLERANCE = 0.2  # seconds: the trace's own AMI-vs-SIP difference is far below this


def quarantined(directory: Path) -> list[dict[str, Any]]:
    path = directory / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class SlowDisk(Spool):
    """A spool whose fsync takes as long as the test wants: appends wait for `flushed`."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.flushing = threading.Event()
        self.flushed = threading.Event()
        self.too_slow = False  # the wait ran out: the test never got to release it

    def append(self, conversation: dict[str, Any]) -> None:
        self.flushing.set()
        if not self.flushed.wait(10.0):
            self.too_slow = True
        super().append(conversation)


async def test_the_pbx_is_read_while_a_flush_is_slow(tmp_path: Path) -> None:
    """Was: every spool append fsynced on the event loop, so a slow disk stopped the AMI reader."""
    recorded: dict[str, dict[str, Any]] = {}

    async def record(conversation: dict[str, Any]) -> None:
        recorded[conversation["conversation_id"]] = conversation

    spool = SlowDisk(tmp_path)
    writer = ConversationWriter(record, spool, lambda error: False)
    async with AmiSimulator(load_trace(TRACES / "concurrent_20.ami"), secret=SECRET, speed=0) as sim:
        pipeline = Pipeline(settings(sim.port, "postgresql://unused", tmp_path), writer.submit)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(pipeline.run(stop)), asyncio.create_task(writer.run())]
        try:
            assert await asyncio.to_thread(spool.flushing.wait, GUARD)  # the first conversation ended
            async with asyncio.timeout(GUARD):
                await sim.finished.wait()  # the PBX sent everything...
                await pipeline.link.ping()  # ...and the link read it all: the answer comes after it
            waiting = pipeline.link.queue_depth
        finally:
            spool.flushed.set()
        async with asyncio.timeout(GUARD):
            await pipeline.settle()
            assert await writer.drain(GUARD)
            stop.set()
            await tasks[0]
        tasks[1].cancel()
    assert not spool.too_slow
    assert waiting > 0  # the events after the slow flush waited in the queue, read
    assert len(recorded) == len(truth("concurrent_20"))


async def test_a_torn_spool_loses_nothing(db_dsn: str, tmp_path: Path) -> None:
    """A crash cut the last record short; the conversation before it and every later one arrive."""
    directory = tmp_path / "default"
    earlier = {**_earlier_conversation(), "conversation_id": "default:earlier"}
    (directory).mkdir()
    (directory / "pending.records").write_bytes(encode(earlier) + encode(_earlier_conversation())[:40])
    await serve_until_recorded("inbound_answered", db_dsn, tmp_path, count=2)
    rows = await ledger(db_dsn)
    assert rows[0]["conversation_id"] == "default:earlier"
    result = compare(rows[1:], truth("inbound_answered"))
    assert (result.lost, result.doubled) == ([], []) and result.worst <= TALK_TOLERANCE, result.summary()
    assert [entry["reason"][:9] for entry in quarantined(directory)] == ["torn tail"]


@pytest.mark.parametrize(
    ("spool_line", "checkpoint"),
    [
        (b"[1, 2]", b"[1]"),
        (b"{}", b'[{"uniqueid": "1.1", "at": 1}]'),
        (b'{"conversation_id": "\xff"}', b"{}"),
    ],
    ids=["lists", "missing-keys", "bad-utf8-and-object"],
)
async def test_malformed_files_at_start_are_quarantined_and_the_service_runs(
    db_dsn: str, tmp_path: Path, spool_line: bytes, checkpoint: bytes
) -> None:
    """Was: a traceback at start, and every later call unmetered."""
    directory = tmp_path / "default"
    directory.mkdir()
    earlier = json.dumps({**_earlier_conversation(), "conversation_id": "default:earlier"}).encode()
    (directory / "pending.jsonl").write_bytes(earlier + b"\n" + spool_line + b"\n")  # an older version's
    (directory / "open.json").write_bytes(checkpoint)
    await serve_until_recorded("hold", db_dsn, tmp_path, count=2)
    rows = await ledger(db_dsn)
    assert rows[0]["conversation_id"] == "default:earlier"
    result = compare(rows[1:], truth("hold"))
    assert (result.lost, result.doubled) == ([], []) and result.worst <= TALK_TOLERANCE, result.summary()
    assert sorted(entry["file"] for entry in quarantined(directory)) == ["open.json", "pending.jsonl"]


async def test_a_disk_full_for_the_checkpoint_stops_the_service_and_loses_nothing(
    db_dsn: str, tmp_path: Path
) -> None:
    """The disk under the spool fills up mid-way: the checkpointer fails, the service stops (exit
    1) rather than run unprotected; once there is room again it starts, resumes the calls and
    records every conversation."""
    expected = truth("concurrent_20")
    async with Harness("concurrent_20", db_dsn, tmp_path) as harness:
        directory = harness.spool_of(0)
        with full_disk(tmp_path / "spool-0", [Checkpoints(directory).temporary], now=False) as disk:
            await harness.start()
            await harness.daemon.wait_for_log("conversation.recorded")  # calls are going on
            disk.fill()
            death, rows = await died_then_recovered(harness, disk, len(expected))
    assert death["task"] in ("checkpointer", "spool") and "No space left" in death["error"]
    result = compare(rows, expected)
    assert (result.lost, result.doubled) == ([], []), result.summary()
    # Talk that began between the last checkpoint written and the death is counted from the next
    # snapshot: at most the checkpoint interval plus the time the dying service still read events.
    assert result.worst <= harness.loss_bound, result.summary()


async def test_a_conversation_whose_spool_append_fails_still_reaches_the_database(
    db_dsn: str, tmp_path: Path
) -> None:
    """The spool file cannot take a conversation (disk full): it goes to the database anyway (its
    one chance) and the service stops; after the restart nothing is lost or doubled. Checkpoints
    are far apart here so that the append is what fails first; the calls in progress therefore
    have no checkpoint and their talk before the restart's snapshot is not counted."""
    expected = truth("concurrent_20")
    harness = Harness("concurrent_20", db_dsn, tmp_path, settings={"checkpoint_interval": 60.0})
    async with harness:
        directory = harness.spool_of(0)
        files = [Checkpoints(directory).temporary, Spool(directory).temporary, Spool(directory).path]
        with full_disk(tmp_path / "spool-0", files, now=False) as disk:
            await harness.start()
            await harness.daemon.wait_for_log("pipeline.resync")
            disk.fill()
            death, rows = await died_then_recovered(harness, disk, len(expected))
    assert death["task"] == "spool" and "No space left" in death["error"]
    (failed,) = harness.daemon.events("spool.append_failed")
    result = compare(rows, expected)
    assert (result.lost, result.doubled) == ([], []), result.summary()
    (row,) = [row for row in rows if row["conversation_id"] == failed["conversation_id"]]
    assert not row["estimated"]  # written by the first run, whole, not rebuilt after the restart
    match = compare([row], [c for c in expected if c["client_number"] == row["client_number"]])
    assert match.worst <= TALK_TOLERANCE, match.summary()


async def died_then_recovered(harness: Harness, disk: FullDisk, count: int) -> tuple[LogLine, list[Any]]:
    """The service exits with 1 and one `service.task_died` line (returned); then, with room on
    the disk again, a new start records `count` conversations (the ledger is returned)."""
    code = await harness.daemon.exited(GUARD)
    assert code == 1, harness.daemon.tail()
    (death,) = harness.daemon.events("service.task_died")
    disk.free()
    await harness.start()
    rows = await harness.recorded(count)
    await harness.replayed()
    return death, rows


def _earlier_conversation() -> dict[str, Any]:
    """A finished conversation from an earlier run, as the spool holds it."""
    return {
        "conversation_id": "default:1700000000.1",
        "pbx": "default",
        "direction": "inbound",
        "client_number": "+74950001122",
        "client_number_raw": "+74950001122",
        "line": "74950000000",
        "consultants": ["101"],
        "started_at": "2023-11-14T22:13:20.000000+00:00",
        "answered_at": "2023-11-14T22:13:22.000000+00:00",
        "ended_at": "2023-11-14T22:13:32.000000+00:00",
        "wait_seconds": 2.0,
        "talk_seconds": 10.0,
        "hold_seconds": 0.0,
        "segments": [
            {
                "consultant": "101",
                "start": "2023-11-14T22:13:22.000000+00:00",
                "end": "2023-11-14T22:13:32.000000+00:00",
                "seconds": 10.0,
                "hold": False,
            }
        ],
        "estimated": False,
    }


class WitnessedCheckpoints(Checkpoints):
    """Checkpoints that note, at each save, which conversations a crash right after it would find on
    disk: those in the checkpoint and those in the spool file."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.directory = directory
        self.found_after_save: list[set[str]] = []
        self.saved_twice = threading.Event()

    def save(self, saved: list[dict[str, Any]]) -> None:
        super().save(saved)
        spooled = {conversation["conversation_id"] for conversation in Spool(self.directory).pending()}
        self.found_after_save.append(spooled | {item["conversation_id"] for item in saved})
        if len(self.found_after_save) >= 2:
            self.saved_twice.set()


async def test_a_crash_after_any_checkpoint_finds_every_conversation(tmp_path: Path) -> None:
    """Was: when one step ended several conversations (the snapshot after a restart ends those that
    hung up meanwhile), the checkpoint taken at the first spool append, which no longer listed them,
    was written before the later appends: a crash then found them in neither file."""
    last = checkpoint_items()[-1]
    resumed = [
        {**last, "uniqueid": f"{last['uniqueid']}{n}", "conversation_id": f"{last['conversation_id']}{n}"}
        for n in range(4)
    ]
    checkpoints = WitnessedCheckpoints(tmp_path)
    checkpoints.save(resumed)
    disk = DiskThread()
    writer = ConversationWriter(_keep, Spool(tmp_path), lambda error: False, disk=disk)
    await writer.resume()
    async with AmiSimulator(load_trace(TRACES / "inbound_answered.ami"), secret=SECRET, speed=0) as sim:
        config = settings(sim.port, "postgresql://unused", tmp_path)
        tracker = config.call_tracker()
        tracker.restore(checkpoints.load())
        pipeline = Pipeline(config, writer.submit, tracker=tracker)
        stop = asyncio.Event()
        running = asyncio.create_task(pipeline.run(stop))
        checkpointing = asyncio.create_task(_checkpoint_forever(pipeline, checkpoints, disk, GUARD))
        try:  # the first save is the test's own; the second, the service's after the snapshot
            assert await asyncio.to_thread(checkpoints.saved_twice.wait, GUARD)
        finally:
            checkpointing.cancel()
            stop.set()
            await running
            disk.close()
    everyone = {item["conversation_id"] for item in resumed}
    for found in checkpoints.found_after_save:
        assert everyone <= found


async def _keep(conversation: dict[str, Any]) -> None:
    """A database that takes everything (this test is about the disk)."""
