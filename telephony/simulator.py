"""An AMI server that replays a recorded trace: for tests, and for users without a PBX.

Theory of operation
-------------------
A trace (`tests/traces/*.ami`) is the byte stream an AMI client received. Loading it keeps every
event frame byte-exact and drops what belonged to the recording session itself: the banner, the
login response, the recorded `FullyBooted` and the final `Goodbye`. The recorder's marker line
(`##### AMI-RECORDER MARKER ... #####`, where it dropped its connection) becomes a `DROP` cue.

The simulator plays the part of the PBX, not of a tape recorder: there is one timeline (the
"replay"), and it runs whether or not anybody listens. A client that is logged in receives the
events emitted while it is; what happens while it is away is lost, exactly as with Asterisk. So
that tests are deterministic, the replay starts when the first client logs in, and after a drop it
waits for the next login (`pause_after_drop`) before going on. With `pause_when_alone` it also holds
the replay whenever no client is logged in (a client killed and restarted, in the fault tests): the
PBX is frozen while nobody listens, so a test measures what the client loses, not what no client
could have seen.

Several clients (two talkmeter instances following one PBX) share the one replay: every client
logged in gets the same events at the same moments. `start_clients` makes the replay (and its
resumption after a drop cue) wait until that many clients are logged in, so that each of them sees
the trace from its first event. Once it runs, clients come and go without the replay waiting for
anyone: a client that is killed (its connection reset) simply misses what happens while it is away
and gets the present (lists, then events) after its next login. A client that stops reading
(a frozen process) is dropped once a write to it has waited `write_timeout` seconds, as Asterisk
drops a manager session after `writetimeout`; the others never wait longer than that for it.

Each event is due at `(its time - first time) / speed` after the start (`speed=0`: as fast as the
socket takes it). Its time is its `Timestamp` header, or for traces recorded without one the
receive time from the `.ami.timing` sidecar. The PBX's clock (`now()`, which stamps Ping answers
as Asterisk does whatever `timestampevents` says) runs at the same pace between events. A trace
without timestamps can only be measured by arrival times, so it is faithful at speed 1 only.

While replaying, the simulator keeps the channels and bridges that exist at the current position
(Newchannel/Newstate/Rename/Hangup, BridgeCreate/Enter/Leave/Destroy; a `BridgeMerge` is followed
by a BridgeLeave/BridgeEnter per moved channel in the recorded streams), so `CoreShowChannels`
and `BridgeList` answer, as Asterisk does, with an event list describing the present.

`UserEvent` actions are answered as Asterisk answers them (`Event Sent`, then an `Event: UserEvent`
to every logged-in client, the action's other headers in its body) and kept in `user_events`, so
tests can see what a PBX-side panel would receive.

Faults on cue, for the connection tests: drop every connection (`drop_now`, `drop_after`, markers),
stall (stop sending and stop answering, TCP left open: a half-open link), refuse logins, refuse
chosen actions (`deny_actions`, answered `Permission denied`), split writes at chosen byte
positions (`split_writes`) to put a multibyte character across two TCP reads, and send raw bytes
(`send_raw`: garbage on the link).

The manager.conf of the simulated user, for `talkmeter check`: `timestampevents` (False strips the
`Timestamp` header from every event, as a default Asterisk sends them), `read` (the event classes
the user may read: an event goes out only if one of its `Privilege` classes is readable, and
`FullyBooted` only with `system`, as main/manager.c does), and what the PBX is: `ami_version` (the
banner), `asterisk_version` (`CoreSettings`), and `endpoints` per driver (`PJSIPShowEndpoints`,
`SIPpeers`; by default the endpoints of the trace's channel names; a driver that is not listed is
not loaded and its action is an unknown command).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from telephony.framing import BANNER_PREFIX, parse_frame
from telephony.roles import endpoint_name

log = structlog.get_logger("telephony.simulator")

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
_TIMESTAMP_LINE = re.compile(rb"\r\nTimestamp: [^\r]*")
_PRIVILEGE = re.compile(rb"\r\nPrivilege: ([^\r]*)")
_END = b"\r\n\r\n"
_MARKER = b"#####"
_BATCH = 256  # events per write when several are due at once (speed 0, bursts)
_BEHIND = 1 << 20  # bytes queued for a client beyond which the replay waits for it (write_timeout)
#: events whose headers the simulator reads to know which channels and bridges exist
STATE_EVENTS = frozenset(
    {
        "Newchannel", "Newstate", "NewCallerid", "NewConnectedLine", "Newexten", "Rename", "Hangup",
        "BridgeCreate", "BridgeEnter", "BridgeLeave", "BridgeDestroy",
    }
)  # fmt: skip
_CHANNEL_FIELDS = (
    "Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName", "ConnectedLineNum",
    "ConnectedLineName", "Language", "AccountCode", "Context", "Exten", "Priority", "Uniqueid", "Linkedid",
)  # fmt: skip
_BRIDGE_FIELDS = (
    "BridgeType", "BridgeTechnology", "BridgeCreator", "BridgeName", "BridgeVideoSourceMode",
)  # fmt: skip


# --- traces -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One event frame as recorded (terminator included), with the time it happened."""

    raw: bytes
    at: float
    name: str
    headers: dict[str, str] | None = None  # parsed only for STATE_EVENTS


@dataclass(frozen=True, slots=True)
class Drop:
    """The recorder's connection ended here: the simulator drops its clients."""

    at: float


TraceItem = TraceEvent | Drop


@dataclass(frozen=True, slots=True)
class Trace:
    items: tuple[TraceItem, ...]

    @property
    def events(self) -> list[TraceEvent]:
        return [item for item in self.items if isinstance(item, TraceEvent)]

    @property
    def timestamped(self) -> bool:
        """Whether the events carry their own time (`timestampevents = yes` when recorded)."""
        return any(_timestamp(event.raw) is not None for event in self.events)


def load_trace(path: Path | str) -> Trace:
    """Read a recorded `.ami` file (and its `.ami.timing` sidecar when there is one)."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".timing")
    timing = _read_timing(sidecar) if sidecar.is_file() else None
    return parse_trace(path.read_bytes(), timing)


def _read_timing(path: Path) -> list[tuple[int, int, float]]:
    chunks = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            chunks.append((int(row["off"]), int(row["len"]), float(row["wall"])))
    return chunks


def parse_trace(data: bytes, timing: Sequence[tuple[int, int, float]] | None = None) -> Trace:
    """Cut raw AMI bytes into replayable items. `timing` is (offset, length, epoch) per received chunk."""
    items: list[TraceItem] = []
    last_at = 0.0
    for start, end in _frame_spans(data):
        body = data[start:end].lstrip(b"\r\n")
        if body.startswith(_MARKER):
            _marker, _, body = body.partition(b"\r\n")
            items.append(Drop(last_at))
        if body.startswith(BANNER_PREFIX):
            body = body.partition(b"\r\n")[2]
        if not body.strip(b"\r\n") or body.startswith((b"Response:", b"Event: FullyBooted\r")):
            continue
        name = _event_name(body)
        at = _timestamp(body)
        if at is None and timing is not None:
            at = _chunk_time(timing, end - 1)
        last_at = at if at is not None else last_at
        headers = _headers(body) if name in STATE_EVENTS else None
        items.append(TraceEvent(body, last_at, name, headers))
    return Trace(tuple(items))


def events_trace(frames: Iterable[bytes], *, start: float = 1_000_000_000.0, step: float = 0.0) -> Trace:
    """A trace made from frames built in a test (each `Key: Value` block, with or without terminator)."""
    raw = b"".join(frame if frame.endswith(_END) else frame.rstrip(b"\r\n") + _END for frame in frames)
    trace = parse_trace(raw)
    items = tuple(
        TraceEvent(item.raw, start + index * step, item.name, item.headers)
        if isinstance(item, TraceEvent) and _timestamp(item.raw) is None
        else item
        for index, item in enumerate(trace.items)
    )
    return Trace(items)


def _frame_spans(data: bytes) -> Iterable[tuple[int, int]]:
    position = 0
    while position < len(data):
        found = data.find(_END, position)
        end = len(data) if found == -1 else found + len(_END)
        yield position, end
        position = end


def _event_name(body: bytes) -> str:
    if not body.startswith(b"Event: "):
        return ""
    end = body.find(b"\r", 7)
    return body[7:end].decode("utf-8", "replace")


def _timestamp(body: bytes) -> float | None:
    found = body.find(b"\r\nTimestamp: ")
    if found == -1:
        return None
    end = body.find(b"\r", found + 13)
    try:
        return float(body[found + 13 : end])
    except ValueError:
        return None


def _chunk_time(timing: Sequence[tuple[int, int, float]], offset: int) -> float | None:
    # A frame is dated by the chunk that holds its last byte (see tests/traces/README.md).
    for chunk_offset, length, wall in timing:
        if chunk_offset <= offset < chunk_offset + length:
            return wall
    return None


def _headers(body: bytes) -> dict[str, str]:
    message = parse_frame(body.rstrip(b"\r\n"))
    return dict(message.headers) if hasattr(message, "headers") else {}


# --- what exists at the replay position ------------------------------------------------------------


@dataclass
class _Channel:
    fields: dict[str, str]
    created_at: float
    application: str = ""
    application_data: str = ""
    bridge: str = ""


@dataclass
class _Bridge:
    fields: dict[str, str]
    members: set[str] = field(default_factory=set)


class PbxState:
    """Channels and bridges alive after the events replayed so far (keyed by Uniqueid / BridgeUniqueid)."""

    def __init__(self) -> None:
        self.channels: dict[str, _Channel] = {}
        self.bridges: dict[str, _Bridge] = {}

    def apply(self, event: TraceEvent) -> None:
        headers = event.headers
        if headers is None:
            return
        handler = getattr(self, "on_" + event.name.lower(), None)
        if handler is not None:
            handler(headers, event.at)

    def on_newchannel(self, h: dict[str, str], at: float) -> None:
        fields = {key: h.get(key, "") for key in _CHANNEL_FIELDS}
        self.channels[h.get("Uniqueid", "")] = _Channel(fields, at)

    def _update(self, h: dict[str, str], keys: Iterable[str]) -> _Channel | None:
        channel = self.channels.get(h.get("Uniqueid", ""))
        if channel is not None:
            for key in keys:
                if key in h:
                    channel.fields[key] = h[key]
        return channel

    def on_newstate(self, h: dict[str, str], at: float) -> None:
        self._update(h, _CHANNEL_FIELDS)

    on_newcallerid = on_newstate
    on_newconnectedline = on_newstate

    def on_newexten(self, h: dict[str, str], at: float) -> None:
        channel = self._update(h, ("Context", "Exten", "Priority"))
        if channel is not None:
            channel.application = h.get("Application", channel.application)
            channel.application_data = h.get("AppData", channel.application_data)

    def on_rename(self, h: dict[str, str], at: float) -> None:
        channel = self.channels.get(h.get("Uniqueid", ""))
        if channel is not None and h.get("Newname"):
            channel.fields["Channel"] = h["Newname"]

    def on_hangup(self, h: dict[str, str], at: float) -> None:
        channel = self.channels.pop(h.get("Uniqueid", ""), None)
        if channel is not None and channel.bridge in self.bridges:
            self.bridges[channel.bridge].members.discard(h.get("Uniqueid", ""))

    def on_bridgecreate(self, h: dict[str, str], at: float) -> None:
        fields = {key: h.get(key, "") for key in _BRIDGE_FIELDS}
        self.bridges[h.get("BridgeUniqueid", "")] = _Bridge(fields)

    def on_bridgeenter(self, h: dict[str, str], at: float) -> None:
        bridge_id, uniqueid = h.get("BridgeUniqueid", ""), h.get("Uniqueid", "")
        bridge = self.bridges.setdefault(bridge_id, _Bridge({key: h.get(key, "") for key in _BRIDGE_FIELDS}))
        bridge.members.add(uniqueid)
        channel = self._update(h, _CHANNEL_FIELDS)
        if channel is not None:
            channel.bridge = bridge_id

    def on_bridgeleave(self, h: dict[str, str], at: float) -> None:
        bridge = self.bridges.get(h.get("BridgeUniqueid", ""))
        if bridge is not None:
            bridge.members.discard(h.get("Uniqueid", ""))
        channel = self._update(h, _CHANNEL_FIELDS)
        if channel is not None:
            channel.bridge = ""

    def on_bridgedestroy(self, h: dict[str, str], at: float) -> None:
        self.bridges.pop(h.get("BridgeUniqueid", ""), None)

    def core_show_channels(self, action_id: str, now: float) -> list[bytes]:
        """The `CoreShowChannel` list items, as Asterisk formats them (no Timestamp on list items)."""
        frames = []
        for channel in self.channels.values():
            headers = [("Event", "CoreShowChannel"), ("ActionID", action_id), *channel.fields.items()]
            headers += [
                ("Application", channel.application),
                ("ApplicationData", channel.application_data),
                ("Duration", _duration(now - channel.created_at)),
                ("BridgeId", channel.bridge),
            ]
            frames.append(_frame(headers))
        return frames

    def bridge_list(self, action_id: str) -> list[bytes]:
        frames = []
        for bridge_id, bridge in self.bridges.items():
            headers = [("Event", "BridgeListItem"), ("ActionID", action_id), ("BridgeUniqueid", bridge_id)]
            headers += [*bridge.fields.items(), ("BridgeNumChannels", str(len(bridge.members)))]
            frames.append(_frame(headers))
        return frames


def _duration(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _frame(headers: Iterable[tuple[str, str]]) -> bytes:
    return "".join(f"{key}: {value}\r\n" for key, value in headers).encode() + b"\r\n"


# --- the server -----------------------------------------------------------------------------------


class _Client:
    """One TCP session with the simulator."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.logged_in = False
        self.stalled = False
        self.closed = False

    def write(self, data: bytes) -> None:
        if not (self.stalled or self.closed or self.writer.is_closing()):
            self.writer.write(data)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        """Close without flushing what the client never read (a graceful close would wait for it)."""
        self.closed = True
        self.writer.transport.abort()


Splitter = Callable[[bytes], Sequence[int]]


class AmiSimulator:
    """A replaying AMI server on `host`:`port` (port 0 picks a free one; read `.port` after `start()`).

    `secret=None` accepts any secret for `user` (the demo's choice).
    """

    def __init__(
        self,
        trace: Trace,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "talkmeter",
        secret: str | None = "secret",
        speed: float = 1.0,
        drop_at_markers: bool = True,
        pause_after_drop: bool = True,
        start_on_login: bool = True,
        timestampevents: bool = True,
        read: Iterable[str] | None = None,
        ami_version: str = "11.0.0",
        asterisk_version: str = "22.10.1",
        endpoints: dict[str, list[str]] | None = None,
        pause_when_alone: bool = False,
        start_clients: int = 1,
        write_timeout: float = 2.0,
    ) -> None:
        """`start_clients`: logins the replay waits for before it starts (and resumes after a drop).
        `write_timeout`: seconds a write may wait for a client that does not read before it is dropped."""
        self.trace = trace
        self.timestampevents = timestampevents
        self.read = None if read is None else frozenset(read)  # None: read = all
        self.ami_version, self.asterisk_version = ami_version, asterisk_version
        self.endpoints = endpoints if endpoints is not None else trace_endpoints(trace)
        self.host, self.port = host, port
        self.user, self.secret = user, secret
        self.speed = speed
        self.drop_at_markers = drop_at_markers
        self.pause_after_drop = pause_after_drop
        self.start_on_login = start_on_login
        self.pause_when_alone = pause_when_alone
        self.start_clients = start_clients
        self.write_timeout = write_timeout
        # faults, settable at any time
        self.refuse_logins = False
        self.deny_actions: set[str] = set()
        self.split_writes: Splitter | None = None
        self.split_pause = 0.02
        self.cues: dict[int, str] = {}  # event index (after it is sent) -> "drop" | "stall"
        # observations, for tests
        self.login_attempts: list[float] = []
        self.actions: list[bytes] = []
        self.user_events: list[dict[str, str]] = []  # headers as sent, case kept, Action dropped
        self.user_event_received = asyncio.Event()
        self.sent_events = 0
        self.waits_for_clients = 0  # times the running replay stopped to wait for logins
        self.dropped_slow = 0  # clients dropped because they did not read within write_timeout
        self.state = PbxState()
        self.finished = asyncio.Event()
        self._progress = asyncio.Condition()
        self._clients: set[_Client] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._replay: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._batch: list[bytes] = []
        self._grace: asyncio.TimerHandle | None = None
        self.ready_grace = 0.5
        self._first = trace.items[0].at if trace.items else 0.0
        self._trace_now = self._first  # the time of the last event sent
        self._origin: float | None = None  # monotonic time at which the first event was due

    # lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("simulator.listening", host=self.host, port=self.port, events=len(self.trace.items))
        if self.speed != 1 and self.trace.events and not self.trace.timestamped:
            hint = "no Timestamp in the events: arrival times are all a client has, divided by the speed"
            log.warning("simulator.untimed_trace", speed=self.speed, hint=hint)

    async def stop(self) -> None:
        if self._replay is not None:
            self._replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay
        self._set_ready(False)  # also cancels a pending grace timer
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            client.close()
        if self._handlers:
            # Closing a client ends its handler's read; wait so no task outlives the server.
            await asyncio.wait(self._handlers, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> AmiSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_replay(self) -> None:
        if self._replay is None:
            self._replay = asyncio.create_task(self._run_replay(), name="simulator-replay")

    # faults

    def drop_now(self) -> None:
        """Close every client connection (FIN), as a PBX restart or a recorder drop would."""
        for client in list(self._clients):
            client.close()

    def send_raw(self, data: bytes) -> None:
        """Write `data` to every logged-in client now, as it is (garbage, for the fault tests)."""
        for client in self._clients:
            if client.logged_in:
                client.write(data)

    def stall(self) -> None:
        """Current clients get nothing more and no answers; their TCP connections stay open."""
        for client in self._clients:
            client.stalled = True

    def drop_after(self, events: int) -> None:
        self.cues[events] = "drop"

    def stall_after(self, events: int) -> None:
        self.cues[events] = "stall"

    async def reached(self, events: int) -> None:
        """Wait until `events` events have been sent (or the replay is over)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.sent_events >= events or self.finished.is_set())

    @property
    def clients(self) -> int:
        return sum(1 for client in self._clients if client.logged_in and not client.closed)

    # the replay

    async def _run_replay(self) -> None:
        first = self._first
        await self._ready.wait()
        self._origin = time.monotonic()
        for item in self.trace.items:
            if isinstance(item, Drop):
                await self._flush()
                if self.drop_at_markers:
                    await self._drop_and_wait()
                continue
            if self.speed > 0:
                delay = (self._origin or 0.0) + (item.at - first) / self.speed - time.monotonic()
                if delay > 0:
                    await self._flush()
                    await asyncio.sleep(delay)
            if not self._ready.is_set():  # nobody listens (`pause_when_alone`): hold the PBX's time
                await self._flush()
                await self._held()
            self._trace_now = item.at
            self.state.apply(item)
            raw = self._as_sent(item.raw)
            if raw is not None:
                self._batch.append(raw)
            self.sent_events += 1
            cue = self.cues.get(self.sent_events)
            if cue is not None or len(self._batch) >= _BATCH:
                await self._flush()
            if cue == "drop":
                await self._drop_and_wait()
            elif cue == "stall":
                self.stall()
        await self._flush()
        self.finished.set()
        async with self._progress:
            self._progress.notify_all()
        log.info("simulator.trace_done", events=self.sent_events)

    async def _drop_and_wait(self) -> None:
        """Drop everybody; with `pause_after_drop`, wait for the next login, the clock standing still."""
        log.info("simulator.drop", clients=self.clients)
        self.drop_now()
        if not self.pause_after_drop:
            return
        self._set_ready(False)
        await self._held()

    async def _held(self) -> None:
        """Wait until a client is ready again, the PBX's clock standing still meanwhile."""
        origin, self._trace_now, self._origin = self._origin, self.now(), None
        started = time.monotonic()
        self.waits_for_clients += 1
        await self._ready.wait()
        self._origin = (origin or 0.0) + time.monotonic() - started

    async def _flush(self) -> None:
        """Send the events due so far: one write per batch (events that are due together)."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        async with self._progress:
            self._progress.notify_all()
        receivers = [client for client in self._clients if client.logged_in]
        if self.split_writes is not None:
            for raw in batch:
                for client in receivers:
                    await self._write_split(client, raw, self.split_writes(raw))
            return
        data = b"".join(batch)
        behind = []
        for client in receivers:
            client.write(data)
            if not client.closed and client.writer.transport.get_write_buffer_size() > _BEHIND:
                behind.append(client)
        if behind:  # wait for the slow ones together, each for at most write_timeout
            await asyncio.gather(*(self._drain_or_drop(client) for client in behind))
        await asyncio.sleep(0)  # let the clients (the same loop, in tests) read

    async def _drain_or_drop(self, client: _Client) -> None:
        try:
            await asyncio.wait_for(client.writer.drain(), self.write_timeout)
        except ConnectionError:
            client.close()
        except TimeoutError:
            log.info("simulator.client_dropped", reason="not reading", write_timeout=self.write_timeout)
            self.dropped_slow += 1
            client.abort()

    async def _write_split(self, client: _Client, raw: bytes, cuts: Sequence[int]) -> None:
        # Separate writes with a pause between them, so the pieces arrive in separate TCP reads.
        previous = 0
        for cut in [*sorted(cuts), len(raw)]:
            client.write(raw[previous:cut])
            with contextlib.suppress(ConnectionError):
                await client.writer.drain()
            if cut < len(raw):
                await asyncio.sleep(self.split_pause)
            previous = cut

    def _as_sent(self, raw: bytes) -> bytes | None:
        """The event as this user gets it: None when its class is not readable; no Timestamp if off."""
        if self.read is not None and "all" not in self.read:
            privilege = _PRIVILEGE.search(raw)
            classes = privilege.group(1).decode().split(",") if privilege else []
            if classes and not self.read.intersection(c for c in classes if c != "all"):
                return None
        return raw if self.timestampevents else _TIMESTAMP_LINE.sub(b"", raw)

    def _set_ready(self, ready: bool) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    def now(self) -> float:
        """The PBX's clock, on the trace's time line (what it stamps Ping answers with).

        Once the replay has started it runs at `speed`, whether or not an event is due, as a PBX's
        clock does; it stands still while the replay waits for a login. At speed 0 there is no pace:
        it is the time of the last event sent.
        """
        if self.speed <= 0 or self._origin is None:
            return self._trace_now
        running = self._first + (time.monotonic() - self._origin) * self.speed
        return max(self._trace_now, running)

    # one client

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        self._clients.add(client)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        try:
            client.write(f"Asterisk Call Manager/{self.ami_version}\r\n".encode())
            buffer = b""
            while not client.closed:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
                *frames, buffer = buffer.split(_END)
                for frame in frames:
                    if frame.strip(b"\r\n"):
                        self._answer(client, frame.strip(b"\r\n"))
        except ConnectionError:
            pass
        finally:
            self._clients.discard(client)
            client.close()
            if self.pause_when_alone and self.clients == 0:
                log.info("simulator.paused", reason="no client logged in")
                self._set_ready(False)

    def _answer(self, client: _Client, frame: bytes) -> None:
        self.actions.append(frame)
        if client.stalled:
            return  # half-open: the request vanishes
        headers = _action_headers(frame)
        action = headers.get("action", "").lower()
        action_id = headers.get("actionid", "")
        if action == "login":
            self._on_login(client, headers, action_id)
            return
        if client.logged_in and self.clients >= self.start_clients:
            self._set_ready(True)  # the replay task runs after this answer is written
        if not client.logged_in or action in {name.lower() for name in self.deny_actions}:
            client.write(_response("Error", action_id, "Permission denied"))
        elif action == "logoff":
            client.write(_response("Goodbye", action_id, "Thanks for all the fish."))
            client.close()
        elif action == "ping":
            client.write(_frame([("Response", "Success"), ("ActionID", action_id), ("Ping", "Pong"),
                                 ("Timestamp", f"{self.now():.6f}")]))  # fmt: skip
        elif action == "coreshowchannels":
            self._send_list(client, action_id, "CoreShowChannelsComplete", "Channels will follow",
                            self.state.core_show_channels(action_id, self.now()))  # fmt: skip
        elif action == "bridgelist":
            self._send_list(client, action_id, "BridgeListComplete", "Bridge listing will follow",
                            self.state.bridge_list(action_id))  # fmt: skip
        else:
            self._answer_more(client, frame, headers, action, action_id)

    def _answer_more(self, client: _Client, frame: bytes, headers: dict[str, str], action: str,
                     action_id: str) -> None:  # fmt: skip
        """The actions beyond following calls: settings, endpoints, UserEvent; the rest is unknown."""
        if action == "coresettings":
            client.write(_frame([("Response", "Success"), ("ActionID", action_id),
                                 ("AMIversion", self.ami_version), ("AsteriskVersion", self.asterisk_version),
                                 ("SystemName", ""), ("CoreMaxCalls", "0")]))  # fmt: skip
        elif action == "pjsipshowendpoints" and "PJSIP" in self.endpoints:
            self._send_endpoints(client, action_id, "PJSIP")
        elif action == "sippeers" and "SIP" in self.endpoints:
            self._send_endpoints(client, action_id, "SIP")
        elif action == "userevent":
            self._user_event(client, frame, action_id)
        else:
            name = headers.get("action", "")
            message = f"Invalid/unknown command: {name}. Use Action: ListCommands to show available commands."
            client.write(_response("Error", action_id, message))

    def _on_login(self, client: _Client, headers: dict[str, str], action_id: str) -> None:
        self.login_attempts.append(time.monotonic())
        user_ok = headers.get("username") == self.user
        secret_ok = self.secret is None or headers.get("secret") == self.secret
        if self.refuse_logins or not (user_ok and secret_ok):
            # Asterisk answers and then closes the session.
            client.write(_response("Error", action_id, "Authentication failed"))
            client.close()
            return
        client.write(_response("Success", action_id, "Authentication accepted"))
        if self.read is None or self.read & {"system", "all"}:
            client.write(_frame([("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", "1"),
                                 ("LastReload", "1"), ("Status", "Fully Booted")]))  # fmt: skip
        client.logged_in = True
        # The replay (re)starts once the client has asked its first question after login (its
        # resync, normally), or after a grace period: deterministic tests at any speed.
        if not self._ready.is_set() and self._grace is None and self.clients >= self.start_clients:
            self._grace = asyncio.get_running_loop().call_later(self.ready_grace, self._set_ready, True)
        if self.start_on_login:
            self.start_replay()

    def _user_event(self, client: _Client, frame: bytes, action_id: str) -> None:
        # As manager.c's action_userevent: acknowledge, then send every header but Action and
        # UserEvent (ActionID included) after `UserEvent: <name>` to the sessions that read it.
        headers = [
            (key.strip(), value.strip())
            for key, sep, value in (
                line.partition(":") for line in frame.decode("utf-8", "replace").split("\r\n")
            )
            if sep and key.strip().lower() != "action"
        ]
        self.user_events.append(dict(headers))
        self.user_event_received.set()
        client.write(_response("Success", action_id, "Event Sent"))
        name = next((value for key, value in headers if key.lower() == "userevent"), "")
        body = [(key, value) for key, value in headers if key.lower() != "userevent"]
        event = _frame([("Event", "UserEvent"), ("Privilege", "user,all"), ("UserEvent", name), *body])
        for receiver in self._clients:
            if receiver.logged_in:
                receiver.write(event)

    def _send_list(
        self, client: _Client, action_id: str, complete: str, message: str, items: list[bytes]
    ) -> None:
        client.write(_frame([("Response", "Success"), ("ActionID", action_id), ("EventList", "start"),
                             ("Message", message)]))  # fmt: skip
        for item in items:
            client.write(item)
        client.write(_frame([("Event", complete), ("ActionID", action_id), ("EventList", "Complete"),
                             ("ListItems", str(len(items)))]))  # fmt: skip

    def _send_endpoints(self, client: _Client, action_id: str, driver: str) -> None:
        """`PJSIPShowEndpoints` (res_pjsip/pjsip_configuration.c) or `SIPpeers` (chan_sip.c)."""
        names = self.endpoints[driver]
        if driver == "PJSIP" and not names:
            client.write(_response("Error", action_id, "No endpoints found"))
            return
        if driver == "PJSIP":
            items = [_frame([("Event", "EndpointList"), ("ActionID", action_id), ("ObjectType", "endpoint"),
                             ("ObjectName", name), ("Transport", ""), ("Aor", name), ("Auths", ""),
                             ("OutboundAuths", ""), ("Contacts", ""), ("DeviceState", "Not in use"),
                             ("ActiveChannels", "")]) for name in names]  # fmt: skip
            listing = (
                "EndpointListComplete",
                "A listing of Endpoints follows, presented as EndpointList events",
            )
        else:
            items = [_frame([("Event", "PeerEntry"), ("ActionID", action_id), ("Channeltype", "SIP"),
                             ("ObjectName", name), ("ChanObjectType", "peer"), ("IPaddress", "-none-"),
                             ("IPport", "0"), ("Dynamic", "yes"), ("Status", "Unmonitored")])
                     for name in names]  # fmt: skip
            listing = ("PeerlistComplete", "Peer status list will follow")
        self._send_list(client, action_id, listing[0], listing[1], items)


def trace_endpoints(trace: Trace) -> dict[str, list[str]]:
    """The chan_pjsip and chan_sip endpoints a trace's channels belong to (its PBX's configuration)."""
    found: dict[str, dict[str, None]] = {}
    for event in trace.events:
        name = (event.headers or {}).get("Channel", "") if event.name == "Newchannel" else ""
        driver = name.partition("/")[0]
        if driver in {"PJSIP", "SIP"}:
            found.setdefault(driver, {})[endpoint_name(name)] = None
    return {driver: list(names) for driver, names in found.items()}


def _action_headers(frame: bytes) -> dict[str, str]:
    """Action headers with lower-case keys (AMI action keys are case-insensitive)."""
    headers: dict[str, str] = {}
    for line in frame.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            headers.setdefault(key.strip().lower(), value.strip())
    return headers


def _response(kind: str, action_id: str, message: str) -> bytes:
    return _frame([("Response", kind), ("ActionID", action_id), ("Message", message)])
