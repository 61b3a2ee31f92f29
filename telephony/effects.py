"""What the call model tells the world: effects, each stamped with the time it happened.

The call model never does anything itself; feeding it an AMI event returns a list of these.
`ConversationEnded` carries the finished `Conversation`, the record that is printed by
`talkmeter replay`/`watch` and rated by accounting. Times are epoch seconds (floats, microsecond
precision as Asterisk sends them); conversion to ISO-8601 happens only at the edge (`to_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Direction = Literal["inbound", "outbound"]


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of the conversation's connected time with one consultant, talking or on hold."""

    consultant: str | None
    start: float
    end: float
    hold: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class Conversation:
    """One client leg, from its trunk channel's appearance to its hangup."""

    conversation_id: str
    pbx: str
    channel: str
    direction: Direction | None  # None until an event decides it (see telephony.calls)
    client_number: str | None
    client_number_raw: str
    line: str | None
    started_at: float
    ended_at: float | None = None
    segments: list[Segment] = field(default_factory=list)
    consultants: list[str] = field(default_factory=list)
    estimated: bool = False

    @property
    def answered_at(self) -> float | None:
        return self.segments[0].start if self.segments else None

    @property
    def talk_seconds(self) -> float:
        return sum(segment.seconds for segment in self.segments)

    @property
    def hold_seconds(self) -> float:
        return sum(segment.seconds for segment in self.segments if segment.hold)

    @property
    def wait_seconds(self) -> float | None:
        """Inbound only: from the trunk channel's appearance to the first consultant's answer."""
        if self.direction != "inbound" or self.answered_at is None:
            return None
        return self.answered_at - self.started_at

    def to_json(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "pbx": self.pbx,
            "direction": self.direction,
            "client_number": self.client_number,
            "client_number_raw": self.client_number_raw,
            "line": self.line,
            "consultants": list(self.consultants),
            "started_at": iso(self.started_at),
            "answered_at": iso(self.answered_at),
            "ended_at": iso(self.ended_at),
            "wait_seconds": _round(self.wait_seconds),
            "talk_seconds": _round(self.talk_seconds),
            "hold_seconds": _round(self.hold_seconds),
            "segments": [
                {
                    "consultant": segment.consultant,
                    "start": iso(segment.start),
                    "end": iso(segment.end),
                    "seconds": _round(segment.seconds),
                    "hold": segment.hold,
                }
                for segment in self.segments
            ],
            "estimated": self.estimated,
        }


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="microseconds")


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


@dataclass(frozen=True, slots=True)
class ConversationStarted:
    at: float
    conversation: Conversation


@dataclass(frozen=True, slots=True)
class TalkStarted:
    """The client became connected to (or held by) a consultant after not being so."""

    at: float
    conversation_id: str
    consultant: str | None


@dataclass(frozen=True, slots=True)
class TalkStopped:
    """The client is no longer connected nor held (reported once the debounce has passed)."""

    at: float
    conversation_id: str


@dataclass(frozen=True, slots=True)
class HoldStarted:
    at: float
    conversation_id: str
    by: str | None


@dataclass(frozen=True, slots=True)
class HoldStopped:
    at: float
    conversation_id: str


@dataclass(frozen=True, slots=True)
class ConversationEnded:
    at: float
    conversation: Conversation


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Input the model could not use (unknown channel, malformed event); logged, never fatal."""

    at: float
    kind: str
    detail: str


Effect = (
    ConversationStarted | TalkStarted | TalkStopped | HoldStarted | HoldStopped | ConversationEnded | Anomaly
)
