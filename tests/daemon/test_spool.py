"""The spool and the checkpoint on disk: torn by a crash, damaged, or left by an older version."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from daemon.journal import encode, scan
from daemon.service import Checkpoints
from daemon.writer import ConversationWriter, Spool
from telephony.calls import CallTracker, check_checkpoint
from telephony.capture import read_capture
from telephony.framing import Message

TRACES = Path(__file__).resolve().parents[1] / "traces"


def conversation(n: int) -> dict[str, Any]:
    return {"conversation_id": f"pbx:{n}", "talk_seconds": float(n)}


def ids(conversations: list[dict[str, Any]]) -> list[str]:
    return [c["conversation_id"] for c in conversations]


def quarantined(directory: Path) -> list[dict[str, Any]]:
    path = directory / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Down:
    """A database that is never there: what is submitted stays in the spool."""

    async def record(self, conversation: dict[str, Any]) -> None:
        raise ConnectionError("down")


def cut(path: Path, size: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(size)


async def test_a_conversation_appended_after_a_crash_mid_append_is_kept(tmp_path: Path) -> None:
    """Was: the next append was glued onto the torn line, and both were skipped without a word."""
    spool = Spool(tmp_path)
    spool.append(conversation(1))
    spool.append(conversation(2))
    cut(spool.path, spool.path.stat().st_size - 7)  # the power failed while pbx:2 was being written
    restarted = ConversationWriter(Down().record, Spool(tmp_path), lambda error: True)
    assert await restarted.resume() == 1
    await restarted.submit(conversation(3))
    assert ids(Spool(tmp_path).pending()) == ["pbx:1", "pbx:3"]
    (entry,) = quarantined(tmp_path)
    assert entry["file"] == "pending.records" and entry["reason"].startswith("torn tail")
    assert '"pbx:2"' in entry["raw"]


def test_an_append_after_a_failed_append_is_not_glued_to_its_fragment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.append(conversation(1))
    with spool.path.open("ab") as handle:  # what a write cut short by ENOSPC leaves behind
        handle.write(encode(conversation(2))[:15])
    spool.append(conversation(3))
    assert ids(spool.pending()) == ["pbx:1", "pbx:3"]
    assert scan(spool.path.read_bytes()).damaged == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"[1, 2]", "not an object"),
        (b"{}", "no conversation_id"),
        (b'{"conversation_id": 7}', "no conversation_id"),
        (b'"text"', "not an object"),
        (b'{"conversation_id": "\xff\xfe"}', "not UTF-8"),
        (b"{not json", "not JSON"),
    ],
)
def test_a_malformed_old_spool_line_is_quarantined_and_the_rest_kept(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    """Was: a traceback at start, and every later call unmetered."""
    good = [json.dumps(conversation(n)).encode() for n in (1, 2)]
    (tmp_path / "pending.jsonl").write_bytes(b"\n".join([good[0], line, good[1]]) + b"\n")
    spool = Spool(tmp_path)
    assert ids(spool.open()) == ["pbx:1", "pbx:2"]
    (entry,) = quarantined(tmp_path)
    assert entry["file"] == "pending.jsonl" and reason in entry["reason"] and "line 2" in entry["reason"]
    raw = entry["raw"].encode() if "raw" in entry else base64.b64decode(entry["raw_base64"])
    assert raw == line
    assert not spool.legacy_path.exists()  # taken over: the new spool holds its records
    assert ids(Spool(tmp_path).open()) == ["pbx:1", "pbx:2"]
    assert len(quarantined(tmp_path)) == 1  # and the damage is not quarantined again


def test_an_old_spool_with_a_record_glued_onto_a_torn_one_gives_that_record_back(tmp_path: Path) -> None:
    first, torn, glued = (json.dumps(conversation(n)) for n in (1, 2, 3))
    (tmp_path / "pending.jsonl").write_text(f"{first}\n{torn[:20]}{glued}\n")
    assert ids(Spool(tmp_path).open()) == ["pbx:1", "pbx:3"]
    (entry,) = quarantined(tmp_path)
    assert entry["raw"] == torn[:20] and "torn record" in entry["reason"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda line: line.replace(b"pbx:2", b"pbx:9"), "checksum mismatch"),
        (lambda line: line.replace(b"T1 ", b"T1 9"), "length"),
        (lambda line: b"garbage\n", "not a record line"),
        (lambda line: b"\0" * (len(line) - 1) + b"\n", "not a record line"),
    ],
)
def test_a_damaged_record_is_quarantined_and_the_records_after_it_kept(
    tmp_path: Path, damage: Any, reason: str
) -> None:
    lines = [encode(conversation(n)) for n in (1, 2, 3)]
    (tmp_path / "pending.records").write_bytes(lines[0] + damage(lines[1]) + lines[2])
    assert ids(Spool(tmp_path).open()) == ["pbx:1", "pbx:3"]
    (entry,) = quarantined(tmp_path)
    assert reason in entry["reason"]


def test_a_spool_that_is_not_a_regular_file_is_refused_not_read_for_ever(tmp_path: Path) -> None:
    (tmp_path / "pending.records").symlink_to("/dev/zero")
    with pytest.raises(OSError, match="not a regular file"):
        Spool(tmp_path).open()


def test_duplicates_in_the_spool_are_written_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for n in (1, 1, 2):
        spool.append(conversation(n))
    assert ids(Spool(tmp_path).open()) == ["pbx:1", "pbx:2"]


async def test_the_database_sees_a_conversation_only_once_it_is_on_disk(tmp_path: Path) -> None:
    seen_on_disk: list[bool] = []

    async def record(conversation: dict[str, Any]) -> None:
        seen_on_disk.append(conversation["conversation_id"] in ids(Spool(tmp_path).pending()))

    subject = ConversationWriter(record, Spool(tmp_path), lambda error: False)
    task = asyncio.create_task(subject.run())
    for n in range(5):
        await subject.submit(conversation(n))
    assert await subject.drain(5)
    task.cancel()
    assert seen_on_disk == [True] * 5
    assert Spool(tmp_path).pending() == []


# --- the checkpoint ---------------------------------------------------------------------------------


def checkpoint_items(trace: str = "hold") -> list[dict[str, Any]]:
    """Real checkpoints: the trace's open conversations at every event."""
    tracker = CallTracker()
    saved: list[dict[str, Any]] = []
    for message, received_at in read_capture((TRACES / f"{trace}.ami").read_bytes()):
        if isinstance(message, Message):
            tracker.feed(message, received_at)
            saved.extend(tracker.checkpoint(received_at))
    return saved


def test_every_checkpoint_the_model_takes_is_valid() -> None:
    items = [item for trace in ("hold", "outbound", "attended_transfer") for item in checkpoint_items(trace)]
    assert items and any(item["open"] for item in items) and any(item["hold"] for item in items)
    assert {item["direction"] for item in items} == {"inbound", "outbound", None}  # None: undecided yet
    for item in items:
        check_checkpoint(item)


@pytest.mark.parametrize(
    ("bad", "reason"), [(1, "not an object"), ({}, "'uniqueid'"), ({"uniqueid": "1.1"}, "'conversation_id'")]
)
def test_a_malformed_conversation_in_an_old_checkpoint_is_quarantined(
    tmp_path: Path, bad: object, reason: str
) -> None:
    """Was: a traceback at start (`[1]`, or a conversation without its keys, in open.json)."""
    good = checkpoint_items()[-1]
    (tmp_path / "open.json").write_text(json.dumps([bad, good]))
    assert Checkpoints(tmp_path).load() == [good]
    (entry,) = quarantined(tmp_path)
    assert entry["file"] == "open.json" and reason in entry["reason"]  # the file it came from
    assert not (tmp_path / "open.json").exists()  # taken over
    assert Checkpoints(tmp_path).load() == [good]
    assert len(quarantined(tmp_path)) == 1


@pytest.mark.parametrize(
    ("content", "reason"), [(b"{}", "not a list"), (b"\xff[]", "unreadable"), (b"[{", "unreadable")]
)
def test_an_unreadable_old_checkpoint_is_quarantined(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "open.json").write_bytes(content)
    assert Checkpoints(tmp_path).load() == []
    (entry,) = quarantined(tmp_path)
    assert reason in entry["reason"]


def test_a_damaged_checkpoint_record_is_quarantined(tmp_path: Path) -> None:
    items = checkpoint_items()[-2:]
    broken = dict(items[0], segments=[["101", "yesterday", 3.0, False]])
    (tmp_path / "checkpoint.records").write_bytes(encode(broken) + encode(items[1]) + b"T1 12")
    assert Checkpoints(tmp_path).load() == [items[1]]
    reasons = [entry["reason"] for entry in quarantined(tmp_path)]
    assert len(reasons) == 2 and "'segments'" in reasons[0] and reasons[1].startswith("torn tail")


def test_an_append_after_a_failed_compaction_keeps_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: when the directory's fsync failed after the compacted spool was renamed into place, the
    spool still believed the old, longer file: the next append padded the new file with zeros up to
    the old end and wrote there, and after a restart that conversation went to quarantine."""
    spool = Spool(tmp_path)
    spool.open()
    for number in range(3):
        spool.append({"conversation_id": f"pbx:{number}"})

    def failing(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("daemon.journal.sync_directory", failing)  # the disk fails after the rename
    with pytest.raises(OSError):
        spool.forget({"pbx:0", "pbx:1"})
    monkeypatch.undo()
    spool.append({"conversation_id": "pbx:3"})
    assert [c["conversation_id"] for c in Spool(tmp_path).open()] == ["pbx:2", "pbx:3"]
    assert not (tmp_path / "quarantine.jsonl").exists()
