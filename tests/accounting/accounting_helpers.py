"""Builders shared by the accounting tests: contracts and conversations in a few words."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from accounting.contracts import Contract
from accounting.conversations import Interval, Talk, to_ms


def contract(**rules: Any) -> Contract:
    values: dict[str, Any] = {"contract_id": "K1", "client_id": "C1", "valid_from": date(2026, 1, 1)}
    if "rate_per_minute" in rules and rules["rate_per_minute"] is not None:
        rules["rate_per_minute"] = Decimal(str(rules["rate_per_minute"]))
        rules.setdefault("currency", "RUB")
    values.update(rules)
    if values.get("rate_per_minute") is None:
        values.setdefault("overage", "flag")
    return Contract(**values)


def talk(
    conversation_id: str,
    start: str,
    *pieces: tuple[float, float] | tuple[float, float, bool],
    line: str | None = None,
) -> Talk:
    """A conversation starting at `start` (ISO with offset); each piece is (offset seconds from
    the start, length in seconds[, hold]) and pieces follow each other."""
    origin = datetime.fromisoformat(start)
    intervals = []
    for piece in pieces:
        offset, length = piece[0], piece[1]
        hold = bool(piece[2]) if len(piece) == 3 else False
        begin = origin + timedelta(seconds=offset)
        intervals.append(Interval(to_ms(begin), to_ms(begin + timedelta(seconds=length)), hold))
    return Talk(conversation_id, to_ms(origin), line, tuple(intervals))


def conversation_dict(
    conversation_id: str,
    start: str,
    *pieces: tuple[float, float] | tuple[float, float, bool],
    number: str | None = "+74951234567",
    line: str | None = "74950000000",
    pbx: str = "default",
) -> dict[str, Any]:
    """The call tracker's JSON dict for a conversation built like `talk`."""
    origin = datetime.fromisoformat(start)
    segments = []
    for piece in pieces:
        begin = origin + timedelta(seconds=piece[0])
        end = begin + timedelta(seconds=piece[1])
        hold = bool(piece[2]) if len(piece) == 3 else False
        segments.append(
            {
                "consultant": "101",
                "start": begin.isoformat(),
                "end": end.isoformat(),
                "seconds": round(piece[1], 3),
                "hold": hold,
            }
        )
    ended = datetime.fromisoformat(segments[-1]["end"]) if segments else origin + timedelta(seconds=5)
    talk_seconds = round(sum(piece[1] for piece in pieces), 3)
    return {
        "conversation_id": conversation_id,
        "pbx": pbx,
        "direction": "inbound",
        "client_number": number,
        "client_number_raw": (number or "anonymous").lstrip("+"),
        "line": line,
        "consultants": ["101"] if segments else [],
        "started_at": origin.isoformat(),
        "answered_at": segments[0]["start"] if segments else None,
        "ended_at": ended.isoformat(),
        "wait_seconds": pieces[0][0] if pieces else None,
        "talk_seconds": talk_seconds,
        "hold_seconds": round(sum(p[1] for p in pieces if len(p) == 3 and p[2]), 3),
        "segments": segments,
        "estimated": False,
    }
