"""Reading recorded AMI captures: the bytes exactly as Asterisk sent them, and optional receive times.

A capture is what `talkmeter replay` audits and what our tests use as ground truth. Without
`timestampevents = yes` the events carry no time of their own; a recorder may then keep a
`.timing` sidecar (JSON lines `{"off", "len", "wall"}`, one per `recv()` chunk). Each message is
dated by the chunk that holds the end of its frame, as the daemon would have dated it live. With no
sidecar, messages get the last time seen (or 0.0), and the call model reports the missing
timestamps once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from telephony.framing import FrameReader, Malformed, Message


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    length: int
    wall: float


def parse_timing(lines: Iterable[str]) -> list[Chunk]:
    """Parse a `.timing` sidecar; raises ValueError naming the bad line."""
    chunks = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            chunks.append(Chunk(int(record["off"]), int(record["len"]), float(record["wall"])))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"timing line {number}: {error}") from error
    return chunks


def read_capture(
    data: bytes, timing: list[Chunk] | None = None, wanted: Iterable[str] | None = None
) -> Iterator[tuple[Message | Malformed, float]]:
    """Yield (message, receive time) for every message of a capture, in order."""
    reader = FrameReader(wanted)
    if timing:
        chunks = [(data[c.offset : c.offset + c.length], c.wall) for c in timing]
        covered = timing[-1].offset + timing[-1].length
        if covered < len(data):
            chunks.append((data[covered:], timing[-1].wall))
    else:
        chunks = [(data, 0.0)]
    last = 0.0
    for chunk, wall in chunks:
        for message in reader.feed(chunk):
            if timing:
                last = wall
            elif isinstance(message, Message) and message.timestamp is not None:
                last = message.timestamp
            yield message, last
    for leftover in reader.flush():
        yield leftover, last
