"""The simulator speaks AMI as Asterisk does, checked with a bare TCP client (no talkmeter code)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from telephony.simulator import AmiSimulator, Drop, Trace, load_trace

from .helpers import GUARD, SECRET, TRACES, frame, simple_trace


class Client:
    """A minimal AMI client: send a frame, read frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, **headers: str) -> None:
        self.writer.write(frame(**headers))
        await self.writer.drain()

    async def read(self) -> dict[str, str]:
        async with asyncio.timeout(GUARD):
            raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode().strip("\r\n").split("\r\n")
        return dict(line.split(": ", 1) for line in lines if ": " in line)

    async def read_until(self, event: str) -> list[dict[str, str]]:
        found = []
        while True:
            message = await self.read()
            found.append(message)
            if message.get("Event") == event:
                return found

    async def login(self, secret: str = SECRET) -> dict[str, str]:
        await self.send(Action="Login", ActionID="l", Username="talkmeter", Secret=secret)
        return await self.read()


async def connect(sim: AmiSimulator) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    try:
        yield Client(reader, writer)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_banner_login_ping_logoff() -> None:
    async with AmiSimulator(simple_trace([]), secret=SECRET) as sim:
        async for client in connect(sim):
            assert await client.reader.readline() == b"Asterisk Call Manager/11.0.0\r\n"
            await client.send(Action="Ping", ActionID="p0")
            assert (await client.read())["Message"] == "Permission denied"  # not logged in yet
            reply = await client.login()
            assert reply == {"Response": "Success", "ActionID": "l", "Message": "Authentication accepted"}
            assert (await client.read())["Event"] == "FullyBooted"
            await client.send(Action="Ping", ActionID="p1")
            pong = await client.read()
            assert pong["Ping"] == "Pong" and pong["ActionID"] == "p1" and "Timestamp" in pong
            await client.send(Action="Originate", ActionID="o")
            assert (await client.read())["Response"] == "Error"
            await client.send(Action="Logoff", ActionID="bye")
            assert (await client.read())["Response"] == "Goodbye"
            assert await client.reader.read() == b""  # and the server closes


async def test_user_event_is_acknowledged_broadcast_and_recorded() -> None:
    """As Asterisk's manager.c: `Event Sent`, then the event to every session, ActionID in its body."""
    async with AmiSimulator(simple_trace([]), secret=SECRET) as sim:
        async for client in connect(sim):
            await client.reader.readline()
            await client.login()
            await client.read_until("FullyBooted")
            await client.send(
                Action="UserEvent", ActionID="u1", UserEvent="TalkmeterQuota", Client="romashka"
            )
            ack = await client.read()
            assert (ack["Response"], ack["ActionID"], ack["Message"]) == ("Success", "u1", "Event Sent")
            event = await client.read()
            assert (event["Event"], event["UserEvent"], event["Client"]) == (
                "UserEvent",
                "TalkmeterQuota",
                "romashka",
            )
            assert event["ActionID"] == "u1"
            sim.deny_actions.add("UserEvent")  # a manager.conf without `write = user`
            await client.send(Action="UserEvent", ActionID="u2", UserEvent="TalkmeterQuota")
            assert (await client.read())["Message"] == "Permission denied"
    assert sim.user_events == [{"ActionID": "u1", "UserEvent": "TalkmeterQuota", "Client": "romashka"}]


async def test_wrong_secret_is_refused_and_the_connection_closed() -> None:
    async with AmiSimulator(simple_trace([]), secret=SECRET) as sim:
        async for client in connect(sim):
            await client.reader.readline()
            reply = await client.login("nope")
            assert reply["Response"] == "Error" and reply["Message"] == "Authentication failed"
            assert await client.reader.read() == b""


async def _events_as_received(sim: AmiSimulator, count: int) -> tuple[str, list[dict[str, str]]]:
    """Banner and the first `count` frames after login, as a client with the simulated user gets them."""
    async for client in connect(sim):
        banner = (await client.reader.readline()).decode()
        await client.login()
        await client.send(Action="Ping", ActionID="start")  # starts the replay
        return banner, [await client.read() for _ in range(count)]
    raise AssertionError("no connection")


async def test_a_default_manager_conf_sends_no_timestamp_and_only_readable_classes() -> None:
    """`timestampevents = no` and `read = call`: no Timestamp header, no FullyBooted (class system)."""
    trace = simple_trace(
        frame(Event=name, Privilege=f"{kind},all", Timestamp=stamp, Uniqueid="1")
        for name, kind, stamp in (("Newchannel", "call", "1.5"), ("VarSet", "dialplan", "1.6"),
                                  ("Hangup", "call", "1.7"))
    )  # fmt: skip
    async with AmiSimulator(trace, secret=SECRET, speed=0, timestampevents=False, read={"call"},
                            ami_version="2.10.6") as sim:  # fmt: skip
        banner, frames = await _events_as_received(sim, 3)
    assert banner == "Asterisk Call Manager/2.10.6\r\n"
    pong, *events = frames
    assert pong["Ping"] == "Pong" and "Timestamp" in pong  # Asterisk stamps Ping answers regardless
    assert [(e["Event"], "Timestamp" in e) for e in events] == [("Newchannel", False), ("Hangup", False)]


async def test_settings_and_endpoint_lists_as_asterisk_answers_them() -> None:
    async with AmiSimulator(simple_trace([]), secret=SECRET, endpoints={"SIP": ["beeline", "101"]},
                            asterisk_version="13.38.3") as sim:  # fmt: skip
        async for client in connect(sim):
            await client.reader.readline()
            await client.login()
            await client.read_until("FullyBooted")
            await client.send(Action="CoreSettings", ActionID="s")
            settings = await client.read()
            await client.send(Action="SIPpeers", ActionID="p")
            peers = await client.read_until("PeerlistComplete")
            await client.send(Action="PJSIPShowEndpoints", ActionID="e")
            unknown = await client.read()
    assert (settings["AsteriskVersion"], settings["AMIversion"]) == ("13.38.3", "11.0.0")
    assert peers[0] == {"Response": "Success", "ActionID": "p", "EventList": "start",
                        "Message": "Peer status list will follow"}  # fmt: skip
    assert [(m["Channeltype"], m["ObjectName"]) for m in peers[1:-1]] == [("SIP", "beeline"), ("SIP", "101")]
    assert peers[-1]["ListItems"] == "2"
    assert unknown["Message"].startswith("Invalid/unknown command: PJSIPShowEndpoints.")


async def test_endpoints_default_to_those_of_the_trace() -> None:
    async with AmiSimulator(load_trace(TRACES / "attended_transfer.ami"), secret=SECRET) as sim:
        assert sim.endpoints == {"PJSIP": ["trunk", "101", "102", "103"]}  # the queue rang 103 too


def _trace_until(name: str, stop_after: str, occurrence: int = 1) -> Trace:
    """The recorded trace up to (and including) the n-th event named `stop_after`."""
    items, seen = [], 0
    for item in load_trace(TRACES / f"{name}.ami").items:
        if isinstance(item, Drop):
            continue
        items.append(item)
        if item.name == stop_after:
            seen += 1
            if seen == occurrence:
                break
    return Trace(tuple(items))


async def _lists(trace: Trace) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    async with AmiSimulator(trace, secret=SECRET, speed=0) as sim:
        async for client in connect(sim):
            await client.reader.readline()
            await client.login()
            await client.read_until("FullyBooted")
            await client.send(Action="Ping", ActionID="start")  # starts the replay
            async with asyncio.timeout(GUARD):
                await sim.finished.wait()
            await client.send(Action="CoreShowChannels", ActionID="c")
            await client.send(Action="BridgeList", ActionID="b")
            channels = [
                m for m in await client.read_until("CoreShowChannelsComplete") if m.get("ActionID") == "c"
            ]
            bridges = [m for m in await client.read_until("BridgeListComplete") if m.get("ActionID") == "b"]
    return channels, bridges


async def test_lists_describe_the_attended_transfer_once_completed() -> None:
    channels, bridges = await _lists(_trace_until("attended_transfer", "AttendedTransfer"))
    assert channels[0]["Response"] == "Success" and channels[0]["EventList"] == "start"
    assert channels[-1]["Event"] == "CoreShowChannelsComplete" and channels[-1]["EventList"] == "Complete"
    items = {m["Channel"]: m for m in channels if m.get("Event") == "CoreShowChannel"}
    assert channels[-1]["ListItems"] == str(len(items))
    client = next(m for name, m in items.items() if name.startswith("PJSIP/trunk-"))
    half1 = next(m for name, m in items.items() if name.endswith(";1"))
    assert client["BridgeId"] and client["BridgeId"] == half1["BridgeId"]  # ;1 was moved in by the merge
    assert client["ChannelStateDesc"] == "Up"
    assert client["Duration"].count(":") == 2 and client["Duration"] > "00:00:10"
    bridge_items = [m for m in bridges if m.get("Event") == "BridgeListItem"]
    merged = next(m for m in bridge_items if m["BridgeUniqueid"] == client["BridgeId"])
    assert merged["BridgeNumChannels"] == "2"


async def test_lists_are_empty_once_every_call_has_hung_up() -> None:
    channels, bridges = await _lists(load_trace(TRACES / "inbound_answered.ami"))
    assert [m.get("Event") for m in channels[1:]] == ["CoreShowChannelsComplete"]
    assert [m.get("Event") for m in bridges[1:]] == ["BridgeListComplete"]


def test_trace_loading_keeps_events_byte_exact_and_strips_the_session() -> None:
    data = (TRACES / "ami_reconnect.ami").read_bytes()
    trace = load_trace(TRACES / "ami_reconnect.ami")
    drops = [item for item in trace.items if isinstance(item, Drop)]
    assert len(drops) == 1
    assert all(event.raw in data for event in trace.events)
    assert not any(
        event.raw.startswith((b"Response:", b"Asterisk", b"Event: FullyBooted")) for event in trace.events
    )
    session1 = load_trace(TRACES / "ami_reconnect.session1.ami").events
    session2 = load_trace(TRACES / "ami_reconnect.session2.ami").events
    assert [e.raw for e in trace.events] == [e.raw for e in session1 + session2]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_simulate_and_watch_commands_end_to_end(tmp_path: Path) -> None:
    """`talkmeter simulate` and `talkmeter watch` as a user runs them, stopped with SIGTERM."""
    env = {**os.environ, "TALKMETER_AMI_SECRET": "demo-secret", "TALKMETER_AMI_RECONNECT_MIN": "0.05"}
    env.pop("TALKMETER_CONFIG", None)
    talkmeter = [sys.executable, "-m", "daemon.cli"]
    trace = str(TRACES / "inbound_answered.ami")
    with subprocess.Popen(
        [*talkmeter, "simulate", trace, "--port", "0", "--speed", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    ) as simulate:  # fmt: skip
        assert simulate.stdout is not None
        port = simulate.stdout.readline().split(":")[1].split(",")[0]
        with subprocess.Popen(
            [*talkmeter, "watch", "--port", port, "--user", "talkmeter"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ) as watch:  # fmt: skip
            assert watch.stdout is not None
            line = watch.stdout.readline()
            watch.send_signal(signal.SIGTERM)
            assert watch.wait(GUARD) == 0
        simulate.send_signal(signal.SIGTERM)
        assert simulate.wait(GUARD) == 0
    assert '"client_number": "+74951234567"' in line and '"consultants": ["101"]' in line
