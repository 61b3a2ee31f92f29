"""The README tells admins which events to let through: keep it in step with the call model."""

from __future__ import annotations

import re
from pathlib import Path

from telephony.calls import WANTED_EVENTS

DOC = Path(__file__).resolve().parents[2] / "README.md"


def test_every_event_the_model_reads_has_an_event_filter_line() -> None:
    text = DOC.read_text()
    missing = [
        name for name in sorted(WANTED_EVENTS) if f"eventfilter(action(include),name({name})) =" not in text
    ]
    assert missing == []
    assert text.count("eventfilter(action(include),name(") == len(WANTED_EVENTS) + 1  # + FullyBooted


def test_the_regex_filter_lets_exactly_the_model_s_events_through() -> None:
    """The one-line filter for older Asterisk, matched as Asterisk does (anywhere in the event)."""
    (line,) = re.findall(r"^eventfilter = (.+)$", DOC.read_text(), re.MULTILINE)
    pattern = re.compile(line.replace("[[:space:]]", r"\s"))
    wanted = WANTED_EVENTS | {"FullyBooted"}
    for name in wanted:
        assert pattern.search(f"Event: {name}\r\nPrivilege: call,all\r\n"), name
    for noise in ("HangupRequest", "NewConnectedLine", "Newexten", "VarSet", "LocalOptimizeAway", "DialEnd"):
        assert not pattern.search(f"Event: {noise}\r\nPrivilege: call,all\r\n"), noise


def test_the_readme_lists_the_events_the_model_reads() -> None:
    text = DOC.read_text()
    listed = text.split("The events the call model reads are:", 1)[1].split("(the list is", 1)[0]
    assert set(re.findall(r"`(\w+)`", listed)) == set(WANTED_EVENTS)
