"""Reading recorded AMI captures: the bytes exactly as Asterisk sent them, and optional receive times.

A capture is what `talkmeter replay` audits and what our tests use as ground truth. Without
`timestampevents = yes` the events carry no time of their own; a recorder may then keep a
`.timing` sidecar (JSON lines `{"off", "len", "wall"}`, one per `recv()` chunk). Each message is
dated by the chunk that holds the end of its frame, as the daemon would have dated it live. With no
sidecar, messages get the last time seen (or 0.0), and the call model reports the missing
timestamps once.

Some events wait for a later stamp to tell their time (telephony.stamps judges every stamp):

* those before the first believed stamp (the first stamps were not plausible) take it, earlier by
  the sidecar's receive clock if there is one: an event fed with no time at all would start a
  conversation in 1970 and report `no_timestamp` on a PBX that stamps its events;
* without a sidecar, a stamp more than the tolerance ahead of the stream (a quiet night, or one
  wild stamp) waits, with what follows it, for the next stamp: if that one goes on where the stream
  was, the jump takes the time the stream had before it and is reported. A wild time fed to the
  call model would stretch its conversation to it (time never runs backwards in a conversation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from telephony.framing import FrameReader, Malformed, Message
from telephony.stamps import StreamClock, Verdict


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
    receive clock) is replaced by the estimate, or, while the capture has given no time yet, by the
    first stamp believed later, and reported to `on_replaced(message, reason)`; so is a lone jump
    ahead that the next stamp undoes.
    """
    reader = FrameReader(wanted)
    clock = StreamClock()
    last = 0.0
    # Events waiting for the stream to tell their time: those before the first believed stamp, or
    # a jump ahead and what follows it until the next stamp (a quiet night, or one wild stamp).
    held: list[tuple[Message | Malformed, float, Verdict | None]] = []  # (message, wall, verdict)
    for chunk, wall in _chunks(data, timing):
        for framed in reader.feed(chunk):
            message, verdict = framed, None
            if isinstance(framed, Message) and "Timestamp" in framed.headers:
                message, verdict = _judged(framed, clock, wall if timing else None, on_replaced)
            if held and verdict is not None and verdict.believed:
                for waited, received in _released(held, verdict, wall if timing else None, on_replaced):
                    last = received if timing else (_time_of(waited) or last)
                    yield waited, last
                held.clear()
            if held or (verdict is not None and (verdict.at is None or verdict.jump)):
                held.append((message, wall, verdict))
                continue
            if timing:
                last = wall
            elif isinstance(message, Message) and message.timestamp is not None:
                last = message.timestamp
            yield message, last
    for message, wall, _ in held:  # nothing came to tell: as they are
        last = wall if timing else (_time_of(message) or last)
        yield message, last
    for leftover in reader.flush():
        yield leftover, last


def _chunks(data: bytes, timing: list[Chunk] | None) -> list[tuple[bytes, float]]:
    """The capture as the `recv()` chunks of its sidecar, with their receive times (or one, at 0.0)."""
    if not timing:
        return [(data, 0.0)]
    chunks = [(data[c.offset : c.offset + c.length], c.wall) for c in timing]
    covered = timing[-1].offset + timing[-1].length
    if covered < len(data):
        chunks.append((data[covered:], timing[-1].wall))
    return chunks


def _released(
    held: list[tuple[Message | Malformed, float, Verdict | None]],
    verdict: Verdict,
    now: float | None,
    on_replaced: Callable[[Message, str], None] | None,
) -> Iterator[tuple[Message | Malformed, float]]:
    """The held events, dated now that a stamp after them was judged (`verdict`; `now`: the
    sidecar's receive clock at it, if any).

    Before the first believed stamp, an event whose stamp was removed takes the first believed
    one, earlier by what the receive clock says passed in between. A jump ahead that the stamp
    after it undid (`Verdict.replaces_jump`) takes the time the stream had before it, and so do the
    stamps replaced by an estimate made from it.
    """
    first, undone = verdict.at, verdict.replaces_jump
    assert first is not None
    for n, (message, wall, judged) in enumerate(held):
        if not isinstance(message, Message) or judged is None:
            yield message, wall
        elif judged.at is None:  # before any believed stamp
            yield message.restamped(first if now is None else first - max(0.0, now - wall)), wall
        elif undone is not None and (n == 0 or not judged.believed):
            if n == 0 and on_replaced is not None:
                stamp = message.headers["Timestamp"]
                on_replaced(message, f"Timestamp {stamp[:40]} is ahead of the stamps before and after it")
            yield message.restamped(undone), wall
        else:
            yield message, wall


def _time_of(message: Message | Malformed) -> float | None:
    return message.timestamp if isinstance(message, Message) else None


def _judged(
    message: Message,
    clock: StreamClock,
    received: float | None,
    on_replaced: Callable[[Message, str], None] | None,
) -> tuple[Message, Verdict]:
    verdict = clock.judge(message.headers["Timestamp"], received)
    if verdict.reason is None:
        return message, verdict
    if on_replaced is not None:
        on_replaced(message, verdict.reason)
    if verdict.at is None:
        return Message({key: value for key, value in message.headers.items() if key != "Timestamp"}), verdict
    return message.restamped(verdict.at), verdict
