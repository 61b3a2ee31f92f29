"""Getting every finished conversation into PostgreSQL, whatever the database does meanwhile.

Theory of operation
-------------------
A finished conversation is first appended to a local spool (one JSON line, flushed and fsynced)
and only then handed to the database writer. It leaves the spool once PostgreSQL has committed it.
So a database outage, a restart or a crash between the end of a call and its commit loses nothing:
on start the daemon re-submits what the spool still holds. Recording is idempotent on
`conversation_id` (accounting guarantees it), so a conversation written twice (committed, then
crashed before the spool was compacted) is counted once.

The writer never blocks the AMI consumer: `submit` is a spool append plus a queue put. A database
error that can pass (connection refused or lost, serialization failure, too many connections) is
retried with capped exponential backoff, in order, forever; an error that cannot pass (bad data)
moves that one conversation to `rejected.jsonl` beside the spool, with the reason, for a person to
look at, and the queue goes on. Nothing is dropped silently.

The writer is stalled when it has had work for a while without finishing any (`stalled_for`):
PostgreSQL down or hanging. `/healthz` and the metrics report it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

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
    """An append-only JSON-lines file of conversations not yet committed to the database."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "pending.jsonl"
        self.rejected_path = directory / "rejected.jsonl"

    def append(self, conversation: dict[str, Any]) -> None:
        _append_line(self.path, json.dumps(conversation, ensure_ascii=False))

    def pending(self) -> list[dict[str, Any]]:
        """What the spool holds, in order, each conversation once (a torn last line is skipped)."""
        if not self.path.exists():
            return []
        seen: dict[str, dict[str, Any]] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                conversation = json.loads(line)
                seen.setdefault(conversation["conversation_id"], conversation)
        return list(seen.values())

    def keep_only(self, conversation_ids: set[str]) -> None:
        """Rewrite the spool with just these conversations (atomically: write, fsync, rename)."""
        keep = [c for c in self.pending() if c["conversation_id"] in conversation_ids]
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in keep)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.path)

    def reject(self, conversation: dict[str, Any], reason: str) -> None:
        _append_line(self.rejected_path, json.dumps({"reason": reason, "conversation": conversation}))


def _append_line(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


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
    ) -> None:
        self._record = record
        self._spool = spool
        self._is_transient = is_transient
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._sleep = sleep
        self._metrics = metrics or Metrics()
        self._monotonic = monotonic
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._unwritten: set[str] = set()
        self._progress_at = monotonic()  # the last write finished, or work arrived at an idle writer
        self.written = 0
        self.rejected = 0

    @property
    def backlog(self) -> int:
        return len(self._unwritten)

    def stalled_for(self) -> float:
        """Seconds the writer has had work without finishing any; 0 when it has none."""
        return self._monotonic() - self._progress_at if self._unwritten else 0.0

    def resume(self) -> int:
        """Queue what an earlier run left in the spool; returns how many."""
        left = self._spool.pending()
        for conversation in left:
            self._enqueue(conversation)
        if left:
            log.info("writer.resumed_from_spool", conversations=len(left))
        return len(left)

    async def submit(self, conversation: dict[str, Any]) -> None:
        self._spool.append(conversation)
        self._enqueue(conversation)
        self._metrics.conversation_spooled(self.backlog)

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
            finally:
                self._queue.task_done()
            if self._queue.empty():
                self._spool.keep_only(self._unwritten)

    async def drain(self, within: float) -> bool:
        """Wait until everything queued is written; False if `within` s passed first (it stays spooled)."""
        try:
            await asyncio.wait_for(self._queue.join(), within)
        except TimeoutError:
            return False
        return True

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
                self._spool.reject(conversation, repr(error))
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
        self._progress_at = self._monotonic()
