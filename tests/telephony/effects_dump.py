"""Print the call model's effects, in order, for a hold scenario and every recorded trace.

Run as `python -m tests.telephony.effects_dump` under different `PYTHONHASHSEED`s: the output must
not change, or the order of effects depends on hash order somewhere in the model.
"""

from __future__ import annotations

import sys
from pathlib import Path

from daemon.settings import Settings
from telephony.calls import WANTED_EVENTS
from telephony.capture import read_capture
from telephony.effects import ConversationEnded, ConversationStarted, Effect
from telephony.framing import Message

from .scenario import Pbx, run

TRACES = Path(__file__).resolve().parents[1] / "traces"


def conference_hold() -> list[Effect]:
    """Two clients and consultant 101 in one conference; 101 presses hold: two HoldStarted."""
    pbx = Pbx()
    first = pbx.client_calls("+74951111111", n=1)
    second = pbx.client_calls("+74952222222", n=2)
    agent = pbx.consultant("101", 3)
    pbx.connect(first, second, agent)
    pbx.after(2)
    pbx.hold(agent)
    pbx.after(3)
    pbx.unhold(agent)
    pbx.after(1)
    pbx.hangup(agent, second, first)
    return run(pbx.events)[1]


def trace_effects(path: Path) -> list[Effect]:
    tracker = Settings().call_tracker()
    effects: list[Effect] = []
    for message, received_at in read_capture(path.read_bytes(), None, WANTED_EVENTS):
        if isinstance(message, Message):
            effects += tracker.feed(message, received_at)
    return effects + tracker.close_all()


def describe(effect: Effect) -> str:
    if isinstance(effect, ConversationStarted | ConversationEnded):
        return f"{type(effect).__name__} {effect.at:.6f} {effect.conversation.to_json()}"
    return repr(effect)


def main() -> None:
    for effect in conference_hold():
        print("conference", describe(effect))
    for path in sorted(TRACES.glob("*.ami")):
        for effect in trace_effects(path):
            print(path.name, describe(effect))


if __name__ == "__main__":
    sys.exit(main())
