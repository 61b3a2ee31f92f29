"""The finished conversation as accounting sees it, read from the call tracker's JSON dict.

Accounting takes the dict that `talkmeter replay --dry-run` prints (one per conversation) and
never the call model's own classes. Times become integer epoch milliseconds here, rounded half
up from Asterisk's microseconds: allowances are consumed with millisecond precision, and integer
arithmetic keeps "free + prepaid + paid = talk" exact. Adjacent segments share their boundary,
so rounding each boundary once can neither open gaps nor create overlaps. Text is cleaned on the
way in (no control characters, bounded length): a spool written by an older version may hold
what PostgreSQL cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from accounting.values import value_class
from telephony.framing import printable

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Direction = Literal["inbound", "outbound"]


class InvalidConversation(ValueError):
    """The conversation dict is malformed; retrying will not help."""


@value_class
class Interval:
    """A stretch of talk with one consultant, or of hold when `hold` is true."""

    start_ms: int
    end_ms: int
    hold: bool
    consultant: str | None = None

    @property
    def ms(self) -> int:
        return self.end_ms - self.start_ms


@value_class
class Talk:
    """What rating needs of a conversation: who, when, on which line, and the talk intervals."""

    conversation_id: str
    started_ms: int
    line: str | None
    intervals: tuple[Interval, ...]

    @property
    def talk_ms(self) -> int:
        return sum(interval.ms for interval in self.intervals)

    @property
    def hold_ms(self) -> int:
        return sum(interval.ms for interval in self.intervals if interval.hold)


@dataclass(frozen=True, slots=True)
class FinishedConversation:
    conversation_id: str
    pbx: str
    direction: Direction
    client_number: str | None
    client_number_raw: str
    line: str | None
    consultants: tuple[str, ...]
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime
    wait_ms: int | None
    estimated: bool
    intervals: tuple[Interval, ...]
    instance: str | None = None
    """The talkmeter instance that measured it (None: recorded before instances were named)."""

    @property
    def talk(self) -> Talk:
        return Talk(self.conversation_id, to_ms(self.started_at), self.line, self.intervals)


def parse_conversation(data: Mapping[str, Any]) -> FinishedConversation:
    """Validate the call tracker's dict; raise `InvalidConversation` naming the bad field."""
    try:
        return _parse(data)
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidConversation(f"bad conversation {data.get('conversation_id')!r}: {error!r}") from error


def _parse(data: Mapping[str, Any]) -> FinishedConversation:
    direction = data["direction"]
    if direction not in ("inbound", "outbound"):
        raise ValueError(f"direction {direction!r}")
    intervals = tuple(_interval(segment) for segment in data.get("segments") or ())
    started_at, ended_at = parse_time(data["started_at"]), parse_time(data["ended_at"])
    _check_intervals(intervals, to_ms(started_at), to_ms(ended_at))
    wait = data.get("wait_seconds")
    conversation_id = printable(str(data["conversation_id"]))
    if not conversation_id:
        raise ValueError("empty conversation_id")
    return FinishedConversation(
        conversation_id=conversation_id,
        pbx=printable(str(data.get("pbx") or "default")),
        direction=direction,
        client_number=_text(data.get("client_number")),
        client_number_raw=printable(str(data.get("client_number_raw") or "")),
        line=_text(data.get("line")),
        consultants=tuple(printable(str(name)) for name in data.get("consultants") or ()),
        started_at=started_at,
        answered_at=parse_time(data["answered_at"]) if data.get("answered_at") else None,
        ended_at=ended_at,
        wait_ms=None if wait is None else round(float(wait) * 1000),
        estimated=bool(data.get("estimated", False)),
        intervals=intervals,
        instance=_text(data.get("instance")),
    )


def as_record(conversation: FinishedConversation) -> dict[str, Any]:
    """The conversation as the call tracker's JSON dict (`parse_conversation` reads it back)."""
    return {
        "conversation_id": conversation.conversation_id,
        "pbx": conversation.pbx,
        "instance": conversation.instance,
        "direction": conversation.direction,
        "client_number": conversation.client_number,
        "client_number_raw": conversation.client_number_raw,
        "line": conversation.line,
        "consultants": list(conversation.consultants),
        "started_at": conversation.started_at.isoformat(),
        "answered_at": None if conversation.answered_at is None else conversation.answered_at.isoformat(),
        "ended_at": conversation.ended_at.isoformat(),
        "wait_seconds": None if conversation.wait_ms is None else conversation.wait_ms / 1000,
        "talk_seconds": conversation.talk.talk_ms / 1000,
        "hold_seconds": conversation.talk.hold_ms / 1000,
        "segments": [
            {
                "consultant": interval.consultant,
                "start": from_ms(interval.start_ms).isoformat(),
                "end": from_ms(interval.end_ms).isoformat(),
                "seconds": interval.ms / 1000,
                "hold": interval.hold,
            }
            for interval in conversation.intervals
        ],
        "estimated": conversation.estimated,
    }


def _text(value: object) -> str | None:
    """Optional text as PostgreSQL can hold it (telephony.framing.printable), None when empty."""
    return printable(str(value)) or None if value else None


def _interval(segment: Mapping[str, Any]) -> Interval:
    consultant = segment.get("consultant")
    return Interval(
        start_ms=to_ms(parse_time(segment["start"])),
        end_ms=to_ms(parse_time(segment["end"])),
        hold=bool(segment.get("hold", False)),
        consultant=None if consultant is None else printable(str(consultant)),
    )


def _check_intervals(intervals: Sequence[Interval], started_ms: int, ended_ms: int) -> None:
    # Re-rating from a frontier relies on talk lying within [started_at, ended_at].
    if ended_ms < started_ms:
        raise ValueError("the conversation ends before it starts")
    if intervals and (intervals[0].start_ms < started_ms or intervals[-1].end_ms > ended_ms):
        raise ValueError("a segment lies outside the conversation's start and end")
    previous_end: int | None = None
    for interval in intervals:
        if interval.end_ms < interval.start_ms:
            raise ValueError("a segment ends before it starts")
        if previous_end is not None and interval.start_ms < previous_end:
            raise ValueError("segments overlap or are out of order")
        previous_end = interval.end_ms


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without offset: {text!r}")
    return moment


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds, rounded half up from microseconds, without float arithmetic."""
    delta = moment - EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return (micros + 500) // 1000


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)
