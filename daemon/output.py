"""Output for people and for machines: a line per conversation, a summary table, progress.

Commands that measure calls (`demo`, `replay`) print for two readers. A person gets one short line
per conversation as it ends and, at the end, a table of what was measured: conversations,
answered, talk, hold and wait, in total and per consultant. A machine passes `--json` and gets the
conversation records only, one JSON object per line, nothing else on stdout.

Progress of long jobs goes to stderr, and only when stderr is a terminal: a line rewritten in place
at most five times a second, erased when the job ends. A pipe, a file or journald never sees it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from accounting.reports import duration, fixed_width


def json_line(conversation: dict[str, Any]) -> str:
    return json.dumps(conversation, ensure_ascii=False)


def conversation_line(conversation: dict[str, Any]) -> str:
    """`13:09:33  inbound  +74951234567 -> 101, 102  talk 0:00:15  hold 0:00:06  wait 3.5 s`."""
    started = datetime.fromisoformat(conversation["started_at"]).astimezone().strftime("%H:%M:%S")
    raw = conversation["client_number_raw"]
    number = conversation["client_number"] or (f"withheld ({raw})" if raw else "withheld")
    consultants = ", ".join(conversation["consultants"]) or "nobody answered"
    parts = [started, f"{conversation['direction']:<8}", f"{number} -> {consultants}"]
    if conversation["consultants"]:
        parts.append(f"talk {clock(conversation['talk_seconds'])}")
        if conversation["hold_seconds"]:
            parts.append(f"hold {clock(conversation['hold_seconds'])}")
    if conversation["wait_seconds"] is not None:
        parts.append(f"wait {conversation['wait_seconds']:.1f} s")
    if conversation["estimated"]:
        parts.append("(estimated)")
    return "  ".join(parts)


def clock(seconds: float) -> str:
    """h:mm:ss, to the nearest second."""
    return duration(Decimal(round(seconds)))


@dataclass(slots=True)
class _Tally:
    conversations: int = 0
    answered: int = 0
    talk: float = 0.0
    hold: float = 0.0
    waits: float = 0.0
    waited: int = 0

    def row(self, name: str) -> tuple[str, ...]:
        wait = f"{self.waits / self.waited:.1f} s" if self.waited else "-"
        return (name, str(self.conversations), str(self.answered), clock(self.talk), clock(self.hold), wait)


class Summary:
    """Totals of the conversations added, overall and per consultant, as a table for people.

    Per consultant: the conversations they talked in, those they answered first, their own talk and
    hold (their segments), and the average wait of the conversations they answered.
    """

    HEADER = ("", "conversations", "answered", "talk", "hold", "avg wait")

    def __init__(self) -> None:
        self.total = _Tally()
        self.consultants: dict[str, _Tally] = {}

    def add(self, conversation: dict[str, Any]) -> None:
        total = self.total
        total.conversations += 1
        total.talk += conversation["talk_seconds"]
        total.hold += conversation["hold_seconds"]
        segments = conversation["segments"]
        if segments:
            total.answered += 1
        wait = conversation["wait_seconds"]
        if wait is not None:
            total.waits += wait
            total.waited += 1
        for name in conversation["consultants"]:
            self.consultants.setdefault(name, _Tally()).conversations += 1
        for segment in segments:
            tally = self.consultants.setdefault(segment["consultant"] or "?", _Tally())
            tally.talk += segment["seconds"]
            if segment["hold"]:
                tally.hold += segment["seconds"]
        if segments:
            first = self.consultants.setdefault(segments[0]["consultant"] or "?", _Tally())
            first.answered += 1
            if wait is not None:
                first.waits += wait
                first.waited += 1

    def table(self) -> str:
        body = [self.total.row("all")]
        body += [self.consultants[name].row(f"consultant {name}") for name in sorted(self.consultants)]
        return fixed_width(self.HEADER, body, text_columns={0})


def summarise(conversations: Iterable[dict[str, Any]]) -> Summary:
    summary = Summary()
    for conversation in conversations:
        summary.add(conversation)
    return summary


class Progress:
    """`label: 1,234 of 5,000` rewritten in place on a terminal; silent anywhere else."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        every: float = 0.2,
    ) -> None:
        self.label, self.total = label, total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._clock, self._every = clock, every
        self._last = clock()
        self._width = 0

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled or self._clock() - self._last < self._every:
            return
        self._last = self._clock()
        of = f" of {self.total:,}" if self.total is not None else ""
        text = f"{self.label}: {done:,}{of}{note}"
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def write_line(text: str, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(text + "\n")
    out.flush()
