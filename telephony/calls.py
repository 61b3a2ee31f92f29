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
`estimated`. Channels that hung up after the snapshot was taken are not resurrected.
"""

from __future__ import annotations

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
from telephony.roles import ChannelRoles, Role, endpoint_name, local_pair_key

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
        "Hold",
        "Unhold",
        "Shutdown",
    }
)

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


@dataclass(slots=True)
class _Bridge:
    bridge_id: str
    holding: bool
    members: set[str] = field(default_factory=set)


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
    hold: _Hold | None = None
    connected: tuple[str, ...] = ()  # consultants connected right now


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
            "Hold": self.on_hold,
            "Unhold": self.on_unhold,
            "Shutdown": self.on_shutdown,
        }

    # ----------------------------------------------------------------- public interface

    @property
    def open_conversations(self) -> list[Conversation]:
        return [track.conversation for track in self._tracks.values()]

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
        saved = [_checkpoint_of(track, at) for track in self._tracks.values()]
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
        if channel is not None and channel.role is Role.CLIENT:
            direction: Direction = "outbound" if message.get("ChannelState") == "0" else "inbound"
            self._start_conversation(channel, message, direction, at, estimated=False, effects=effects)

    def on_newstate(self, message: Message, at: float, effects: list[Effect]) -> None:
        channel = self._channel_of(message, at, effects)
        if channel is not None:
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
        # A trunk channel that is dialled is a call *to* a client, whatever its first state said.
        track = self._tracks.get(message.get("DestUniqueid"))
        if track is not None and not track.conversation.segments:
            track.conversation.direction = "outbound"
            track.conversation.line = None

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
            bridge.members.add(channel.uniqueid)
            channel.bridge = bridge.bridge_id

        self._mutate(touched, at, effects, enter)

    def on_bridge_leave(self, message: Message, at: float, effects: list[Effect]) -> None:
        channel = self._channel_of(message, at, effects)
        bridge = self._bridges.get(message.get("BridgeUniqueid"))
        if channel is None or bridge is None:
            return

        def leave() -> None:
            bridge.members.discard(channel.uniqueid)
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

    def on_hold(self, message: Message, at: float, effects: list[Effect]) -> None:
        channel = self._channel_of(message, at, effects)
        if channel is None:
            return
        # Only a client who is talking can be put on hold: a hold while it waits in a queue, or
        # pressed by a consultant talking to someone else, is not this client's conversation time.
        by = endpoint_name(channel.name) if channel.role is Role.CONSULTANT else None
        near = [channel.uniqueid] if channel.role is Role.CLIENT else self._clients_near([channel.uniqueid])
        for uniqueid in [uid for uid in near if self._talking_with(uid)]:
            track = self._tracks[uniqueid]
            at = self._conversation_time(track, at)
            if track.hold is None:
                track.hold = _Hold(channel.uniqueid, by, at)
                effects.append(HoldStarted(at, track.conversation.conversation_id, by))
                self._update_connectivity(uniqueid, at, effects)

    def on_unhold(self, message: Message, at: float, effects: list[Effect]) -> None:
        self._release_holds(message.get("Uniqueid"), at, effects)

    def on_shutdown(self, message: Message, at: float, effects: list[Effect]) -> None:
        # Asterisk is stopping: every channel dies without a Hangup we will ever see.
        for uniqueid in list(self._channels):
            self._forget_channel(uniqueid, at, effects, estimated=True)
        self._bridges.clear()

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
            self._start_conversation(channel, message, _guess_direction(message), at, True, effects)
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
                bridge.members.discard(channel.uniqueid)
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
        if channel is None:
            created = at - _duration(item.get("Duration"))
            channel = self._add_channel(item, created, effects)
            if channel is None:
                return
            if channel.role is Role.CLIENT:
                direction = _guess_direction(item)
                self._start_conversation(channel, item, direction, created, True, effects)
        channel.up = _is_up(item)
        bridge_id = item.get("BridgeId")
        if channel.bridge != (bridge_id or None):
            self._leave_bridge(channel)
            if bridge_id:
                bridge = self._bridge(bridge_id, bridges.get(bridge_id, item))
                bridge.members.add(uniqueid)
                channel.bridge = bridge_id

    # ----------------------------------------------------------------- connectivity

    def _mutate(
        self, touched: list[str], at: float, effects: list[Effect], change: Callable[[], None]
    ) -> None:
        """Apply a topology change and re-evaluate every client it could affect, before and after."""
        clients = self._clients_near(touched)
        change()
        clients |= self._clients_near([uid for uid in touched if uid in self._channels])
        for uniqueid in sorted(clients):
            self._update_connectivity(uniqueid, at, effects)

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
        if not client.up:
            return ()
        found = [
            channel
            for channel in self._component([client.uniqueid])
            if channel.role is Role.CONSULTANT and channel.up
        ]
        found.sort(key=lambda channel: channel.created_at)
        return tuple(dict.fromkeys(endpoint_name(channel.name) for channel in found))

    def _talking_with(self, client_uniqueid: str) -> bool:
        track = self._tracks.get(client_uniqueid)
        return track is not None and bool(track.connected)

    # ----------------------------------------------------------------- conversation timeline

    def _start_conversation(
        self,
        channel: _Channel,
        message: Message,
        direction: Direction,
        at: float,
        estimated: bool,
        effects: list[Effect],
    ) -> None:
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
        self._tracks[channel.uniqueid] = _Track(channel.uniqueid, conversation, last_seen=at)
        effects.append(ConversationStarted(at, conversation))

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

    def _update_connectivity(self, uniqueid: str, at: float, effects: list[Effect]) -> None:
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
        self._advance_timeline(track, at, effects)

    def _conversation_time(self, track: _Track, at: float) -> float:
        """Time never runs backwards within one conversation (arrival order has tiny inversions).

        The clamp is per conversation, not global, so that how the events of unrelated calls
        interleave cannot change either call's figures.
        """
        track.last_seen = max(track.last_seen, at)
        return track.last_seen

    def _advance_timeline(self, track: _Track, at: float, effects: list[Effect]) -> None:
        """Bring the segment list in line with the present: talking, on hold, or cut off."""
        state = self._wanted_state(track)
        if track.resumed_from is not None:
            self._resume(track, state, effects)
        if state is None:
            if track.open_segment is not None and track.cut_off_at is None:
                track.cut_off_at = at
                self._debouncing.add(track.uniqueid)
            return
        consultant, hold = state
        if track.cut_off_at is not None:
            self._reconnect(track, at, effects)
        current = track.open_segment
        if current is None:
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

    def _reconnect(self, track: _Track, at: float, effects: list[Effect]) -> None:
        """The client is connected again after a cut-off: absorb a short gap, or split the talk.

        The decision depends only on this conversation's own times (cut-off and reconnect), never on
        when the debounce was noticed, so event interleaving across calls cannot change it.
        """
        cut_off_at, reported = track.cut_off_at, track.stop_reported
        assert cut_off_at is not None
        track.cut_off_at, track.stop_reported = None, False
        self._debouncing.discard(track.uniqueid)
        if at - cut_off_at >= self.debounce:
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

    def _end_conversation(self, uniqueid: str, at: float, effects: list[Effect], estimated: bool) -> None:
        track = self._tracks.pop(uniqueid)
        self._debouncing.discard(uniqueid)
        at = self._conversation_time(track, at)
        if track.hold is not None:
            self._end_hold(track, at, effects)
        if track.open_segment is not None:
            end = track.cut_off_at if track.cut_off_at is not None else at
            self._close_segment(track, end)
            if not track.stop_reported:
                effects.append(TalkStopped(end, track.conversation.conversation_id))
        conversation = track.conversation
        conversation.ended_at = at
        conversation.estimated = conversation.estimated or estimated
        effects.append(ConversationEnded(at, conversation))


def _is_up(message: Message) -> bool:
    state = message.get("ChannelState")
    if state:
        return state == "6"
    return message.get("ChannelStateDesc") == "Up"


def _guess_direction(message: Message) -> Direction:
    # The dialled leg of a call runs AppDial; an inbound trunk channel runs the dialplan.
    return "outbound" if message.get("Application") == "AppDial" else "inbound"


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
    if saved["open"] is not None:
        consultant, start, hold = saved["open"]
        track.open_segment = Segment(consultant, start, start, hold)
        track.connected = () if hold else (consultant,)
    if saved["hold"] is not None:
        track.hold = _Hold(*saved["hold"])
    return track
