"""`talkmeter check`: is this PBX set up for a correct measurement? One line per check, with what to do.

Live (`talkmeter check [--host H] [--port P] [--user U] [--config FILE] [--listen SECONDS]`) it logs
in with the configured settings, asks what it needs to know (CoreShowChannels, BridgeList,
CoreSettings, PJSIPShowEndpoints, SIPpeers) and listens to the events for up to `--listen` seconds,
less once it has seen a whole call begin and end. Offline (`--trace FILE.ami`) it reads a capture
instead; what only a live PBX can answer (whether actions are permitted) is then not checked.

Exit code 0 only when every check a correct measurement needs has passed; 1 when one failed or
could not be made (no call happened while listening, say); 2 for a configuration error.

What each check reads (main/manager.c unless said otherwise):
* login: the answer to `Login`;
* version: the banner, `Asterisk Call Manager/<AMI_VERSION>` (1.x is Asterisk 11 or older, whose
  events talkmeter does not read), and `CoreSettings` when permitted;
* `read` includes `system`: Asterisk sends `FullyBooted` right after login only then
  (`action_login`); talkmeter needs `Shutdown`, of that class;
* `read` includes `call`: a call event arrives (a call must happen while listening);
* timestamps: an event carries `Timestamp`. The answer to Ping always does (`action_ping`) and
  `FullyBooted` never does, so only other events can tell;
* `CoreShowChannels` needs `write = system` or `reporting`, `BridgeList` none;
* roles: every channel and endpoint seen, with the role the configured patterns give it, and
  patterns to use when nothing would be a client or a consultant (telephony.census).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.logging import configure_logging
from daemon.settings import ConfigError, Settings, load_settings
from telephony.ami import (
    LIST_EVENTS,
    ActionRefused,
    ActionTimeout,
    AmiError,
    AmiLink,
    LinkConfig,
    LinkObserver,
    Received,
    Resync,
    SessionLost,
    SessionStarted,
)
from telephony.calls import WANTED_EVENTS, CallTracker, Snapshot
from telephony.capture import read_capture, timing_beside
from telephony.census import Census, Group
from telephony.effects import ConversationEnded, Effect
from telephony.framing import Message
from telephony.roles import Role

OK, FAIL, UNKNOWN, SKIPPED, INFO = "ok", "FAIL", "?", "-", "info"
#: statuses that keep the exit code at 0
PASSING = frozenset({OK, SKIPPED, INFO})
LISTS = ("CoreShowChannels", "BridgeList", "PJSIPShowEndpoints", "SIPpeers")
_LIST_ITEMS = {"CoreShowChannel", "EndpointList", "PeerEntry"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="is your PBX set up for talkmeter? one line per check, with what to do",
        description="Logs in to the PBX with the configured settings and checks what a correct measurement "
        "needs: login, version, read classes, timestampevents, the channel and bridge lists, and which "
        "channels and endpoints would be clients or consultants. Make a test call while it listens. "
        "Exit code 0 only when every check passed. With --trace, the same on a recorded capture.",
    )
    parser.add_argument("--host", help="AMI host (default from configuration: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="AMI port (default 5038)")
    parser.add_argument("--user", help="AMI user (manager.conf section)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--listen",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for calls (default 10)",
    )
    parser.add_argument("--trace", type=Path, help="check a recorded capture (.ami) instead of the PBX")
    parser.add_argument("--timing", type=Path, help="receive-time sidecar of --trace (default: TRACE.timing)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, ami_host=args.host, ami_port=args.port, ami_user=args.user)
    if args.listen < 0:
        raise ConfigError("--listen must be 0 or more seconds")
    if args.trace is not None:
        observations = observe_capture(args.trace, settings, args.timing)
    else:
        settings.ami_password()  # no secret: a configuration error, before connecting
        configure_logging("error")  # the report is the output; the link's own logs would repeat it
        observations = asyncio.run(observe_pbx(settings, args.listen))
    results = evaluate(observations, settings)
    print(render(observations, results))
    return exit_code(results)


# --- what was seen ----------------------------------------------------------------------------------


@dataclass
class Observations:
    """Everything the checks judge, from a live session or a capture."""

    where: str
    live: bool
    census: Census
    tracker: CallTracker
    login: str | None = None  # "ok", or why not; None: unknown (a capture without its login)
    ami_version: str | None = None
    asterisk_version: str | None = None
    fully_booted: bool = False
    stamped: int = 0  # events with a Timestamp (FullyBooted excluded: it never has one)
    unstamped: int = 0
    call_events: int = 0
    listened: float = 0.0
    listed_channels: int = 0
    answers: dict[str, str] = field(default_factory=dict)  # list action -> "ok" or why not
    conversations: list[dict[str, Any]] = field(default_factory=list)  # measured while checking
    _created: set[str] = field(default_factory=set)
    _hung_up: set[str] = field(default_factory=set)
    first_at: float | None = None  # time of the first call event
    last_at: float | None = None

    def see(self, message: Message, received_at: float) -> None:
        """One event from the stream (not an answer to our own actions)."""
        name = message.event or ""
        if name == "FullyBooted":
            self.fully_booted = True
            return
        if name in LIST_EVENTS:
            return
        if message.timestamp is None:
            self.unstamped += 1
        else:
            self.stamped += 1
        if name in WANTED_EVENTS:
            self.call_events += 1
            self.last_at = message.timestamp or received_at
            self.first_at = self.last_at if self.first_at is None else self.first_at
        if name == "Newchannel":
            self._created.add(message.get("Uniqueid"))
        elif name == "Hangup":
            self._hung_up.add(message.get("Uniqueid"))
        self.census.feed(message)
        self._effects(self.tracker.feed(message, received_at))

    def listed(self, item: Message) -> None:
        """An item of one of our lists (a channel in progress, an endpoint)."""
        if item.event == "CoreShowChannel":
            self.listed_channels += 1
        self.census.feed(item)

    @property
    def span(self) -> float:
        """Seconds from the first call event to the last."""
        return 0.0 if self.first_at is None or self.last_at is None else self.last_at - self.first_at

    @property
    def whole_call_seen(self) -> bool:
        """A call began and every channel that began has ended: enough to judge by."""
        return bool(self._created) and self._created <= self._hung_up

    def finish(self) -> None:
        self._effects(self.tracker.close_all())

    def _effects(self, effects: list[Effect]) -> None:
        self.conversations += [e.conversation.to_json() for e in effects if isinstance(e, ConversationEnded)]


def _new_observations(where: str, live: bool, settings: Settings) -> Observations:
    tracker = settings.call_tracker()
    return Observations(where, live, Census(tracker.roles, settings.default_region), tracker)


async def observe_pbx(settings: Settings, listen: float) -> Observations:
    """Log in, ask, listen; never retries a failed login (one attempt, reported)."""
    config = LinkConfig.from_settings(settings)
    observations = _new_observations(f"{config.host}:{config.port} as {config.user}", True, settings)
    attempt = _FirstAttempt(config)

    async def no_retry(_delay: float) -> None:  # the link's wait before its next attempt
        await asyncio.Event().wait()  # until the link is closed: check tries once

    # Every event is wanted (wanted=None): any of them can show a Timestamp.
    link = AmiLink(config, sleep=no_retry, observer=attempt)
    running = asyncio.create_task(link.run(), name="check-link")
    try:
        started = await _session(link, attempt.failed, 2 * config.action_timeout + 1.0)
        if started is None:
            observations.login = attempt.reason or "no answer to the login"
            return observations
        observations.login = "ok"
        observations.ami_version = started.version
        await _ask(link, observations)
        await _listen(link, observations, listen)
    finally:
        link.close()
        await running
    observations.finish()
    return observations


class _FirstAttempt(LinkObserver):
    """Why the one attempt to get a session failed, in the words `_login` reads."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.failed = asyncio.Event()
        self.reason: str | None = None

    def attempt_failed(self, stage: str, reason: str) -> None:
        where = f"{self.config.host}:{self.config.port}"
        self.reason = {
            "connect": f"cannot connect to {where}: {reason}",
            "not_ami": f"something answers on {where}, but not Asterisk's AMI ({reason})",
            "login": f"login refused: {reason}",
        }.get(stage, f"login got no complete answer: {reason}")
        self.failed.set()


async def _session(link: AmiLink, failed: asyncio.Event, limit: float) -> SessionStarted | None:
    getting = asyncio.ensure_future(link.queue.get())
    failing = asyncio.ensure_future(failed.wait())
    try:
        async with asyncio.timeout(limit):
            while True:
                await asyncio.wait({getting, failing}, return_when=asyncio.FIRST_COMPLETED)
                if getting.done():
                    item = getting.result()
                    if isinstance(item, SessionStarted):
                        return item
                    getting = asyncio.ensure_future(link.queue.get())
                elif failing.done():
                    return None
    except TimeoutError:
        return None
    finally:
        getting.cancel()
        failing.cancel()


async def _ask(link: AmiLink, observations: Observations) -> None:
    for action in LISTS:
        try:
            items = await link.send_list({"Action": action})
        except ActionRefused as refused:
            observations.answers[action] = str(refused).partition(": ")[2] or str(refused)
            continue
        except ActionTimeout:
            observations.answers[action] = f"no answer within {link.config.action_timeout:g} s"
            continue
        except AmiError as error:  # the session ended under us
            observations.answers[action] = f"no answer ({error or type(error).__name__})"
            continue
        observations.answers[action] = "ok"
        for item in items:
            observations.listed(item)
    try:
        settings = await link.send_action({"Action": "CoreSettings"})
    except AmiError:
        return
    if settings.response == "Success":
        observations.asterisk_version = settings.get("AsteriskVersion") or None


async def _listen(link: AmiLink, observations: Observations, listen: float) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + listen
    while not observations.whole_call_seen:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            item = await asyncio.wait_for(link.queue.get(), left)
        except TimeoutError:
            break
        if isinstance(item, Received):
            observations.see(item.message, item.received_at)
        elif isinstance(item, Resync):
            snapshot = Snapshot(item.at, list(item.channels), list(item.bridges), item.lost_at)
            observations._effects(observations.tracker.resync(snapshot))
        elif isinstance(item, SessionLost):
            break
    observations.listened = loop.time() - started


def observe_capture(path: Path, settings: Settings, timing_path: Path | None = None) -> Observations:
    """The same observations from a recorded capture (bytes as Asterisk sent them)."""
    if not path.is_file():
        raise ConfigError(f"no such capture: {path}")
    try:
        timing = timing_beside(path, timing_path)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    observations = _new_observations(f"capture {path.name}", False, settings)
    for message, received_at in read_capture(path.read_bytes(), timing):
        if not isinstance(message, Message):
            continue
        if message.banner is not None:
            observations.ami_version = message.banner.partition("/")[2] or None
        if message.response is not None and message.event is None:
            if "Authentication" in message.get("Message"):
                accepted = message.response == "Success"
                observations.login = "ok" if accepted else f"login refused: {message.get('Message')}"
            continue
        if message.event in _LIST_ITEMS:
            observations.listed(message)
        elif message.event is not None:
            observations.see(message, received_at)
    observations.listened = observations.span
    observations.finish()
    return observations


# --- what it means --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    status: str
    check: str
    text: str
    details: tuple[str, ...] = ()


def evaluate(observations: Observations, settings: Settings) -> list[Result]:
    results = [_login(observations, settings)]
    if observations.login not in (None, "ok"):
        return results  # nothing else can be known
    results += [
        _version(observations),
        _system_class(observations, settings),
        _call_events(observations, settings),
        _timestamps(observations),
        _core_show_channels(observations, settings),
        _bridge_list(observations),
        _endpoints(observations),
        _roles(observations, settings),
        _measured(observations),
    ]
    return results


def _login(o: Observations, settings: Settings) -> Result:
    if o.login == "ok":
        return Result(
            OK, "login", f"logged in to {o.where}" if o.live else "the capture has an accepted login"
        )
    if o.login is None:
        return Result(SKIPPED, "login", "the capture holds no login answer")
    if o.login.startswith(("cannot connect", "something answers")):
        fix = (
            "Check ami_host and ami_port, that manager.conf has enabled = yes on that port and bindaddr, "
            "and that no firewall is in the way."
        )
    else:
        fix = (
            "Check ami_user and the secret (TALKMETER_AMI_SECRET or ami_secret_file) against "
            f"[{settings.ami_user}] in manager.conf, and that its permit= line allows this machine."
        )
    return Result(FAIL, "login", f"{o.login}. {fix}")


def _version(o: Observations) -> Result:
    if o.ami_version is None:
        return Result(SKIPPED, "version", "no AMI banner seen")
    if o.ami_version.split(".", maxsplit=1)[0] in {"0", "1"}:
        text = (
            f"AMI {o.ami_version} is Asterisk 11 or older, whose events (Dial with SubEvent, Bridge, Link) "
            "talkmeter does not read: it needs Asterisk 12 or later (13 to 22 are tested)."
        )
        return Result(FAIL, "version", text)
    asterisk = o.asterisk_version or asterisk_of_ami(o.ami_version)
    return Result(OK, "version", f"Asterisk {asterisk}, AMI {o.ami_version}")


def asterisk_of_ami(ami_version: str) -> str:
    """The Asterisk major version behind an AMI version: AMI 2 is Asterisk 12 or 13, AMI n >= 3 is
    Asterisk n + 11 (AMI_VERSION in include/asterisk/manager.h of every branch, 12 to 23)."""
    major = ami_version.split(".", maxsplit=1)[0]
    if not major.isdigit():
        return "12 or later"
    return "12 or 13" if int(major) == 2 else str(int(major) + 11)


def _system_class(o: Observations, settings: Settings) -> Result:
    if o.fully_booted:
        return Result(OK, "read system", "FullyBooted arrived after login: read includes system")
    if not o.live and o.login is None:
        return Result(SKIPPED, "read system", "the capture starts after the login: no FullyBooted to see")
    text = (
        f"no FullyBooted after login: add system to read= in [{settings.ami_user}] of manager.conf "
        "(talkmeter needs Shutdown, of that class, to close the calls of an Asterisk that stops)."
    )
    return Result(FAIL, "read system", text)


def _call_events(o: Observations, settings: Settings) -> Result:
    if o.call_events:
        return Result(OK, "read call", f"{o.call_events} call events in {o.listened:.0f} s")
    if not o.live:
        text = "the capture holds no call event: record it with read = call (or wider) while calls happen."
        return Result(FAIL, "read call", text)
    if o.listed_channels:
        text = (
            f"{o.listed_channels} channels are up but no call event arrived in {o.listened:.0f} s: add call "
            f"to read= in [{settings.ami_user}] of manager.conf, and if it has eventfilter lines, let the "
            "events listed in the README through."
        )
        return Result(FAIL, "read call", text)
    text = (
        f"no call happened in {o.listened:.0f} s, so call events could not be checked: run talkmeter "
        "check again while you make a test call (give it longer with --listen 60)."
    )
    return Result(UNKNOWN, "read call", text)


def _timestamps(o: Observations) -> Result:
    if o.stamped and not o.unstamped:
        return Result(OK, "timestamps", "events carry Timestamp (timestampevents = yes)")
    if o.unstamped:
        share = "" if not o.stamped else f" ({o.unstamped} of {o.unstamped + o.stamped})"
        text = (
            f"events carry no Timestamp{share}, so talk would be timed by when events arrive (late after "
            "bursts and reconnects): set timestampevents = yes in [general] of manager.conf, then run "
            "`manager reload` on the Asterisk CLI."
        )
        return Result(FAIL, "timestamps", text)
    text = (
        "no event arrived to tell (the Ping answer always carries a Timestamp and FullyBooted never "
        "does): make a test call while talkmeter check runs."
    )
    return Result(UNKNOWN, "timestamps", text)


def _core_show_channels(o: Observations, settings: Settings) -> Result:
    if not o.live:
        return Result(SKIPPED, "channel list", "CoreShowChannels is not checked on a capture")
    answer = o.answers.get("CoreShowChannels", "not asked")
    if answer == "ok":
        return Result(OK, "channel list", f"CoreShowChannels permitted ({o.listed_channels} channels now)")
    text = (
        f"CoreShowChannels: {answer}. Add system or reporting to write= in [{settings.ami_user}] of "
        "manager.conf: without it, calls in progress across a reconnect are lost or cut short."
    )
    return Result(FAIL, "channel list", text)


def _bridge_list(o: Observations) -> Result:
    if not o.live:
        return Result(SKIPPED, "bridge list", "BridgeList is not checked on a capture")
    answer = o.answers.get("BridgeList", "not asked")
    if answer == "ok":
        return Result(OK, "bridge list", "BridgeList permitted")
    text = (
        f"BridgeList: {answer}. Asterisk 12 and later permit it to every user; older ones are not supported."
    )
    return Result(FAIL, "bridge list", text)


def _endpoints(o: Observations) -> Result:
    if not o.live:
        return Result(SKIPPED, "endpoints", "endpoint lists are not checked on a capture")
    parts = []
    for action, what in (("PJSIPShowEndpoints", "chan_pjsip"), ("SIPpeers", "chan_sip")):
        answer = o.answers.get(action, "not asked")
        if answer == "ok":
            parts.append(f"{action} listed the {what} endpoints")
        elif answer.startswith("Invalid/unknown command"):
            parts.append(f"{what} is not loaded")
        elif "No endpoints" in answer:
            parts.append(f"{what} has no endpoints")
        else:
            parts.append(f"{action}: {answer} (optional: listing endpoints needs write = system)")
    return Result(INFO, "endpoints", "; ".join(parts))


def _roles(o: Observations, settings: Settings) -> Result:
    census = o.census
    if not census.groups:
        return Result(
            UNKNOWN, "roles", "no channel or endpoint seen: make a test call while talkmeter check runs."
        )
    details = tuple(_describe(group) for group in census.groups)
    problems = []
    if not census.has(Role.CLIENT):
        suggestions = census.trunk_suggestions()
        fix = (
            f"set trunk_channels = {json.dumps(suggestions)}"
            if suggestions
            else 'put your trunks\' channel pattern there (e.g. "SIP/<peer>-*", "DAHDI/i1/*")'
        )
        problems.append(
            f"nothing is a client under trunk_channels = {json.dumps(settings.trunk_channels)}: {fix}"
        )
    for group in census.misnamed_trunks() if census.has(Role.CLIENT) else []:
        numbers = ", ".join(group.outside)
        problems.append(
            f"{group.pattern} carried outside numbers ({numbers}) but is {group.role.value}: "
            f'add "{group.pattern}" to trunk_channels'
        )
    if not census.has(Role.CONSULTANT):
        wanted = census.consultant_suggestions()
        fix = (
            f"set consultant_channels = {json.dumps(wanted)}" if wanted else "put your phones' pattern there"
        )
        current = json.dumps(settings.consultant_channels)
        problems.append(f"nothing is a consultant under consultant_channels = {current}: {fix}")
    if problems:
        return Result(FAIL, "roles", "; ".join(problems) + ".", details)
    clients = sum(1 for group in census.groups if group.role is Role.CLIENT)
    consultants = sum(1 for group in census.groups if group.role is Role.CONSULTANT)
    text = f"{clients} client and {consultants} consultant endpoints or channel groups under the patterns"
    return Result(OK, "roles", text, details)


def _describe(group: Group) -> str:
    seen = f"{group.seen} seen" if group.kind == "channels" else "configured"
    outside = f"; outside numbers {', '.join(group.outside)}" if group.outside else ""
    return f"{group.kind:8} {group.label:32} {group.role.value:10} {seen}{outside}"


def _measured(o: Observations) -> Result:
    talk = sum(c["talk_seconds"] for c in o.conversations)
    count = len(o.conversations)
    text = f"{count} conversation{'' if count == 1 else 's'} measured while checking, {talk:.1f} s of talk"
    return Result(INFO, "measured", text)


# --- the report -----------------------------------------------------------------------------------


def exit_code(results: Sequence[Result]) -> int:
    return 0 if all(result.status in PASSING for result in results) else 1


def render(observations: Observations, results: Sequence[Result]) -> str:
    lines = [f"talkmeter check: {observations.where}"]
    for result in results:
        lines.append(f"{result.status:5} {result.check:13} {result.text}")
        lines += [f"{'':19} {detail}" for detail in result.details[:40]]
        if len(result.details) > 40:
            lines.append(f"{'':19} ... and {len(result.details) - 40} more")
    failing = [result for result in results if result.status not in PASSING]
    if failing:
        lines.append(
            f"{len(failing)} of {len(results)} checks need attention: fix them, run talkmeter check again."
        )
    else:
        lines.append("every check passed: talkmeter can measure this PBX.")
    return "\n".join(lines)
