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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from telephony.framing import FrameReader, Malformed, Message
from telephony.stamps import StreamClock


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


def timing_beside(capture: Path, sidecar: Path | None = None) -> list[Chunk] | None:
    """The receive times of a capture: `sidecar`, else `<capture>.timing` if there is one (None
    without). Raises ValueError naming the file and what is wrong with it."""
    sidecar = sidecar or capture.with_name(capture.name + ".timing")
    if not sidecar.is_file():
        return None
    try:
        return parse_timing(sidecar.read_text(encoding="utf-8").splitlines())
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{sidecar}: {error}") from error


def read_capture(
    data: bytes,
    timing: list[Chunk] | None = None,
    wanted: Iterable[str] | None = None,
    on_replaced: Callable[[Message, str], None] | None = None,
) -> Iterator[tuple[Message | Malformed, float]]:
    """Yield (message, receive time) for every message of a capture, in order.

    A `Timestamp` that is not believed (telephony.stamps: the sidecar's receive times are the
    receive clock) is replaced by the estimate, or removed while the capture has given no time
    yet, and reported to `on_replaced(message, reason)`.
    """
    reader = FrameReader(wanted)
    if timing:
        chunks = [(data[c.offset : c.offset + c.length], c.wall) for c in timing]
        covered = timing[-1].offset + timing[-1].length
        if covered < len(data):
            chunks.append((data[covered:], timing[-1].wall))
    else:
        chunks = [(data, 0.0)]
    clock = StreamClock()
    last = 0.0
    for chunk, wall in chunks:
        for framed in reader.feed(chunk):
            message = framed
            if isinstance(framed, Message) and "Timestamp" in framed.headers:
                message = _judged(framed, clock, wall if timing else None, on_replaced)
            if timing:
                last = wall
            elif isinstance(message, Message) and message.timestamp is not None:
                last = message.timestamp
            yield message, last
    for leftover in reader.flush():
        yield leftover, last


def _judged(
    message: Message,
    clock: StreamClock,
    received: float | None,
    on_replaced: Callable[[Message, str], None] | None,
) -> Message:
    verdict = clock.judge(message.headers["Timestamp"], received)
    if verdict.reason is None:
        return message
    if on_replaced is not None:
        on_replaced(message, verdict.reason)
    if verdict.at is None:
        return Message({key: value for key, value in message.headers.items() if key != "Timestamp"})
    return message.restamped(verdict.at)
