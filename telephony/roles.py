"""Who a channel is: a client (trunk), a consultant, ignored, or plumbing.

Roles come from glob patterns on the channel name, because that is the one thing every Asterisk
set-up controls and AMI always shows. The first matching group wins in this order: ignore, trunk,
consultant. Local channels (`Local/...;1`/`;2`) are never a role of their own: they are the wires
the call model follows between bridges.

A channel no pattern matches is `UNMATCHED`: treated like an ignored one, but worth telling the
admin about (a trunk with a name of its own, `SIP/beeline-0000001a`, is the first thing a new set-up
gets wrong). `suggest_pattern` turns such a name into the glob that would match every channel of
its endpoint.

A consultant is reported by endpoint name: `PJSIP/101-0000000a` -> `101`, `SIP/101-00a1` -> `101`.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TRUNKS: tuple[str, ...] = ("PJSIP/trunk-*", "SIP/trunk-*", "IAX2/trunk-*")
DEFAULT_CONSULTANTS: tuple[str, ...] = ("PJSIP/*", "SIP/*", "IAX2/*")
DEFAULT_IGNORED: tuple[str, ...] = (
    "Snoop/*",
    "CBAnn/*",
    "CBRec/*",
    "Announcer/*",
    "Recorder/*",
    "Message/*",
    "AsyncGoto/*",
)

_ENDPOINT = re.compile(r"^[^/]+/(?P<endpoint>.+?)(?:-[0-9a-fA-F]+)?(?:<[^>]*>)?$")


class Role(enum.Enum):
    CLIENT = "client"
    CONSULTANT = "consultant"
    LOCAL = "local"
    IGNORED = "ignored"
    UNMATCHED = "unmatched"  # no pattern matches: ignored too, but reported


@dataclass(frozen=True)
class ChannelRoles:
    """Classifies channel names by configured glob patterns (case-sensitive, like Asterisk)."""

    trunks: Sequence[str] = DEFAULT_TRUNKS
    consultants: Sequence[str] = DEFAULT_CONSULTANTS
    ignored: Sequence[str] = DEFAULT_IGNORED

    def role_of(self, channel: str) -> Role:
        if _matches(channel, self.ignored):
            return Role.IGNORED
        if channel.startswith("Local/"):
            return Role.LOCAL
        if _matches(channel, self.trunks):
            return Role.CLIENT
        if _matches(channel, self.consultants):
            return Role.CONSULTANT
        return Role.UNMATCHED


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def endpoint_name(channel: str) -> str:
    """`PJSIP/101-0000000a` -> `101`; names without the counter suffix are returned as they are."""
    match = _ENDPOINT.match(channel)
    return match.group("endpoint") if match else channel


_DAHDI_PRI = re.compile(r"^DAHDI/(?P<span>i\d+)/")
_COUNTER = re.compile(r"-[0-9a-fA-F]+(?:<[^>]*>)?$")


def suggest_pattern(channel: str) -> str:
    """The glob matching every channel of `channel`'s endpoint.

    `SIP/beeline-0000001a` -> `SIP/beeline-*`, `IAX2/mts-1234` -> `IAX2/mts-*`,
    `DAHDI/i1/74951234567-1a` -> `DAHDI/i1/*` (a PRI span: names carry the number),
    `DAHDI/3-1` -> `DAHDI/3-*`; a name without a counter suffix is returned as it is.
    """
    pri = _DAHDI_PRI.match(channel)
    if pri is not None:
        return f"DAHDI/{pri.group('span')}/*"
    counter = _COUNTER.search(channel)
    if counter is None or "/" not in channel[: counter.start()]:
        return channel
    return channel[: counter.start()] + "-*"


def local_pair_key(channel: str) -> tuple[str, str] | None:
    """`Local/102@consultants-00000000;1` -> (`Local/102@consultants-00000000`, `1`)."""
    if not channel.startswith("Local/"):
        return None
    base, sep, half = channel.rpartition(";")
    if not sep or half not in {"1", "2"}:
        return None
    return base, half
