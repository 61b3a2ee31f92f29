"""The call model: AMI events in, effects out. No I/O, no clock, no logging.

Theory of operation
-------------------
A *conversation* is one client leg: it starts when a client (trunk) channel appears and ends when
that channel hangs up, whatever happens to the call inside the PBX (queues, transfers, Local
channels, conferences). It is keyed on the client channel's Uniqueid, which is stable; Linkedid is
not (it changes on transfers and pickups) and is never used.

Talk is a *connectivity condition*, not an event pair. After every event that changes the topology
(a channel enters or leaves a bridge, changes state, hangs up, is renamed, a Local pair is linked)
the model asks, for each client near the change: is the client's channel Up and connected, through
bridges with other members and through the two halves of Local channel pairs (`;1`/`;2`), to an Up
consultant channel? Holding bridges (parking, `holding_bridge`) never connect anything. This one
rule covers queues with Local members (with or without Local optimisation), ring groups, direct
dials, outbound calls, every kind of transfer, bridge merges and conferences, without a special case
for any of them. Events that merely describe (AgentConnect, DialEnd, AttendedTransfer) are not
needed for the measurement and are ignored.

Local channel optimisation is followed as what it is. Asterisk announces it with
`LocalOptimizationBegin` (naming both halves and, for a swap, the `Source` channel that is about to
take a half's place) and closes it with `LocalOptimizationEnd`; in between, the source leaves its
bridge and enters the other one (`SwapUniqueid`), or a whole bridge is merged. While an
optimisation is under way its participants (both halves, the source, and the members of the
halves' bridges) count as connected to one another, so when Begin comes before the bridge events
and End after them the client never appears cut off, whatever `debounce` is (0 included). Without
the two events (filtered out, or out of order: they travel on the channel topic, the bridge events
on the bridge topic) the swap alone shows the move: a client cut off by a channel leaving its
bridge and reconnected by that same channel entering another one with `SwapUniqueid` has not
stopped talking in its timeline, however short or long the debounce; at debounce 0 the stop was
already reported live, so a `TalkStopped`/`TalkStarted` pair marks the move. A merge has no such
mark: out of order, only the debounce covers it (at 0 its timeline splits).

Direction comes from what the PBX did with the client's channel, never from its first state. A
channel that runs the dialplan itself is a call *in*: Asterisk puts such a channel in state Ring (4)
before its dialplan starts, whatever the driver (chan_pjsip, DAHDI and IAX2 create it in Ring;
chan_sip creates it Down and sets Ring just after), and its `Exten` at that moment is the DID, the
conversation's `line`. A channel that is dialled is a call *out*: it is the `DestChannel` of a
`DialBegin` (app_dial, app_queue and the dial API behind Originate all publish one; an Originate's
has no source channel), and a dialled channel is never put in Ring. Until one of these happens the
direction is None (undecided), and the first that happens decides; a channel that is the calling
side of a `DialBegin` before anything decided is running the dialplan, so it is inbound. A
conversation that ends undecided was a channel the PBX created and never dialled successfully (a
call out that failed before `ast_call`): outbound. Channels adopted mid-call (first seen after a
reconnect) are judged from what the snapshot lists (`ApplicationData: (Outgoing Line)` marks a
dialled channel) and are estimated anyway; so is any channel still undecided when a snapshot lists
it, such as one first seen in an event that arrived while the lists were being sent.

The model is deterministic: bridge members keep their order of entry and every walk over clients
is sorted, so effects never depend on hash order (`PYTHONHASHSEED`).

Roles are configuration, and a wrong pattern would otherwise be silent: when calls keep bridging
consultants with channels no pattern matches (or consultant-matched channels that rang in from, or
were dialled to, an outside number) and no client is on the call, after `UNMATCHED_CALLS` such calls
an `Anomaly("unmatched_channels")` names those channels and the setting to change.

Hold is the other half of a conversation's connected time. A `Hold` raised by a consultant
connected to the client (or by the client's own channel) puts the client on hold until the matching
`Unhold`, until the client is connected to a consultant again after having been cut off, or until
the holding consultant hangs up. So in an attended transfer the client is on hold while the
consultant rings and consults the colleague, although the consultant has left the client's bridge.
An `Unhold` with no `Hold` before it (Asterisk sends one on every blind transfer) changes nothing.
Music on hold alone is not hold: queues play it too.

The timeline of a conversation is a list of non-overlapping segments, each "talking with X" or
"on hold by X". When the client is cut off, the open segment is not closed at once: a gap shorter
than the debounce (1 s by default) is absorbed into the talk, because a transfer or a Local
optimisation moves the client between bridges in microseconds and that is not a new conversation.
Only when an event (or `tick(now)`) shows that the debounce has passed is the segment closed, at
the moment the client was cut off, and `TalkStopped` reported. A blind transfer's ringing lasts
longer than the debounce, so it is not talk.

Time is an input: every effect is stamped with the event's `Timestamp` header. Without it (the
Asterisk default) the receive time passed by the caller is used, and one `Anomaly` says so. Small
inversions of arrival order (sub-millisecond, seen in real streams) are clamped so time never runs
backwards.

After a reconnect the shell feeds a `Snapshot` (CoreShowChannels + BridgeList). Channels the model
does not know are adopted (their conversations flagged `estimated`); channels it knows that are gone
hung up during the outage: their conversations end at the last moment the model saw anything, also
`estimated`. Channels that hung up after the snapshot was taken are not resurrected. A client
channel first seen in some other event than Newchannel is adopted too, but its conversation stays
unconfirmed until the channel talks or a snapshot lists it: a stray event alone (a Newstate for a
channel never seen) ends as an `Anomaly`, not as a phantom conversation in the ledger. Its start is
that event's time until a snapshot lists the channel, whose `Duration` tells when it was created.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from telephony.effects import (
    Anomaly,
    Conversation,
    ConversationEnded,
    ConversationStarted,
    Direction,
    Effect,
    HoldStarted,
    HoldStopped,
    Segment,
    TalkStarted,
    TalkStopped,
)
from telephony.framing import Message
from telephony.numbers import is_withheld, normalize
from telephony.roles import ChannelRoles, Role, endpoint_name, local_pair_key, suggest_pattern

#: Events the model reads; everything else can be dropped before decoding.
WANTED_EVENTS: frozenset[str] = frozenset(
    {
        "Newchannel",
        "Newstate",
        "NewCallerid",
        "Hangup",
        "Rename",
        "DialBegin",
        "BridgeCreate",
        "BridgeEnter",
        "BridgeLeave",
        "BridgeDestroy",
        "LocalBridge",
        "LocalOptimizationBegin",
        "LocalOptimizationEnd",
        "Hold",
        "Unhold",
        "Shutdown",
    }
)

#: bridged calls with consultants, suspect channels and no client before the role audit speaks up
UNMATCHED_CALLS = 5

#: what a dialled channel runs until it is bridged (apps/app_dial.c, main/dial.c, apps/app_queue.c)
_DIALLED_APPLICATIONS = frozenset({"AppDial", "AppDial2", "AppQueue"})
_HOLDING_TECHNOLOGIES = frozenset({"holding_bridge"})
_HOLDING_TYPES = frozenset({"parking", "holding"})
_RECENTLY_ENDED = 4096


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The PBX's present as listed after a (re)login: CoreShowChannel and BridgeListItem events.

    `at` is when the lists were requested (receive clock of the shell, or the PBX's if known).
    `lost_at` is the last moment the previous session was known alive (its last event or answered
    ping): calls that ended unseen during the outage are closed there, flagged estimated. Without
    it, the last event the model saw is used.
    """

    at: float
    channels: list[Message]
    bridges: list[Message] = field(default_factory=list)
    lost_at: float | None = None


@dataclass(slots=True)
class _Channel:
    uniqueid: str
    name: str
    role: Role
    up: bool
    created_at: float
    bridge: str | None = None
    outside: str = ""  # the caller id it rang in with, or was dialled to (for the role audit)


@dataclass(slots=True)
class _Bridge:
    bridge_id: str
    holding: bool
    members: dict[str, None] = field(default_factory=dict)  # ordered: walks are deterministic


@dataclass(slots=True)
class _Optimisation:
    """A Local pair being optimised away, between LocalOptimizationBegin and End."""

    halves: tuple[str, str]  # uniqueids of `;1` and `;2`
    bridges: tuple[str, ...]  # the halves' bridges when it began
    moving: tuple[str, ...]  # the halves, the source (a swap), the members of `bridges` at the start


@dataclass(slots=True)
class _Hold:
    by_uniqueid: str
    by: str | None
    since: float


@dataclass(slots=True)
class _Track:
    """A conversation in progress and the state of its timeline."""

    uniqueid: str
    conversation: Conversation
    last_seen: float
    open_segment: Segment | None = None  # end is meaningless while open
    cut_off_at: float | None = None  # when the client lost its consultant (debounce running)
    stop_reported: bool = False  # TalkStopped already sent for this cut-off
    resumed_from: float | None = None  # restored from a checkpoint taken at this time
    confirmed: bool = True  # False while only a stray event vouches for it (see `_channel_of`)
    hold: _Hold | None = None
    connected: tuple[str, ...] = ()  # consultants connected right now
    cut_off_by: frozenset[str] = frozenset()  # the channels whose move cut the client off
    fallback: Direction = "outbound"  # the direction if no event ever decides it
    first_exten: str = ""  # Exten when the channel was first seen
    guessed_start: bool = False  # adopted from a stray event: started_at is that event's time


class CallTracker:
    """Follows every channel and bridge and turns AMI events into conversation effects."""

    def __init__(
        self,
        roles: ChannelRoles | None = None,
        debounce: float = 1.0,
        region: str = "RU",
        pbx: str = "default",
    ) -> None:
        self.roles = roles or ChannelRoles()
        self.debounce = debounce
        self.region = region
        self.pbx = pbx
        self._channels: dict[str, _Channel] = {}
        self._by_name: dict[str, str] = {}
        self._bridges: dict[str, _Bridge] = {}
        self._tracks: dict[str, _Track] = {}
        self._debouncing: set[str] = set()
        self._ended: set[str] = set()
        self._ended_order: deque[str] = deque()
        self._now = float("-inf")
        self._warned_no_timestamp = False
        self._restored: dict[str, dict[str, Any]] = {}
        self._optimising: dict[str, _Optimisation] = {}  # by the optimisation's Id
        self._suspect_calls: dict[str, dict[str, str]] = {}  # bridge -> {name: why} (role audit)
        self._reported_patterns: set[str] = set()
        self._handlers: dict[str, Callable[[Message, float, list[Effect]], None]] = {
            "Newchannel": self.on_newchannel,
            "Newstate": self.on_newstate,
            "NewCallerid": self.on_newcallerid,
            "Hangup": self.on_hangup,
            "Rename": self.on_rename,
            "DialBegin": self.on_dial_begin,
            "BridgeCreate": self.on_bridge_create,
            "BridgeEnter": self.on_bridge_enter,
            "BridgeLeave": self.on_bridge_leave,
            "BridgeDestroy": self.on_bridge_destroy,
            "LocalBridge": self.on_local_bridge,
            "LocalOptimizationBegin": self.on_local_optimization_begin,
            "LocalOptimizationEnd": self.on_local_optimization_end,
            "Hold": self.on_hold,
            "Unhold": self.on_unhold,
            "Shutdown": self.on_shutdown,
        }

    # ----------------------------------------------------------------- public interface

    @property
    def open_conversations(self) -> list[Conversation]:
        return [track.conversation for track in self._tracks.values()]

    def consultant_channels(self, conversation_id: str) -> tuple[str, ...]:
        """The channels of the consultants the conversation's client is connected to now (oldest
        first), or of the consultant holding it: where a PBX-side notice about the call belongs."""
        uniqueid = conversation_id.removeprefix(f"{self.pbx}:")
        track = self._tracks.get(uniqueid) if uniqueid != conversation_id else None
        if track is None:
            return ()
        client = self._channels.get(uniqueid)
        connected = self._consultant_channels(client) if client is not None else []
        if connected:
            return tuple(channel.name for channel in connected)
        holder = self._channels.get(track.hold.by_uniqueid) if track.hold is not None else None
        return (holder.name,) if holder is not None and holder.role is Role.CONSULTANT else ()

    def feed(self, message: Message, received_at: float) -> list[Effect]:
        """Apply one AMI message; return what it caused, in order."""
        handler = self._handlers.get(message.event or "")
        if handler is None:
            return []
        effects: list[Effect] = []
        at = self._clock(message, received_at, effects)
        self._flush_debounced(at, effects)
        handler(message, at, effects)
        return effects

    def tick(self, now: float) -> list[Effect]:
        """Let time pass without events: report talk stops whose debounce has run out."""
        effects: list[Effect] = []
        self._flush_debounced(now, effects)
        return effects

    def resync(self, snapshot: Snapshot) -> list[Effect]:
        """Reconcile with the PBX's present after a (re)connect."""
        effects: list[Effect] = []
        lost_at = max(self._now, snapshot.lost_at or float("-inf"))
        if lost_at == float("-inf"):
            lost_at = snapshot.at
        at = max(snapshot.at, self._now)
        self._now = at
        self._flush_debounced(at, effects)
        technologies = {item.get("BridgeUniqueid"): item for item in snapshot.bridges}
        listed = {item.get("Uniqueid"): item for item in snapshot.channels if item.get("Uniqueid")}
        for uniqueid in [uid for uid in self._channels if uid not in listed]:
            self._forget_channel(uniqueid, min(lost_at, at), effects, estimated=True)
        for uniqueid, item in listed.items():
            if uniqueid not in self._ended:
                self._apply_listed_channel(uniqueid, item, technologies, at, effects)
        for uniqueid, track in list(self._tracks.items()):
            if track.hold is not None and track.hold.by_uniqueid not in self._channels:
                self._end_hold(track, at, effects)  # the holder went away while we were not looking
            self._update_connectivity(uniqueid, at, effects)
        for uniqueid in list(self._restored):
            self._end_restored(uniqueid, effects)  # it hung up while the daemon was down
        return effects

    def checkpoint(self, at: float) -> list[dict[str, Any]]:
        """The open conversations as plain data, so that a daemon restart loses no talk (`restore`)."""
        saved = [_checkpoint_of(track, at) for track in self._tracks.values() if track.confirmed]
        return saved + list(self._restored.values())

    def restore(self, saved: Iterable[dict[str, Any]]) -> None:
        """Take back the open conversations of an earlier run.

        A conversation is resumed when its client channel shows up again (in the snapshot after
        login, or in an event) and is then flagged `estimated`. If the client is still in the state
        it was in at the checkpoint (talking with the same consultant, or on hold), the talk is
        taken to have gone on meanwhile; otherwise it stops at the checkpoint. A conversation whose
        channel is not in the next snapshot ended while we were down: it is closed at the checkpoint.
        """
        for item in saved:
            self._restored[item["uniqueid"]] = item

    def close_all(self, at: float | None = None) -> list[Effect]:
        """End every open conversation (end of a replay, shutdown): estimated, at the last event seen."""
        effects: list[Effect] = []
        for uniqueid in list(self._tracks):
            track = self._tracks[uniqueid]
            self._end_conversation(uniqueid, at if at is not None else track.last_seen, effects, True)
        return effects

    # ----------------------------------------------------------------- event handlers

    def on_newchannel(self, message: Message, at: float, effects: list[Effect]) -> None:
        uniqueid = message.get("Uniqueid")
        if uniqueid in self._channels:
            return
        channel = self._add_channel(message, at, effects)
        if channel is None:
            return
        self._note_ringing(channel, message)
        if channel.role is Role.CLIENT:
            # Born Ring: it called in (chan_pjsip, DAHDI, IAX2). Born Down: wait and see (chan_sip
            # sets Ring next for a call in; a call out is dialled next). The PBX made it: a call
            # that never gets further was one going out.
            direction: Direction | None = "inbound" if rings(message) else None
            self._start_conversation(channel, message, direction, at, False, effects, "outbound")

    def on_newstate(self, message: Message, at: float, effects: list[Effect]) -> None:
        channel = self._channel_of(message, at, effects)
        if channel is None:
            return
        self._note_ringing(channel, message)
        track = self._tracks.get(channel.uniqueid)
        if track is not None and rings(message):
            self._decide(track, "inbound", message.get("Exten"))
        self._mutate([channel.uniqueid], at, effects, lambda: self._set_up(channel, message))

    def on_newcallerid(self, message: Message, at: float, effects: list[Effect]) -> None:
        channel = self._channel_of(message, at, effects)
        track = self._tracks.get(channel.uniqueid) if channel else None
        if track is not None:
            self._set_caller(track.conversation, message.get("CallerIDNum"))

    def on_hangup(self, message: Message, at: float, effects: list[Effect]) -> None:
        uniqueid = message.get("Uniqueid")
        if uniqueid not in self._channels:
            self._remember_ended(uniqueid)
            return
        self._forget_channel(uniqueid, at, effects, estimated=False)

    def on_rename(self, message: Message, at: float, effects: list[Effect]) -> None:
        channel = self._channel_of(message, at, effects)
        new_name = message.get("Newname")
        if channel is None or not new_name:
            return

        def rename() -> None:
            self._by_name.pop(channel.name, None)
            channel.name = new_name
            self._by_name[new_name] = channel.uniqueid
            if channel.uniqueid not in self._tracks:
                channel.role = self.roles.role_of(new_name)

        self._mutate([channel.uniqueid], at, effects, rename)

    def on_dial_begin(self, message: Message, at: float, effects: list[Effect]) -> None:
        dest = self._channels.get(message.get("DestUniqueid"))
        if dest is not None and not dest.outside:
            dest.outside = message.get("DestCallerIDNum")
        dialled = self._tracks.get(message.get("DestUniqueid"))
        if dialled is not None:
            self._decide(dialled, "outbound", "")
        # Dialling before being dialled: the channel runs the dialplan itself (a call in).
        caller = self._tracks.get(message.get("Uniqueid"))
        if caller is not None:
            self._decide(caller, "inbound", caller.first_exten)

    def on_bridge_create(self, message: Message, at: float, effects: list[Effect]) -> None:
        self._bridge(message.get("BridgeUniqueid"), message)

    def on_bridge_enter(self, message: Message, at: float, effects: list[Effect]) -> None:
        channel = self._channel_of(message, at, effects)
        if channel is None:
            return
        bridge = self._bridge(message.get("BridgeUniqueid"), message)
        swapped = self._channels.get(message.get("SwapUniqueid"))
        touched = [channel.uniqueid] + ([swapped.uniqueid] if swapped else [])

        def enter() -> None:
            self._set_up(channel, message)
            self._leave_bridge(channel)
            if swapped is not None:  # Local optimisation: the swapped channel is on its way out
                self._leave_bridge(swapped)
            bridge.members[channel.uniqueid] = None
            channel.bridge = bridge.bridge_id

        # Entering in another channel's place completes a move: the gap since it left is not a gap.
        moved = frozenset({channel.uniqueid}) if message.get("SwapUniqueid") else frozenset()
        self._mutate(touched, at, effects, enter, moved)
        self._audit(channel, at, effects)

    def on_bridge_leave(self, message: Message, at: float, effects: list[Effect]) -> None:
        channel = self._channel_of(message, at, effects)
        bridge = self._bridges.get(message.get("BridgeUniqueid"))
        if channel is None or bridge is None:
            return

        def leave() -> None:
            bridge.members.pop(channel.uniqueid, None)
            if channel.bridge == bridge.bridge_id:
                channel.bridge = None

        self._mutate([channel.uniqueid], at, effects, leave)

    def on_bridge_destroy(self, message: Message, at: float, effects: list[Effect]) -> None:
        bridge = self._bridges.get(message.get("BridgeUniqueid"))
        if bridge is None:
            return
        members = list(bridge.members)

        def destroy() -> None:
            for uniqueid in members:
                channel = self._channels.get(uniqueid)
                if channel is not None and channel.bridge == bridge.bridge_id:
                    channel.bridge = None
            del self._bridges[bridge.bridge_id]

        self._mutate(members, at, effects, destroy)

    def on_local_bridge(self, message: Message, at: float, effects: list[Effect]) -> None:
        # Local halves are paired by name, so the link exists from Newchannel on; this event only
        # tells us the pair is complete. Recompute in case the halves were adopted out of order.
        halves = [self._by_name.get(message.get(key)) for key in ("LocalOneChannel", "LocalTwoChannel")]
        known = [uniqueid for uniqueid in halves if uniqueid is not None]
        self._mutate(known, at, effects, lambda: None)

    def on_local_optimization_begin(self, message: Message, at: float, effects: list[Effect]) -> None:
        halves = (message.get("LocalOneUniqueid"), message.get("LocalTwoUniqueid"))
        op_id = message.get("Id")
        if not all(halves) or not op_id:
            return
        moving: dict[str, None] = dict.fromkeys(halves)
        if message.get("SourceUniqueid"):  # a swap; a merge has no source
            moving[message.get("SourceUniqueid")] = None
        bridges = []
        for uniqueid in halves:
            half = self._channels.get(uniqueid)
            bridge = self._bridges.get(half.bridge) if half is not None and half.bridge else None
            if bridge is not None and not bridge.holding:
                bridges.append(bridge.bridge_id)
                moving.update(bridge.members)
        optimisation = _Optimisation(halves, tuple(bridges), tuple(moving))
        participants = self._participants(optimisation)

        def begin() -> None:
            self._optimising[op_id] = optimisation

        # If the bridge events came first, the client was cut off by this very move: not a gap.
        self._mutate(list(participants), at, effects, begin, frozenset(participants))

    def on_local_optimization_end(self, message: Message, at: float, effects: list[Effect]) -> None:
        optimisation = self._optimising.get(message.get("Id"))
        if optimisation is None:
            return
        participants = self._participants(optimisation)
        self._mutate(list(participants), at, effects, lambda: self._end_optimisation(message.get("Id")))

    def on_hold(self, message: Message, at: float, effects: list[Effect]) -> None:
        channel = self._channel_of(message, at, effects)
        if channel is None:
            return
        # Only a client who is talking can be put on hold: a hold while it waits in a queue, or
        # pressed by a consultant talking to someone else, is not this client's conversation time.
        by = endpoint_name(channel.name) if channel.role is Role.CONSULTANT else None
        near = [channel.uniqueid] if channel.role is Role.CLIENT else self._clients_near([channel.uniqueid])
        for uniqueid in sorted(uid for uid in near if self._talking_with(uid)):
            track = self._tracks[uniqueid]
            since = self._conversation_time(track, at)  # this client's clock, not the one before's
            if track.hold is None:
                track.hold = _Hold(channel.uniqueid, by, since)
                effects.append(HoldStarted(since, track.conversation.conversation_id, by))
                self._update_connectivity(uniqueid, since, effects)

    def on_unhold(self, message: Message, at: float, effects: list[Effect]) -> None:
        self._release_holds(message.get("Uniqueid"), at, effects)

    def on_shutdown(self, message: Message, at: float, effects: list[Effect]) -> None:
        # Asterisk is stopping: every channel dies without a Hangup we will ever see.
        for uniqueid in list(self._channels):
            self._forget_channel(uniqueid, at, effects, estimated=True)
        self._bridges.clear()
        self._optimising.clear()

    # ----------------------------------------------------------------- channels and bridges

    def _clock(self, message: Message, received_at: float, effects: list[Effect]) -> float:
        stamp = message.timestamp
        if stamp is None:
            stamp = received_at
            if not self._warned_no_timestamp:
                self._warned_no_timestamp = True
                effects.append(
                    Anomaly(
                        received_at,
                        "no_timestamp",
                        "events carry no Timestamp header: using receive time; "
                        "set timestampevents = yes in manager.conf",
                    )
                )
        self._now = max(self._now, stamp)
        return stamp

    def _add_channel(self, message: Message, at: float, effects: list[Effect]) -> _Channel | None:
        uniqueid, name = message.get("Uniqueid"), message.get("Channel")
        if not uniqueid or not name:
            effects.append(Anomaly(at, "incomplete_event", f"{message.event} without Channel/Uniqueid"))
            return None
        channel = _Channel(uniqueid, name, self.roles.role_of(name), _is_up(message), at)
        self._channels[uniqueid] = channel
        self._by_name[name] = uniqueid
        return channel

    def _channel_of(self, message: Message, at: float, effects: list[Effect]) -> _Channel | None:
        """The channel an event is about; a channel never seen before is adopted (after a reconnect)."""
        uniqueid = message.get("Uniqueid")
        channel = self._channels.get(uniqueid)
        if channel is not None or not uniqueid or uniqueid in self._ended:
            return channel
        channel = self._add_channel(message, at, effects)
        if channel is None:
            return None
        detail = f"adopted {channel.name} first seen in {message.event}"
        effects.append(Anomaly(at, "unknown_channel", detail))
        if channel.role is Role.CLIENT:
            # Its creation was missed: a call in progress is most often a call in. It stays
            # unconfirmed until it talks or a snapshot lists it: a stray event alone (a Newstate for
            # a channel never seen) must not put a phantom conversation in the ledger.
            direction: Direction | None = "inbound" if rings(message) else None
            self._start_conversation(
                channel, message, direction, at, True, effects, "inbound", confirmed=False
            )
            track = self._tracks[channel.uniqueid]
            track.guessed_start = track.resumed_from is None  # a checkpoint knows the start
        return channel

    def _bridge(self, bridge_id: str, message: Message) -> _Bridge:
        bridge = self._bridges.get(bridge_id)
        if bridge is None:
            holding = (
                message.get("BridgeTechnology") in _HOLDING_TECHNOLOGIES
                or message.get("BridgeType") in _HOLDING_TYPES
            )
            bridge = self._bridges[bridge_id] = _Bridge(bridge_id, holding)
        return bridge

    def _leave_bridge(self, channel: _Channel) -> None:
        if channel.bridge is not None:
            bridge = self._bridges.get(channel.bridge)
            if bridge is not None:
                bridge.members.pop(channel.uniqueid, None)
            channel.bridge = None

    def _set_up(self, channel: _Channel, message: Message) -> None:
        if message.get("ChannelState") or message.get("ChannelStateDesc"):
            channel.up = _is_up(message)

    def _forget_channel(self, uniqueid: str, at: float, effects: list[Effect], estimated: bool) -> None:
        channel = self._channels.get(uniqueid)
        if channel is None:
            return

        def remove() -> None:
            self._leave_bridge(channel)
            del self._channels[uniqueid]
            if self._by_name.get(channel.name) == uniqueid:
                del self._by_name[channel.name]

        self._mutate([uniqueid], at, effects, remove)
        self._drop_finished_optimisations(uniqueid)
        self._release_holds(uniqueid, at, effects)
        self._remember_ended(uniqueid)
        if uniqueid in self._tracks:
            self._end_conversation(uniqueid, at, effects, estimated)

    def _remember_ended(self, uniqueid: str) -> None:
        if not uniqueid or uniqueid in self._ended:
            return
        self._ended.add(uniqueid)
        self._ended_order.append(uniqueid)
        if len(self._ended_order) > _RECENTLY_ENDED:
            self._ended.discard(self._ended_order.popleft())

    def _apply_listed_channel(
        self,
        uniqueid: str,
        item: Message,
        bridges: dict[str, Message],
        at: float,
        effects: list[Effect],
    ) -> None:
        channel = self._channels.get(uniqueid)
        track = self._tracks.get(uniqueid)
        if track is not None:
            self._learn_from_listing(track, item, at)
            self._confirm(track, effects)  # the PBX lists it: a real call
        if channel is None:
            created = at - _duration(item.get("Duration"))
            channel = self._add_channel(item, created, effects)
            if channel is None:
                return
            if channel.role is Role.CLIENT:
                direction = _listed_direction(item)
                self._start_conversation(channel, item, direction, created, True, effects, direction)
        channel.up = _is_up(item)
        bridge_id = item.get("BridgeId")
        if channel.bridge != (bridge_id or None):
            self._leave_bridge(channel)
            if bridge_id:
                bridge = self._bridge(bridge_id, bridges.get(bridge_id, item))
                bridge.members[uniqueid] = None
                channel.bridge = bridge_id

    def _learn_from_listing(self, track: _Track, item: Message, at: float) -> None:
        """What the listing knows better than the events seen so far: when the channel was created
        (a track adopted from a stray event started at that event), and, while no event decided,
        whether it was dialled (an event between the login and the end of the listing adopts a
        channel undecided, with the guess of a call in)."""
        conversation = track.conversation
        if track.guessed_start:
            track.guessed_start = False
            conversation.started_at = min(conversation.started_at, at - _duration(item.get("Duration")))
        if conversation.direction is None:
            track.fallback = _listed_direction(item)
            self._decide(track, track.fallback, item.get("Exten"))

    # ----------------------------------------------------------------- connectivity

    def _mutate(
        self,
        touched: list[str],
        at: float,
        effects: list[Effect],
        change: Callable[[], None],
        moved: frozenset[str] = frozenset(),
    ) -> None:
        """Apply a topology change and re-evaluate every client it could affect, before and after.

        `touched` are the channels the change is about: a client cut off now was cut off by them.
        `moved` are channels whose move (a Local optimisation) this change completes: a client they
        cut off and that is connected again now has not stopped talking.
        """
        clients = self._clients_near(touched)
        change()
        clients |= self._clients_near([uid for uid in touched if uid in self._channels])
        cause = frozenset(touched) if clients else frozenset()
        for uniqueid in sorted(clients):
            self._update_connectivity(uniqueid, at, effects, cause, moved)

    def _neighbours(self, channel: _Channel) -> Iterator[str]:
        if channel.bridge is not None:
            bridge = self._bridges.get(channel.bridge)
            if bridge is not None and not bridge.holding:
                yield from bridge.members
        if channel.role is Role.LOCAL:
            pair = local_pair_key(channel.name)
            if pair is not None:
                other = self._by_name.get(f"{pair[0]};{'2' if pair[1] == '1' else '1'}")
                if other is not None:
                    yield other
        if self._optimising:
            for optimisation in self._optimising.values():
                participants = self._participants(optimisation)
                if channel.uniqueid in participants:
                    yield from participants

    # ----------------------------------------------------------------- Local optimisation

    def _participants(self, optimisation: _Optimisation) -> dict[str, None]:
        """Who an optimisation keeps connected: what was moving at the start, and who is in its bridges."""
        found: dict[str, None] = dict.fromkeys(optimisation.moving)
        for bridge_id in optimisation.bridges:
            bridge = self._bridges.get(bridge_id)
            if bridge is not None and not bridge.holding:
                found.update(bridge.members)
        return {uniqueid: None for uniqueid in found if uniqueid in self._channels}

    def _end_optimisation(self, op_id: str) -> None:
        self._optimising.pop(op_id, None)

    def _drop_finished_optimisations(self, gone: str) -> None:
        # Without a LocalOptimizationEnd (filtered out), an optimisation is over when its pair is gone.
        for op_id, optimisation in list(self._optimising.items()):
            halves = optimisation.halves
            if gone in halves and not any(half in self._channels for half in halves):
                del self._optimising[op_id]

    def _component(self, start: Iterable[str]) -> Iterator[_Channel]:
        """Channels reachable from `start` through bridges and Local pairs (Up or not)."""
        seen: set[str] = set()
        queue = [uid for uid in start if uid in self._channels]
        while queue:
            uniqueid = queue.pop()
            if uniqueid in seen:
                continue
            seen.add(uniqueid)
            channel = self._channels[uniqueid]
            yield channel
            queue.extend(uid for uid in self._neighbours(channel) if uid not in seen)

    def _clients_near(self, touched: Iterable[str]) -> set[str]:
        return {channel.uniqueid for channel in self._component(touched) if channel.uniqueid in self._tracks}

    def _consultants_of(self, client: _Channel) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys(endpoint_name(channel.name) for channel in self._consultant_channels(client))
        )

    def _consultant_channels(self, client: _Channel) -> list[_Channel]:
        """The Up consultant channels the client is connected to, oldest first."""
        if not client.up:
            return []
        found = [
            channel
            for channel in self._component([client.uniqueid])
            if channel.role is Role.CONSULTANT and channel.up
        ]
        found.sort(key=lambda channel: channel.created_at)
        return found

    def _talking_with(self, client_uniqueid: str) -> bool:
        track = self._tracks.get(client_uniqueid)
        return track is not None and bool(track.connected)

    # ----------------------------------------------------------------- role audit

    def _audit(self, entered: _Channel, at: float, effects: list[Effect]) -> None:
        """Count bridged calls where consultants meet suspect channels and no client; speak up at
        `UNMATCHED_CALLS`, once per new pattern."""
        bridge_id = entered.bridge
        if entered.role is Role.CLIENT or bridge_id is None or bridge_id in self._suspect_calls:
            return
        bridge = self._bridges[bridge_id]
        channels = self._channels
        if bridge.holding or len(bridge.members) < 2:
            return  # nobody to talk to (yet)
        if any(channels[uid].role is Role.CLIENT for uid in bridge.members if uid in channels):
            return  # the usual case, decided without a walk: a client is right there
        members = list(self._component([entered.uniqueid]))
        if any(channel.role is Role.CLIENT for channel in members):
            return
        up = [channel for channel in members if channel.up]
        suspects = [channel for channel in up if self._suspect(channel)]
        if not suspects or not any(c.role is Role.CONSULTANT and c not in suspects for c in up):
            return
        if not {suggest_pattern(c.name) for c in suspects} - self._reported_patterns:
            return
        self._suspect_calls[bridge_id] = {c.name: self._why_suspect(c) for c in suspects}
        if len(self._suspect_calls) >= UNMATCHED_CALLS:
            effects.append(Anomaly(at, "unmatched_channels", self._unmatched_report()))

    def _suspect(self, channel: _Channel) -> bool:
        if channel.role is Role.UNMATCHED:
            return True
        return channel.role is Role.CONSULTANT and normalize(channel.outside, self.region) is not None

    @staticmethod
    def _why_suspect(channel: _Channel) -> str:
        if channel.role is Role.UNMATCHED:
            return "matches no pattern"
        return f"matches consultant_channels, outside number {channel.outside}"

    def _unmatched_report(self) -> str:
        calls = len(self._suspect_calls)
        suspects: dict[str, str] = {}
        for found in self._suspect_calls.values():
            suspects.update(found)
        patterns = sorted({suggest_pattern(name) for name in suspects} - self._reported_patterns)
        self._reported_patterns.update(patterns)
        self._suspect_calls.clear()
        described = [f"{name} ({why})" for name, why in suspects.items()]
        shown = ", ".join(described[:8]) + (f" and {len(described) - 8} more" if len(described) > 8 else "")
        wanted = ", ".join(f'"{pattern}"' for pattern in patterns)
        return (
            f"{calls} bridged calls had consultants but no client leg, so nothing was measured; "
            f"channels that look like the client's side: {shown}. If they are trunks, add {wanted} to "
            "trunk_channels (if they are phones, to consultant_channels); "
            "`talkmeter check` lists the role of every channel"
        )

    # ----------------------------------------------------------------- conversation timeline

    def _start_conversation(
        self,
        channel: _Channel,
        message: Message,
        direction: Direction | None,
        at: float,
        estimated: bool,
        effects: list[Effect],
        fallback: Direction,
        confirmed: bool = True,
    ) -> None:
        """Open the client's conversation; `direction` None = undecided, `fallback` if it stays so."""
        line = (message.get("Exten") or None) if direction == "inbound" else None
        conversation = Conversation(
            conversation_id=f"{self.pbx}:{channel.uniqueid}",
            pbx=self.pbx,
            channel=channel.name,
            direction=direction,
            client_number=None,
            client_number_raw="",
            line=line,
            started_at=at,
            estimated=estimated,
        )
        self._set_caller(conversation, message.get("CallerIDNum"))
        saved = self._restored.pop(channel.uniqueid, None) if estimated else None
        if saved is not None:
            self._tracks[channel.uniqueid] = _resumed_track(channel.uniqueid, saved, conversation)
            return
        track = _Track(channel.uniqueid, conversation, last_seen=at, fallback=fallback, confirmed=confirmed)
        track.first_exten = message.get("Exten")
        self._tracks[channel.uniqueid] = track
        if confirmed:
            effects.append(ConversationStarted(at, conversation))

    def _decide(self, track: _Track, direction: Direction, exten: str) -> None:
        """The first event that shows what the PBX did with the client's channel decides."""
        conversation = track.conversation
        if conversation.direction is None:
            conversation.direction = direction
            conversation.line = (exten or None) if direction == "inbound" else None

    def _note_ringing(self, channel: _Channel, message: Message) -> None:
        if rings(message) and not channel.outside:
            channel.outside = message.get("CallerIDNum")

    def _end_restored(self, uniqueid: str, effects: list[Effect]) -> None:
        saved = self._restored.pop(uniqueid)
        track = _resumed_track(uniqueid, saved, None)
        self._tracks[uniqueid] = track
        track.hold = None
        self._end_conversation(uniqueid, saved["at"], effects, estimated=True)

    def _set_caller(self, conversation: Conversation, raw: str) -> None:
        # Outbound trunk channels start as `<unknown>` and learn the number from NewCallerid; a
        # known number is never replaced by a withheld marker.
        if is_withheld(raw) and not is_withheld(conversation.client_number_raw):
            return
        conversation.client_number_raw = raw
        conversation.client_number = normalize(raw, self.region)

    def _update_connectivity(
        self,
        uniqueid: str,
        at: float,
        effects: list[Effect],
        cause: frozenset[str] = frozenset(),
        moved: frozenset[str] = frozenset(),
    ) -> None:
        track = self._tracks.get(uniqueid)
        if track is None:
            return
        at = self._conversation_time(track, at)
        channel = self._channels.get(uniqueid)
        connected = self._consultants_of(channel) if channel is not None else ()
        was_connected = bool(track.connected) or track.cut_off_at is not None
        track.connected = connected
        conversation = track.conversation
        for name in connected:
            if name not in conversation.consultants:
                conversation.consultants.append(name)
        if track.hold is not None and connected and not was_connected:
            self._end_hold(track, at, effects)  # connected again after being cut off
        self._advance_timeline(track, at, effects, cause, moved)

    def _conversation_time(self, track: _Track, at: float) -> float:
        """Time never runs backwards within one conversation (arrival order has tiny inversions).

        The clamp is per conversation, not global, so that how the events of unrelated calls
        interleave cannot change either call's figures.
        """
        track.last_seen = max(track.last_seen, at)
        return track.last_seen

    def _advance_timeline(
        self,
        track: _Track,
        at: float,
        effects: list[Effect],
        cause: frozenset[str] = frozenset(),
        moved: frozenset[str] = frozenset(),
    ) -> None:
        """Bring the segment list in line with the present: talking, on hold, or cut off."""
        state = self._wanted_state(track)
        if track.resumed_from is not None:
            self._resume(track, state, effects)
        if state is None:
            if track.open_segment is not None and track.cut_off_at is None:
                track.cut_off_at = at
                track.cut_off_by = cause
                self._debouncing.add(track.uniqueid)
            return
        consultant, hold = state
        if track.cut_off_at is not None:
            self._reconnect(track, at, effects, moved)
        current = track.open_segment
        if current is None:
            self._confirm(track, effects)
            track.open_segment = Segment(consultant, at, at, hold)
            effects.append(TalkStarted(at, track.conversation.conversation_id, consultant))
        elif (current.consultant, current.hold) != (consultant, hold):
            self._close_segment(track, at)
            track.open_segment = Segment(consultant, at, at, hold)

    def _resume(self, track: _Track, state: tuple[str | None, bool] | None, effects: list[Effect]) -> None:
        """First look at a conversation restored from a checkpoint: did it go on as it was?"""
        resumed_from, track.resumed_from = track.resumed_from, None
        current = track.open_segment
        if current is not None and resumed_from is not None and state != (current.consultant, current.hold):
            self._close_segment(track, resumed_from)
            effects.append(TalkStopped(resumed_from, track.conversation.conversation_id))

    def _reconnect(self, track: _Track, at: float, effects: list[Effect], moved: frozenset[str]) -> None:
        """The client is connected again after a cut-off: absorb a short gap, or split the talk.

        The decision depends only on this conversation's own times (cut-off and reconnect), never on
        when the debounce was noticed, so event interleaving across calls cannot change it. A gap
        that was a Local optimisation moving the channels that cut the client off is no gap at all.
        """
        cut_off_at, reported = track.cut_off_at, track.stop_reported
        assert cut_off_at is not None
        track.cut_off_at, track.stop_reported = None, False
        self._debouncing.discard(track.uniqueid)
        was_a_move = not track.cut_off_by.isdisjoint(moved)
        track.cut_off_by = frozenset()
        if at - cut_off_at >= self.debounce and not was_a_move:
            self._close_segment(track, cut_off_at)
            if not reported:
                effects.append(TalkStopped(cut_off_at, track.conversation.conversation_id))
        elif reported and track.open_segment is not None:
            # a clock from another call reported the stop early, but this gap was short after all
            segment = track.open_segment
            effects.append(TalkStarted(at, track.conversation.conversation_id, segment.consultant))

    def _wanted_state(self, track: _Track) -> tuple[str | None, bool] | None:
        current = track.open_segment.consultant if track.open_segment else None
        if track.hold is not None:
            return (track.hold.by or current, True)
        if not track.connected:
            return None
        if current in track.connected:
            return (current, False)
        return (track.connected[0], False)

    def _close_segment(self, track: _Track, end: float) -> None:
        segment = track.open_segment
        if segment is None:
            return
        track.open_segment = None
        if end > segment.start:
            track.conversation.segments.append(Segment(segment.consultant, segment.start, end, segment.hold))

    def _flush_debounced(self, now: float, effects: list[Effect]) -> None:
        """Report, live, the talk stops whose debounce has run out by `now`."""
        for uniqueid in sorted(self._debouncing):
            track = self._tracks.get(uniqueid)
            if track is None or track.cut_off_at is None:
                self._debouncing.discard(uniqueid)
            elif now - track.cut_off_at >= self.debounce and not track.stop_reported:
                track.stop_reported = True
                effects.append(TalkStopped(track.cut_off_at, track.conversation.conversation_id))

    def _release_holds(self, holder: str, at: float, effects: list[Effect]) -> None:
        for uniqueid, track in list(self._tracks.items()):
            if track.hold is not None and track.hold.by_uniqueid == holder:
                self._end_hold(track, at, effects)
                self._update_connectivity(uniqueid, at, effects)

    def _end_hold(self, track: _Track, at: float, effects: list[Effect]) -> None:
        at = self._conversation_time(track, at)
        track.hold = None
        effects.append(HoldStopped(at, track.conversation.conversation_id))

    def _confirm(self, track: _Track, effects: list[Effect]) -> None:
        """A conversation adopted from a stray event turns out real (it talks, or is listed)."""
        if not track.confirmed:
            track.confirmed = True
            effects.append(ConversationStarted(track.conversation.started_at, track.conversation))

    def _end_conversation(self, uniqueid: str, at: float, effects: list[Effect], estimated: bool) -> None:
        track = self._tracks.pop(uniqueid)
        self._debouncing.discard(uniqueid)
        if not track.confirmed:
            detail = f"{track.conversation.channel}: only a stray event ever showed it; not recorded"
            effects.append(Anomaly(at, "phantom_conversation", detail))
            return
        at = self._conversation_time(track, at)
        if track.hold is not None:
            self._end_hold(track, at, effects)
        if track.open_segment is not None:
            end = track.cut_off_at if track.cut_off_at is not None else at
            self._close_segment(track, end)
            if not track.stop_reported:
                effects.append(TalkStopped(end, track.conversation.conversation_id))
        conversation = track.conversation
        if conversation.direction is None:
            self._decide(track, track.fallback, track.first_exten)
        conversation.ended_at = at
        conversation.estimated = conversation.estimated or estimated
        effects.append(ConversationEnded(at, conversation))


def _is_up(message: Message) -> bool:
    state = message.get("ChannelState")
    if state:
        return state == "6"
    return message.get("ChannelStateDesc") == "Up"


def rings(message: Message) -> bool:
    """The event's channel is in state Ring (AST_STATE_RING, 4): it called the PBX and runs (or is
    about to run) the dialplan. The one test of it, for the model and for `talkmeter check`."""
    return message.get("ChannelState") == "4"


def _listed_direction(item: Message) -> Direction:
    """A listed channel's direction: dialled channels run AppDial/AppQueue on an `(Outgoing Line)`."""
    if rings(item):
        return "inbound"
    dialled = (
        item.get("ApplicationData") == "(Outgoing Line)" or item.get("Application") in _DIALLED_APPLICATIONS
    )
    return "outbound" if dialled else "inbound"


def _duration(raw: str) -> float:
    """CoreShowChannel `Duration` (`HH:MM:SS`, or seconds) in seconds; 0 when unreadable."""
    try:
        if ":" in raw:
            hours, minutes, seconds = (int(part) for part in raw.split(":"))
            return float(hours * 3600 + minutes * 60 + seconds)
        return float(raw)
    except ValueError:
        return 0.0


def _checkpoint_of(track: _Track, at: float) -> dict[str, Any]:
    conversation = track.conversation
    open_segment = track.open_segment
    segments = [[s.consultant, s.start, s.end, s.hold] for s in conversation.segments]
    if open_segment is not None and track.cut_off_at is not None:  # cut off: its end is known
        if track.cut_off_at > open_segment.start:
            segments.append(
                [open_segment.consultant, open_segment.start, track.cut_off_at, open_segment.hold]
            )
        open_segment = None
    return {
        "uniqueid": track.uniqueid,
        "at": at,
        "conversation_id": conversation.conversation_id,
        "pbx": conversation.pbx,
        "channel": conversation.channel,
        "direction": conversation.direction,
        "fallback": track.fallback,
        "first_exten": track.first_exten,
        "client_number": conversation.client_number,
        "client_number_raw": conversation.client_number_raw,
        "line": conversation.line,
        "started_at": conversation.started_at,
        "consultants": list(conversation.consultants),
        "segments": segments,
        "open": None
        if open_segment is None
        else [open_segment.consultant, open_segment.start, open_segment.hold],
        "hold": None if track.hold is None else [track.hold.by_uniqueid, track.hold.by, track.hold.since],
    }


def _resumed_track(uniqueid: str, saved: dict[str, Any], seen: Conversation | None) -> _Track:
    """Rebuild a conversation in progress from `_checkpoint_of`; `seen` is what the PBX shows now."""
    conversation = Conversation(
        conversation_id=saved["conversation_id"],
        pbx=saved["pbx"],
        channel=seen.channel if seen else saved["channel"],
        direction=saved["direction"],
        client_number=saved["client_number"],
        client_number_raw=saved["client_number_raw"],
        line=saved["line"],
        started_at=saved["started_at"],
        segments=[Segment(c, start, end, hold) for c, start, end, hold in saved["segments"]],
        consultants=list(saved["consultants"]),
        estimated=True,
    )
    track = _Track(uniqueid, conversation, last_seen=saved["at"], resumed_from=saved["at"])
    track.fallback = saved.get("fallback", "inbound")
    track.first_exten = saved.get("first_exten", "")
    if saved["open"] is not None:
        consultant, start, hold = saved["open"]
        track.open_segment = Segment(consultant, start, start, hold)
        track.connected = () if hold else (consultant,)
    if saved["hold"] is not None:
        track.hold = _Hold(*saved["hold"])
    return track


def check_checkpoint(item: dict[str, Any]) -> None:
    """Raise ValueError naming what makes `item` unusable by `restore` (it is read from a file
    that a crash, a disk or a person may have damaged; `_checkpoint_of` defines the shape)."""
    for key in ("uniqueid", "conversation_id", "pbx", "channel", "client_number_raw"):
        _expect(item, key, isinstance(item.get(key), str))
    for key in ("client_number", "line"):
        _expect(item, key, item.get(key) is None or isinstance(item.get(key), str))
    _expect(item, "direction", item.get("direction") in ("inbound", "outbound", None))  # None: undecided
    _expect(item, "fallback", item.get("fallback", "inbound") in ("inbound", "outbound"))
    _expect(item, "first_exten", isinstance(item.get("first_exten", ""), str))
    _expect(item, "at", _is_time(item.get("at")))
    _expect(item, "started_at", _is_time(item.get("started_at")))
    consultants = item.get("consultants")
    _expect(item, "consultants", isinstance(consultants, list) and all(_is_text(c) for c in consultants))
    segments = item.get("segments")
    _expect(item, "segments", isinstance(segments, list) and all(_is_segment(s) for s in segments))
    opened = item.get("open")
    _expect(item, "open", opened is None or _is_open_segment(opened))
    hold = item.get("hold")
    _expect(item, "hold", hold is None or _is_hold(hold))


def _expect(item: dict[str, Any], key: str, valid: bool) -> None:
    if not valid:
        raise ValueError(f"checkpoint field {key!r} is missing or malformed: {item.get(key)!r:.80}")


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _is_name(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_segment(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and _is_name(value[0])
        and _is_time(value[1])
        and _is_time(value[2])
        and isinstance(value[3], bool)
    )


def _is_open_segment(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and _is_name(value[0])
        and _is_time(value[1])
        and isinstance(value[2], bool)
    )


def _is_hold(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and _is_name(value[1])
        and _is_time(value[2])
    )
