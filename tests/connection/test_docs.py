"""The README tells admins which events to let through: keep it in step with the call model."""

from __future__ import annotations

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
