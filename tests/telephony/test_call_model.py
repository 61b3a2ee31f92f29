"""Scenarios of the call model that the recorded traces do not cover: the edge cases."""

from __future__ import annotations

import json

import pytest

from telephony.calls import CallTracker, Snapshot
from telephony.effects import (
    Anomaly,
    ConversationStarted,
    HoldStarted,
    HoldStopped,
    TalkStarted,
    TalkStopped,
)
from telephony.roles import ChannelRoles

from .scenario import Chan, Pbx, one, run, shape


def answered_by_101(pbx: Pbx) -> tuple[object, object, str]:
    client = pbx.client_calls()
    pbx.answer(client)
    pbx.after(3)
    agent = pbx.consultant("101", 2)
    pbx.dial(client, agent)
    pbx.state(agent, "Ringing")
    pbx.after(2)
    bridge = pbx.connect(agent, client)
    return client, agent, bridge


def test_queue_wait_and_ringing_are_not_talk() -> None:
    pbx = Pbx()
    client, agent, _ = answered_by_101(pbx)
    pbx.after(10)
    pbx.hangup(client, agent)
    conversation = one(pbx.events)
    assert shape(conversation) == [("101", 10.0, False)]
    assert conversation.wait_seconds == pytest.approx(5.0)


def test_queue_member_behind_local_channels_without_optimisation() -> None:
    pbx = Pbx()
    client = pbx.client_calls()
    pbx.answer(client)
    pbx.after(1)
    one_half, two_half = pbx.local_pair("Local/101@agents-00000001")
    agent = pbx.consultant("101", 3)
    pbx.after(2)
    pbx.answer(agent, two_half, one_half)
    agent_bridge = pbx.bridge()
    pbx.enter(agent_bridge, agent, two_half)
    client_bridge = pbx.bridge()
    pbx.enter(client_bridge, one_half, client)
    pbx.after(7)
    pbx.hangup(agent, two_half, one_half, client)
    conversation = one(pbx.events)
    assert shape(conversation) == [("101", 7.0, False)]
    assert conversation.consultants == ["101"]


def test_two_attended_transfers_chain_local_pairs() -> None:
    pbx = Pbx()
    client = pbx.client_calls()
    a1, a2 = pbx.local_pair("Local/102@consultants-00000001")
    b1, b2 = pbx.local_pair("Local/103@consultants-00000002")
    agent = pbx.consultant("103", 9)
    pbx.answer(client, a1, a2, b1, b2)
    pbx.after(1)
    pbx.connect(client, a1)
    pbx.connect(a2, b1)
    pbx.after(2)
    pbx.connect(b2, agent)  # only now does a consultant sit at the end of the chain
    pbx.after(5)
    pbx.hangup(agent)
    pbx.after(3)
    pbx.hangup(b2, b1, a2, a1, client)
    conversation = one(pbx.events)
    assert shape(conversation) == [("103", 5.0, False)]


def test_blind_transfer_ringing_is_not_talk_but_short_gaps_are() -> None:
    pbx = Pbx()
    client, agent, bridge = answered_by_101(pbx)
    pbx.after(4)
    pbx.unhold(agent)  # Asterisk sends an Unhold with no Hold on every blind transfer
    pbx.leave(bridge, client)
    pbx.hangup(agent)
    colleague = pbx.consultant("102", 5)
    pbx.state(colleague, "Ringing")
    pbx.after(3)
    second = pbx.connect(colleague, client)
    pbx.after(2)
    pbx.leave(second, client)  # a 0.4 s hop between bridges is absorbed
    pbx.after(0.4)
    pbx.enter(second, client)
    pbx.after(2.6)
    pbx.hangup(colleague, client)
    conversation = one(pbx.events)
    assert shape(conversation) == [("101", 4.0, False), ("102", 5.0, False)]
    assert conversation.consultants == ["101", "102"]


@pytest.mark.parametrize(("debounce", "segments"), [(1.0, 1), (0.3, 2), (0.0, 2)])
def test_debounce_is_configurable(debounce: float, segments: int) -> None:
    pbx = Pbx()
    client, agent, bridge = answered_by_101(pbx)
    pbx.after(2)
    pbx.leave(bridge, client)
    pbx.after(0.5)
    pbx.enter(bridge, client)
    pbx.after(2)
    pbx.hangup(client, agent)
    conversation = one(pbx.events, CallTracker(debounce=debounce))
    assert len(conversation.segments) == segments
    expected = 4.5 if segments == 1 else 4.0
    assert conversation.talk_seconds == pytest.approx(expected)


def test_blonde_transfer_hold_ends_when_the_transferer_hangs_up_before_the_answer() -> None:
    pbx = Pbx()
    client, agent, bridge = answered_by_101(pbx)
    pbx.after(3)
    pbx.hold(agent)  # Atxfer: client on hold, 101 dials 102 through a Local pair
    one_half, two_half = pbx.local_pair("Local/102@consultants-00000001")
    pbx.leave(bridge, agent)
    consult = pbx.bridge()
    pbx.enter(consult, agent, one_half)
    colleague = pbx.consultant("102", 7)
    pbx.state(colleague, "Ringing")
    pbx.after(2)
    # 101 hangs up while 102 still rings: ;1 joins the client (DestType App/Link), no answer yet.
    pbx.leave(consult, one_half)
    pbx.enter(bridge, one_half)
    pbx.hangup(agent)
    pbx.after(4)
    pbx.answer(colleague, two_half, one_half)
    pbx.connect(two_half, colleague)
    pbx.after(5)
    pbx.hangup(colleague, two_half, one_half, client)
    conversation = one(pbx.events)
    assert shape(conversation) == [("101", 3.0, False), ("101", 2.0, True), ("102", 5.0, False)]
    assert conversation.hold_seconds == pytest.approx(2.0)


def test_parking_and_holding_bridges_are_never_talk() -> None:
    pbx = Pbx()
    client, agent, bridge = answered_by_101(pbx)
    pbx.after(3)
    pbx.leave(bridge, client, agent)
    lot = pbx.bridge("holding_bridge", "parking")
    pbx.enter(lot, client)
    pbx.enter(lot, agent)  # even a consultant in the same holding bridge does not talk
    pbx.after(30)
    pbx.leave(lot, client, agent)
    pbx.after(0.5)
    pbx.connect(client, agent)
    pbx.after(4)
    pbx.hangup(client, agent)
    conversation = one(pbx.events)
    assert shape(conversation) == [("101", 3.0, False), ("101", 4.0, False)]


def test_conference_with_announcer_and_two_consultants() -> None:
    pbx = Pbx()
    client = pbx.client_calls()
    first = pbx.consultant("101", 2)
    second = pbx.consultant("102", 3)
    announcer = pbx.channel("CBAnn/support-00000001", "Up")
    pbx.answer(client, first, second)
    conference = pbx.bridge("softmix", "base")
    pbx.enter(conference, announcer, client)
    pbx.after(5)  # only the announcer: not talk
    pbx.enter(conference, first)
    pbx.after(4)
    pbx.enter(conference, second)
    pbx.after(3)
    pbx.leave(conference, first)
    pbx.after(2)
    pbx.hangup(second, client, announcer)
    conversation = one(pbx.events)
    assert conversation.consultants == ["101", "102"]
    assert conversation.talk_seconds == pytest.approx(9.0)
    assert shape(conversation) == [("101", 7.0, False), ("102", 2.0, False)]


def test_pickup_by_another_consultant() -> None:
    pbx = Pbx()
    client = pbx.client_calls()
    pbx.answer(client)
    ringing = pbx.consultant("101", 2)
    pbx.dial(client, ringing)
    pbx.state(ringing, "Ringing")
    pbx.after(3)
    picker = pbx.channel("PJSIP/103-00000005", "Up", "103")
    pbx.emit("Pickup", picker, TargetChannel=ringing.name)
    pbx.hangup(ringing)
    pbx.connect(client, picker)
    pbx.after(6)
    pbx.hangup(picker, client)
    conversation = one(pbx.events)
    assert conversation.consultants == ["103"]
    assert shape(conversation) == [("103", 6.0, False)]


def test_rename_keeps_the_conversation_on_its_uniqueid() -> None:
    pbx = Pbx()
    client, agent, _ = answered_by_101(pbx)
    pbx.after(2)
    pbx.rename(client, "PJSIP/trunk-00000001<MASQ>")
    pbx.rename(agent, "PJSIP/104-00000010")  # masquerade: the talking channel is now 104's
    pbx.after(3)
    pbx.hangup(client, agent)
    conversation = one(pbx.events)
    assert conversation.talk_seconds == pytest.approx(5.0)
    assert conversation.consultants == ["101", "104"]


def test_uniqueids_with_a_system_name_prefix() -> None:
    pbx = Pbx(system="pbx-msk-1")
    client, agent, _ = answered_by_101(pbx)
    pbx.after(3)
    pbx.hangup(client, agent)
    conversation = one(pbx.events, CallTracker(pbx="msk"))
    assert conversation.conversation_id == f"msk:{client.uniqueid}"
    assert conversation.conversation_id.startswith("msk:pbx-msk-1-")


def test_hold_by_the_client_and_by_the_consultant() -> None:
    pbx = Pbx()
    client, agent, _ = answered_by_101(pbx)
    pbx.after(2)
    pbx.hold(client)
    pbx.after(3)
    pbx.unhold(client)
    pbx.after(1)
    pbx.hold(agent)
    pbx.after(4)
    pbx.unhold(agent)
    pbx.after(1)
    pbx.hangup(client, agent)
    conversation, effects = run(pbx.events)
    (conversation,) = conversation
    assert shape(conversation) == [
        ("101", 2.0, False),
        ("101", 3.0, True),
        ("101", 1.0, False),
        ("101", 4.0, True),
        ("101", 1.0, False),
    ]
    assert [type(e) for e in effects if isinstance(e, HoldStarted | HoldStopped)] == [
        HoldStarted,
        HoldStopped,
        HoldStarted,
        HoldStopped,
    ]
    holders = [e.by for e in effects if isinstance(e, HoldStarted)]
    assert holders == [None, "101"]


def test_one_hold_for_two_clients_starts_at_each_ones_own_time() -> None:
    """Was: the hold time clamped for the first client (whose conversation had seen a later event)
    was used for the next one too, contrary to the per-conversation clamp."""
    pbx = Pbx()
    first = pbx.client_calls("+74951110001", n=1)
    second = pbx.client_calls("+74951110002", n=2)
    agent = pbx.consultant("101", 3)
    pbx.answer(first, second, agent)
    bridge = pbx.bridge()
    pbx.after(10.5)
    pbx.enter(bridge, agent, first)
    pbx.after(-0.5)  # stamped before the events that arrived ahead of it
    pbx.enter(bridge, second)
    pbx.after(0.2)
    pbx.hold(agent)
    pbx.after(2)
    pbx.unhold(agent)
    pbx.after(1)
    pbx.hangup(agent, first, second)
    conversations, _ = run(pbx.events)
    assert {c.client_number: shape(c) for c in conversations} == {
        "+74951110001": [("101", 1.7, True), ("101", 1.0, False)],  # its time never runs backwards
        "+74951110002": [("101", 0.2, False), ("101", 2.0, True), ("101", 1.0, False)],
    }


def test_hold_while_waiting_in_the_queue_is_not_counted() -> None:
    pbx = Pbx()
    client = pbx.client_calls()
    pbx.answer(client)
    pbx.hold(client)
    pbx.after(10)
    pbx.unhold(client)
    pbx.hangup(client)
    conversation = one(pbx.events)
    assert conversation.talk_seconds == 0.0
    assert conversation.answered_at is None


def test_hold_ends_when_the_holding_consultant_hangs_up() -> None:
    pbx = Pbx()
    client, agent, _bridge = answered_by_101(pbx)
    pbx.after(2)
    pbx.hold(agent)
    pbx.after(3)
    pbx.hangup(agent)
    pbx.after(20)  # the client listens to silence until it gives up: not talk, not hold
    pbx.hangup(client)
    conversation = one(pbx.events)
    assert shape(conversation) == [("101", 2.0, False), ("101", 3.0, True)]


def test_outbound_call_answered_and_unanswered() -> None:
    pbx = Pbx()
    agent = pbx.channel("PJSIP/102-00000001", "Ring", "102", "+74957654321")
    trunk = pbx.channel("PJSIP/trunk-00000002", "Down", "<unknown>", "s")
    pbx.callerid(trunk, "+74957654321")
    pbx.dial(agent, trunk)
    pbx.state(trunk, "Ringing")
    pbx.after(3)
    pbx.connect(trunk, agent)
    pbx.after(6)
    pbx.hangup(agent, trunk)
    unanswered = pbx.channel("PJSIP/trunk-00000003", "Down", "<unknown>", "s")
    pbx.callerid(unanswered, "89161234567")
    pbx.after(20)
    pbx.emit("Hangup", unanswered, Cause="19")
    first, second = run(pbx.events)[0]
    assert (first.direction, first.client_number, first.line) == ("outbound", "+74957654321", None)
    assert shape(first) == [("102", 6.0, False)]
    assert first.wait_seconds is None
    assert (second.client_number, second.talk_seconds, second.answered_at) == ("+79161234567", 0.0, None)


def test_originate_through_a_local_channel() -> None:
    """Click-to-dial: a Local pair rings the consultant, then dials the client out."""
    pbx = Pbx()
    one_half, two_half = pbx.local_pair("Local/101@click-00000001")
    agent = pbx.consultant("101", 3)
    pbx.dial(None, agent)
    pbx.answer(agent, one_half)
    pbx.connect(agent, one_half)
    trunk = pbx.channel("PJSIP/trunk-00000004", "Down", "+74951234567", "s")
    pbx.dial(two_half, trunk)
    pbx.after(4)
    pbx.answer(trunk, two_half)
    pbx.connect(two_half, trunk)
    pbx.after(8)
    pbx.hangup(trunk, two_half, one_half, agent)
    conversation = one(pbx.events)
    assert conversation.direction == "outbound"
    assert shape(conversation) == [("101", 8.0, False)]


def test_snoop_and_external_forwarding_are_not_consultants() -> None:
    pbx = Pbx()
    client = pbx.client_calls()
    forwarded = pbx.channel("PJSIP/trunk-00000009", "Down", "+79990001122", "s")
    spy = pbx.channel("Snoop/PJSIP/trunk-00000001-00000001", "Up")
    pbx.dial(client, forwarded)
    pbx.connect(client, forwarded, spy)
    pbx.after(30)
    pbx.hangup(spy, forwarded, client)
    conversations, _ = run(pbx.events)
    assert [c.talk_seconds for c in conversations] == [0.0, 0.0]
    assert [c.direction for c in conversations] == ["outbound", "inbound"]


def test_withheld_and_garbage_caller_ids() -> None:
    pbx = Pbx()
    for n, raw in enumerate(["anonymous", "<unknown>", "", "abc!!#", "8 (495) 123-45-67"], 1):
        client = pbx.client_calls(raw, n=n)
        pbx.after(1)
        pbx.hangup(client)
    conversations, _ = run(pbx.events)
    assert [c.client_number for c in conversations] == [None, None, None, None, "+74951234567"]
    assert [c.client_number_raw for c in conversations][3:] == ["abc!!#", "8 (495) 123-45-67"]


def test_configured_roles_decide_who_is_a_client() -> None:
    pbx = Pbx()
    client = pbx.channel("SIP/beeline-0000aa01", "Ring", "84951234567", "74950000000")
    agent = pbx.channel("SIP/agent7-0000aa02", "Down", "agent7")
    pbx.connect(client, agent)
    pbx.after(5)
    pbx.hangup(agent, client)
    roles = ChannelRoles(trunks=("SIP/beeline-*",), consultants=("SIP/agent*",))
    conversation = one(pbx.events, CallTracker(roles))
    assert conversation.consultants == ["agent7"]
    assert conversation.talk_seconds == pytest.approx(5.0)
    assert run(pbx.events)[0] == []  # with the default patterns there is no trunk here


def test_events_for_channels_never_seen_are_adopted_as_estimated() -> None:
    """Without a snapshot (e.g. CoreShowChannels refused), channels are learnt from their events."""
    pbx = Pbx()
    client, agent, bridge = answered_by_101(pbx)
    pbx.after(5)
    pbx.leave(bridge, client)
    pbx.hangup(agent)
    pbx.after(2)
    first_seen = len(pbx.events)
    colleague = pbx.consultant("102", 5)
    pbx.connect(colleague, client)  # the first events we see: a blind transfer's second bridge
    pbx.after(3)
    pbx.hold(colleague)
    pbx.after(2)
    pbx.hangup(client, colleague)
    conversations, effects = run(pbx.events[first_seen:])
    (conversation,) = conversations
    assert conversation.estimated
    assert any(isinstance(e, Anomaly) and e.kind == "unknown_channel" for e in effects)
    assert shape(conversation) == [("102", 3.0, False), ("102", 2.0, True)]


def test_a_state_change_of_a_trunk_channel_never_seen_is_no_conversation() -> None:
    """Was: a Newstate for a trunk channel never seen started a conversation, and a phantom 0 s
    conversation reached the ledger when it hung up (or at shutdown)."""
    pbx = Pbx()
    ghost = Chan("PJSIP/trunk-000000ff", "1795699999.99", "Up", "+74950000001", "s")
    pbx.emit("Newstate", ghost)
    pbx.after(1)
    tracker = CallTracker()
    conversations, effects = run(pbx.events, tracker)  # never hung up: closed by close_all
    assert conversations == []
    assert not any(isinstance(e, ConversationStarted) for e in effects)
    assert [e.kind for e in effects if isinstance(e, Anomaly)] == ["unknown_channel", "phantom_conversation"]
    pbx.emit("Hangup", ghost, Cause="16")
    assert run(pbx.events)[0] == []


def test_a_channel_first_seen_in_an_event_is_kept_once_the_snapshot_lists_it() -> None:
    """Adopted from an event just before the snapshot that lists it: a real call, kept though it
    never talked (a caller who gave up while we were reconnecting)."""
    pbx = Pbx()
    caller = Chan("PJSIP/trunk-000000fe", "1795699999.98", "Ring", "+74950000002", "74950000000")
    pbx.emit("Newstate", caller)
    snapshot = Snapshot(pbx.now, [pbx.snapshot_item(caller, "00:00:04")])
    pbx.after(2)
    pbx.emit("Hangup", caller, Cause="16")
    tracker = CallTracker()
    assert tracker.checkpoint(pbx.now) == []
    (conversation,), effects = run(pbx.events, tracker, snapshots={1: snapshot})
    assert (conversation.estimated, conversation.talk_seconds) == (True, 0.0)
    assert sum(isinstance(e, ConversationStarted) for e in effects) == 1


def test_a_phantom_is_not_checkpointed() -> None:
    pbx = Pbx()
    pbx.emit("Newstate", Chan("PJSIP/trunk-000000fd", "1795699999.97", "Up", "+74950000003", "s"))
    tracker = CallTracker()
    for message in pbx.events:
        tracker.feed(message, pbx.now)
    assert tracker.checkpoint(pbx.now) == []


def test_resync_adopts_calls_in_progress_and_closes_calls_that_ended_unseen() -> None:
    pbx = Pbx()
    gone, gone_agent, _ = answered_by_101(pbx)
    pbx.after(4)
    lost_at = pbx.now
    before_outage = list(pbx.events)
    # During the outage: `gone` hangs up; a new call is answered by 102. Nothing reaches us.
    pbx.hangup(gone, gone_agent)
    late = pbx.client_calls("+74957770000", n=7)
    colleague = pbx.consultant("102", 8)
    pbx.connect(late, colleague)
    pbx.after(10)
    snapshot = Snapshot(
        pbx.now,
        [pbx.snapshot_item(late, "00:00:10"), pbx.snapshot_item(colleague, "00:00:10", "AppDial")],
        lost_at=lost_at,
    )
    resume = len(pbx.events)
    pbx.after(5)
    pbx.hangup(colleague, late)
    events = before_outage + pbx.events[resume:]
    conversations, _ = run(events, snapshots={len(before_outage): snapshot})
    ended, adopted = conversations
    assert (ended.estimated, ended.ended_at) == (True, pytest.approx(lost_at, abs=0.01))
    assert ended.talk_seconds == pytest.approx(4.0)
    assert adopted.estimated and adopted.client_number == "+74957770000"
    assert adopted.started_at == pytest.approx(snapshot.at - 10, abs=0.01)
    assert adopted.talk_seconds == pytest.approx(5.0)  # counted from the snapshot, not invented


def test_resync_keeps_a_call_that_went_on_and_does_not_count_it_twice() -> None:
    pbx = Pbx()
    client, agent, _ = answered_by_101(pbx)
    pbx.after(4)
    cut = len(pbx.events)
    pbx.after(5)
    snapshot = Snapshot(pbx.now, [pbx.snapshot_item(client), pbx.snapshot_item(agent, application="AppDial")])
    pbx.after(6)
    pbx.hangup(client, agent)
    conversation, _ = run(pbx.events, snapshots={cut: snapshot})
    (conversation,) = conversation
    assert shape(conversation) == [("101", 15.0, False)]
    assert not conversation.estimated


def test_snapshot_does_not_resurrect_a_channel_that_hung_up_after_it() -> None:
    pbx = Pbx()
    client, agent, _ = answered_by_101(pbx)
    pbx.after(2)
    stale = Snapshot(pbx.now, [pbx.snapshot_item(client), pbx.snapshot_item(agent)])
    pbx.hangup(client, agent)
    tracker = CallTracker()
    run(pbx.events, tracker)
    assert tracker.resync(stale) == []
    assert tracker.open_conversations == []


def test_asterisk_shutdown_ends_every_conversation_estimated() -> None:
    pbx = Pbx()
    _client, _agent, _ = answered_by_101(pbx)
    pbx.after(3)
    pbx.emit_raw("Shutdown", Shutdown="Uncleanly", Restart="True")
    conversation = one(pbx.events)
    assert conversation.estimated and conversation.talk_seconds == pytest.approx(3.0)


def test_missing_timestamps_use_receive_time_and_warn_once() -> None:
    pbx = Pbx()
    client, agent, _ = answered_by_101(pbx)
    pbx.after(3)
    pbx.hangup(client, agent)
    tracker = CallTracker()
    effects = []
    for n, message in enumerate(pbx.events):
        headers = dict(message.headers)
        del headers["Timestamp"]
        effects += tracker.feed(type(message)(headers), received_at=100.0 + n)
    warnings = [e for e in effects if isinstance(e, Anomaly) and e.kind == "no_timestamp"]
    assert len(warnings) == 1


def test_live_effects_come_in_order_and_debounced_stops_need_time_to_pass() -> None:
    pbx = Pbx()
    client, _agent, bridge = answered_by_101(pbx)
    pbx.after(2)
    pbx.leave(bridge, client)
    tracker = CallTracker()
    effects = []
    for message in pbx.events:
        effects += tracker.feed(message, 0.0)
    kinds = [type(e) for e in effects if not isinstance(e, Anomaly)]
    assert kinds == [ConversationStarted, TalkStarted]
    assert tracker.tick(pbx.now + 0.5) == []
    (stopped,) = tracker.tick(pbx.now + 1.0)
    assert isinstance(stopped, TalkStopped) and stopped.at == pytest.approx(pbx.now, abs=0.01)


def restart(pbx: Pbx, down_for: float, events_before: int) -> tuple[CallTracker, list, float]:
    """Run a tracker on the first events, checkpoint it through JSON, give it to a new tracker."""
    old = CallTracker()
    for message in pbx.events[:events_before]:
        old.feed(message, 0.0)
    checkpoint_at = pbx.now
    saved = json.loads(json.dumps(old.checkpoint(checkpoint_at)))
    pbx.after(down_for)
    new = CallTracker()
    new.restore(saved)
    return new, saved, checkpoint_at


def test_a_daemon_restart_mid_call_loses_no_talk() -> None:
    pbx = Pbx()
    client, agent, _ = answered_by_101(pbx)
    pbx.after(10)
    new, _, _ = restart(pbx, 5, len(pbx.events))
    snapshot = Snapshot(pbx.now, [pbx.snapshot_item(client), pbx.snapshot_item(agent, application="AppDial")])
    effects = new.resync(snapshot)
    assert not [e for e in effects if isinstance(e, ConversationStarted | TalkStopped)]
    resume = len(pbx.events)
    pbx.after(7)
    pbx.hangup(client, agent)
    conversations, _ = run(pbx.events[resume:], new)
    (conversation,) = conversations
    assert conversation.estimated
    assert shape(conversation) == [("101", 22.0, False)]  # 10 before, 5 down, 7 after
    assert conversation.started_at == pytest.approx(pbx.events[0].timestamp, abs=0.01)


def test_a_call_that_ended_while_the_daemon_was_down_closes_at_the_checkpoint() -> None:
    pbx = Pbx()
    _client, _agent, _ = answered_by_101(pbx)
    pbx.after(10)
    new, _, checkpoint_at = restart(pbx, 60, len(pbx.events))
    effects = new.resync(Snapshot(pbx.now, []))
    (ended,) = [e.conversation for e in effects if hasattr(e, "conversation") and e.conversation.ended_at]
    assert ended.estimated and ended.ended_at == pytest.approx(checkpoint_at, abs=0.01)
    assert shape(ended) == [("101", 10.0, False)]
    assert new.open_conversations == []


def test_a_restart_during_which_the_call_moved_stops_talk_at_the_checkpoint() -> None:
    pbx = Pbx()
    client, agent, bridge = answered_by_101(pbx)
    pbx.after(4)
    new, _, _ = restart(pbx, 3, len(pbx.events))
    pbx.leave(bridge, client)  # unseen: a blind transfer to 102 while we were down
    pbx.hangup(agent)
    colleague = pbx.consultant("102", 9)
    pbx.connect(colleague, client)
    pbx.after(2)
    snapshot = Snapshot(
        pbx.now, [pbx.snapshot_item(client), pbx.snapshot_item(colleague, application="AppDial")]
    )
    new.resync(snapshot)
    resume = len(pbx.events)
    pbx.after(5)
    pbx.hangup(colleague, client)
    (conversation,), _ = run(pbx.events[resume:], new)
    assert shape(conversation) == [("101", 4.0, False), ("102", 5.0, False)]
    assert conversation.consultants == ["101", "102"]


def start_consultation(pbx: Pbx, agent: Chan, bridge: str) -> tuple[Chan, Chan, str]:
    """Atxfer: 101 puts the client on hold, leaves its bridge and calls 102 in a new one."""
    pbx.hold(agent)
    pbx.leave(bridge, agent)
    colleague = pbx.consultant("102", 7)
    pbx.state(colleague, "Ringing")
    consult = pbx.bridge()
    pbx.enter(consult, agent)
    return agent, colleague, consult


def test_attended_transfer_that_becomes_a_three_way_call() -> None:
    pbx = Pbx()
    client, agent, bridge = answered_by_101(pbx)
    pbx.after(3)
    _, colleague, consult = start_consultation(pbx, agent, bridge)
    pbx.after(1)
    pbx.answer(colleague)
    pbx.enter(consult, colleague)
    pbx.after(4)  # 101 and 102 consult; the client waits on hold
    pbx.leave(consult, agent, colleague)  # DestType Threeway: everybody in the client's bridge
    pbx.enter(bridge, agent, colleague)
    pbx.after(6)
    pbx.hangup(agent)
    pbx.after(2)
    pbx.hangup(colleague, client)
    conversation = one(pbx.events)
    assert shape(conversation) == [
        ("101", 3.0, False),
        ("101", 5.0, True),
        ("101", 6.0, False),
        ("102", 2.0, False),
    ]
    assert conversation.consultants == ["101", "102"]


def test_failed_attended_transfer_returns_the_client_to_the_first_consultant() -> None:
    pbx = Pbx()
    client, agent, bridge = answered_by_101(pbx)
    pbx.after(3)
    _, colleague, consult = start_consultation(pbx, agent, bridge)
    pbx.after(15)  # 102 never answers (DestType Fail)
    pbx.hangup(colleague)
    pbx.leave(consult, agent)
    pbx.enter(bridge, agent)
    pbx.unhold(agent)
    pbx.after(4)
    pbx.hangup(agent, client)
    conversation = one(pbx.events)
    assert shape(conversation) == [("101", 3.0, False), ("101", 15.0, True), ("101", 4.0, False)]
    assert conversation.consultants == ["101"]


def test_consultant_channels_of_a_conversation_follow_the_call() -> None:
    """Where a PBX-side quota notice belongs: the consultants talking to the client, or holding it."""
    pbx = Pbx()
    tracker = CallTracker(pbx="msk")
    client, agent, bridge = answered_by_101(pbx)
    for message in pbx.events:
        tracker.feed(message, received_at=0.0)
    conversation_id = f"msk:{client.uniqueid}"  # type: ignore[attr-defined]
    assert tracker.consultant_channels(conversation_id) == ("PJSIP/101-00000002",)
    pbx.events.clear()
    pbx.hold(agent)  # type: ignore[arg-type]
    pbx.leave(bridge, agent)  # type: ignore[arg-type]  # consulting a colleague: the client waits on hold
    for message in pbx.events:
        tracker.feed(message, received_at=0.0)
    assert tracker.consultant_channels(conversation_id) == ("PJSIP/101-00000002",)
    assert tracker.consultant_channels("msk:no-such-call") == ()
    assert tracker.consultant_channels(f"other:{client.uniqueid}") == ()  # type: ignore[attr-defined]
