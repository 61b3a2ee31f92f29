"""A small PBX script for synthetic AMI scenarios: the cases the recorded traces do not cover.

Each method appends the event Asterisk 22 would send, with the headers the call model reads and a
`Timestamp` taken from a clock the scenario moves by hand (`after`). Field names and values follow
the recorded traces in tests/traces/.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from telephony.calls import CallTracker, Snapshot
from telephony.effects import Conversation, ConversationEnded, Effect
from telephony.framing import Message

STATES = {"Down": "0", "Ring": "4", "Ringing": "5", "Up": "6"}


@dataclass
class Chan:
    name: str
    uniqueid: str
    state: str = "Down"
    callerid: str = ""
    exten: str = ""
    bridge: str | None = None


@dataclass
class Pbx:
    now: float = 1_795_700_000.0
    system: str = ""
    events: list[Message] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- clock
    def after(self, seconds: float) -> Pbx:
        self.now += seconds
        return self

    # --- channels
    def channel(self, name: str, state: str = "Down", callerid: str = "", exten: str = "s") -> Chan:
        number = next(self._ids)
        prefix = f"{self.system}-" if self.system else ""
        chan = Chan(name, f"{prefix}{self.now:.0f}.{number}", state, callerid, exten)
        self.emit("Newchannel", chan)
        return chan

    def client_calls(self, number: str = "+74951234567", did: str = "74950000000", n: int = 1) -> Chan:
        return self.channel(f"PJSIP/trunk-{n:08x}", "Ring", number, did)

    def consultant(self, endpoint: str, n: int) -> Chan:
        return self.channel(f"PJSIP/{endpoint}-{n:08x}", "Down", endpoint)

    def local_pair(self, base: str) -> tuple[Chan, Chan]:
        one = self.channel(f"{base};1", "Down", "<unknown>", "s")
        two = self.channel(f"{base};2", "Ring", "<unknown>", "s")
        self.emit_raw("LocalBridge", LocalOneChannel=one.name, LocalTwoChannel=two.name)
        return one, two

    def state(self, chan: Chan, state: str) -> None:
        chan.state = state
        self.emit("Newstate", chan)

    def answer(self, *chans: Chan) -> None:
        for chan in chans:
            self.state(chan, "Up")

    def hangup(self, *chans: Chan) -> None:
        for chan in chans:
            if chan.bridge:
                self.leave(chan.bridge, chan)
            self.emit("Hangup", chan, Cause="16")

    def rename(self, chan: Chan, new_name: str) -> None:
        self.emit("Rename", chan, Newname=new_name)
        chan.name = new_name

    def hold(self, chan: Chan) -> None:
        self.emit("Hold", chan)

    def unhold(self, chan: Chan) -> None:
        self.emit("Unhold", chan)

    def callerid(self, chan: Chan, number: str) -> None:
        chan.callerid = number
        self.emit("NewCallerid", chan)

    def dial(self, caller: Chan | None, dest: Chan) -> None:
        headers = {"DestChannel": dest.name, "DestUniqueid": dest.uniqueid}
        if caller is None:  # Originate: a DialBegin with no source channel
            self.emit_raw("DialBegin", **headers)
        else:
            self.emit("DialBegin", caller, **headers)

    # --- bridges
    def bridge(self, technology: str = "simple_bridge", kind: str = "basic") -> str:
        bridge_id = f"bridge-{next(self._ids)}"
        self.emit_raw("BridgeCreate", BridgeUniqueid=bridge_id, BridgeTechnology=technology, BridgeType=kind)
        return bridge_id

    def enter(self, bridge_id: str, *chans: Chan, swap: Chan | None = None) -> None:
        for chan in chans:
            chan.bridge = bridge_id
            extra = {"SwapUniqueid": swap.uniqueid} if swap else {}
            self.emit("BridgeEnter", chan, BridgeUniqueid=bridge_id, **extra)

    def leave(self, bridge_id: str, *chans: Chan) -> None:
        for chan in chans:
            chan.bridge = None
            self.emit("BridgeLeave", chan, BridgeUniqueid=bridge_id)

    def connect(self, *chans: Chan) -> str:
        """Answer what is not Up yet and bridge the channels together."""
        for chan in chans:
            if chan.state != "Up":
                self.answer(chan)
        bridge_id = self.bridge()
        self.enter(bridge_id, *chans)
        return bridge_id

    # --- raw events
    def emit(self, event: str, chan: Chan, **extra: str) -> None:
        self.emit_raw(event, **channel_headers(chan), **extra)

    def emit_raw(self, event: str, **headers: str) -> None:
        self.events.append(Message({"Event": event, "Timestamp": f"{self.now:.6f}", **headers}))

    def snapshot_item(self, chan: Chan, duration: str = "00:00:10", application: str = "Queue") -> Message:
        """The CoreShowChannel line Asterisk would list for `chan` now (no Timestamp: a list item)."""
        extra = {"BridgeId": chan.bridge or "", "Application": application, "Duration": duration}
        return Message({"Event": "CoreShowChannel", **channel_headers(chan), **extra})


def channel_headers(chan: Chan) -> dict[str, str]:
    return {
        "Channel": chan.name,
        "ChannelState": STATES[chan.state],
        "ChannelStateDesc": chan.state,
        "CallerIDNum": chan.callerid,
        "Exten": chan.exten,
        "Uniqueid": chan.uniqueid,
        "Linkedid": chan.uniqueid,
    }


def run(
    events: list[Message],
    tracker: CallTracker | None = None,
    snapshots: dict[int, Snapshot] | None = None,
) -> tuple[list[Conversation], list[Effect]]:
    """Feed events (and snapshots before the given event index); close what is left open."""
    tracker = tracker or CallTracker()
    effects: list[Effect] = []
    snapshots = snapshots or {}
    for index, message in enumerate(events):
        if index in snapshots:
            effects += tracker.resync(snapshots[index])
        effects += tracker.feed(message, received_at=message.timestamp or 0.0)
    effects += tracker.close_all()
    ended = [effect.conversation for effect in effects if isinstance(effect, ConversationEnded)]
    return ended, effects


def one(events: list[Message], tracker: CallTracker | None = None) -> Conversation:
    conversations, _ = run(events, tracker)
    assert len(conversations) == 1, conversations
    return conversations[0]


def shape(conversation: Conversation) -> list[tuple[str | None, float, bool]]:
    """Segments as (consultant, seconds rounded to ms, hold) for readable assertions."""
    return [(s.consultant, round(s.seconds, 3), s.hold) for s in conversation.segments]
