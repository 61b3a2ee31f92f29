"""Getting every finished conversation into PostgreSQL, whatever the database does meanwhile.

Theory of operation
-------------------
A finished conversation is first appended to a local spool (`pending.records`: one framed record
per conversation, see daemon.journal, fsynced) and only then handed to the database writer. It
leaves the spool once PostgreSQL has committed it. So a database outage, a restart or a crash
between the end of a call and its commit loses nothing: on start the daemon re-submits what the
spool still holds. Recording is idempotent on `conversation_id` (accounting guarantees it), so a
conversation written twice (committed, then crashed before the spool was compacted) is counted once.

At start the spool is recovered (`Spool.open`): a record torn by a crash is cut off before anything
is appended again, damaged records go to `quarantine.jsonl` with the reason, and the JSON-lines
spool of earlier versions (`pending.jsonl`) is taken over (a record glued onto a torn line by those
versions is recovered). A malformed spool never stops the service from starting.

The writer never blocks the AMI consumer on the database: `submit` is a spool append (on the disk
thread, so the loop that reads the PBX goes on during an fsync) plus a queue put. If the append
fails (disk full), the conversation is still queued, the database being its one chance, and
`spool_failure` raises, which stops the service: it does not run on without its spool. A database
error that can pass (connection refused or lost, a stall, serialization failure, too many
connections) is retried with capped exponential backoff, in order, forever; an error that cannot
pass (bad data) moves that one conversation to `rejected.jsonl` beside the spool, with the reason,
for a person to look at, and the queue goes on. Nothing is dropped silently.

The writer is stalled when it has had work for a while without finishing any (`stalled_for`):
PostgreSQL down or hanging. `/healthz` and the metrics report it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from daemon.journal import (
    DiskThread,
    Quarantine,
    append_durably,
    decode,
    encode,
    parse_object,
    read_file,
    scan,
    sync_directory,
    write_all,
    write_atomically,
)
from daemon.metrics import Metrics
from telephony.ami import Backoff, Sleep

log = structlog.get_logger("daemon.writer")

Record = Callable[[dict[str, Any]], Awaitable[object]]
IsTransient = Callable[[BaseException], bool]


class FatalStorageError(Exception):
    """The database can never take our writes as it is (wrong schema, wrong password): stop the service.

    The conversation stays in the spool; the service stops so that a person sees the problem.
    """


class Spool:
    """Conversations not yet committed to the database: framed records (daemon.journal), fsynced.

    `open()` first (it recovers from a crash); every method does disk I/O, so the service calls
    them on its disk thread. Damaged records and a torn tail go to the quarantine file beside it.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "pending.records"
        self.legacy_path = directory / "pending.jsonl"  # the spool of earlier versions: JSON lines
        self.rejected_path = directory / "rejected.jsonl"
        self.temporary = directory / "pending.tmp"
        self.quarantine = Quarantine(directory)
        self._lines: dict[str, bytes] | None = None  # conversation_id -> its record line, in order
        self._end = 0  # where the last whole record ends; an append starts exactly there

    def open(self) -> list[dict[str, Any]]:
        """What waits to be written, in order, each conversation once, after recovering the file:
        a torn tail is cut, damaged records are quarantined, an old-format spool is taken over."""
        found = scan(read_file(self.path), _check_conversation)
        self.quarantine.put(self.path.name, found.damaged)
        if found.torn:
            self.quarantine.put(self.path.name, [(found.torn, "torn tail: a crash cut this record short")])
        lines: dict[str, bytes] = {}
        for record, line in zip(found.records, found.lines, strict=True):
            lines.setdefault(record["conversation_id"], line)
        legacy = self.legacy_path.exists()
        if legacy:
            records, damaged = _read_legacy(read_file(self.legacy_path))
            self.quarantine.put(self.legacy_path.name, damaged)
            for record in records:
                lines.setdefault(record["conversation_id"], encode(record))
        if legacy or found.damaged or found.torn or len(lines) < len(found.records):
            write_atomically(self.path, b"".join(lines.values()), self.temporary)
        if legacy:
            self.legacy_path.unlink()
            sync_directory(self.path.parent)
            log.info("spool.upgraded", taken_over=self.legacy_path.name, conversations=len(lines))
        self._lines = lines
        self._end = sum(len(line) for line in lines.values())
        return [decode(line) for line in lines.values()]

    def append(self, conversation: dict[str, Any]) -> None:
        lines = self._opened()
        line = encode(conversation)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(descriptor).st_size != self._end:
                os.ftruncate(descriptor, self._end)  # a failed append left a fragment: never glue
            write_all(descriptor, line, self._end)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if self._end == 0:
            sync_directory(self.path.parent)  # the file may be new
        self._end += len(line)
        lines.setdefault(conversation["conversation_id"], line)

    def forget(self, conversation_ids: set[str]) -> None:
        """Drop these (committed or rejected) conversations: the spool is rewritten atomically."""
        lines = self._opened()
        if conversation_ids.isdisjoint(lines):
            return
        kept = {key: line for key, line in lines.items() if key not in conversation_ids}
        data = b"".join(kept.values())
        try:
            write_atomically(self.path, data, self.temporary)
        except OSError:
            self._lines = None  # the rename may have happened or not: read the file again next time
            raise
        self._lines, self._end = kept, len(data)

    def pending(self) -> list[dict[str, Any]]:
        """What the spool file holds, in order, each conversation once (without side effects)."""
        data = read_file(self.path)
        seen: dict[str, dict[str, Any]] = {}
        for record in scan(data, _check_conversation).records:
            seen.setdefault(record["conversation_id"], record)
        return list(seen.values())

    def reject(self, conversation: dict[str, Any], reason: str) -> None:
        entry = json.dumps({"reason": reason, "conversation": conversation}, ensure_ascii=False)
        append_durably(self.rejected_path, (entry + "\n").encode("utf-8"))

    def _opened(self) -> dict[str, bytes]:
        if self._lines is None:
            self.open()
        assert self._lines is not None
        return self._lines


def _check_conversation(record: dict[str, Any]) -> None:
    conversation_id = record.get("conversation_id")
    if not isinstance(conversation_id, str) or not conversation_id:
        raise ValueError("no conversation_id")


_LEGACY_START = b'{"conversation_id"'


def _read_legacy(data: bytes) -> tuple[list[dict[str, Any]], list[tuple[bytes, str]]]:
    """The records of an old-format spool (JSON lines) and its unusable lines with the reason.

    Old versions appended after a torn line without cutting it, so one line may hold a fragment
    followed by a whole record: that record is recovered (it starts where `conversation_id`,
    always the first key, starts again) and only the fragment is quarantined.
    """
    records, damaged = [], []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            records.append(parse_object(raw, _check_conversation))
            continue
        except ValueError as error:
            problem = str(error)
        start = raw.rfind(_LEGACY_START)
        if start > 0:
            try:
                records.append(parse_object(raw[start:], _check_conversation))
            except ValueError:
                pass
            else:
                damaged.append((raw[:start], "torn record: a crash cut it short (the next one was saved)"))
                continue
        where = "torn tail" if number == len(lines) else f"line {number}"
        damaged.append((raw, f"{where}: {problem}"))
    return records, damaged


class ConversationWriter:
    """Spools, then records, every conversation; retries the database until it answers."""

    def __init__(
        self,
        record: Record,
        spool: Spool,
        is_transient: IsTransient,
        *,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        disk: DiskThread | None = None,
    ) -> None:
        """`disk` runs the spool's file operations (default: a disk thread of the writer's own)."""
        self._record = record
        self._spool = spool
        self._is_transient = is_transient
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._sleep = sleep
        self._metrics = metrics or Metrics()
        self._monotonic = monotonic
        self._disk = disk or DiskThread()
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._unwritten: set[str] = set()
        self._done: set[str] = set()  # written or rejected, still in the spool file
        self._progress_at = monotonic()  # the last write finished, or work arrived at an idle writer
        self._spool_error: OSError | None = None
        self._spool_failed = asyncio.Event()
        self.written = 0
        self.rejected = 0

    @property
    def backlog(self) -> int:
        return len(self._unwritten)

    def stalled_for(self) -> float:
        """Seconds the writer has had work without finishing any; 0 when it has none."""
        return self._monotonic() - self._progress_at if self._unwritten else 0.0

    async def resume(self) -> int:
        """Recover the spool and queue what an earlier run left in it; returns how many."""
        left = await self._disk(self._spool.open)
        for conversation in left:
            self._enqueue(conversation)
        if left:
            log.info("writer.resumed_from_spool", conversations=len(left))
        return len(left)

    async def submit(self, conversation: dict[str, Any]) -> None:
        """Spool it (durably), then queue it for the database. Never raises for the disk."""
        try:
            await self._disk(self._spool.append, conversation)
        except OSError as error:
            # Its only copy is in memory now: the database is its one chance. The spool failure is
            # the service's end (`spool_failure`), and it gets the stop's drain to be written.
            log.error("spool.append_failed", conversation_id=conversation.get("conversation_id"),
                      error=repr(error), path=str(self._spool.path))  # fmt: skip
            self._spool_error = self._spool_error or error
            self._spool_failed.set()
        self._enqueue(conversation)
        self._metrics.conversation_spooled(self.backlog)

    async def spool_failure(self) -> None:
        """Raise the first error of a spool append, once there is one (a supervised task)."""
        await self._spool_failed.wait()
        assert self._spool_error is not None
        raise self._spool_error

    def _enqueue(self, conversation: dict[str, Any]) -> None:
        if not self._unwritten:
            self._progress_at = self._monotonic()
        self._unwritten.add(conversation["conversation_id"])
        self._queue.put_nowait(conversation)
        self._metrics.spool_backlog(self.backlog)

    async def run(self) -> None:
        """Write queued conversations in order, forever (cancel to stop)."""
        while True:
            conversation = await self._queue.get()
            try:
                await self._write(conversation)
                if self._queue.empty():
                    await self._compact()  # before task_done: a drained writer has a compact spool
            finally:
                self._queue.task_done()

    async def drain(self, within: float) -> bool:
        """Wait until everything queued is written; False if `within` s passed first (it stays spooled)."""
        try:
            async with asyncio.timeout(within):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def _compact(self) -> None:
        done, self._done = self._done, set()
        try:
            await self._disk(self._spool.forget, done)
        except OSError as error:  # they stay in the file: written again after a restart, idempotent
            self._done |= done
            log.warning("spool.compaction_failed", error=repr(error))

    async def _write(self, conversation: dict[str, Any]) -> None:
        conversation_id = conversation["conversation_id"]
        while True:
            started = self._monotonic()
            try:
                await self._record(conversation)
            except FatalStorageError:
                raise
            except Exception as error:
                if self._is_transient(error):
                    delay = self._backoff.next()
                    log.warning("writer.database_unavailable", error=type(error).__name__, retry_in=delay)
                    await self._sleep(delay)
                    continue
                log.error("writer.rejected", conversation_id=conversation_id, error=repr(error))
                await self._disk(self._spool.reject, conversation, repr(error))
                self.rejected += 1
                self._finished(conversation_id)
                self._metrics.conversation_rejected(self.backlog)
            else:
                self.written += 1  # accounting logs the canonical `conversation.recorded` line
                self._finished(conversation_id)
                self._metrics.conversation_recorded(self._monotonic() - started, self.backlog)
            self._backoff.reset()
            return

    def _finished(self, conversation_id: str) -> None:
        self._unwritten.discard(conversation_id)
        self._done.add(conversation_id)
        self._progress_at = self._monotonic()
