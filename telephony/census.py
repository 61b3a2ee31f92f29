"""Which channels and endpoints a PBX shows, and the role each gets: what `talkmeter check` reports.

Theory of operation
-------------------
Roles are configuration (telephony.roles): the census applies the configured patterns to everything
the PBX shows, and gathers evidence for better patterns when none would give a client.

The evidence is what a channel carried. A channel that rang in from an outside number (its
`CallerIDNum` when Asterisk put it in Ring, i.e. it called the PBX) or was dialled to one (the
`DestCallerIDNum` of its `DialBegin`) is a trunk: a phone rings in, and is dialled, with its own
extension number, which is no valid public number. Endpoints (`PJSIPShowEndpoints`, `SIPpeers`)
are the configuration itself: each is shown with the role its channels
(`<driver>/<endpoint>-<counter>`) would get. Channels are grouped by endpoint (`suggest_pattern`),
so one row stands for every call of a trunk; Local channels are one row (they are wiring). A Local
channel carries no evidence: its `;2` takes the number of whoever dialled `;1` and rings with it
(a queue's or ring group's members ring with the client's number), so a Local row never counts
outside numbers and is never suggested as a trunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from telephony.calls import rings
from telephony.framing import Message
from telephony.numbers import normalize
from telephony.roles import ChannelRoles, Role, suggest_pattern

_SHOWN_NUMBERS = 3


@dataclass
class Group:
    """Channels of one endpoint (`SIP/beeline-*`), or one configured endpoint (`PJSIP/trunk`)."""

    label: str
    kind: str  # "channels" | "endpoint"
    role: Role
    driver: str
    seen: int = 0
    outside: list[str] = field(default_factory=list)  # outside numbers it carried (a few)

    @property
    def pattern(self) -> str:
        """The glob that gives this group's channels a role."""
        return self.label if self.kind == "channels" else f"{self.label}-*"

    @property
    def phone_like(self) -> bool:
        """An extension-number endpoint (`101`, `2001`): how phones are named on most PBXs."""
        name = self.label.removeprefix(f"{self.driver}/").removesuffix("-*")
        return name.isdigit() and len(name) <= 6


class Census:
    def __init__(self, roles: ChannelRoles, region: str = "RU") -> None:
        self.roles = roles
        self.region = region
        self._groups: dict[str, Group] = {}
        self._names: set[str] = set()

    # what the PBX shows

    def feed(self, message: Message) -> None:
        """Learn from a call event or a list item (CoreShowChannel, EndpointList, PeerEntry)."""
        event = message.event
        if event == "EndpointList":
            self.endpoint("PJSIP", message.get("ObjectName"))
        elif event == "PeerEntry":
            self.endpoint(message.get("Channeltype") or "SIP", message.get("ObjectName"))
        elif event == "Rename":
            self.channel(message.get("Newname"))
        else:  # any channel event, or a CoreShowChannel item
            self.channel(message.get("Channel"), message.get("CallerIDNum") if rings(message) else "")
            if event == "DialBegin":
                self.channel(message.get("DestChannel"), message.get("DestCallerIDNum"))

    def channel(self, name: str, outside: str = "") -> None:
        if not name:
            return
        label = "Local/*" if name.startswith("Local/") else suggest_pattern(name)
        group = self._groups.get(label)
        if group is None:
            role = self.roles.role_of(name)
            group = self._groups[label] = Group(label, "channels", role, name.partition("/")[0])
        if name not in self._names:
            self._names.add(name)
            group.seen += 1
        number = normalize(outside, self.region) if label != "Local/*" else None
        if number is not None and number not in group.outside and len(group.outside) < _SHOWN_NUMBERS:
            group.outside.append(number)

    def endpoint(self, driver: str, name: str) -> None:
        label = f"{driver}/{name}"
        if name and label not in self._groups:
            role = self.roles.role_of(f"{label}-00000000")
            self._groups[label] = Group(label, "endpoint", role, driver, seen=1)

    # what it means

    @property
    def groups(self) -> list[Group]:
        """Channel groups, then endpoints; each by role, then by name."""
        order = [Role.CLIENT, Role.CONSULTANT, Role.UNMATCHED, Role.IGNORED, Role.LOCAL]
        return sorted(self._groups.values(), key=lambda g: (g.kind, order.index(g.role), g.label))

    def has(self, role: Role) -> bool:
        return any(group.role is role for group in self._groups.values())

    def misnamed_trunks(self) -> list[Group]:
        """Channel groups that carried outside numbers but are not clients under the patterns."""
        return [g for g in self.groups if g.kind == "channels" and g.outside and g.role is not Role.CLIENT]

    def trunk_suggestions(self) -> list[str]:
        """Patterns for `trunk_channels`: trunks by evidence, else endpoints not named like phones."""
        found = [group.pattern for group in self.misnamed_trunks()]
        if not found and not self.has(Role.CLIENT):
            found = [g.pattern for g in self.groups if g.kind == "endpoint" and not g.phone_like]
        return list(dict.fromkeys(found))

    def consultant_suggestions(self) -> list[str]:
        """Patterns for `consultant_channels` when nothing would be a consultant: the phones' drivers."""
        if self.has(Role.CONSULTANT):
            return []
        phones = [g for g in self.groups if g.phone_like and g.role is not Role.CLIENT and not g.outside]
        return list(dict.fromkeys(f"{group.driver}/*" for group in phones))
