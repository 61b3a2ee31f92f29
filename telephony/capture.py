"""Reading recorded AMI captures: the bytes exactly as Asterisk sent them, and optional receive times.

A capture is what `talkmeter replay` audits and what our tests use as ground truth. Without
`timestampevents = yes` the events carry no time of their own; a recorder may then keep a
`.timing` sidecar (JSON lines `{"off", "len", "wall"}`, one per `recv()` chunk). Each message is
dated by the chunk that holds the end of its frame, as the daemon would have dated it live. With no
sidecar, messages get the last time seen (or 0.0), and the call model reports the missing
timestamps once.

A capture whose first stamps are not believed (telephony.stamps) holds those events back until the
first believed stamp, and dates them with it (earlier by the sidecar's receive clock, if any): an
event fed with no time at all would start a conversation in 1970 and report `no_timestamp` on a PBX
that stamps its events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

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


def read_capture(
    data: bytes,
    timing: list[Chunk] | None = None,
    wanted: Iterable[str] | None = None,
    on_replaced: Callable[[Message, str], None] | None = None,
) -> Iterator[tuple[Message | Malformed, float]]:
    """Yield (message, receive time) for every message of a capture, in order.

    A `Timestamp` that is not believed (telephony.stamps: the sidecar's receive times are the
    receive clock) is replaced by the estimate, or, while the capture has given no time yet, by the
    first stamp believed later, and reported to `on_replaced(message, reason)`.
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
    held: list[tuple[Message | Malformed, float, bool]] = []  # (message, wall, its stamp removed)
    for chunk, wall in chunks:
        for framed in reader.feed(chunk):
            message, removed = framed, False
            if isinstance(framed, Message) and "Timestamp" in framed.headers:
                message = _judged(framed, clock, wall if timing else None, on_replaced)
                removed = "Timestamp" not in message.headers
            if removed or held:
                # No stamp believed yet: wait for the first rather than date the event 0.0 (1970).
                held.append((message, wall, removed))
                first = message.timestamp if isinstance(message, Message) and not removed else None
                if first is not None:
                    yield from _dated(held, first, wall if timing else None)
                    held.clear()
                    last = wall if timing else first
                continue
            if timing:
                last = wall
            elif isinstance(message, Message) and message.timestamp is not None:
                last = message.timestamp
            yield message, last
    for message, wall, _ in held:  # no stamp was ever believed: as in a capture without any
        yield message, wall if timing else last
    for leftover in reader.flush():
        yield leftover, last


def _dated(
    held: list[tuple[Message | Malformed, float, bool]], first: float, now: float | None
) -> Iterator[tuple[Message | Malformed, float]]:
    """The events held before the first believed stamp `first`, stamped with it: earlier by what
    the receive clock (a sidecar's, `now` being its time at `first`) says passed in between."""
    for message, wall, removed in held:
        at = first if now is None else first - max(0.0, now - wall)
        dated = message.restamped(at) if removed and isinstance(message, Message) else message
        yield dated, (wall if now is not None else at)


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
