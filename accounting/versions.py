"""One conversation measured by several talkmeter instances: which measurement the ledger keeps. Pure.

Theory of operation
-------------------
AMI never replays what a client missed, so a talkmeter that is killed, restarted or cut off from
the PBX loses the talk of that moment. The standby set-up removes the loss instead of bounding it:
two (or more) instances follow one PBX, each from its own AMI session, with the same `pbx` name and
one PostgreSQL. Each measures every conversation on its own and records it under the same
`conversation_id` (`<pbx>:<Uniqueid of the client's channel>`). Each of those measurements is a
*version*, stamped with the `instance` that measured it. An instance that followed the conversation
from its first event to its hangup gives an *exact* version; one that lost the link, restarted or
stopped meanwhile gives an *estimated* one (the call model flags it: closed at the last moment
known alive, adopted from the lists after a login, or resumed from a checkpoint).

The ledger keeps one version per conversation, the best seen so far (`decide`):

1. no version yet: the arriving one is kept (`first`), stored and rated as a lone daemon's;
2. the same measurement as the kept one (every moment within 1 ms, the same parties and segments)
   is a no-op (`identical`): the other instance agreeing, or a spool re-submitted after a crash;
3. an exact version where an estimated one is kept replaces it (`superseded`), even when the
   numbers agree (the conversation then stops being flagged estimated);
4. anything else leaves the kept version as it is: a different exact version where an exact one
   is kept is a *disagreement* (`disagreed`: the first one stays, and both values are logged and
   shown; exact measurements of one PBX event stream agree to the microsecond, so this means two
   PBXs share a `pbx` name, events without timestamps, or a defect), and an estimated version where
   any version is kept is not better (`not_better`; two estimated versions: the first stays).

Versions that are not (or no longer) kept are stored beside the conversation for audit, each once
(`fingerprint`); identical ones are not stored at all. A superseded version is never edited away
from the ledger: the conversation's facts become the new version's and the client is re-rated from
the earlier of the two starts, so the change reaches the ledger as adjustment rows.

Order does not matter where it must not: the kept version only ever moves from estimated to exact
(rule 3 is the only replacement), so for any set of versions whose exact ones agree, every arrival
order ends with an exact one kept if there is any, and with the same measurement. Where exact
versions disagree, the first one to commit stays (neither is known to be the right one, and the
ledger must not flip between them); the disagreement is shown either way. Concurrent arrivals are
serialised by the database (a transaction lock on the conversation id, taken before anything else
is read), so "first" is well defined.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any, Literal

from accounting.conversations import FinishedConversation, to_ms

Outcome = Literal["first", "identical", "superseded", "disagreed", "not_better"]
#: outcomes after which the arriving version is stored beside the kept one, for audit
SET_ASIDE: frozenset[Outcome] = frozenset({"disagreed", "not_better"})
TOLERANCE = timedelta(milliseconds=1)
TOLERANCE_MS = 1


def decide(kept: FinishedConversation | None, arriving: FinishedConversation) -> Outcome:
    """What an arriving version does to the conversation whose kept version is `kept`."""
    if kept is None:
        return "first"
    if kept.estimated and not arriving.estimated:
        return "superseded"
    if same_measurement(kept, arriving):
        return "identical"
    if not kept.estimated and not arriving.estimated:
        return "disagreed"
    return "not_better"


def same_measurement(a: FinishedConversation, b: FinishedConversation) -> bool:
    """Every moment within 1 ms, and the same parties, segments, talk and hold."""
    return not differences(a, b)


def differences(a: FinishedConversation, b: FinishedConversation) -> dict[str, tuple[Any, Any]]:
    """What differs beyond 1 ms between two versions, as (a's value, b's value), for logs."""
    found: dict[str, tuple[Any, Any]] = {}
    for name in ("started_at", "answered_at", "ended_at"):
        first, second = getattr(a, name), getattr(b, name)
        if not _close(first, second):
            found[name] = (_iso(first), _iso(second))
    for name in ("direction", "client_number", "line", "consultants"):
        if getattr(a, name) != getattr(b, name):
            found[name] = (getattr(a, name), getattr(b, name))
    for name in ("talk_ms", "hold_ms"):
        first_ms, second_ms = getattr(a.talk, name), getattr(b.talk, name)
        if abs(first_ms - second_ms) > TOLERANCE_MS:
            found[name] = (first_ms, second_ms)
    if not _same_segments(a, b):
        found["segments"] = (_segments(a), _segments(b))
    return found


def fingerprint(version: FinishedConversation) -> str:
    """A digest of the measurement (moments in ms, parties, segments, estimated-ness) that tells
    one stored version from another: a version re-sent from a spool is stored once."""
    canonical = {
        "conversation_id": version.conversation_id,
        "instance": version.instance,
        "estimated": version.estimated,
        "started_ms": to_ms(version.started_at),
        "answered_ms": None if version.answered_at is None else to_ms(version.answered_at),
        "ended_ms": to_ms(version.ended_at),
        "direction": version.direction,
        "client_number": version.client_number,
        "line": version.line,
        "consultants": list(version.consultants),
        "segments": _segments(version),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _close(first: datetime | None, second: datetime | None) -> bool:
    if first is None or second is None:
        return first is second
    return abs(first - second) <= TOLERANCE


def _same_segments(a: FinishedConversation, b: FinishedConversation) -> bool:
    if len(a.intervals) != len(b.intervals):
        return False
    return all(
        x.hold == y.hold
        and x.consultant == y.consultant
        and abs(x.start_ms - y.start_ms) <= TOLERANCE_MS
        and abs(x.end_ms - y.end_ms) <= TOLERANCE_MS
        for x, y in zip(a.intervals, b.intervals, strict=True)
    )


def _segments(version: FinishedConversation) -> list[list[Any]]:
    return [[i.consultant, i.start_ms, i.end_ms, i.hold] for i in version.intervals]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="microseconds")
