"""Local channel optimisation is one conversation without a gap (a merge out of order: by debounce).

What Asterisk sends, from main/bridge.c (13 to 22): `try_swap_optimize_out` calls the unreal
channel's `optimization_started` (core_local.c publishes `LocalOptimizationBegin` with `LocalOne*`,
`LocalTwo*`, `Source*` = the channel about to move, `DestUniqueId`, `Id`), then `bridge_do_move`
(the source's `BridgeLeave`, then its `BridgeEnter` into the other bridge with `SwapUniqueid` = the
half it replaces), then `optimization_finished` (`LocalOptimizationEnd` with `Success`, `Id`).
`try_merge_optimize_out` does the same around `bridge_do_merge` with no `Source`: every channel of
one bridge leaves it and enters the other (the halves are kicked out). The Local events travel on
the channel topic and the bridge events on the bridge topic, so their order in the AMI stream is
not guaranteed: Begin can arrive after the bridge events it announces.
"""

from __future__ import annotations

import pytest

from telephony.calls import CallTracker
from telephony.effects import TalkStopped

from .scenario import Chan, Pbx, run, shape

DEBOUNCES = [0.0, 1.0]


def queue_call_through_a_local_member(pbx: Pbx) -> tuple[Chan, Chan, Chan, Chan, str, str]:
    """Client bridged with `;1`, 101 bridged with `;2`: talking for 4 s."""
    client = pbx.client_calls()
    pbx.answer(client)
    one, two = pbx.local_pair("Local/101@agents-00000001", caller=client)
    agent = pbx.consultant("101", 3)
    pbx.answer(agent, two, one)
    agent_bridge = pbx.bridge()
    pbx.enter(agent_bridge, agent, two)
    client_bridge = pbx.bridge()
    pbx.enter(client_bridge, one, client)
    pbx.after(4)
    return client, one, two, agent, client_bridge, agent_bridge


def swap(pbx: Pbx, one: Chan, agent: Chan, client_bridge: str, agent_bridge: str) -> None:
    """The three bridge events of a swap: 101 leaves its bridge and takes `;1`'s place."""
    pbx.leave(agent_bridge, agent)
    pbx.after(0.000_05)
    pbx.enter(client_bridge, agent, swap=one)
    pbx.leave(client_bridge, one)


def finish(pbx: Pbx, client: Chan, agent: Chan, *halves: Chan) -> None:
    pbx.hangup(*halves)
    pbx.after(6)
    pbx.hangup(agent, client)


@pytest.mark.parametrize("debounce", DEBOUNCES)
def test_swap_between_begin_and_end_never_cuts_the_client_off(debounce: float) -> None:
    pbx = Pbx()
    client, one, two, agent, client_bridge, agent_bridge = queue_call_through_a_local_member(pbx)
    pbx.optimize_begin(one, two, source=agent, dest=one)
    swap(pbx, one, agent, client_bridge, agent_bridge)
    pbx.optimize_end(one, two)
    finish(pbx, client, agent, one, two)
    (conversation,), effects = run(pbx.events, CallTracker(debounce=debounce))
    assert shape(conversation) == [("101", 10.0, False)]
    assert [e for e in effects if isinstance(e, TalkStopped)] == [
        TalkStopped(pbx.now, conversation.conversation_id)
    ]


@pytest.mark.parametrize("debounce", DEBOUNCES)
def test_swap_without_begin_and_end_is_still_one_conversation(debounce: float) -> None:
    """The three-event optimisation alone (the Local events filtered out): the swap shows the move."""
    pbx = Pbx()
    client, one, two, agent, client_bridge, agent_bridge = queue_call_through_a_local_member(pbx)
    swap(pbx, one, agent, client_bridge, agent_bridge)
    finish(pbx, client, agent, one, two)
    conversation = pbx.one(CallTracker(debounce=debounce))
    assert shape(conversation) == [("101", 10.0, False)]


@pytest.mark.parametrize("debounce", DEBOUNCES)
def test_begin_arriving_after_the_bridge_events_it_announces(debounce: float) -> None:
    pbx = Pbx()
    client, one, two, agent, client_bridge, agent_bridge = queue_call_through_a_local_member(pbx)
    pbx.leave(agent_bridge, agent)
    pbx.after(0.000_05)
    pbx.optimize_begin(one, two, source=agent, dest=one)  # late, before the swap
    pbx.enter(client_bridge, agent, swap=one)
    pbx.leave(client_bridge, one)
    pbx.optimize_end(one, two)
    finish(pbx, client, agent, one, two)
    conversation = pbx.one(CallTracker(debounce=debounce))
    assert shape(conversation) == [("101", 10.0, False)]


@pytest.mark.parametrize("debounce", DEBOUNCES)
def test_merge_optimisation_between_begin_and_end(debounce: float) -> None:
    """No Source: 101's bridge is merged into the client's; the halves are kicked out first."""
    pbx = Pbx()
    client, one, two, agent, client_bridge, agent_bridge = queue_call_through_a_local_member(pbx)
    pbx.optimize_begin(one, two, source=None, dest=one)
    pbx.leave(agent_bridge, two)
    pbx.after(0.000_02)
    pbx.leave(agent_bridge, agent)
    pbx.after(0.000_02)
    pbx.enter(client_bridge, agent)
    pbx.leave(client_bridge, one)
    pbx.optimize_end(one, two)
    finish(pbx, client, agent, one, two)
    (conversation,), effects = run(pbx.events, CallTracker(debounce=debounce))
    assert shape(conversation) == [("101", 10.0, False)]
    assert len([e for e in effects if isinstance(e, TalkStopped)]) == 1


def client_swaps_in(pbx: Pbx, client: Chan, one: Chan, two: Chan, agent: Chan, cb: str, ab: str) -> None:
    """The client is the source: it leaves its bridge and takes `;2`'s place in 101's (no Local events)."""
    pbx.leave(cb, client)
    pbx.after(0.000_05)
    pbx.enter(ab, client, swap=two)
    pbx.leave(ab, two)


def end_before_the_bridge_events(
    pbx: Pbx, client: Chan, one: Chan, two: Chan, agent: Chan, cb: str, ab: str
) -> None:
    pbx.optimize_begin(one, two, source=agent, dest=one)
    pbx.optimize_end(one, two)  # the channel topic ran ahead of the bridge topic
    swap(pbx, one, agent, cb, ab)


def half_leaves_before_the_source_enters(
    pbx: Pbx, client: Chan, one: Chan, two: Chan, agent: Chan, cb: str, ab: str
) -> None:
    pbx.leave(ab, agent)
    pbx.after(0.000_05)
    pbx.leave(cb, one)
    pbx.enter(cb, agent, swap=one)


@pytest.mark.parametrize("debounce", DEBOUNCES)
@pytest.mark.parametrize(
    "moves", [client_swaps_in, end_before_the_bridge_events, half_leaves_before_the_source_enters]
)
def test_a_swap_out_of_order_is_one_segment_and_live_only_at_debounce_0_a_blip(
    debounce: float, moves
) -> None:
    """The record never splits at a swap; at debounce 0 the live effects may stop and restart at it."""
    pbx = Pbx()
    client, one, two, agent, client_bridge, agent_bridge = queue_call_through_a_local_member(pbx)
    moves(pbx, client, one, two, agent, client_bridge, agent_bridge)
    finish(pbx, client, agent, one, two)
    (conversation,), effects = run(pbx.events, CallTracker(debounce=debounce))
    assert shape(conversation) == [("101", 10.0, False)]
    stops = [e for e in effects if isinstance(e, TalkStopped)]
    assert len(stops) == (1 if debounce else 2)


@pytest.mark.parametrize(("debounce", "segments"), [(0.0, [4.0, 6.0]), (1.0, [10.0])])
@pytest.mark.parametrize("begin_late", [True, False], ids=["begin-late", "end-early"])
def test_a_merge_out_of_order_is_covered_by_the_debounce_only(
    debounce: float, segments: list[float], begin_late: bool
) -> None:
    """Without Begin before and End after its bridge events, a merge is a gap of microseconds."""
    pbx = Pbx()
    client, one, two, agent, client_bridge, agent_bridge = queue_call_through_a_local_member(pbx)
    if not begin_late:
        pbx.optimize_begin(one, two, source=None, dest=one)
        pbx.optimize_end(one, two)
    pbx.leave(agent_bridge, two)
    pbx.after(0.000_02)
    pbx.leave(agent_bridge, agent)
    pbx.after(0.000_02)
    pbx.enter(client_bridge, agent)
    if begin_late:
        pbx.optimize_begin(one, two, source=None, dest=one)
    pbx.leave(client_bridge, one)
    if begin_late:
        pbx.optimize_end(one, two)
    finish(pbx, client, agent, one, two)
    conversation = pbx.one(CallTracker(debounce=debounce))
    assert [round(seconds, 3) for _, seconds, _ in shape(conversation)] == segments


@pytest.mark.parametrize("debounce", DEBOUNCES)
def test_a_swap_does_not_hide_a_gap_someone_else_caused(debounce: float) -> None:
    """101 hangs up; 5 s later 102 reaches the client through a Local pair that then optimises."""
    pbx = Pbx()
    client, one, two, agent, client_bridge, _agent_bridge = queue_call_through_a_local_member(pbx)
    pbx.hangup(agent, two, one)
    pbx.after(5)
    again_one, again_two = pbx.local_pair("Local/102@agents-00000002")
    colleague = pbx.consultant("102", 9)
    pbx.answer(colleague, again_two, again_one)
    second = pbx.bridge()
    pbx.enter(second, colleague, again_two)
    pbx.enter(client_bridge, again_one)
    pbx.after(2)
    swap(pbx, again_one, colleague, client_bridge, second)
    finish(pbx, client, colleague, again_one, again_two)
    conversation = pbx.one(CallTracker(debounce=debounce))
    assert shape(conversation) == [("101", 4.0, False), ("102", 8.0, False)]


def test_an_optimisation_whose_end_never_comes_is_dropped_with_its_pair() -> None:
    pbx = Pbx()
    client, one, two, agent, client_bridge, agent_bridge = queue_call_through_a_local_member(pbx)
    pbx.optimize_begin(one, two, source=agent, dest=one)
    swap(pbx, one, agent, client_bridge, agent_bridge)
    pbx.hangup(one, two)  # no LocalOptimizationEnd
    pbx.after(3)
    pbx.hangup(agent)
    pbx.after(5)  # the client is alone: no longer talking
    pbx.hangup(client)
    tracker = CallTracker(debounce=0.0)
    conversation = pbx.one(tracker)
    assert shape(conversation) == [("101", 7.0, False)]
    assert tracker._optimising == {}
