"""Number normalisation and channel roles: tables of cases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.numbers import normalize
from telephony.roles import ChannelRoles, Role, endpoint_name, local_pair_key, suggest_pattern


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("84951234567", "+74951234567"),
        ("74951234567", "+74951234567"),
        ("+74951234567", "+74951234567"),
        ("4951234567", "+74951234567"),
        ("8 (495) 123-45-67", "+74951234567"),
        ("+7 916 123-45-67", "+79161234567"),
        ("89161234567", "+79161234567"),
        ("+4930123456", "+4930123456"),
        ("anonymous", None),
        ("Anonymous", None),
        ("<unknown>", None),
        ("", None),
        ("   ", None),
        ("101", None),
        ("abc", None),
        ("+7495123456789012345", None),
    ],
)
def test_normalize(raw: str, expected: str | None) -> None:
    assert normalize(raw) == expected


def test_default_region_is_configurable() -> None:
    assert normalize("030123456", region="DE") == "+4930123456"
    assert normalize("4951234567", region="DE") == "+494951234567"  # read as a German number


@given(st.text(max_size=40))
def test_normalize_never_raises_and_gives_e164_or_none(raw: str) -> None:
    result = normalize(raw)
    assert result is None or (result.startswith("+") and result[1:].isdigit())


@pytest.mark.parametrize(
    ("channel", "role", "endpoint"),
    [
        ("PJSIP/trunk-00000029", Role.CLIENT, "trunk"),
        ("PJSIP/101-0000002a", Role.CONSULTANT, "101"),
        ("SIP/102-00a1b2c3", Role.CONSULTANT, "102"),
        ("Local/102@consultants-00000000;1", Role.LOCAL, "102@consultants-00000000;1"),
        ("CBAnn/support-00000001", Role.IGNORED, "support"),
        ("CBRec/support-00000002", Role.IGNORED, "support"),
        ("Snoop/1795716436.0-00000001", Role.IGNORED, "1795716436.0"),
        ("DAHDI/1-1", Role.UNMATCHED, "1"),
    ],
)
def test_default_roles(channel: str, role: Role, endpoint: str) -> None:
    assert ChannelRoles().role_of(channel) is role
    assert endpoint_name(channel) == endpoint


def test_ignore_wins_over_trunk_and_consultant_patterns() -> None:
    roles = ChannelRoles(trunks=("PJSIP/*",), consultants=("PJSIP/*",), ignored=("PJSIP/spy-*",))
    assert roles.role_of("PJSIP/spy-00000001") is Role.IGNORED
    assert roles.role_of("PJSIP/anything-1") is Role.CLIENT


@pytest.mark.parametrize(
    ("channel", "pattern"),
    [
        ("SIP/beeline-0000001a", "SIP/beeline-*"),
        ("PJSIP/trunk-00000029", "PJSIP/trunk-*"),
        ("IAX2/mts-1234", "IAX2/mts-*"),
        ("DAHDI/i1/74951234567-1a", "DAHDI/i1/*"),
        ("DAHDI/3-1", "DAHDI/3-*"),
        ("PJSIP/trunk-00000029<MASQ>", "PJSIP/trunk-*"),
        ("SIP/beeline", "SIP/beeline"),
    ],
)
def test_suggested_pattern_matches_every_channel_of_the_endpoint(channel: str, pattern: str) -> None:
    assert suggest_pattern(channel) == pattern
    assert ChannelRoles(trunks=(pattern,)).role_of(channel) is Role.CLIENT


def test_local_pair_key() -> None:
    assert local_pair_key("Local/102@consultants-00000000;2") == ("Local/102@consultants-00000000", "2")
    assert local_pair_key("Local/102@consultants-00000000") is None
    assert local_pair_key("PJSIP/101-1") is None
