"""The live pipeline (link + ordered consumer + CallTracker) against the simulator, with ground truth."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from daemon.commands.demo import demo
from daemon.live import Pipeline
from daemon.settings import Settings, load_settings
from daemon.supervision import TaskDied
from telephony.ami import EventClock
from telephony.calls import CallTracker
from telephony.simulator import AmiSimulator, events_trace, load_trace

from .helpers import GUARD, SECRET, TRACES, RecordingSleep, frame


def settings_for(port: int, **extra: Any) -> Settings:
    return load_settings(None, ami_host="127.0.0.1", ami_port=port, ami_user="talkmeter", ami_secret=SECRET,
                         ami_action_timeout=2.0, ami_reconnect_min=0.05, ami_reconnect_max=0.2,
                         **extra)  # fmt: skip


async def measure(
    sim: AmiSimulator, clock: EventClock | None = None, **settings: Any
) -> list[dict[str, Any]]:
    """Run the pipeline until the simulator has replayed everything and it has all been applied."""
    found: list[dict[str, Any]] = []

    async def collect(conversation: dict[str, Any]) -> None:
        found.append(conversation)

    pipeline = Pipeline(settings_for(sim.port, **settings), collect, sleep=RecordingSleep(), clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    async with asyncio.timeout(GUARD * 3):
        await sim.finished.wait()
        await pipeline.settle()
        stop.set()
        await task
    return found


def truth(name: str) -> list[dict[str, Any]]:
    data = json.loads((TRACES / f"{name}.json").read_text())
    conversations: list[dict[str, Any]] = data["truth"]["conversations"]
    return conversations


@pytest.mark.parametrize(("speed", "pause"), [(0, True), (8, False)], ids=["fast-paused", "realtime-gap"])
async def test_reconnect_mid_call_keeps_talk_time(speed: float, pause: bool) -> None:
    """The call starts in session 1 and ends in session 2; the resync carries it across the gap.

    `realtime-gap` lets the replay run on through the outage (0.6 s at 8x) as a PBX would.
    """
    trace = load_trace(TRACES / "ami_reconnect.ami")
    async with AmiSimulator(trace, secret=SECRET, speed=speed, pause_after_drop=pause) as sim:
        found = await measure(sim)
    (expected,) = truth("ami_reconnect")
    (conversation,) = found
    assert abs(conversation["talk_seconds"] - expected["talk_seconds"]) <= 1.0
    assert conversation["consultants"] == expected["consultants"]
    assert conversation["client_number"] == expected["client_number"]


async def test_demo_measures_the_attended_transfer_like_the_sip_truth() -> None:
    found: list[dict[str, Any]] = []

    async def collect(conversation: dict[str, Any]) -> None:
        found.append(conversation)

    assert await demo([TRACES / "attended_transfer.ami"], 0, collect) == 0
    (expected,) = truth("attended_transfer")
    (conversation,) = found
    assert conversation["consultants"] == ["101", "102"]
    assert abs(conversation["talk_seconds"] - expected["talk_seconds"]) <= 0.2
    assert abs(conversation["hold_seconds"] - expected["hold_seconds"]) <= 0.2
    assert conversation["estimated"] is False


def burst_of_calls(calls: int) -> list[bytes]:
    """8 events per call, in timestamp order: all calls start, then all hang up 10 s later."""
    base = 1_800_000_000.0
    starts, ends = [], []
    for n in range(calls):
        t = base + n * 0.001
        client, agent, bridge = f"c.{n}", f"a.{n}", f"bridge-{n}"
        trunk, phone = f"PJSIP/trunk-{n:08x}", f"PJSIP/101-{n:08x}"
        starts += [
            frame(Event="Newchannel", Timestamp=f"{t:.6f}", Channel=trunk, ChannelState="4",
                  ChannelStateDesc="Ring", CallerIDNum=f"+7495{n:07d}", Exten="74950000000",
                  Context="from-trunk", Uniqueid=client, Linkedid=client),
            frame(Event="Newstate", Timestamp=f"{t + 0.0001:.6f}", Channel=trunk, ChannelState="6",
                  ChannelStateDesc="Up", Uniqueid=client, Linkedid=client),
            frame(Event="Newchannel", Timestamp=f"{t + 0.0002:.6f}", Channel=phone, ChannelState="6",
                  ChannelStateDesc="Up", CallerIDNum="101", Uniqueid=agent, Linkedid=client),
            frame(Event="BridgeCreate", Timestamp=f"{t + 0.0003:.6f}", BridgeUniqueid=bridge,
                  BridgeType="basic", BridgeTechnology="simple_bridge", BridgeNumChannels="0"),
            frame(Event="BridgeEnter", Timestamp=f"{t + 0.0004:.6f}", BridgeUniqueid=bridge,
                  BridgeTechnology="simple_bridge", BridgeNumChannels="1", Channel=trunk, ChannelState="6",
                  ChannelStateDesc="Up", Uniqueid=client, Linkedid=client),
            frame(Event="BridgeEnter", Timestamp=f"{t + 0.0005:.6f}", BridgeUniqueid=bridge,
                  BridgeTechnology="simple_bridge", BridgeNumChannels="2", Channel=phone, ChannelState="6",
                  ChannelStateDesc="Up", Uniqueid=agent, Linkedid=client),
        ]  # fmt: skip
        ends += [
            frame(Event="Hangup", Timestamp=f"{t + 10:.6f}", Channel=trunk, Uniqueid=client, Cause="16"),
            frame(Event="Hangup", Timestamp=f"{t + 10.0001:.6f}", Channel=phone, Uniqueid=agent, Cause="16"),
        ]
    return starts + ends


async def test_burst_of_10000_events_is_applied_in_order() -> None:
    """1,250 calls in 10,000 events at full speed: any reordering would change a talk time or lose a call."""
    async with AmiSimulator(events_trace(burst_of_calls(1250)), secret=SECRET, speed=0) as sim:
        found = await measure(sim)
    assert len(found) == 1250
    assert [c["client_number"] for c in found] == [f"+7495{n:07d}" for n in range(1250)]
    assert all(abs(c["talk_seconds"] - 9.9995) < 0.001 for c in found)
    assert all(c["consultants"] == ["101"] and not c["estimated"] for c in found)


async def test_stop_closes_open_conversations_as_estimated() -> None:
    trace = load_trace(TRACES / "ami_reconnect.session1.ami")  # ends mid-call
    async with AmiSimulator(trace, secret=SECRET, speed=0) as sim:
        found = await measure(sim)
    (conversation,) = found
    assert conversation["estimated"] is True
    assert conversation["consultants"] == ["101"]


async def test_a_failing_consumer_stops_the_pipeline() -> None:
    async def broken(conversation: dict[str, Any]) -> None:
        raise RuntimeError("database is gone")

    trace = load_trace(TRACES / "inbound_answered.ami")
    async with AmiSimulator(trace, secret=SECRET, speed=0) as sim:
        pipeline = Pipeline(settings_for(sim.port), broken, sleep=RecordingSleep())
        with pytest.raises(TaskDied, match="database is gone") as died:
            async with asyncio.timeout(GUARD):
                await pipeline.run(asyncio.Event())
        assert not pipeline.link.connected
    assert died.value.task == "call-consumer" and isinstance(died.value.error, RuntimeError)


async def test_no_timestamp_trace_is_replayed_with_its_sidecar_timing() -> None:
    """A PBX without `timestampevents`: the daemon has only the time it receives each event.

    The trace is replayed at its recorded pace (the `.ami.timing` sidecar), 8 times faster, and the
    daemon's clock is made to run 8 times faster too (an injected monotonic clock), so receive
    times are the recorded ones and the talk must come out as the SIP truth. The daemon pings every
    2 s of trace time, and Asterisk stamps each Ping answer with its clock (main/manager.c,
    `action_ping`, whatever `timestampevents` says), which the daemon follows: a simulator that
    stamped them with the last event's time would pull the daemon's clock back during the talk.
    (At speed 0 there is no pace to measure: the whole trace arrives at once.)
    """
    path: Path = TRACES / "no-timestamps" / "inbound_answered.ami"
    trace = load_trace(path)
    times = [event.at for event in trace.events]
    assert times == sorted(times) and times[-1] - times[0] > 5  # receive times, not all equal
    speed = 8.0
    loop = asyncio.get_running_loop()
    clock = EventClock(monotonic=lambda: loop.time() * speed)
    async with AmiSimulator(trace, secret=SECRET, speed=speed) as sim:
        found = await measure(sim, clock=clock, ami_ping_interval=2.0 / speed)
    (conversation,) = found
    (expected,) = truth("no-timestamps/inbound_answered")
    assert conversation["consultants"] == ["101"]
    # Arrival jitter is multiplied by the speed, hence 0.5 s; a clock pulled back costs ~2 s here.
    assert conversation["talk_seconds"] == pytest.approx(expected["talk_seconds"], abs=0.5)
    assert conversation["wait_seconds"] == pytest.approx(expected["wait_seconds"], abs=0.5)


async def test_call_that_ends_during_an_outage_is_closed_as_estimated() -> None:
    """The link is dropped mid-call and the PBX runs on: the hangup is never seen, the snapshot says so."""
    trace = load_trace(TRACES / "inbound_answered.ami")
    names = [event.name for event in trace.events]
    answered = [i for i, name in enumerate(names) if name == "BridgeEnter"][1] + 1  # client and 101 bridged
    found: list[dict[str, Any]] = []
    ended = asyncio.Event()

    async def collect(conversation: dict[str, Any]) -> None:
        found.append(conversation)
        ended.set()

    async with AmiSimulator(trace, secret=SECRET, speed=0, pause_after_drop=False) as sim:
        sim.drop_after(answered + 50)
        pipeline = Pipeline(settings_for(sim.port), collect, sleep=RecordingSleep())
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        async with asyncio.timeout(GUARD):
            await ended.wait()
            stop.set()
            await task
    (conversation,) = found
    (expected,) = truth("inbound_answered")
    assert conversation["estimated"] is True
    assert conversation["consultants"] == ["101"]
    assert 0 < conversation["talk_seconds"] < expected["talk_seconds"]  # cut at the last sign of life


async def test_on_stop_receives_the_open_calls_instead_of_closing_them() -> None:
    """The daemon checkpoints conversations in progress at shutdown rather than ending them."""
    saved: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []

    async def collect(conversation: dict[str, Any]) -> None:
        found.append(conversation)

    async def checkpoint(tracker: CallTracker, now: float) -> None:
        saved.extend(tracker.checkpoint(now))

    trace = load_trace(TRACES / "ami_reconnect.session1.ami")  # ends mid-call
    async with AmiSimulator(trace, secret=SECRET, speed=0) as sim:
        pipeline = Pipeline(settings_for(sim.port), collect, on_stop=checkpoint, sleep=RecordingSleep())
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        async with asyncio.timeout(GUARD):
            await sim.finished.wait()
            await pipeline.settle()
            stop.set()
            await task
    assert found == []
    assert len(saved) == 1


async def test_a_stop_that_interrupts_a_hand_over_hands_it_over_again() -> None:
    """Was: a stop whose drain ran out cancelled the consumer while it handed an ended conversation
    to the spool; the conversation had left the call model, so neither the spool nor the stop's
    checkpoint had it."""
    found: list[dict[str, Any]] = []
    saved: list[dict[str, Any]] = []
    handing = asyncio.Event()

    async def stuck_once(conversation: dict[str, Any]) -> None:
        if not handing.is_set():
            handing.set()
            await asyncio.Event().wait()  # a disk that never answers, until the stop cancels it
        found.append(conversation)

    async def checkpoint(tracker: CallTracker, now: float) -> None:
        saved.extend(tracker.checkpoint(now))

    trace = load_trace(TRACES / "inbound_answered.ami")
    async with AmiSimulator(trace, secret=SECRET, speed=0) as sim:
        pipeline = Pipeline(
            settings_for(sim.port), stuck_once, on_stop=checkpoint, sleep=RecordingSleep(), grace=0.2
        )
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        async with asyncio.timeout(GUARD):
            await handing.wait()
            stop.set()
            await task
    (expected,) = truth("inbound_answered")
    (conversation,) = found  # handed over again after the cancel, not lost, not twice
    assert conversation["client_number"] == expected["client_number"]
    assert conversation["estimated"] is False
    assert saved == []
