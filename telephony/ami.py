"""The AMI link: the only module that touches the network.

Theory of operation
-------------------
`AmiLink.run()` keeps one AMI session alive for as long as it runs: connect, log in, resynchronise,
keep alive, and when the session ends, wait and start again. Everything the PBX says is turned into
items on ONE unbounded queue, in stream order; a consumer elsewhere (`daemon/live.py`) applies them.
The reader never waits for the consumer: Asterisk drops a client that reads slowly (`writetimeout`),
and a stalled database must not cost us the PBX's events. The queue depth is logged when it grows.

Items: `SessionStarted` (logged in), `Received` (an event, with its receive time on the event
clock), `Resync` (the `CoreShowChannels` + `BridgeList` answer after each login, at the place in
the stream where the lists completed, stamped with the time the request was sent as the PBX's
clock tells it: a `Ping`, whose reply Asterisk stamps, is sent just before the lists), `SessionLost`.

Everything that must keep stream order is done synchronously inside `data_received`: the event
callback, the login result (`SessionStarted`) and the completion of the resync lists (`Resync`).
A coroutine resumed by a future would run after the rest of the TCP chunk had been queued.

panoramisk 1.4 is used for its protocol class (`AMIProtocol`, transport handling) and replaced
where its known defects bite; each override says which:

1. it decodes each TCP chunk separately, ignoring errors, so a multibyte character split across two
   reads vanishes: `data_received` frames on bytes with `telephony.framing.FrameReader` and decodes
   whole messages (and drops unwanted noise before decoding: the speed of the pipeline);
2. an exception in an event handler kills the connection, and coroutine handlers run as separate
   tasks (so a Hangup can be applied before its Newchannel): here the one event callback only
   enqueues, never awaits, and nothing it does can raise into the protocol;
3. its ping never checks the reply: here every ping must be answered within `ping_timeout`, or the
   transport is aborted (a half-open link is noticed within ping_interval + ping_timeout);
4. a wrong password is retried every few seconds forever (fail2ban on the PBX bans us): here an
   authentication failure is logged once per attempt and retried after `auth_retry` seconds;
5. `close()` does not cancel a scheduled reconnect: here `close()` ends `run()`, backoff included;
   action futures have no timeout: here every action has one (`ActionTimeout`); values are not
   CR/LF-escaped (header injection): here CR and LF are stripped from every key and value sent.
panoramisk's `Manager` (reconnect, ping, login, dispatch) is therefore not used at all.

Reconnects use capped exponential backoff with jitter (`Backoff`); the wait itself goes through an
injectable `sleep`, the testing switch that removes the waits. The secret is never logged: only the
user name is.

What happens to the link is also reported to a `LinkObserver` (metrics, `watch`'s first-contact
hint): failed attempts by stage, sessions started and ended, each event read with its lag, restarts
of the keepalive. Its methods run synchronously on the loop and must not block. Events dropped by
the framer are only counted, by name, in `dropped_events` (the hot path stays a dict increment).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from panoramisk.ami_protocol import AMIProtocol

from telephony.framing import FrameReader, Malformed, Message
from telephony.stamps import StreamClock, Verdict

log = structlog.get_logger("telephony.ami")

#: list events of the resync actions: always read, whatever the model wants
LIST_EVENTS = frozenset(
    {"CoreShowChannel", "CoreShowChannelsComplete", "BridgeListItem", "BridgeListComplete"}
)
#: session events worth passing on even when the model does not read them
SESSION_EVENTS = frozenset({"FullyBooted", "Shutdown", "Reload"})

Sleep = Callable[[float], Awaitable[None]]


# --- queue items ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionStarted:
    at: float
    version: str | None


@dataclass(frozen=True, slots=True)
class Received:
    message: Message
    received_at: float


@dataclass(frozen=True, slots=True)
class Resync:
    """What exists on the PBX, as listed after a login; `at` is when the lists were requested."""

    at: float
    channels: tuple[Message, ...]
    bridges: tuple[Message, ...]
    lost_at: float | None = None  # last sign of life of the previous session, if there was one


@dataclass(frozen=True, slots=True)
class SessionLost:
    at: float
    reason: str


Item = SessionStarted | Received | Resync | SessionLost


# --- errors ----------------------------------------------------------------------------------------


class AmiError(Exception):
    """Base of the link's errors."""


class ActionTimeout(AmiError):
    pass


class ActionRefused(AmiError):
    """The PBX answered `Response: Error` (e.g. `Permission denied`)."""


class AuthenticationFailed(AmiError):
    pass


class ConnectionLost(AmiError):
    pass


class NotConnected(AmiError):
    pass


# --- small parts -----------------------------------------------------------------------------------


class LinkObserver:
    """What the link reports as it goes; every method does nothing here (override what you need).

    `attempt_failed` stages: `connect` (TCP), `not_ami` (connected, but no AMI banner and no answer
    to the login: another service on that port), `login` (the PBX refused user or secret),
    `handshake` (the login got no complete answer).
    """

    def attempt_failed(self, stage: str, reason: str) -> None:
        """An attempt to get a session failed at `stage`; the link will try again."""

    def session_started(self) -> None:
        """Logged in."""

    def session_ended(self, reason: str) -> None:
        """A logged-in session ended."""

    def event_received(self, name: str, lag: float | None) -> None:
        """An event was read; `lag` is the local time minus its Timestamp (None without one)."""

    def task_restarted(self, task: str) -> None:
        """A helper task of the link died and was started afresh."""


@dataclass(frozen=True)
class LinkConfig:
    host: str
    port: int
    user: str
    secret: str
    action_timeout: float = 5.0
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    auth_retry: float = 60.0

    def __repr__(self) -> str:  # the dataclass repr would show the secret
        return f"LinkConfig(host={self.host!r}, port={self.port}, user={self.user!r}, secret='**********')"

    @classmethod
    def from_settings(cls, settings: Any) -> LinkConfig:
        """From `daemon.settings.Settings` (duck-typed: telephony does not import daemon)."""
        return LinkConfig(
            host=settings.ami_host,
            port=settings.ami_port,
            user=settings.ami_user,
            secret=settings.ami_password(),
            action_timeout=settings.ami_action_timeout,
            ping_interval=settings.ami_ping_interval,
            ping_timeout=settings.ami_ping_timeout,
            reconnect_min=settings.ami_reconnect_min,
            reconnect_max=settings.ami_reconnect_max,
            auth_retry=settings.ami_auth_retry,
        )


class Backoff:
    """Capped exponential backoff with "equal jitter": the n-th delay is in [c/2, c], c = min(max, min*2^n).

    Half the delay is fixed so that even an unlucky draw never makes a tight loop; the other half is
    random so that many daemons do not reconnect in step after a PBX restart.
    """

    def __init__(self, minimum: float, maximum: float, *, rng: Callable[[], float] = random.random) -> None:
        self.minimum, self.maximum = minimum, maximum
        self._rng = rng
        self._attempt = 0

    def next(self) -> float:
        ceiling: float = min(self.maximum, self.minimum * 2.0 ** min(self._attempt, 62))
        self._attempt += 1
        return ceiling / 2 + self._rng() * ceiling / 2

    def reset(self) -> None:
        self._attempt = 0


class EventClock:
    """The PBX's "now": the last `Timestamp` believed plus the time elapsed since it arrived.

    With `timestampevents = yes` this follows the PBX (and a replay at any speed); without
    timestamps it is the local wall clock. Every stamp is judged first (telephony.stamps): one
    that is not believed never moves this clock.
    """

    def __init__(
        self, monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._monotonic = monotonic
        self._offset = wall() - monotonic()
        self._stream = StreamClock()

    def judge(self, raw: str) -> Verdict:
        """Judge a `Timestamp` value; a believed one sets the clock. `at` is never None here."""
        received = self._monotonic()
        verdict = self._stream.judge(raw, received)
        if verdict.believed:
            assert verdict.at is not None
            self._offset = verdict.at - received
            return verdict
        return Verdict(self.now(), verdict.reason)

    def new_session(self) -> None:
        """A (re)login: the PBX's next plausible stamp anchors the clock (it may have changed)."""
        self._stream.restart()

    def now(self) -> float:
        return self._monotonic() + self._offset


def clean(value: object) -> str:
    """An action value with CR and LF removed: a value can never start a header of its own."""
    return str(value).replace("\r", "").replace("\n", "")


def format_action(action: Mapping[str, object]) -> bytes:
    """Serialise an action, `Action` first, every key and value cleaned of CR/LF."""
    ordered = sorted(action.items(), key=lambda item: item[0].lower() != "action")
    lines = "".join(f"{clean(key)}: {clean(value)}\r\n" for key, value in ordered)
    return (lines + "\r\n").encode("utf-8")


_action_ids = itertools.count(1)


# --- the protocol ----------------------------------------------------------------------------------


Result = Message | tuple[Message, ...]


class _Pending:
    """An action waiting for its answer; list actions collect their items until `...Complete`."""

    def __init__(self, name: str, is_list: bool, on_done: Callable[[Result], None] | None) -> None:
        self.name = name
        self.is_list = is_list
        self.on_done = on_done
        self.items: list[Message] = []
        self.future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

    def add(self, message: Message) -> bool:
        """Take one message with our ActionID; True when the action is complete."""
        if message.response is not None:
            if message.response == "Error" or not self.is_list:
                self._finish(message)
                return True
            return False  # `Response: Success` + `EventList: start`: items follow
        if (message.event or "").endswith("Complete") or message.get("EventList") == "Complete":
            self._finish(tuple(self.items))
            return True
        self.items.append(message)
        return False

    def _finish(self, result: Result) -> None:
        if isinstance(result, Message) and result.response == "Error" and self.is_list:
            self._set_exception(ActionRefused(f"{self.name}: {result.get('Message')}"))
            return
        if self.on_done is not None:
            self.on_done(result)  # synchronous: runs at this point of the stream
        if not self.future.done():
            self.future.set_result(result)

    def _set_exception(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # mark retrieved: the waiter may already have timed out


class AmiProtocol(AMIProtocol):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's protocol with its reader, dispatch and writer replaced (defects 1, 2, 5)."""

    def __init__(self, link: AmiLink) -> None:
        super().__init__()
        self._link = link
        self._frames = FrameReader(link.wanted, link.dropped_events)
        self.pending: dict[str, _Pending] = {}
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.lost_reason = "closed by the PBX"
        self.version: str | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.version = None

    def data_received(self, data: bytes) -> None:
        # Defect 1: frame on bytes, decode whole messages. Defect 2: nothing raises out of here.
        try:
            messages = self._frames.feed(data)
        except Exception:
            log.exception("ami.framing_failed")
            return
        for message in messages:
            try:
                self._dispatch(message)
            except Exception:
                log.exception("ami.dispatch_failed")

    def _dispatch(self, message: Message | Malformed) -> None:
        if isinstance(message, Malformed):
            self._link._on_malformed(message)
            return
        if message.banner is not None:
            self.version = message.banner.partition("/")[2] or None
        action_id = message.headers.get("ActionID", "")
        pending = self.pending.get(action_id)
        if pending is not None:
            if pending.add(message):
                del self.pending[action_id]
            return
        if message.event is not None:
            self._link._on_event(message)

    def request(
        self, action: Mapping[str, object], *, is_list: bool = False,
        on_done: Callable[[Result], None] | None = None,
    ) -> _Pending:  # fmt: skip
        """Send an action (CR/LF stripped) and register what waits for its answer."""
        action_id = f"talkmeter-{next(_action_ids)}"
        pending = _Pending(str(action.get("Action", "?")), is_list, on_done)
        self.pending[action_id] = pending
        self.transport.write(format_action({**action, "ActionID": action_id}))
        return pending

    def forget(self, pending: _Pending) -> None:
        for key, value in list(self.pending.items()):
            if value is pending:
                del self.pending[key]

    def abort(self, reason: str) -> None:
        """Drop the connection now (no FIN handshake to wait for: the peer may be gone)."""
        if not self.closed:
            self.lost_reason = reason  # the first reason is the true one
            self.closed = True
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        # Not panoramisk's: it would call Manager.connection_lost and schedule its own reconnect.
        self.closed = True
        for pending in self.pending.values():
            pending._set_exception(ConnectionLost(self.lost_reason))
        self.pending.clear()
        if not self.lost.done():
            self.lost.set_result(self.lost_reason if exc is None else f"{self.lost_reason}: {exc}")
        self._link._on_connection_lost(self)


# --- the link --------------------------------------------------------------------------------------


class AmiLink:
    """A self-healing AMI session feeding `queue`. Run `run()` as a task; `close()` ends it."""

    def __init__(
        self,
        config: LinkConfig,
        *,
        wanted: Iterable[str] | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: EventClock | None = None,
        rng: Callable[[], float] = random.random,
        observer: LinkObserver | None = None,
    ) -> None:
        self.config = config
        self.observer = observer or LinkObserver()
        #: events dropped undecoded, by name, over every session
        self.dropped_events: dict[bytes, int] = {}
        self.wanted = None if wanted is None else frozenset(wanted) | LIST_EVENTS | SESSION_EVENTS
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.clock = clock or EventClock()
        self.sessions = 0
        self.malformed = 0
        self._sleep = sleep
        self._backoff = Backoff(config.reconnect_min, config.reconnect_max, rng=rng)
        self._stopping = asyncio.Event()
        self._protocol: AmiProtocol | None = None
        self._logged_in = False
        self._next_depth_report = 10_000
        self._last_alive: float | None = None  # clock time of the last event or ping reply
        self._replaced_stamps = 0  # Timestamps not believed in this session
        self._lost_at: float | None = None  # _last_alive when the previous session ended

    # public

    @property
    def queue_depth(self) -> int:
        return self.queue.qsize()

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._logged_in and not self._protocol.closed

    def close(self) -> None:
        """Stop: log off if connected, cancel any pending reconnect; `run()` returns soon after."""
        self._stopping.set()

    async def send_action(self, action: Mapping[str, object], *, within: float | None = None) -> Message:
        """Send one action on the current session and return its response (any `Response:`)."""
        if self._protocol is None or not self.connected:
            raise NotConnected("no AMI session")
        result = await self._request(self._protocol, action, within=within)
        assert isinstance(result, Message)
        return result

    async def send_list(
        self, action: Mapping[str, object], *, within: float | None = None
    ) -> tuple[Message, ...]:
        """Send one list action (`CoreShowChannels`, `PJSIPShowEndpoints`...) and return its items.

        Raises `ActionRefused` when the PBX answers with an error (`Permission denied`, an unknown
        command when the module is not loaded).
        """
        if self._protocol is None or not self.connected:
            raise NotConnected("no AMI session")
        result = await self._request(self._protocol, action, is_list=True, within=within)
        assert isinstance(result, tuple)
        return result

    async def ping(self) -> Message:
        """A round trip: when it returns, everything the PBX sent before the reply is on the queue."""
        return await self.send_action({"Action": "Ping"}, within=self.config.ping_timeout)

    async def run(self) -> None:
        """Keep a session up until `close()`. Never raises for network or login trouble."""
        try:
            while not self._stopping.is_set():
                delay = await self._session()
                if self._stopping.is_set():
                    break
                log.info("ami.reconnect_in", seconds=round(delay, 3))
                await self._pause(delay)
        finally:
            if self._protocol is not None:
                self._protocol.abort("link closed")
            log.info("ami.link_closed")

    # one session

    async def _session(self) -> float:
        """Connect, log in and serve one session; return how long to wait before the next one."""
        config = self.config
        log.info("ami.connecting", host=config.host, port=config.port, user=config.user)
        try:
            protocol = await self._connect()
        except (OSError, TimeoutError) as error:
            reason = str(error) or "timeout"
            log.warning("ami.connect_failed", host=config.host, port=config.port, error=reason)
            self.observer.attempt_failed("connect", reason)
            return self._backoff.next()
        self._protocol = protocol
        self.clock.new_session()
        self._replaced_stamps = 0
        try:
            await self._login(protocol)
        except AuthenticationFailed as error:
            log.error("ami.login_failed", user=config.user, reason=str(error), retry_in=config.auth_retry,
                      hint="check ami_user / the AMI secret and the manager.conf permit line")  # fmt: skip
            protocol.abort("login refused")
            self.observer.attempt_failed("login", str(error))
            return config.auth_retry
        except AmiError as error:
            reason = str(error) or type(error).__name__
            log.warning("ami.login_incomplete", user=config.user, error=reason)
            protocol.abort("login incomplete")
            self.observer.attempt_failed("handshake" if protocol.version is not None else "not_ami", reason)
            return self._backoff.next()
        return await self._serve(protocol)

    async def _connect(self) -> AmiProtocol:
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(lambda: AmiProtocol(self), self.config.host, self.config.port)
        async with asyncio.timeout(self.config.action_timeout):  # not wait_for: see `_wait`
            _transport, protocol = await connecting
        return protocol

    async def _login(self, protocol: AmiProtocol) -> None:
        def started(reply: Result) -> None:
            # At the login reply's place in the stream, before any event that follows it.
            if isinstance(reply, Message) and reply.response == "Success":
                self._logged_in = True
                self.sessions += 1
                self._enqueue(SessionStarted(self.clock.now(), protocol.version))
                self.observer.session_started()

        config = self.config
        login = {"Action": "Login", "Username": config.user, "Secret": config.secret, "Events": "on"}
        reply = await self._request(protocol, login, on_done=started)
        if not isinstance(reply, Message) or reply.response != "Success":
            message = reply.get("Message") if isinstance(reply, Message) else "no reply"
            raise AuthenticationFailed(message or "login refused")

    async def _serve(self, protocol: AmiProtocol) -> float:
        started = time.monotonic()
        log.info("ami.session_started", user=self.config.user, version=protocol.version,
                 session=self.sessions)  # fmt: skip
        resync = asyncio.create_task(self._resync(protocol), name="ami-resync")
        keepalive = asyncio.create_task(self._keepalive(protocol), name="ami-keepalive")
        helpers = [resync, keepalive]
        stopping = asyncio.create_task(self._stopping.wait(), name="ami-stop-wait")
        lost: asyncio.Future[Any] = protocol.lost
        try:
            # The keepalive is watched too: a session whose pings stopped would never notice a
            # half-open link, so if it dies of a bug the session is dropped and started afresh.
            await asyncio.wait({lost, stopping, keepalive}, return_when=asyncio.FIRST_COMPLETED)
            if keepalive.done() and not keepalive.cancelled() and keepalive.exception() is not None:
                log.error("ami.keepalive_failed", error=repr(keepalive.exception()))
                protocol.abort("keepalive failed")
                self.observer.task_restarted("ami-keepalive")
            if self._stopping.is_set() and not protocol.closed:
                await self._logoff(protocol)
        finally:
            for task in [*helpers, stopping]:
                task.cancel()
            # Bounded: nothing may keep a session (and the service above it) from ending.
            ended, stuck = await asyncio.wait([*helpers, stopping], timeout=self.config.action_timeout)
            for task in ended:  # the keepalive's failure is logged above
                if task is not keepalive and not task.cancelled() and task.exception() is not None:
                    log.error("ami.task_failed", task=task.get_name(), error=repr(task.exception()))
            if stuck:
                log.error("ami.task_stuck", tasks=sorted(task.get_name() for task in stuck))
            protocol.abort("link closed")
        if time.monotonic() - started >= self.config.reconnect_max:
            self._backoff.reset()  # a session that lived long is not a flapping one
        return self._backoff.next()

    async def _logoff(self, protocol: AmiProtocol) -> None:
        protocol.lost_reason = "logged off"
        with contextlib.suppress(AmiError):
            await self._request(protocol, {"Action": "Logoff"}, within=min(1.0, self.config.action_timeout))

    async def _keepalive(self, protocol: AmiProtocol) -> None:
        # Defect 3: the reply is awaited; no reply within ping_timeout means the link is dead.
        config = self.config
        while not protocol.closed:
            await asyncio.sleep(config.ping_interval)
            try:
                reply = await self._request(protocol, {"Action": "Ping"}, within=config.ping_timeout)
            except ActionTimeout:
                log.warning("ami.ping_timeout", waited=config.ping_timeout, queue_depth=self.queue_depth)
                protocol.abort("no answer to ping (half-open link?)")
                return
            except ConnectionLost:
                return
            if isinstance(reply, Message) and "Timestamp" in reply.headers:
                self._judge(reply)  # Asterisk stamps its Ping reply
            self._last_alive = self.clock.now()
            if self.queue_depth >= 1000:
                log.warning("ami.queue_backlog", queue_depth=self.queue_depth)

    async def _resync(self, protocol: AmiProtocol) -> None:
        """CoreShowChannels + BridgeList; one `Resync` item where the second list completes.

        A Ping goes first: Asterisk stamps its reply with its own clock, so the snapshot's time is
        the PBX's even before any event has been seen (a replay's clock can be days behind ours).
        """
        sent_at = self.clock.now()
        pbx_at: list[float] = []
        lists: dict[str, tuple[Message, ...]] = {}

        def pinged(reply: Result) -> None:
            if isinstance(reply, Message) and "Timestamp" in reply.headers:
                verdict = self._judge(reply)
                if verdict.believed and verdict.at is not None:
                    pbx_at.append(verdict.at)

        def collected(kind: str) -> Callable[[Result], None]:
            def done(result: Result) -> None:
                lists[kind] = result if isinstance(result, tuple) else ()
                if len(lists) == 2:
                    at = pbx_at[0] if pbx_at else sent_at
                    self._enqueue(Resync(at, lists["channels"], lists["bridges"], self._lost_at))

            return done

        # All sent at once, so the PBX answers them back to back, as close to one moment as it can.
        # BridgeList goes before CoreShowChannels: Asterisk may send live events between two
        # answers, and those must not be overridden by an older channel list. With the channels
        # last, the snapshot is applied exactly where the channel list ends; the bridge list only
        # adds what kind each bridge is (holding or not), which does not go stale.
        request = protocol.request
        request({"Action": "Ping"}, on_done=pinged)
        bridges = request({"Action": "BridgeList"}, is_list=True, on_done=collected("bridges"))
        channels = request({"Action": "CoreShowChannels"}, is_list=True, on_done=collected("channels"))
        try:
            await self._wait(protocol, bridges, self.config.action_timeout)
            await self._wait(protocol, channels, self.config.action_timeout)
        except ActionRefused as error:
            hint = "the AMI user needs write = system,reporting; continuing without a snapshot"
            log.error("ami.resync_refused", error=str(error), hint=hint)
        except ActionTimeout as error:
            log.warning("ami.resync_timeout", error=str(error))
        except ConnectionLost:
            return
        else:
            log.info("ami.resync_done", channels=len(lists["channels"]), bridges=len(lists["bridges"]))

    async def _request(
        self, protocol: AmiProtocol, action: Mapping[str, object], *, is_list: bool = False,
        on_done: Callable[[Result], None] | None = None, within: float | None = None,
    ) -> Result:  # fmt: skip
        """Defect 5: every action has a timeout."""
        if protocol.closed:
            raise ConnectionLost(protocol.lost_reason)
        pending = protocol.request(action, is_list=is_list, on_done=on_done)
        return await self._wait(protocol, pending, self.config.action_timeout if within is None else within)

    async def _wait(self, protocol: AmiProtocol, pending: _Pending, limit: float) -> Result:
        # Not `wait_for`: in Python 3.11 it returns the result instead of raising when the cancel and
        # the answer arrive in the same loop iteration, and a keepalive that swallowed its cancel
        # pinged on for ever while the session waited for it (the service hang). `asyncio.wait`
        # always lets a cancel through, and never cancels the future other callbacks share.
        done, _ = await asyncio.wait({pending.future}, timeout=limit)
        if not done:
            protocol.forget(pending)
            raise ActionTimeout(f"{pending.name}: no answer in {limit:g} s")
        return pending.future.result()

    async def _pause(self, delay: float) -> None:
        # Defect 5: close() interrupts the wait before a reconnect.
        sleeper = asyncio.ensure_future(self._sleep(delay))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({sleeper, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopping.cancel()
            await asyncio.gather(sleeper, stopping, return_exceptions=True)

    # callbacks from the protocol: synchronous, never raise

    def _on_event(self, message: Message) -> None:
        """The one event callback (defect 2): judge the stamp, note the time, enqueue. Nothing else."""
        if "Timestamp" in message.headers:
            verdict = self._judge(message)
            if not verdict.believed and verdict.at is not None:
                message = message.restamped(verdict.at)
        now = self._last_alive = self.clock.now()
        self._enqueue(Received(message, now))
        stamp = message.timestamp  # as believed, or as replaced
        self.observer.event_received(message.event or "", None if stamp is None else time.time() - stamp)

    def _judge(self, message: Message) -> Verdict:
        """Judge a message's `Timestamp` (telephony.stamps); the first one replaced in a session is
        logged, with how many there were when the session ends."""
        verdict = self.clock.judge(message.headers["Timestamp"])
        if not verdict.believed:
            self._replaced_stamps += 1
            if self._replaced_stamps == 1:
                log.warning("ami.timestamp_replaced", message=message.event or message.response,
                            reason=verdict.reason, used=verdict.at, hint="others are counted")  # fmt: skip
        return verdict

    def _on_malformed(self, frame: Malformed) -> None:
        self.malformed += 1
        if self.malformed <= 10 or self.malformed % 1000 == 0:
            log.warning("ami.malformed_frame", reason=frame.reason, raw=frame.raw[:80], count=self.malformed)

    def _on_connection_lost(self, protocol: AmiProtocol) -> None:
        if protocol is self._protocol and self._logged_in:
            self._logged_in = False
            self._lost_at = self._last_alive
            reason = protocol.lost_reason
            self._enqueue(SessionLost(self.clock.now(), reason))
            self.observer.session_ended(reason)
            level = log.info if self._stopping.is_set() else log.warning
            level("ami.session_lost", reason=reason, queue_depth=self.queue_depth)
            if self._replaced_stamps > 1:
                log.warning("ami.timestamps_replaced", count=self._replaced_stamps)

    def _enqueue(self, item: Item) -> None:
        self.queue.put_nowait(item)
        depth = self.queue.qsize()
        if depth >= self._next_depth_report:
            log.warning("ami.queue_backlog", queue_depth=depth)
            self._next_depth_report *= 2
        elif depth < 100:
            self._next_depth_report = 10_000
