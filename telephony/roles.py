"""Who a channel is: a client (trunk), a consultant, ignored, or plumbing.

Roles come from glob patterns on the channel name, because that is the one thing every Asterisk
set-up controls and AMI always shows. The first matching group wins in this order: ignore, trunk,
consultant. Local channels (`Local/...;1`/`;2`) are never a role of their own: they are the wires
the call model follows between bridges.

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
        return Role.IGNORED


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def endpoint_name(channel: str) -> str:
    """`PJSIP/101-0000000a` -> `101`; names without the counter suffix are returned as they are."""
    match = _ENDPOINT.match(channel)
    return match.group("endpoint") if match else channel


def local_pair_key(channel: str) -> tuple[str, str] | None:
    """`Local/102@consultants-00000000;1` -> (`Local/102@consultants-00000000`, `1`)."""
    if not channel.startswith("Local/"):
        return None
    base, sep, half = channel.rpartition(";")
    if not sep or half not in {"1", "2"}:
        return None
    return base, half
