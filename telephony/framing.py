"""Cutting the AMI byte stream into messages, on bytes, before any decoding.

AMI is a line protocol: a message is a block of `Key: Value` lines ended by an empty line
(`\\r\\n\\r\\n`). A session opens with a one-line banner (`Asterisk Call Manager/11.0.0`) that has no
empty line after it, so it arrives glued to the first response.

Why frame on bytes: panoramisk 1.4 decodes every TCP chunk on its own with errors ignored, so a
UTF-8 caller name split across two reads loses characters. Here a message is decoded only once it
is whole.

Why filter before decoding: in real streams most events are VarSet, CEL, RTCP and other noise that
the call model never reads. The event name is the first line of a frame, so a frame whose name is not
wanted is dropped after one `startswith`-sized look, without building a dict. This is what lets the
pipeline run well above panoramisk's own parser.

Repeated headers (`ChanVariable`) keep their first value; nothing we read repeats.
Undecodable bytes: a message that is not valid UTF-8 is decoded as CP1251 (the usual legacy
encoding of Russian phones and trunks) rather than losing bytes.

Garbage cannot grow memory or swallow what follows it: an unfinished frame is held up to
`MAX_FRAME_BYTES`; past that, its overlong lines are skipped (a line still arriving is dropped up
to its end as it comes) and framing goes on with the next line. Garbage written without a line
break runs into the next frame's first line (`...Response: Success`); that frame start is found
and kept.

Input that cannot hurt: every key and value is stripped of control characters (a caller ID with a
NUL byte once sent its whole conversation to the rejected file: PostgreSQL text cannot hold NUL)
and cut to `MAX_VALUE_CHARS` (a 500 KB caller ID was stored verbatim). The raw caller ID the
conversation keeps is this cleaned value. One regular-expression look at the decoded frame decides
whether the slow, cleaning path is needed at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from telephony.stamps import read_stamp

BANNER_PREFIX = b"Asterisk Call Manager/"
_END = b"\r\n\r\n"
_EVENT = b"Event: "
#: a frame larger than this without a terminator is garbage (Asterisk's own limit is far lower)
MAX_FRAME_BYTES = 1 << 20
#: a line longer than this in an overlong frame is garbage, skipped
MAX_LINE_BYTES = 1 << 16
#: what a frame starts with: garbage glued in front of one is cut off there (`_salvage`)
_FRAME_STARTS = (b"Response: ", b"Event: ")
_LONGEST_START = max(len(start) for start in _FRAME_STARTS)
#: the longest header value kept; what the call model reads (channel names, caller IDs, extensions)
#: is far shorter, and nothing longer may reach the database
MAX_VALUE_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BYTES = bytes([*range(0x00, 0x20), 0x7F])  # C0, CR and LF included, and DEL


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded AMI message: an event, a response, or a session banner."""

    headers: dict[str, str]

    @property
    def event(self) -> str | None:
        return self.headers.get("Event")

    @property
    def response(self) -> str | None:
        return self.headers.get("Response")

    @property
    def banner(self) -> str | None:
        return self.headers.get("Banner")

    def get(self, key: str, default: str = "") -> str:
        return self.headers.get(key, default)

    @property
    def timestamp(self) -> float | None:
        """The `Timestamp` header as epoch seconds, or None when absent, unreadable or not a
        plausible time (`inf`, `nan`, `-1`, `1e300`: see telephony.stamps)."""
        raw = self.headers.get("Timestamp")
        return None if raw is None else read_stamp(raw)

    def restamped(self, at: float) -> Message:
        """The same message with `Timestamp` set to `at` (a stamp that was not believed, replaced)."""
        return Message({**self.headers, "Timestamp": f"{at:.6f}"})


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame that could not be read as AMI; kept (truncated) so it can be reported."""

    raw: bytes
    reason: str


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1251", errors="replace")


def printable(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """`text` without control characters (Unicode Cc: NUL, escapes, stray CR or LF), at most
    `limit` characters long: what may reach the call model or the database."""
    return _CONTROL.sub("", text)[:limit]


def _needs_cleaning(frame: bytes, lines: int) -> bool:
    """A cheap look at the raw frame: may it hold a control character? The only control bytes of a
    clean frame are the CR LF between its `lines`; a `\xc2` lead byte may start U+0080..U+009F."""
    return len(frame) - len(frame.translate(None, _CONTROL_BYTES)) != 2 * (lines - 1) or b"\xc2" in frame


def parse_frame(frame: bytes) -> Message | Malformed:
    """Parse one complete frame (without its terminating empty line)."""
    headers: dict[str, str] = {}
    lines = decode(frame).split("\r\n")
    unsafe = _needs_cleaning(frame, len(lines))
    for line in lines:
        key, sep, value = line.partition(": ")
        if unsafe:
            key, value = printable(key), printable(value)
        elif len(value) > MAX_VALUE_CHARS:
            value = value[:MAX_VALUE_CHARS]
        if not sep:
            if line.startswith("Asterisk Call Manager/"):
                headers.setdefault("Banner", printable(line))
            elif line.endswith(":") and line[:-1] and " " not in line:
                headers.setdefault(printable(line[:-1]), "")  # `Key:` with an empty value
            continue  # a stray line without a colon is skipped; the rest of the frame still counts
        headers.setdefault(key, value)
    if not headers:
        return Malformed(frame[:200], "no 'Key: Value' lines")
    return Message(headers)


def _salvage(line: bytes, *, from_start: bool = False) -> bytes:
    """The end of an overlong line from the last frame start in it (garbage written without a
    line break runs into the next frame's first line, `Response: Success`), or nothing.
    `from_start`: `line` is the end of a longer one, so a frame start at 0 counts too."""
    start = max(line.rfind(marker) for marker in _FRAME_STARTS)
    return line[start:] if start > 0 or (from_start and start == 0) else b""


class FrameReader:
    """Incremental AMI framer: feed it bytes as they arrive, get whole messages back.

    `wanted` is the set of event names to keep; other events are dropped undecoded. Responses and
    banners are always kept. `None` keeps everything. Dropped events are counted by name in
    `dropped_by_name` (pass a dict to share the counts across readers, e.g. across sessions).

    Memory is bounded whatever arrives: a frame still without its end may hold at most
    `MAX_FRAME_BYTES`. When it grows past that, lines longer than `MAX_LINE_BYTES` are dropped (a
    line still arriving is skipped up to its end as it comes), and framing goes on with the next
    line, so a reply that follows a garbage line is read as if the garbage had never been there.
    """

    def __init__(
        self, wanted: Iterable[str] | None = None, dropped_by_name: dict[bytes, int] | None = None
    ) -> None:
        self._buffer = b""
        self._wanted: frozenset[bytes] | None = (
            None if wanted is None else frozenset(name.encode() for name in wanted)
        )
        self.dropped_by_name = {} if dropped_by_name is None else dropped_by_name
        self._skipping = False  # inside an overlong line: drop bytes up to its end
        self._tail = b""  # the last bytes skipped: a frame start may straddle two reads
        self.skipped_bytes = 0

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_name.values())

    def feed(self, data: bytes) -> list[Message | Malformed]:
        if self._skipping:
            data = self._skip(data)
            if self._skipping:
                return []
        buffer = self._buffer + data if self._buffer else data
        frames = buffer.split(_END)
        self._buffer = frames.pop()
        out: list[Message | Malformed] = []
        if len(self._buffer) > MAX_FRAME_BYTES:
            out.append(self._overflow(self._buffer))
        wanted, dropped = self._wanted, self.dropped_by_name
        for raw in frames:
            frame = raw.lstrip(b"\r\n")
            if not frame:
                continue
            if wanted is not None and frame.startswith(_EVENT):
                end = frame.find(b"\r", 7)
                name = frame[7:end] if end != -1 else frame[7:]
                if name not in wanted:
                    dropped[name] = dropped.get(name, 0) + 1
                    continue
            out.append(parse_frame(frame))
        return out

    def _skip(self, data: bytes) -> bytes:
        """Drop the rest of an overlong line; what follows its end (or a frame start glued to it,
        see `_salvage`) is returned for framing."""
        end = data.find(b"\n")
        if end == -1:
            self.skipped_bytes += len(data)
            self._remember(data)
            return b""
        self._skipping = False
        glued = _salvage(self._tail + data[:end], from_start=True)
        self.skipped_bytes += end + 1 - len(glued)
        return glued + data[end:] if glued else data[end + 1 :]

    def _remember(self, skipped: bytes) -> None:
        """While skipping: keep what may be a frame glued to the overlong line (from its last frame
        start, bounded), else the last bytes, which may hold the first part of a frame start."""
        seen = self._tail + skipped
        glued = _salvage(seen, from_start=True)
        self._tail = glued if 0 < len(glued) <= MAX_LINE_BYTES else seen[1 - _LONGEST_START :]

    def _overflow(self, unfinished: bytes) -> Malformed:
        """An unfinished frame grew too long: keep its sane lines, drop the overlong ones."""
        lines = unfinished.split(b"\r\n")
        arriving = lines.pop()  # the line still coming in
        kept = b"".join(
            (line if len(line) <= MAX_LINE_BYTES else _salvage(line)) + b"\r\n"
            for line in lines
            if len(line) <= MAX_LINE_BYTES or _salvage(line)
        )
        if len(arriving) > MAX_LINE_BYTES:
            self._skipping = True  # the rest of it is dropped as it arrives
            self._tail = b""
            self._remember(arriving)
            self.skipped_bytes += len(arriving)
            arriving = b""
        if len(kept) + len(arriving) > MAX_FRAME_BYTES:
            kept = b""  # many lines and still no end: not AMI, and the next line starts afresh
        self._buffer = kept + arriving
        return Malformed(unfinished[:200], f"frame over {MAX_FRAME_BYTES} bytes: overlong lines skipped")

    def flush(self) -> list[Message | Malformed]:
        """Return what is left in the buffer at end of stream (a truncated last frame)."""
        rest, self._buffer, self._skipping = self._buffer.strip(b"\r\n"), b"", False
        if not rest:
            return []
        return [Malformed(rest[:200], "stream ended inside a frame")]
