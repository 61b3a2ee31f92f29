"""Direction and line from what the PBX did, on chan_sip and chan_pjsip, Asterisk 13 to 22.

A trunk channel is outbound when it is dialled and inbound when it runs the dialplan itself;
Asterisk marks the second by putting the channel in state Ring (4) before the dialplan starts,
whatever the driver (chan_pjsip creates it in Ring, chan_sip creates it Down and sets Ring in
`handle_request_invite`, channels/chan_sip.c), and never puts a dialled channel in Ring (a
dialled channel goes Down -> Ringing -> Up: chan_sip's 180 handler sets AST_STATE_RINGING,
chan_pjsip's `chan_pjsip_incoming_response` likewise). Being dialled shows as the `DestChannel` of
a `DialBegin`: app_dial, app_queue and the dial API (main/dial.c) all publish one after
`ast_call`; an Originate goes through the dial API with no calling channel (main/pbx.c,
`pbx_outgoing_attempt` -> `ast_dial_run(dial, NULL, 0)`), so its DialBegin has no source
headers. `OriginateResponse` comes only after the answer, so it decides nothing the DialBegin did
not already.

Every scenario runs in each shape of `scenario.SHAPES` (chan_sip on 13, 16, 18 and 20, with and
without timestamps; chan_pjsip on 13, 20 and 22; an E1 through DAHDI and an IAX2 trunk with SIP
phones).
"""

from __future__ import annotations

import pytest

from telephony.calls import CallTracker, Snapshot
from telephony.effects import ConversationStarted
from telephony.roles import ChannelRoles

from .scenario import SHAPES, Pbx, Shape, run

DID = "74950000000"
CLIENT = "+74951234567"


def roles_for(shape: Shape) -> ChannelRoles:
    """Patterns a support firm would configure for the shape's trunk (its own name)."""
    trunk = "DAHDI/i*" if shape.driver == "DAHDI" else f"{shape.driver}/{shape.trunk}-*"
    return ChannelRoles(trunks=(trunk,), consultants=(f"{shape.phone_driver}/*",))


def tracker(shape: Shape, debounce: float = 1.0) -> CallTracker:
    return CallTracker(roles_for(shape), debounce)


@pytest.fixture(params=SHAPES, ids=str)
def pbx(request: pytest.FixtureRequest) -> Pbx:
    return Pbx(shape=request.param)


def test_queue_ringall_is_inbound_with_its_did(pbx: Pbx) -> None:
    client = pbx.inbound(CLIENT, DID)
    pbx.answer(client)  # the greeting answers first
    pbx.after(1.5)
    ringing = [pbx.phone(endpoint) for endpoint in ("102", "103")]
    for phone in ringing:
        pbx.dial(client, phone)
    phone, _ = pbx.answered_by(client)
    for other in ringing:
        pbx.dial_end(client, other, "CANCEL")
        pbx.dial_end(client, other, "CANCEL")  # app_queue sends two
        pbx.hangup(other, cause="26")
    pbx.after(8)
    pbx.hangup(client, phone)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("inbound", DID)
    assert conversation.talk_seconds == pytest.approx(8.0)
    assert conversation.wait_seconds == pytest.approx(3.5)


def test_queue_with_local_members_is_inbound(pbx: Pbx) -> None:
    client = pbx.inbound(CLIENT, DID)
    pbx.answer(client)
    one, two = pbx.local_pair("Local/101@from-queue-0000001a", caller=client)
    pbx.dial(client, one)
    phone = pbx.phone("101")
    pbx.dial(two, phone)
    pbx.after(3)
    pbx.answer(phone, two, one)
    pbx.connect(two, phone)
    pbx.connect(client, one)
    pbx.after(6)
    pbx.hangup(phone, two, one, client)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("inbound", DID)
    assert conversation.consultants == ["101"]
    assert conversation.talk_seconds == pytest.approx(6.0)


def test_ring_group_through_local_channels_is_inbound(pbx: Pbx) -> None:
    """FreePBX ring groups dial `Local/<ext>@from-internal` for every member at once."""
    client = pbx.inbound(CLIENT, "74950000001")
    members = [
        pbx.local_pair(f"Local/{ext}@from-internal-0000002{n}", caller=client)
        for n, ext in enumerate(("101", "102"))
    ]
    phones = []
    for one, two in members:
        pbx.dial(client, one)
        phone = pbx.phone(two.name.split("/")[1][:3])
        pbx.dial(two, phone)
        phones.append(phone)
    pbx.after(4)
    (one, two), (lost_one, lost_two) = members
    pbx.answer(phones[0], two, one, client)
    pbx.connect(two, phones[0])
    pbx.connect(client, one)
    pbx.dial_end(client, lost_one, "CANCEL")
    pbx.hangup(phones[1], lost_two, lost_one)
    pbx.after(5)
    pbx.hangup(phones[0], two, one, client)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("inbound", "74950000001")
    assert conversation.talk_seconds == pytest.approx(5.0)


def test_blind_transfer_keeps_the_client_inbound(pbx: Pbx) -> None:
    client = pbx.inbound(CLIENT, DID)
    phone, bridge = pbx.answered_by(client)
    pbx.after(4)
    pbx.unhold(phone)
    pbx.leave(bridge, client)
    pbx.hangup(phone)
    colleague, _ = pbx.answered_by(client, "102", ring=3)
    pbx.after(5)
    pbx.hangup(colleague, client)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("inbound", DID)
    assert conversation.consultants == ["101", "102"]
    assert conversation.talk_seconds == pytest.approx(9.0)


def test_attended_transfer_keeps_the_client_inbound(pbx: Pbx) -> None:
    client = pbx.inbound(CLIENT, DID)
    phone, bridge = pbx.answered_by(client)
    pbx.after(3)
    pbx.hold(phone)
    one, two = pbx.local_pair("Local/102@from-internal-0000003a", optimize=False)
    pbx.leave(bridge, phone)
    consult = pbx.bridge()
    pbx.enter(consult, phone, one)
    colleague = pbx.phone("102")
    pbx.dial(two, colleague)
    pbx.after(2)
    pbx.answer(colleague, two, one)
    pbx.connect(two, colleague)
    pbx.after(3)
    pbx.leave(consult, one)  # 101 hangs up: ;1 is moved into the client's bridge
    pbx.enter(bridge, one)
    pbx.hangup(phone)
    pbx.after(5)
    pbx.hangup(colleague, two, one, client)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("inbound", DID)
    assert conversation.consultants == ["101", "102"]
    assert conversation.hold_seconds == pytest.approx(5.0)


def test_forwarding_to_an_outside_number_gives_an_inbound_and_an_outbound_leg(pbx: Pbx) -> None:
    """101's phone forwards (302) to a mobile: app_dial's `do_forward` requests
    `Local/<number>@<context>` and publishes a DialBegin for it (apps/app_dial.c); the Local `;2`
    dials the trunk. Two client legs, no consultant: not consultant talk (README)."""
    client = pbx.inbound(CLIENT, DID)
    phone = pbx.phone("101")
    pbx.dial(client, phone)
    pbx.dial_end(client, phone, "CANCEL")
    pbx.hangup(phone)
    one, two = pbx.local_pair("Local/89161234567@from-internal-0000004a")
    pbx.dial(client, one)
    mobile = pbx.outbound(two, "89161234567")
    pbx.state(mobile, "Ringing")
    pbx.after(4)
    pbx.answer(mobile, two, one, client)
    pbx.connect(two, mobile)
    pbx.connect(client, one)
    pbx.after(20)
    pbx.hangup(mobile, two, one, client)
    conversations, _ = pbx.run(tracker(pbx.shape))
    by_number = {c.client_number: c for c in conversations}
    assert (by_number[CLIENT].direction, by_number[CLIENT].line) == ("inbound", DID)
    assert (by_number["+79161234567"].direction, by_number["+79161234567"].line) == ("outbound", None)
    assert [c.talk_seconds for c in conversations] == [0.0, 0.0]


def test_a_consultant_calls_a_client_out(pbx: Pbx) -> None:
    phone = pbx.phone_calls("102", "84957654321")
    trunk = pbx.outbound(phone, "84957654321")
    pbx.state(trunk, "Ringing")
    pbx.after(3)
    pbx.connect(trunk, phone)
    pbx.after(6)
    pbx.hangup(phone, trunk)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("outbound", None)
    assert conversation.client_number == "+74957654321"
    assert conversation.talk_seconds == pytest.approx(6.0)
    assert conversation.wait_seconds is None


def test_a_call_out_that_fails_before_it_is_dialled_is_outbound(pbx: Pbx) -> None:
    """`ast_call` failed (CHANUNAVAIL): no DialBegin ever names the channel, nothing decides; a
    channel the PBX created that never rang in is a call out."""
    pbx.phone_calls("102", "84957654321")
    name = pbx.name(pbx.shape.trunk)
    trunk = pbx.channel(name, "Down", "<unknown>", "s")
    pbx.callerid(trunk, "84957654321")
    pbx.hangup(trunk, cause="20")
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("outbound", None)
    assert conversation.answered_at is None


def test_click_to_dial_through_a_local_channel_is_outbound(pbx: Pbx) -> None:
    """Originate Channel=Local/101@click, Context=outbound, Exten=<client>: ;1 is dialled by the
    dial API (no source), ;2 rings 101, then ;1 runs the dialplan and dials the client."""
    one, two = pbx.local_pair("Local/101@click-0000005a")
    pbx.dial(None, one)
    phone = pbx.phone("101")
    pbx.dial(two, phone)
    pbx.after(2)
    pbx.answer(phone, two, one)
    pbx.connect(two, phone)
    trunk = pbx.outbound(one, "84951234567")
    pbx.state(trunk, "Ringing")
    pbx.after(4)
    pbx.connect(one, trunk)
    pbx.after(8)
    pbx.hangup(trunk, one, two, phone)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("outbound", None)
    assert conversation.talk_seconds == pytest.approx(8.0)


def test_call_me_now_originate_to_the_client_then_the_queue_is_outbound(pbx: Pbx) -> None:
    """Originate Channel=<trunk>/<client>, Context=queues: the client's leg is dialled first
    (DialBegin without source), and after the answer it runs the queue itself."""
    trunk = pbx.outbound(None, "84951234567")
    pbx.state(trunk, "Ringing")
    pbx.after(5)
    pbx.answer(trunk)
    pbx.dial_end(None, trunk, "ANSWER")
    pbx.emit_raw("OriginateResponse", Response="Success", Channel=trunk.name, Uniqueid=trunk.uniqueid)
    phone, _ = pbx.answered_by(trunk)  # the trunk channel now dials 101 from the queue
    pbx.after(7)
    pbx.hangup(phone, trunk)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("outbound", None)
    assert conversation.consultants == ["101"]
    assert conversation.talk_seconds == pytest.approx(7.0)


def test_originate_with_two_trunk_legs_gives_two_outbound_conversations(pbx: Pbx) -> None:
    """Callback between two outside numbers: leg A is originated, answers, and dials leg B."""
    first = pbx.outbound(None, "89161112233")
    pbx.after(3)
    pbx.answer(first)
    second = pbx.outbound(first, "84951234567")
    pbx.after(4)
    pbx.connect(second, first)
    pbx.after(10)
    pbx.hangup(second, first)
    conversations, _ = pbx.run(tracker(pbx.shape))
    assert sorted((c.client_number, c.direction, c.line) for c in conversations) == [
        ("+74951234567", "outbound", None),
        ("+79161112233", "outbound", None),
    ]


def test_pickup_by_another_phone_keeps_the_client_inbound(pbx: Pbx) -> None:
    """`*8`: the picker's channel is moved onto the ringing leg (main/pickup.c, `ast_do_pickup` ->
    `ast_channel_move`); since 12 the masquerade swaps uniqueids and names without Rename events."""
    client = pbx.inbound(CLIENT, DID)
    ringing = pbx.phone("101")
    pbx.dial(client, ringing)
    pbx.state(ringing, "Ringing")
    pbx.after(3)
    picker = pbx.phone_calls("103", "*8")
    pbx.answer(picker)
    pbx.emit("Pickup", picker, TargetChannel=ringing.name, TargetUniqueid=ringing.uniqueid)
    pbx.hangup(ringing, cause="26")
    pbx.connect(client, picker)
    pbx.after(6)
    pbx.hangup(picker, client)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("inbound", DID)
    assert conversation.consultants == ["103"]


def test_direct_dial_keeps_the_dialled_did_as_the_line(pbx: Pbx) -> None:
    client = pbx.inbound(CLIENT, "74950000102")
    phone, _ = pbx.answered_by(client, "102", ring=3)
    pbx.after(5)
    pbx.hangup(client, phone)
    conversation = pbx.one(tracker(pbx.shape))
    assert (conversation.direction, conversation.line) == ("inbound", "74950000102")
    assert conversation.wait_seconds == pytest.approx(3.0)


def test_direction_is_undecided_until_an_event_decides() -> None:
    """chan_sip: the Newchannel (Down) says nothing; the Newstate Ring that follows does."""
    pbx = Pbx(shape=SHAPES[0])
    client = pbx.inbound(CLIENT, DID)
    trunk = pbx.outbound(pbx.phone_calls("101", "84957654321"), "84957654321")
    model = tracker(pbx.shape)
    seen = []
    for message, at in zip(pbx.events, pbx.times, strict=True):
        for effect in model.feed(message, at):
            if isinstance(effect, ConversationStarted):
                seen.append((effect.conversation.channel, effect.conversation.direction))
    assert seen == [(client.name, None), (trunk.name, None)]
    directions = {c.channel: (c.direction, c.line) for c in model.open_conversations}
    assert directions == {client.name: ("inbound", DID), trunk.name: ("outbound", None)}


def unmatched(effects: list) -> list[str]:
    return [e.detail for e in effects if getattr(e, "kind", "") == "unmatched_channels"]


@pytest.mark.parametrize("calls", [4, 5, 12])
def test_a_trunk_named_otherwise_is_reported_after_five_calls(calls: int) -> None:
    """Default patterns (`SIP/trunk-*`): `SIP/beeline-…` matches `SIP/*`, a consultant, but it rings
    in with outside numbers and no call has a client leg."""
    pbx = Pbx(shape=Shape(13, "SIP", timestamps=False, trunk="beeline"))
    pbx.calls_in(calls)
    conversations, effects = pbx.run(CallTracker())
    assert conversations == []
    reports = unmatched(effects)
    assert len(reports) == (0 if calls < 5 else 1)
    if reports:
        assert "5 bridged calls" in reports[0]
        assert '"SIP/beeline-*" to trunk_channels' in reports[0]
        assert "SIP/beeline-0000001a (matches consultant_channels, outside number +74951234560)" in reports[0]


def test_channels_no_pattern_matches_are_reported() -> None:
    pbx = Pbx(shape=Shape(20, "PJSIP", trunk="mts"))
    pbx.calls_in(5)
    roles = ChannelRoles(trunks=("PJSIP/trunk-*",), consultants=("PJSIP/1??-*",))
    _, effects = pbx.run(CallTracker(roles))
    (report,) = unmatched(effects)
    assert "PJSIP/mts-0000001a (matches no pattern)" in report
    assert '"PJSIP/mts-*" to trunk_channels' in report


def test_internal_calls_and_measured_calls_are_not_reported() -> None:
    pbx = Pbx(shape=Shape(16, "SIP", timestamps=False))
    for _ in range(6):
        caller = pbx.phone_calls("101", "103")
        pbx.answered_by(caller, "103")
        pbx.after(3)
        pbx.hangup(caller)
    pbx.calls_in(6)  # trunk named `trunk`: every call has its client leg
    conversations, effects = pbx.run(CallTracker())
    assert len(conversations) == 6
    assert unmatched(effects) == []


@pytest.mark.parametrize(
    ("state", "application", "data", "direction"),
    [
        ("Ring", "Queue", "support", "inbound"),  # still ringing in
        ("Up", "Queue", "support", "inbound"),  # runs the dialplan
        ("Up", "AppDial", "(Outgoing Line)", "outbound"),  # dialled by Dial
        ("Up", "AppQueue", "(Outgoing Line)", "outbound"),  # a queue member that is a trunk
        ("Ringing", "AppDial2", "(Outgoing Line)", "outbound"),  # dialled by an Originate
    ],
)
def test_a_call_first_seen_in_the_snapshot_is_judged_by_what_it_runs(
    state: str, application: str, data: str, direction: str
) -> None:
    """After a reconnect the creation is gone; CoreShowChannel's Application/ApplicationData tell a
    dialled channel (`(Outgoing Line)`, set by app_dial, the dial API and app_queue) from a caller."""
    pbx = Pbx(shape=SHAPES[0])
    chan = pbx.channel(pbx.name("beeline"), state, "84951234567", DID, "from-trunk")
    item = pbx.snapshot_item(chan, application=application)
    item.headers["ApplicationData"] = data
    model = tracker(pbx.shape)
    model.resync(Snapshot(pbx.now, [item]))
    (conversation,) = model.open_conversations
    assert conversation.direction == direction
    assert conversation.line == (DID if direction == "inbound" else None)
    assert conversation.estimated


@pytest.mark.parametrize(
    ("state", "application", "data", "direction"),
    [
        ("Up", "Queue", "support", "inbound"),  # runs the dialplan
        ("Up", "AppDial", "(Outgoing Line)", "outbound"),  # dialled by Dial
        ("Up", "AppQueue", "(Outgoing Line)", "outbound"),  # a queue member that is a trunk
    ],
)
def test_a_call_first_seen_in_a_stray_event_is_judged_by_the_snapshot_that_lists_it(
    state: str, application: str, data: str, direction: str
) -> None:
    """Was: an event between the login and the end of the listing (a Hold) adopted the channel
    undecided; the listing only confirmed it, so a call out ended inbound, line `s`, starting at
    the stray event instead of the listed `Duration` before the snapshot."""
    pbx = Pbx(shape=SHAPES[0])
    chan = pbx.channel(pbx.name("beeline"), state, "84951234567", DID, "from-trunk")
    created = pbx.now
    pbx.after(30)
    stray = len(pbx.events)
    pbx.hold(chan)
    item = pbx.snapshot_item(chan, duration="00:00:30", application=application)
    item.headers["ApplicationData"] = data
    pbx.after(5)
    pbx.hangup(chan)
    snapshots = {1: Snapshot(created + 30, [item])}
    (conversation,), _ = run(pbx.events[stray:], tracker(pbx.shape), snapshots, pbx.times[stray:])
    assert (conversation.direction, conversation.line) == (direction, DID if direction == "inbound" else None)
    assert conversation.started_at - created == pytest.approx(0.0)
    assert conversation.estimated
