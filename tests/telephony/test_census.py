"""The census behind `talkmeter check`: roles of what a PBX shows, and patterns to suggest."""

from __future__ import annotations

from telephony.census import Census
from telephony.framing import Message
from telephony.roles import ChannelRoles, Role

from .scenario import Pbx, Shape


def census_of(pbx: Pbx, roles: ChannelRoles | None = None) -> Census:
    census = Census(roles or ChannelRoles())
    for message in pbx.events:
        census.feed(message)
    return census


def rows(census: Census) -> list[tuple[str, str, Role, int, list[str]]]:
    return [(g.kind, g.label, g.role, g.seen, g.outside) for g in census.groups]


def test_channels_are_grouped_by_endpoint_with_the_numbers_they_carried() -> None:
    pbx = Pbx(shape=Shape(13, "SIP", timestamps=False, trunk="beeline"))
    pbx.calls_in(4)
    census = census_of(pbx)
    assert rows(census) == [
        ("channels", "SIP/101-*", Role.CONSULTANT, 2, []),
        ("channels", "SIP/102-*", Role.CONSULTANT, 1, []),
        ("channels", "SIP/103-*", Role.CONSULTANT, 1, []),
        ("channels", "SIP/beeline-*", Role.CONSULTANT, 4, ["+74951234560", "+74951234561", "+74951234562"]),
    ]
    assert not census.has(Role.CLIENT)
    assert census.trunk_suggestions() == ["SIP/beeline-*"]
    assert census.consultant_suggestions() == []


def test_a_dialled_outside_number_is_evidence_too() -> None:
    pbx = Pbx(shape=Shape(20, "PJSIP", trunk="mts"))
    pbx.outbound(pbx.phone_calls("2001", "89161234567"), "89161234567")
    census = census_of(pbx, ChannelRoles(trunks=("PJSIP/trunk-*",), consultants=("PJSIP/1??-*",)))
    assert [(g.label, g.role, g.outside) for g in census.groups] == [
        ("PJSIP/2001-*", Role.UNMATCHED, []),
        ("PJSIP/mts-*", Role.UNMATCHED, ["+79161234567"]),
    ]
    assert census.trunk_suggestions() == ["PJSIP/mts-*"]
    assert census.consultant_suggestions() == ["PJSIP/*"]  # 2001 is named like a phone


def test_endpoints_get_the_role_their_channels_would() -> None:
    census = Census(ChannelRoles())
    for name in ("trunk", "101", "fax"):
        census.feed(Message({"Event": "EndpointList", "ObjectName": name}))
    census.feed(Message({"Event": "PeerEntry", "Channeltype": "SIP", "ObjectName": "beeline"}))
    assert [(g.kind, g.label, g.role) for g in census.groups] == [
        ("endpoint", "PJSIP/trunk", Role.CLIENT),
        ("endpoint", "PJSIP/101", Role.CONSULTANT),
        ("endpoint", "PJSIP/fax", Role.CONSULTANT),
        ("endpoint", "SIP/beeline", Role.CONSULTANT),
    ]
    assert census.trunk_suggestions() == []  # a client exists and nothing carried outside numbers


def test_without_any_evidence_endpoints_not_named_like_phones_are_suggested() -> None:
    census = Census(ChannelRoles())
    for name in ("101", "102", "sipnet"):
        census.feed(Message({"Event": "PeerEntry", "Channeltype": "SIP", "ObjectName": name}))
    assert census.trunk_suggestions() == ["SIP/sipnet-*"]


def test_local_channels_are_one_row_and_dahdi_spans_one_pattern() -> None:
    pbx = Pbx(shape=Shape(18, "DAHDI"))
    first = pbx.inbound("84951234567")
    second = pbx.inbound("84957654321")
    pbx.local_pair("Local/101@from-queue-0000001a", caller=first)
    pbx.local_pair("Local/102@from-queue-0000001b", caller=second)
    census = census_of(pbx)
    assert [(g.label, g.role, g.seen, g.outside) for g in census.groups] == [
        ("DAHDI/i1/*", Role.UNMATCHED, 2, ["+74951234567", "+74957654321"]),
        ("Local/*", Role.LOCAL, 4, []),
    ]
    assert census.trunk_suggestions() == ["DAHDI/i1/*"]


def test_local_channels_carrying_the_clients_number_are_no_misnamed_trunk() -> None:
    """A queue's Local `;2` rings with the client's number: wiring, not evidence of a trunk."""
    pbx = Pbx()
    client = pbx.inbound("84951234567")
    pbx.local_pair("Local/101@from-queue-0000001a", caller=client)
    census = census_of(pbx)
    assert census.has(Role.CLIENT)
    assert census.misnamed_trunks() == []
