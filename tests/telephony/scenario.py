"""A small PBX script for synthetic AMI scenarios: the cases the recorded traces do not cover.

Each method appends the event Asterisk would send, with a clock the scenario moves by hand
(`after`). The default `Shape` is the recorded traces' (Asterisk 22, chan_pjsip, `timestampevents =
yes`); other shapes write the same calls as older versions and other channel drivers do. What a
shape changes was read in Asterisk's own sources (13.38, 16.30, 18.26, 20.20, 22.10):

* every event: `Event`, `Privilege`, then `Timestamp` only with `timestampevents = yes` (off by
  default), then `SystemName` only when `systemname` is set (main/manager.c,
  `__manager_event_sessions_va`), which also prefixes every Uniqueid (`<systemname>-<time>.<n>`,
  main/channel_internal_api.c);
* the channel block of Newchannel, Newstate, NewCallerid, Hangup, Hold, Unhold, BridgeEnter/Leave,
  and with a `Dest`/`LocalOne`/`LocalTwo`/`Source` prefix in DialBegin, LocalBridge and
  LocalOptimizationBegin/End: Channel, ChannelState, ChannelStateDesc, CallerIDNum, CallerIDName,
  ConnectedLineNum, ConnectedLineName, Language, AccountCode, Context, Exten, Priority, Uniqueid,
  Linkedid, the same in every version; `Tenantid` follows only when a tenant is set, from 18.25 and
  20.10 on (main/manager_channels.c, `ast_manager_build_channel_state_string_prefix`);
* the bridge block: BridgeUniqueid, BridgeType, BridgeTechnology, BridgeCreator, BridgeName,
  BridgeNumChannels, and `BridgeVideoSourceMode` from 13.13 on (main/manager_bridges.c);
  BridgeEnter ends with `SwapUniqueid` when the entering channel replaces another;
* how an inbound channel is born: chan_pjsip creates it in Ring (`chan_pjsip_new(session,
  AST_STATE_RING, ...)`, channels/chan_pjsip.c), chan_sip in Down and sets Ring just before the
  dialplan starts (`sip_new(p, AST_STATE_DOWN, ...)` then `ast_setstate(c, AST_STATE_RING)` in
  `handle_request_invite`, channels/chan_sip.c, 13 to 20; chan_sip is gone from 21 on), DAHDI and
  IAX2 in Ring (channels/sig_pri.c, chan_dahdi.c, chan_iax2.c); a dialled channel is born Down
  (Reserved for DAHDI PRI) and only ever goes Ringing (5) and Up (6), never Ring;
* channel names: `PJSIP/<endpoint>-%08x`, `SIP/<peer>-%08x`, `IAX2/<peer>-<callno>`,
  `DAHDI/i<span>/<number>-<hex>` (chan_dahdi.c, `create_channel_name`).

Per version, what differs (everything else above is the same from 13 to 22, fields in the same
order). None of it is a header the call model reads: the versions are run to show that, not to
exercise other logic. Likewise, a shape without timestamps is fed each event at its receive time,
which here is the time it was sent (no delay, no jitter): it shows that the model needs no
`Timestamp`, not how it copes with a slow link.

| Asterisk | AMI banner | differences |
| --- | --- | --- |
| 13 | 2.x | no `BridgeVideoSourceMode` before 13.13; `Newexten` in class `call` (later `dialplan`) |
| 16 | 5.x | `BridgeVideoSourceMode` in every bridge block |
| 18 | 7.x | `Tenantid` from 18.25 when set; event filters by name from 18.26 |
| 20 | 9.x | `Tenantid` from 20.10 when set; filters by name from 20.11; the last with chan_sip |
| 22 | 11.x | no chan_sip; filters by name from 22.1 |
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from telephony.calls import CallTracker, Snapshot
from telephony.effects import Conversation, ConversationEnded, Effect
from telephony.framing import Message

STATES = {"Down": "0", "Rsrvd": "1", "Ring": "4", "Ringing": "5", "Up": "6"}
#: AMI_VERSION of each Asterisk (include/asterisk/manager.h), the banner's version
AMI_VERSIONS = {13: "2.10.6", 16: "5.0.5", 18: "7.0.3", 20: "9.0.0", 22: "11.0.0"}


@dataclass(frozen=True)
class Shape:
    """How one Asterisk version and one channel driver write a call."""

    asterisk: int = 22
    driver: str = "PJSIP"  # PJSIP | SIP | IAX2 | DAHDI: the technology of the trunks
    phones: str = ""  # the technology of the phones, when not the trunks' (E1 lines, SIP phones)
    timestamps: bool = True
    trunk: str = "trunk"  # the carrier's endpoint / peer name
    system_name: str = ""
    tenant: str = ""

    @property
    def born_ringing(self) -> bool:
        """Whether an inbound channel's Newchannel already says Ring (all but chan_sip)."""
        return self.driver != "SIP"

    @property
    def phone_driver(self) -> str:
        return self.phones or self.driver

    def __str__(self) -> str:
        stamps = "stamped" if self.timestamps else "no-timestamps"
        return f"{self.driver}-{self.asterisk}-{stamps}"


PJSIP_22 = Shape()
#: the shapes every direction scenario runs in: chan_sip on each version that has it, and PJSIP
SHAPES = (
    Shape(13, "SIP", timestamps=False, trunk="beeline"),
    Shape(16, "SIP", timestamps=False, system_name="pbx1"),
    Shape(18, "SIP", timestamps=True),
    Shape(20, "SIP", timestamps=False, tenant="support"),
    Shape(13, "PJSIP", timestamps=False),
    Shape(20, "PJSIP", timestamps=True, tenant="support"),
    PJSIP_22,
    Shape(18, "DAHDI", phones="SIP", timestamps=False),
    Shape(16, "IAX2", phones="SIP", timestamps=True, trunk="provider"),
)


@dataclass
class Chan:
    name: str
    uniqueid: str
    state: str = "Down"
    callerid: str = ""
    exten: str = "s"
    context: str = "default"
    bridge: str | None = None
    linkedid: str = ""


@dataclass
class Pbx:
    now: float = 1_795_700_000.0
    system: str = ""
    shape: Shape = PJSIP_22
    events: list[Message] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # when each event was sent (the receive clock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _channel_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(0x1A))

    # --- clock
    def after(self, seconds: float) -> Pbx:
        self.now += seconds
        return self

    # --- channels
    def channel(
        self, name: str, state: str = "Down", callerid: str = "", exten: str = "s", context: str = "default"
    ) -> Chan:
        number = next(self._ids)
        system = self.system or self.shape.system_name
        prefix = f"{system}-" if system else ""
        uniqueid = f"{prefix}{self.now:.0f}.{number}"
        chan = Chan(name, uniqueid, state, callerid, exten, context, linkedid=uniqueid)
        self.emit("Newchannel", chan)
        return chan

    def name(self, endpoint: str, driver: str = "") -> str:
        """A fresh channel name for `endpoint` as the driver (the trunks', by default) writes it."""
        n = next(self._channel_ids)
        driver = driver or self.shape.driver
        if driver == "IAX2":
            return f"IAX2/{endpoint}-{n}"
        if driver == "DAHDI":
            return f"DAHDI/i1/{endpoint}-{n:x}"
        return f"{driver}/{endpoint}-{n:08x}"

    def inbound(self, number: str = "+74951234567", did: str = "74950000000") -> Chan:
        """A client calls in through the trunk and the channel starts its dialplan."""
        endpoint = number if self.shape.driver == "DAHDI" else self.shape.trunk
        if self.shape.born_ringing:
            return self.channel(self.name(endpoint), "Ring", number, did, "from-trunk")
        chan = self.channel(self.name(endpoint), "Down", number, did, "from-trunk")
        self.state(chan, "Ring")
        return chan

    def phone_calls(self, endpoint: str, exten: str) -> Chan:
        """A consultant's phone places a call: its channel runs the dialplan, like an inbound one."""
        name = self.name(endpoint, self.shape.phone_driver)
        if self.shape.phone_driver != "SIP":
            return self.channel(name, "Ring", endpoint, exten, "from-internal")
        chan = self.channel(name, "Down", endpoint, exten, "from-internal")
        self.state(chan, "Ring")
        return chan

    def phone(self, endpoint: str) -> Chan:
        """A consultant's phone channel being dialled (born Down)."""
        return self.channel(
            self.name(endpoint, self.shape.phone_driver), "Down", endpoint, endpoint, "from-internal"
        )

    def outbound(self, caller: Chan | None, number: str = "+74957654321") -> Chan:
        """A call out through the trunk: the dialled channel, its caller id, then the DialBegin.

        `caller=None` is an Originate: the dial API publishes a DialBegin without a source channel
        (main/dial.c, `begin_dial_channel`; main/pbx.c, `pbx_outgoing_attempt`).
        """
        endpoint = number if self.shape.driver == "DAHDI" else self.shape.trunk
        state = "Rsrvd" if self.shape.driver == "DAHDI" else "Down"
        trunk = self.channel(self.name(endpoint), state, "<unknown>", "s", "from-trunk")
        self.callerid(trunk, number)
        self.dial(caller, trunk, f"{self.shape.trunk}/{number}")
        return trunk

    def client_calls(self, number: str = "+74951234567", did: str = "74950000000", n: int = 1) -> Chan:
        return self.channel(f"PJSIP/trunk-{n:08x}", "Ring", number, did)

    def consultant(self, endpoint: str, n: int) -> Chan:
        return self.channel(f"PJSIP/{endpoint}-{n:08x}", "Down", endpoint)

    def local_pair(self, base: str, optimize: bool = True, caller: Chan | None = None) -> tuple[Chan, Chan]:
        """A Local channel: `;1` born Down, `;2` born Ring (main/core_local.c, `local_request`).

        `caller`: the channel that dials `;1`. Dialling copies its number to `;2`'s caller id
        (main/core_unreal.c, `ast_unreal_call_setup`), which Asterisk publishes as a NewCallerid
        of `;2` in state Ring: a queue or ring group's Local channels carry the client's number
        (tests/traces/attended_transfer.ami shows it with a consultant's).
        """
        one = self.channel(f"{base};1", "Down", "<unknown>", "s")
        two = self.channel(f"{base};2", "Ring", "<unknown>", "s")
        if caller is not None:
            self.callerid(two, caller.callerid)
        self.emit_raw(
            "LocalBridge",
            **channel_headers(one, "LocalOne", self.shape),
            **channel_headers(two, "LocalTwo", self.shape),
            Context=two.context,
            Exten=two.exten,
            LocalOptimization="Yes" if optimize else "No",
        )
        return one, two

    def state(self, chan: Chan, state: str) -> None:
        chan.state = state
        self.emit("Newstate", chan)

    def answer(self, *chans: Chan) -> None:
        for chan in chans:
            self.state(chan, "Up")

    def hangup(self, *chans: Chan, cause: str = "16") -> None:
        for chan in chans:
            if chan.bridge:
                self.leave(chan.bridge, chan)
            self.emit("Hangup", chan, Cause=cause, **{"Cause-txt": "Normal Clearing"})

    def rename(self, chan: Chan, new_name: str) -> None:
        self.emit_raw("Rename", Channel=chan.name, Newname=new_name, Uniqueid=chan.uniqueid)
        chan.name = new_name

    def hold(self, chan: Chan) -> None:
        self.emit("Hold", chan, MusicClass="default")

    def unhold(self, chan: Chan) -> None:
        self.emit("Unhold", chan)

    def callerid(self, chan: Chan, number: str) -> None:
        chan.callerid = number
        self.emit("NewCallerid", chan, **{"CID-CallingPres": "0 (Presentation Allowed, Not Screened)"})

    def dial(self, caller: Chan | None, dest: Chan, dialstring: str | None = None) -> None:
        dest_headers = channel_headers(dest, "Dest", self.shape)
        dial = {**dest_headers, "DialString": dialstring or dest.name.partition("/")[2]}
        if caller is None:  # Originate: a DialBegin with no source channel
            self.emit_raw("DialBegin", **dial)
        else:
            self.emit("DialBegin", caller, **dial)

    def dial_end(self, caller: Chan | None, dest: Chan, status: str) -> None:
        end = {**channel_headers(dest, "Dest", self.shape), "DialStatus": status}
        if caller is None:
            self.emit_raw("DialEnd", **end)
        else:
            self.emit("DialEnd", caller, **end)

    def answered_by(self, client: Chan, endpoint: str = "101", ring: float = 2.0) -> tuple[Chan, str]:
        """The client's dialplan dials a phone (Dial, or a queue member), which answers."""
        phone = self.phone(endpoint)
        self.dial(client, phone)
        self.state(phone, "Ringing")
        self.after(ring)
        self.answer(phone)
        self.dial_end(client, phone, "ANSWER")
        return phone, self.connect(phone, client)

    def calls_in(self, calls: int, talk: float = 5.0) -> None:
        """`calls` clients call in one after the other, each answered by a phone 101-103."""
        for n in range(calls):
            client = self.inbound(f"+7495123456{n % 10}", "74950000000")
            phone, _ = self.answered_by(client, f"10{n % 3 + 1}")
            self.after(talk)
            self.hangup(phone, client)

    # --- Local channel optimisation (main/bridge.c, try_swap_optimize_out / try_merge_optimize_out)
    def optimize_begin(self, one: Chan, two: Chan, source: Chan | None, dest: Chan, op: int = 1) -> None:
        headers = {
            **channel_headers(one, "LocalOne", self.shape),
            **channel_headers(two, "LocalTwo", self.shape),
        }
        if source is not None:
            headers |= channel_headers(source, "Source", self.shape)
        self.emit_raw("LocalOptimizationBegin", **headers, DestUniqueId=dest.uniqueid, Id=str(op))

    def optimize_end(self, one: Chan, two: Chan, op: int = 1, success: bool = True) -> None:
        headers = {
            **channel_headers(one, "LocalOne", self.shape),
            **channel_headers(two, "LocalTwo", self.shape),
        }
        self.emit_raw("LocalOptimizationEnd", **headers, Success="Yes" if success else "No", Id=str(op))

    # --- bridges
    def bridge(self, technology: str = "simple_bridge", kind: str = "basic") -> str:
        bridge_id = f"bridge-{next(self._ids)}"
        self.emit_raw("BridgeCreate", **self._bridge_headers(bridge_id, technology, kind, 0))
        return bridge_id

    def enter(self, bridge_id: str, *chans: Chan, swap: Chan | None = None) -> None:
        for chan in chans:
            chan.bridge = bridge_id
            extra = {"SwapUniqueid": swap.uniqueid} if swap else {}
            self.emit("BridgeEnter", chan, **self._bridge_headers(bridge_id), **extra, before=True)

    def leave(self, bridge_id: str, *chans: Chan) -> None:
        for chan in chans:
            chan.bridge = None
            self.emit("BridgeLeave", chan, **self._bridge_headers(bridge_id), before=True)

    def connect(self, *chans: Chan) -> str:
        """Answer what is not Up yet and bridge the channels together."""
        for chan in chans:
            if chan.state != "Up":
                self.answer(chan)
        bridge_id = self.bridge()
        self.enter(bridge_id, *chans)
        return bridge_id

    def _bridge_headers(
        self, bridge_id: str, technology: str = "simple_bridge", kind: str = "basic", members: int = 2
    ) -> dict[str, str]:
        headers = {
            "BridgeUniqueid": bridge_id,
            "BridgeType": kind,
            "BridgeTechnology": technology,
            "BridgeCreator": "<unknown>",
            "BridgeName": "<unknown>",
            "BridgeNumChannels": str(members),
        }
        if self.shape.asterisk > 13:  # 13.13 and later; these scenarios take 13 as 13.0
            headers["BridgeVideoSourceMode"] = "none"
        return headers

    # --- raw events
    def emit(self, event: str, chan: Chan, before: bool = False, **extra: str) -> None:
        """`before`: the extra headers come first (bridge events start with the bridge block)."""
        own = channel_headers(chan, "", self.shape)
        self.emit_raw(event, **({**extra, **own} if before else {**own, **extra}))

    def emit_raw(self, event: str, **headers: str) -> None:
        head = {"Event": event, "Privilege": "call,all"}
        if self.shape.timestamps:
            head["Timestamp"] = f"{self.now:.6f}"
        if self.shape.system_name:
            head["SystemName"] = self.shape.system_name
        self.events.append(Message({**head, **headers}))
        self.times.append(self.now)

    def snapshot_item(self, chan: Chan, duration: str = "00:00:10", application: str = "Queue") -> Message:
        """The CoreShowChannel line Asterisk would list for `chan` now (no Timestamp: a list item)."""
        data = "(Outgoing Line)" if application in {"AppDial", "AppDial2", "AppQueue"} else ""
        extra = {"Application": application, "ApplicationData": data, "Duration": duration}
        extra["BridgeId"] = chan.bridge or ""
        return Message({"Event": "CoreShowChannel", **channel_headers(chan, "", self.shape), **extra})

    # --- as bytes
    def frames(self) -> list[bytes]:
        """Every event as Asterisk writes it on the wire."""
        return [frame_bytes(message) for message in self.events]

    def capture(self) -> bytes:
        """What a client that logged in before the first event received: banner, login answer, events."""
        banner = f"Asterisk Call Manager/{AMI_VERSIONS[self.shape.asterisk]}\r\n".encode()
        login = b"Response: Success\r\nMessage: Authentication accepted\r\n\r\n"
        booted = b"Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n"
        return banner + login + booted + b"".join(self.frames())

    # --- playing it
    def run(self, tracker: CallTracker | None = None) -> tuple[list[Conversation], list[Effect]]:
        """Feed every event with its receive time (what a PBX without timestamps leaves us)."""
        return run(self.events, tracker, received=self.times)

    def one(self, tracker: CallTracker | None = None) -> Conversation:
        conversations, _ = self.run(tracker)
        assert len(conversations) == 1, conversations
        return conversations[0]


def frame_bytes(message: Message) -> bytes:
    return "".join(f"{key}: {value}\r\n" for key, value in message.headers.items()).encode() + b"\r\n"


def channel_headers(chan: Chan, prefix: str = "", shape: Shape = PJSIP_22) -> dict[str, str]:
    fields = {
        "Channel": chan.name,
        "ChannelState": STATES[chan.state],
        "ChannelStateDesc": chan.state,
        "CallerIDNum": chan.callerid or "<unknown>",
        "CallerIDName": "<unknown>",
        "ConnectedLineNum": "<unknown>",
        "ConnectedLineName": "<unknown>",
        "Language": "en",
        "AccountCode": "",
        "Context": chan.context,
        "Exten": chan.exten,
        "Priority": "1",
        "Uniqueid": chan.uniqueid,
        "Linkedid": chan.linkedid or chan.uniqueid,
    }
    if shape.tenant and shape.asterisk >= 20:  # 18.25+ and 20.10+; these scenarios take 18 as older
        fields["Tenantid"] = shape.tenant
    return {prefix + key: value for key, value in fields.items()}


def run(
    events: list[Message],
    tracker: CallTracker | None = None,
    snapshots: dict[int, Snapshot] | None = None,
    received: list[float] | None = None,
) -> tuple[list[Conversation], list[Effect]]:
    """Feed events (and snapshots before the given event index); close what is left open.

    Each event is received at `received[i]`, or at its own Timestamp when no receive times are given.
    """
    tracker = tracker or CallTracker()
    effects: list[Effect] = []
    snapshots = snapshots or {}
    for index, message in enumerate(events):
        if index in snapshots:
            effects += tracker.resync(snapshots[index])
        at = received[index] if received is not None else message.timestamp or 0.0
        effects += tracker.feed(message, received_at=at)
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
