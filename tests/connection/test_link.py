"""The AMI link against the real simulator over TCP: login, order, resync, faults, backoff."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from telephony.ami import (
    ActionTimeout,
    AmiLink,
    AmiProtocol,
    Backoff,
    Item,
    NotConnected,
    Received,
    Result,
    Resync,
    SessionLost,
    SessionStarted,
    _Pending,
    format_action,
)
from telephony.framing import Message
from telephony.simulator import load_trace

from .helpers import (
    GUARD,
    SECRET,
    TRACES,
    RecordingSleep,
    events,
    frame,
    link_config,
    next_of,
    running,
    simple_trace,
    simulator,
)

NEWCHANNEL = frame(
    Event="Newchannel",
    Channel="PJSIP/trunk-00000001",
    ChannelState="4",
    ChannelStateDesc="Ring",
    CallerIDNum="+74951234567",
    Uniqueid="1.1",
    Linkedid="1.1",
)


async def test_login_gives_session_then_snapshot_then_events() -> None:
    trace = simple_trace([NEWCHANNEL, frame(Event="Newstate", Uniqueid="1.1", ChannelState="6")])
    async with simulator(trace) as sim:
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        async with running(link):
            started, before = await next_of(link.queue, SessionStarted)
            resync, between = await next_of(link.queue, Resync)
            received = await events(link.queue, 2)
    assert before == []
    assert started.version == "11.0.0"
    assert [m.event for m in _messages(between)] == ["FullyBooted"]
    assert resync.channels == () and resync.bridges == () and resync.lost_at is None
    assert [m.event for m in received] == ["Newchannel", "Newstate"]


async def test_wrong_password_is_reported_and_retried_slowly() -> None:
    sleep = RecordingSleep()
    async with simulator(simple_trace([NEWCHANNEL])) as sim:
        link = AmiLink(link_config(sim.port, secret="wrong-password", auth_retry=42.0), sleep=sleep)
        with capture_logs() as logs:
            async with running(link):
                delays = await sleep.calls(3)
        attempts = len(sim.login_attempts)
    assert delays == [42.0, 42.0, 42.0]  # the configured slow retry, never the fast backoff
    assert attempts >= 3
    failures = [entry for entry in logs if entry["event"] == "ami.login_failed"]
    assert len(failures) >= 3
    assert failures[0]["user"] == "talkmeter"
    assert failures[0]["reason"] == "Authentication failed"
    assert failures[0]["log_level"] == "error"
    assert "wrong-password" not in repr(logs)
    assert link.sessions == 0


async def test_refused_then_accepted_login() -> None:
    sleep = RecordingSleep()
    async with simulator(simple_trace([NEWCHANNEL])) as sim:
        sim.refuse_logins = True
        link = AmiLink(link_config(sim.port, auth_retry=5.0), sleep=sleep)
        async with running(link):
            await sleep.calls(1)
            sim.refuse_logins = False
            await next_of(link.queue, SessionStarted)
    assert sleep.delays[0] == 5.0


async def test_half_open_link_is_detected_by_ping_and_reconnected() -> None:
    interval, timeout = 0.1, 0.2
    async with simulator(simple_trace([NEWCHANNEL])) as sim:
        link = AmiLink(
            link_config(sim.port, ping_interval=interval, ping_timeout=timeout), sleep=RecordingSleep()
        )
        with capture_logs() as logs:
            async with running(link):
                await next_of(link.queue, Resync)
                sim.stall()  # TCP stays open, nothing more comes back: half-open
                stalled_at = time.monotonic()
                lost, _ = await next_of(link.queue, SessionLost)
                noticed = time.monotonic() - stalled_at
                await next_of(link.queue, SessionStarted)  # a fresh session
    assert noticed <= interval + timeout + 0.5  # a margin for a loaded machine
    assert "ping" in lost.reason
    assert any(entry["event"] == "ami.ping_timeout" for entry in logs)
    assert link.sessions == 2


class _CancelledOnAnswer(AmiLink):
    """A link whose keepalive is cancelled at the very moment its ping is answered (a hook, not a mock:
    the session, the simulator and the ping are real)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keepalive: asyncio.Task[Any] | None = None
        self.hooked = asyncio.Event()

    async def _wait(self, protocol: AmiProtocol, pending: _Pending, limit: float) -> Result:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "ami-keepalive" and self.keepalive is None:
            self.keepalive = task
            pending.future.add_done_callback(lambda _: task.cancel())
            self.hooked.set()
        return await super()._wait(protocol, pending, limit)


async def test_a_keepalive_cancelled_as_its_ping_is_answered_stops() -> None:
    """The service hang: Python 3.11's `wait_for` returns the result when the cancel and the answer
    arrive together, so the keepalive went on pinging and `_serve` waited for it forever."""
    async with simulator(simple_trace([NEWCHANNEL])) as sim:
        link = _CancelledOnAnswer(link_config(sim.port, ping_interval=0.01), sleep=RecordingSleep())
        async with running(link):
            async with asyncio.timeout(GUARD):
                await link.hooked.wait()
            assert link.keepalive is not None
            await asyncio.wait({link.keepalive}, timeout=GUARD)
            assert link.keepalive.cancelled()


@pytest.mark.parametrize("end", [b"", b"\r\n"], ids=["glued-to-the-reply", "a-line-of-its-own"])
async def test_a_10_mb_garbage_line_neither_swallows_a_reply_nor_drops_the_session(end: bytes) -> None:
    """Was: the garbage ran into the ping reply that followed, which was lost, and the session
    dropped as a "half-open link"."""
    async with simulator(simple_trace([NEWCHANNEL])) as sim:
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        with capture_logs() as logs:
            async with running(link):
                await next_of(link.queue, Resync)
                for _ in range(2):
                    sim.send_raw(b"\xff" * 10_000_000 + end)
                    reply = await link.ping()
                    assert reply.response == "Success"
    assert link.sessions == 1
    dropped = [
        e for e in logs if e["event"] in ("ami.session_lost", "ami.ping_timeout") and e["log_level"] != "info"
    ]
    assert not dropped  # (the session ends with an orderly logoff, logged as info)
    assert any(entry["event"] == "ami.malformed_frame" for entry in logs)


async def test_split_multibyte_caller_name_survives() -> None:
    name = "Иван Петров"
    raw = frame(Event="Newchannel", Channel="PJSIP/trunk-00000001", CallerIDName=name, Uniqueid="1.1")
    cut = raw.index(name.encode()) + 1  # inside the two bytes of "И"
    async with simulator(simple_trace([raw])) as sim:
        sim.split_writes = lambda data: [cut] if data == raw else []
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        async with running(link):
            received = await events(link.queue, 2)  # FullyBooted, then the Newchannel
    message = received[-1]
    assert message.get("CallerIDName") == name


async def test_burst_of_10000_events_arrives_in_order() -> None:
    burst = [frame(Event="UserEvent", UserEvent="burst", Seq=str(n)) for n in range(10_000)]
    async with simulator(simple_trace(burst)) as sim:
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        async with running(link):
            received = await events(link.queue, 10_001)  # FullyBooted first
    assert [int(m.get("Seq")) for m in received[1:]] == list(range(10_000))


async def test_reader_keeps_reading_while_nobody_consumes() -> None:
    burst = [frame(Event="UserEvent", Seq=str(n)) for n in range(10_000)]
    async with simulator(simple_trace(burst)) as sim:
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        async with running(link):
            async with asyncio.timeout(GUARD):
                await sim.finished.wait()
            reply = await link.ping()  # answered although 10,000 items wait unconsumed
            depth = link.queue_depth
    assert reply.get("Ping") == "Pong"
    assert depth >= 10_000


async def test_malformed_frames_and_unknown_events_do_not_kill_the_link() -> None:
    junk = [
        b"this is not AMI at all\r\n\r\n",
        b"\xff\xfe\x00garbage\r\n\r\n",
        frame(Event="SomethingAsteriskInvents", Foo="bar"),
        frame(Event="UserEvent", Seq="last"),
    ]
    async with simulator(simple_trace(junk)) as sim:
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        with capture_logs() as logs:
            async with running(link):
                received = await events(link.queue, 3)
                reply = await link.ping()
    assert [m.event for m in received] == ["FullyBooted", "SomethingAsteriskInvents", "UserEvent"]
    assert reply.get("Ping") == "Pong"
    assert link.malformed >= 1 and link.sessions == 1
    assert any(entry["event"] == "ami.malformed_frame" for entry in logs)


async def test_cr_lf_in_action_values_is_stripped() -> None:
    async with simulator(simple_trace([NEWCHANNEL])) as sim:
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        async with running(link):
            await next_of(link.queue, SessionStarted)
            await link.send_action(
                {"Action": "UserEvent", "UserEvent": "x\r\nAction: Originate\nChannel: PJSIP/evil"}
            )
        sent = [action for action in sim.actions if b"UserEvent" in action]
    assert len(sent) == 1
    lines = sent[0].split(b"\r\n")
    assert [line for line in lines if line.startswith(b"Action:")] == [b"Action: UserEvent"]
    assert not any(line.startswith(b"Channel:") for line in lines)
    assert b"UserEvent: xAction: OriginateChannel: PJSIP/evil" in lines


def test_format_action_puts_action_first_and_strips_line_breaks() -> None:
    raw = format_action({"ActionID": "1", "Ac\r\ntion": "v", "Action": "Ping", "Value": "a\rb\nc"})
    assert raw == b"Action: Ping\r\nActionID: 1\r\nAction: v\r\nValue: abc\r\n\r\n"


async def test_secret_never_appears_in_logs() -> None:
    async with simulator(simple_trace([NEWCHANNEL])) as sim:
        with capture_logs() as logs:
            link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
            async with running(link):
                await next_of(link.queue, Resync)
            sim.secret = "other"
            failing = AmiLink(link_config(sim.port), sleep=RecordingSleep())
            async with running(failing):
                await _until_logged(logs, "ami.login_failed")
    assert logs, "the link logs its sessions"
    assert SECRET not in repr(logs)
    assert SECRET not in repr(link.config)


async def _until_logged(logs: list[MutableMapping[str, Any]], event: str) -> None:
    async with asyncio.timeout(GUARD):
        # capture_logs fills a plain list: there is no event to wait on, so look again shortly.
        while not any(entry["event"] == event for entry in logs):  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_permission_error_on_core_show_channels_is_reported_and_link_continues() -> None:
    async with simulator(simple_trace([NEWCHANNEL, frame(Event="Hangup", Uniqueid="1.1")])) as sim:
        sim.deny_actions = {"CoreShowChannels"}
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        with capture_logs() as logs:
            async with running(link):
                received = await events(link.queue, 3)
                await _until_logged(logs, "ami.resync_refused")
                await link.ping()
        items = []
        while not link.queue.empty():
            items.append(link.queue.get_nowait())
    assert [m.event for m in received] == ["FullyBooted", "Newchannel", "Hangup"]
    assert not any(isinstance(item, Resync) for item in items)
    refused = next(entry for entry in logs if entry["event"] == "ami.resync_refused")
    assert "Permission denied" in str(refused["error"])
    assert refused["log_level"] == "error"
    assert link.sessions == 1


async def test_close_cancels_a_pending_reconnect() -> None:
    with socket.socket() as probe:  # a port where nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits: list[float] = []
    started = asyncio.Event()

    async def real_sleep(delay: float) -> None:
        waits.append(delay)
        started.set()
        await asyncio.sleep(delay)  # a real 60 s wait: close() must cut it short

    link = AmiLink(link_config(port, reconnect_min=60.0, reconnect_max=60.0), sleep=real_sleep)
    task = asyncio.create_task(link.run())
    async with asyncio.timeout(GUARD):
        await started.wait()
    link.close()
    async with asyncio.timeout(1.0):
        await task
    assert waits and waits[0] >= 30.0


async def test_every_action_has_a_timeout() -> None:
    async with simulator(simple_trace([NEWCHANNEL])) as sim:
        link = AmiLink(link_config(sim.port, action_timeout=0.2), sleep=RecordingSleep())
        async with running(link):
            await next_of(link.queue, Resync)
            sim.stall()
            with pytest.raises(ActionTimeout):
                await link.send_action({"Action": "Ping"}, within=0.1)


async def test_actions_need_a_session() -> None:
    link = AmiLink(link_config(1))
    with pytest.raises(NotConnected):
        await link.send_action({"Action": "Ping"})


def test_backoff_grows_is_capped_and_jittered() -> None:
    low = Backoff(0.5, 4.0, rng=lambda: 0.0)
    high = Backoff(0.5, 4.0, rng=lambda: 1.0)
    assert [low.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [high.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    high.reset()
    assert high.next() == 0.5


async def test_reconnect_resyncs_with_what_exists_mid_call() -> None:
    """ami_reconnect: the simulator drops at the recorder's marker; the snapshot holds the live call."""
    async with simulator(load_trace(TRACES / "ami_reconnect.ami")) as sim:
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        async with running(link):
            await next_of(link.queue, Resync)
            lost, _ = await next_of(link.queue, SessionLost)
            resync, _ = await next_of(link.queue, Resync)
    channels = sorted(m.get("Channel") for m in resync.channels)
    assert channels == ["PJSIP/101-00000074", "PJSIP/trunk-00000073"]
    assert {m.get("BridgeId") for m in resync.channels} == {resync.bridges[0].get("BridgeUniqueid")}
    assert resync.bridges[0].get("BridgeNumChannels") == "2"
    assert all(m.get("ChannelStateDesc") == "Up" for m in resync.channels)
    # at speed 0 the simulator's clock stands still while it waits for the new login
    assert resync.lost_at is not None and resync.lost_at <= resync.at + 0.01
    assert lost.reason == "closed by the PBX"


def _messages(items: list[Item]) -> list[Message]:
    return [item.message for item in items if isinstance(item, Received)]


class _Recorder(asyncio.Transport):
    """A transport that keeps what the protocol writes, to read back its actions in order."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def actions(self) -> list[tuple[str, str]]:
        """(Action, ActionID) of every action sent, in the order it was sent."""
        found = []
        for block in self.written.decode().split("\r\n\r\n"):
            headers = dict(line.split(": ", 1) for line in block.split("\r\n") if ": " in line)
            if "Action" in headers:
                found.append((headers["Action"], headers["ActionID"]))
        return found


def _answer(action: str, action_id: str, live: bytes) -> bytes:
    """Asterisk's answer to one resync action, with a live event inside a list (events interleave)."""
    if action == "Ping":
        return frame(Response="Success", ActionID=action_id, Ping="Pong", Timestamp="1800000000.5")
    item, done = (
        ("CoreShowChannel", "CoreShowChannelsComplete")
        if action == "CoreShowChannels"
        else ("BridgeListItem", "BridgeListComplete")
    )
    return (
        frame(Response="Success", ActionID=action_id, EventList="start")
        + frame(Event=item, ActionID=action_id, Channel="PJSIP/trunk-1", Uniqueid="1.1", BridgeUniqueid="b")
        + live
        + frame(Event=done, ActionID=action_id, EventList="Complete", ListItems="1")
    )


async def test_the_snapshot_sits_where_the_channel_list_completes_among_live_events() -> None:
    """Asterisk answers a session's actions one after the other, in the order they were sent, and
    may deliver live events between and inside the answers. The snapshot is applied where the
    resync completes; an event received after the channel list was complete is newer than that
    list and must come after the snapshot, or the older list would override it (a BridgeEnter
    undone by a list that still shows the channel outside the bridge). So the channel list must
    be the last answer: the Resync then sits right where the channel list ends.
    """
    link = AmiLink(link_config(1))
    protocol = AmiProtocol(link)
    transport = _Recorder()
    protocol.connection_made(transport)
    resync = asyncio.create_task(link._resync(protocol))
    await asyncio.sleep(0)  # one turn of the loop: the task sends its three actions
    sent = transport.actions()
    stream, arrived, channel_list_done = b"", [], None
    for action, action_id in sent:
        inside, between = f"in-{action}", f"after-{action}"
        stream += _answer(action, action_id, frame(Event="Newstate", Uniqueid="1.1", Seq=inside))
        stream += frame(Event="BridgeEnter", Uniqueid="1.1", Seq=between)
        arrived += [between] if action == "Ping" else [inside, between]  # a Ping answer is one frame
        if action == "CoreShowChannels":
            channel_list_done = len(arrived) - 1  # `between` came after the channel list was complete
    stream += frame(Event="Hangup", Uniqueid="1.1", Seq="last")
    arrived.append("last")
    protocol.data_received(stream)
    await resync
    order = []
    while not link.queue.empty():
        item = link.queue.get_nowait()
        order.append(item.message.get("Seq") if isinstance(item, Received) else type(item).__name__)
    assert [name for name in order if name != "Resync"] == arrived  # events keep their order
    assert order.index("Resync") == channel_list_done  # right where the channel list completed
    protocol.connection_lost(None)


async def test_the_snapshot_is_dated_by_the_pbx_clock_from_the_ping_reply() -> None:
    async with simulator(simple_trace([NEWCHANNEL])) as sim:
        link = AmiLink(link_config(sim.port), sleep=RecordingSleep())
        async with running(link):
            resync, _ = await next_of(link.queue, Resync)
    assert resync.at == pytest.approx(sim.trace.items[0].at, abs=1e-3)  # the trace's clock, not ours
