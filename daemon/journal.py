"""Files that must survive a crash at any byte: framed records, a quarantine, and a disk thread.

Theory of operation
-------------------
The spool (conversations not yet in PostgreSQL) and the checkpoint (calls in progress) are files of
*records*. Every record is one line, framed so that a reader can tell a whole record from a torn or
damaged one without trusting anything in it:

    T1 <length> <crc32> <payload>\\n

`length` is the payload's size in bytes (decimal), `crc32` its CRC-32 (8 hex digits), and the
payload a JSON object in UTF-8 on one line (JSON escapes every control character, so a payload has
no newline). A crash in the middle of an append leaves a last line without its newline, or shorter
than its length: the *torn tail*. `scan` returns the whole records, the damaged ones with the
reason, and the offset where the last whole record ends; the owner cuts the file there before it
appends again (an append is never glued onto a fragment), and what was cut goes to the quarantine.

The quarantine (`quarantine.jsonl` beside the files) keeps every record that could not be used,
with the reason, the file it came from and the raw bytes (as text, or base64 when they are not
UTF-8), one JSON line each, for a person to look at: nothing is dropped silently, and nothing
malformed stops the service from starting.

Disk I/O runs on one thread of its own (`DiskThread`), never on the event loop that reads the PBX:
an fsync can take seconds on a busy disk. One thread, so operations happen in the order they
were asked for (an append, then the checkpoint that no longer lists the conversation).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import functools
import json
import os
import stat
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import structlog

log = structlog.get_logger("daemon.journal")

MAGIC = b"T1"
QUARANTINE_NAME = "quarantine.jsonl"
_LOGGED_PER_SCAN = 10  # quarantined records logged one by one; beyond that, a count

P = ParamSpec("P")
T = TypeVar("T")
Validate = Callable[[dict[str, Any]], None]  # raises ValueError saying what is wrong


def encode(record: dict[str, Any]) -> bytes:
    """One framed record line."""
    payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b"%s %d %08x %s\n" % (MAGIC, len(payload), zlib.crc32(payload), payload)


@dataclass
class Scan:
    """What a file of records holds."""

    records: list[dict[str, Any]] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)  # the framed line of each record
    damaged: list[tuple[bytes, str]] = field(default_factory=list)  # raw bytes, reason
    end: int = 0  # where the last whole line ends: the file is cut here before the next append
    torn: bytes = b""  # what follows `end` (a record cut short by a crash)


def scan(data: bytes, validate: Validate | None = None) -> Scan:
    """Read framed records; damaged lines are reported, never raised."""
    result = Scan()
    position = 0
    while position < len(data):
        newline = data.find(b"\n", position)
        if newline == -1:
            break
        line = data[position : newline + 1]
        position = newline + 1
        result.end = position
        try:
            record = decode(line, validate)
        except ValueError as error:
            result.damaged.append((line, str(error)))
            continue
        result.records.append(record)
        result.lines.append(line)
    result.torn = data[result.end :]
    return result


def decode(line: bytes, validate: Validate | None = None) -> dict[str, Any]:
    """The record of one framed line (with its newline); ValueError says why it is unusable."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) != 4 or parts[0] != MAGIC:
        raise ValueError("not a record line")
    _, length, checksum, payload = parts
    if not length.isdigit() or int(length) != len(payload):
        raise ValueError(f"length {length[:20]!r} does not match the {len(payload)} bytes that follow")
    if f"{zlib.crc32(payload):08x}".encode() != checksum:
        raise ValueError("checksum mismatch")
    return parse_object(payload, validate)


def parse_object(payload: bytes, validate: Validate | None = None) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes, checked by `validate`; ValueError says what is wrong."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8: {error.reason} at byte {error.start}") from None
    try:
        record = json.loads(text)
    except ValueError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    if validate is not None:
        validate(record)
    return record


class Quarantine:
    """`quarantine.jsonl`: unusable records with the reason, for a person to look at."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / QUARANTINE_NAME

    def put(self, source: str, damaged: Iterable[tuple[bytes, str]]) -> int:
        """Keep each (raw, reason) of `source` (a file name); returns how many."""
        entries = list(damaged)
        if not entries:
            return 0
        now = datetime.now(UTC).isoformat(timespec="seconds")
        lines = []
        for number, (raw, reason) in enumerate(entries, 1):
            entry: dict[str, Any] = {"quarantined_at": now, "file": source, "reason": reason}
            try:
                entry["raw"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                entry["raw_base64"] = base64.b64encode(raw).decode("ascii")
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
            if number <= _LOGGED_PER_SCAN:
                log.error("spool.quarantined", file=source, reason=reason, quarantine=str(self.path))
        if len(entries) > _LOGGED_PER_SCAN:
            log.error("spool.quarantined_more", file=source, count=len(entries), quarantine=str(self.path))
        append_durably(self.path, "".join(lines).encode("utf-8"))
        return len(entries)


def read_file(path: Path) -> bytes:
    """The bytes of a spool or checkpoint file (empty if there is none). Anything but a regular
    file (a device, a FIFO) is refused: reading /dev/zero or /dev/full would never end."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return b""
    if not stat.S_ISREG(status.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return path.read_bytes()


def append_durably(path: Path, data: bytes) -> None:
    """Append and fsync (a plain log file: rejected and quarantined records)."""
    created = not path.exists()
    with path.open("ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        sync_directory(path.parent)


def write_atomically(path: Path, data: bytes, temporary: Path | None = None) -> None:
    """Replace `path` with `data`: write a temporary file, fsync it, rename it, fsync the directory."""
    temporary = temporary or path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(descriptor, data, 0)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    temporary.replace(path)
    sync_directory(path.parent)


def write_all(descriptor: int, data: bytes, offset: int) -> None:
    """pwrite until everything is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view, offset)
        view, offset = view[written:], offset + written


def sync_directory(directory: Path) -> None:
    """Make a created or renamed entry durable (its directory's metadata)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DiskThread:
    """One thread for all disk I/O of the service, in the order it was asked for."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="talkmeter-disk")

    async def __call__(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        # Submitted as soon as this is awaited, before anything else runs: the order of calls holds.
        call = functools.partial(function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
