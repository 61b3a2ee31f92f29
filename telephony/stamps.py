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
  (between two events there may be a quiet night), one far behind it is not.

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

    @property
    def believed(self) -> bool:
        return self.reason is None


class StreamClock:
    """Judges the stamps of one stream, in order; pure (the receive time is an input)."""

    def __init__(self, tolerance: float = TOLERANCE) -> None:
        self.tolerance = tolerance
        self._stamp: float | None = None  # the last stamp believed
        self._since: float | None = None  # the receive clock when it came (None: no receive clock)

    def restart(self) -> None:
        """A new session: the next plausible stamp anchors the clock again."""
        self._stamp = self._since = None

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
        if expected is not None:
            if value < expected - self.tolerance:
                return Verdict(expected, f"Timestamp {raw[:40]} is {expected - value:.0f} s behind")
            if received is not None and value > expected + self.tolerance:
                return Verdict(expected, f"Timestamp {raw[:40]} is {value - expected:.0f} s ahead")
        self._stamp, self._since = value, received
        return Verdict(value)
