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
#: the longest header value kept; what the call model reads (channel names, caller IDs, extensions)
#: is far shorter, and nothing longer may reach the database
MAX_VALUE_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: control bytes other than CR and LF (deleted by `bytes.translate`: a frame that shrinks has some)
_CONTROL_BYTES = bytes([*range(0x00, 0x0A), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


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


def _needs_cleaning(frame: bytes) -> bool:
    """A cheap look at the raw frame: may it hold a control character? (C0 and DEL, a CR or LF
    that is not a line break, or a `\xc2` lead byte, which U+0080..U+009F start with in UTF-8)"""
    return (
        len(frame.translate(None, _CONTROL_BYTES)) != len(frame)
        or b"\xc2" in frame
        or frame.count(b"\r") != frame.count(b"\n")
    )


def parse_frame(frame: bytes) -> Message | Malformed:
    """Parse one complete frame (without its terminating empty line)."""
    headers: dict[str, str] = {}
    text = decode(frame)
    unsafe = _needs_cleaning(frame)
    for line in text.split("\r\n"):
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


class FrameReader:
    """Incremental AMI framer: feed it bytes as they arrive, get whole messages back.

    `wanted` is the set of event names to keep; other events are dropped undecoded. Responses and
    banners are always kept. `None` keeps everything. Dropped events are counted by name in
    `dropped_by_name` (pass a dict to share the counts across readers, e.g. across sessions).
    """

    def __init__(
        self, wanted: Iterable[str] | None = None, dropped_by_name: dict[bytes, int] | None = None
    ) -> None:
        self._buffer = b""
        self._wanted: frozenset[bytes] | None = (
            None if wanted is None else frozenset(name.encode() for name in wanted)
        )
        self.dropped_by_name = {} if dropped_by_name is None else dropped_by_name

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_name.values())

    def feed(self, data: bytes) -> list[Message | Malformed]:
        buffer = self._buffer + data if self._buffer else data
        frames = buffer.split(_END)
        self._buffer = frames.pop()
        out: list[Message | Malformed] = []
        if len(self._buffer) > MAX_FRAME_BYTES:
            out.append(Malformed(self._buffer[:200], "frame too long without terminator"))
            self._buffer = b""
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

    def flush(self) -> list[Message | Malformed]:
        """Return what is left in the buffer at end of stream (a truncated last frame)."""
        rest, self._buffer = self._buffer.strip(b"\r\n"), b""
        if not rest:
            return []
        return [Malformed(rest[:200], "stream ended inside a frame")]
