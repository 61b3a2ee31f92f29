"""Believing the PBX's clock: when an event's `Timestamp` is used, and what stands in for it.

Theory of operation
-------------------
With `timestampevents = yes` Asterisk stamps every event, and the call model measures talk with
those stamps. A stamp that cannot be right must neither crash the service (`inf` overflowed when a
conversation was written out) nor move talk (a BridgeEnter stamped `-1` or `nan` added 3.5 s to a
70 s call), so the edge that reads events judges each stamp against the stream (`StreamClock`)
and replaces one it does not believe with its best estimate: the last stamp it believed plus the
time elapsed since then on the receive clock (live), or the last stamp it believed (a capture read
from a file, which has no receive clock).

A stamp is believed when it is a finite number within the years 2000 to 2100 (the only values
`Message.timestamp` returns) and consistent with the stream:

* not more than `TOLERANCE` behind the estimate: events are stamped when they happen and read soon
  after (stamps of different PBX threads invert by microseconds, a busy PBX delays by seconds);
* live, not more than `TOLERANCE` ahead of it: the PBX's clock runs as fast as ours. The bound is
  generous because a capture replayed faster than real time (`talkmeter simulate --speed`) runs
  ahead by the silence between two events, up to the tolerance.
* A capture read from a file keeps its own clock: a stamp ahead of the last one is believed
  (between two events there may be a quiet night), one far behind it is not, unless the stream
  shows that the odd one out was the anchor: the stamp right after a jump ahead (more than
  `TOLERANCE`) that agrees with the stamps before the jump undoes it (the jump was one wild stamp:
  `Verdict.replaces_jump` gives the time to use for it instead, and `telephony.capture` holds the
  jumped event back until the next stamp tells), and two stamps in a row that agree with each
  other but are both far behind the anchor are believed (the anchor was wild, and nothing before
  it says so: the first stamp of a capture). Two, not more: every stamp rejected meanwhile is
  dated at the wild anchor, and a true stream never puts two stamps in a row far behind its
  clock. So one wild stamp, wherever it is, moves the times of no more than the events next to it.

The first plausible stamp of a session is believed whatever it says and anchors the clock: a
replayed capture is days behind our wall clock, and that is its clock. The link restarts the
clock at every login, so a PBX clock that stepped by more than the tolerance is followed again
from the next session (meanwhile its stamps are replaced by the estimate, which still measures
durations right).

Why here, at the edge (`telephony.ami` live, `telephony.capture` for replays), and not in the call
model: only the edge knows the receive time and the AMI session (the warning is once per session),
the link's own event clock, which dates snapshots and ticks, must never take a bad stamp, and the
model stays a function of its input (events and times) that trusts what it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: 2000-01-01 and 2100-01-01, UTC: a stamp outside is not a time of this PBX
PLAUSIBLE_FROM = 946_684_800.0
PLAUSIBLE_UNTIL = 4_102_444_800.0
#: how far (seconds) a stamp may stray from the stream's estimate and still be believed
TOLERANCE = 300.0


def plausible(value: float) -> bool:
    return math.isfinite(value) and PLAUSIBLE_FROM <= value < PLAUSIBLE_UNTIL


def read_stamp(raw: str) -> float | None:
    """A `Timestamp` value as epoch seconds, or None when it is not a plausible time."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if plausible(value) else None


@dataclass(frozen=True, slots=True)
class Verdict:
    """`at`: the time to use (None before the stream has any time at all); `reason` if not believed."""

    at: float | None
    reason: str | None = None
    #: believed, but more than the tolerance ahead of the last (a capture): a quiet night, or a
    #: wild stamp; the next stamp tells (`replaces_jump`)
    jump: bool = False
    #: the stamp judged before this one was a lone jump ahead: the time to use for it instead
    replaces_jump: float | None = None

    @property
    def believed(self) -> bool:
        return self.reason is None


class StreamClock:
    """Judges the stamps of one stream, in order; pure (the receive time is an input)."""

    def __init__(self, tolerance: float = TOLERANCE) -> None:
        self.tolerance = tolerance
        self._stamp: float | None = None  # the last stamp believed
        self._since: float | None = None  # the receive clock when it came (None: no receive clock)
        self._before_jump: float | None = None  # a capture: the stamp believed before a jump ahead
        self._rejected: float | None = None  # a capture: the stamp just judged far behind

    def restart(self) -> None:
        """A new session: the next plausible stamp anchors the clock again."""
        self._stamp = self._since = self._before_jump = self._rejected = None

    def estimate(self, received: float | None = None) -> float | None:
        """When an event received at `received` (receive clock; None: unknown) most likely happened."""
        if self._stamp is None:
            return None
        if received is None or self._since is None:
            return self._stamp
        return self._stamp + max(0.0, received - self._since)

    def judge(self, raw: str, received: float | None = None) -> Verdict:
        """Believe `raw` (a `Timestamp` header value) or say why not and what to use instead."""
        value = read_stamp(raw)
        expected = self.estimate(received)
        if value is None:
            return Verdict(expected, f"Timestamp {raw[:40]!r} is not a plausible time")
        before_jump, rejected = self._before_jump, self._rejected
        self._before_jump = self._rejected = None  # only the stamp right after tells
        if expected is not None:
            if value < expected - self.tolerance:
                if received is None and before_jump is not None and value >= before_jump - self.tolerance:
                    self._stamp = value  # the jump was one wild stamp: the stream goes on
                    return Verdict(value, replaces_jump=before_jump)
                if received is None and rejected is not None and value >= rejected - self.tolerance:
                    self._stamp = value  # two in a row agree, and not with the anchor: it was wild
                    return Verdict(value)
                self._rejected = value if received is None else None
                return Verdict(expected, f"Timestamp {raw[:40]} is {expected - value:.0f} s behind")
            if received is not None and value > expected + self.tolerance:
                return Verdict(expected, f"Timestamp {raw[:40]} is {value - expected:.0f} s ahead")
        jump = received is None and expected is not None and value > expected + self.tolerance
        self._before_jump = expected if jump else None
        self._stamp, self._since = value, received
        return Verdict(value, jump=jump)
