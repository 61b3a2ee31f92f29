"""The live alert engine: the call model's effects in, quota alerts and call-start notices out.

Theory of operation
-------------------
The engine follows the conversations of the PBX through the call model's live effects
(`on_effect`, called synchronously by the pipeline for every effect; it never awaits). For each
conversation it keeps the talk so far: finished intervals and the stretch going on now, on hold or
not. When a conversation starts, a job finds its client by number (one job queue, worked by one
task, `run`), loads the client's contracts and their settled usage, and sends the call-start
notice: who it is and what is left, or that the caller is not matched.

Planning is synchronous and cheap: after every change to a client's calls (a conversation
starting or ending, talk or hold starting or stopping) the pure planner (`accounting.quota`)
says, per contract, which thresholds are crossed and when the next one will be. The engine sets
one timer per client for that moment (on the PBX's clock) and plans again when it fires. A
crossing that is due becomes a check job: in one database transaction under the client's rating
lock the store reads the settled usage afresh and the alerts already raised, the engine decides
again from them and the talk of the conversations in progress, and every alert so decided is
claimed as a unique row (threshold, period, contract) in that same transaction. Only the claimer
sends: two daemons deciding the same crossing at the same moment raise it once, and a restart
finds the alerts already raised in the database and neither repeats nor skips one.

A conversation the engine did not see start (the daemon restarted mid-call, or it is recorded
from the spool), and usage recorded by another daemon, are only known once recorded: after each
recording (`recorded`, called by the writer after the commit) the engine runs the same check for
that client, and a threshold crossed then is alerted then. Until it is recorded, an ended
conversation still counts as talk in progress (with its exact segments), so nothing is counted
twice or missed between the hangup and the commit; inside the check transaction the store also
says which of the conversations in progress are already recorded, so the decision never counts
one twice either.

Claimed notifications go to the dispatcher (`daemon.alerts.delivery`), which sends them to each
sink in a task of its own; every one is also logged (`alert.raised`, `alert.notice`) and counted
(the `observer`: the metrics).

Limits: a talk stop is reported by the call model only after its debounce (1 s by default), so a
crossing that falls in the debounce after a cut-off is alerted as if the talk had gone on. Talk
on another PBX's daemon is seen here when it is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import structlog

from accounting.contracts import Contract
from accounting.conversations import Interval, Talk, to_ms
from accounting.quota import AlertKey, Crossing, LiveConversation, OpenStretch, Plan, Settled, is_term, plan
from accounting.rating import choose_contract, local_date
from daemon.alerts.delivery import AlertObserver, Dispatcher
from daemon.alerts.messages import CallInfo, ClientInfo, Language, Match, Notification, payload, text
from telephony.ami import Backoff, Sleep
from telephony.effects import (
    Conversation,
    ConversationEnded,
    ConversationStarted,
    Effect,
    HoldStarted,
    HoldStopped,
    TalkStarted,
    TalkStopped,
)

log = structlog.get_logger("daemon.alerts")

NUMBER_CACHE_SECONDS = 60.0


# --- ports ---------------------------------------------------------------------------------------


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds on the PBX's clock (the call model's time)."""
        ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` when the clock reaches `when` (or at once if it has)."""
        ...


class LoopTimers:
    """Timers on the running asyncio loop for moments on `clock` (the PBX's event clock). If the
    clock and the loop drift apart, the engine plans again when the timer fires."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, when - self._clock.now()), callback)


@dataclass(frozen=True, slots=True)
class ClientQuota:
    info: ClientInfo
    contracts: tuple[Contract, ...]


@dataclass(frozen=True, slots=True)
class StoreView:
    """What the database says about a client's contracts at one moment."""

    settled: Mapping[str, Settled]
    raised: frozenset[AlertKey]
    recorded: frozenset[str] = frozenset()
    """Which of the conversations asked about are already recorded (and so in `settled`)."""


Decide = Callable[[StoreView], list[Notification]]
SinksFor = Callable[[Notification], list[str]]


class AlertStore(Protocol):
    """The database side (`daemon.alerts.store` for PostgreSQL)."""

    async def match(self, number: str) -> list[str]:
        """The clients a number belongs to."""
        ...

    async def load(self, client_id: str) -> ClientQuota | None: ...

    async def view(
        self, client_id: str, contracts: Sequence[Contract], days: tuple[date, date], live: Sequence[str]
    ) -> StoreView:
        """The settled usage of `contracts` on `days` (and over their terms), the alerts raised."""
        ...

    async def claim(
        self,
        client_id: str,
        contracts: Sequence[Contract],
        days: tuple[date, date],
        live: Sequence[str],
        decide: Decide,
        sinks_for: SinksFor,
        notify: bool,
    ) -> tuple[list[Notification], StoreView]:
        """In one transaction under the client's lock: `view`, then `decide` from it, then claim
        each decided alert (unique per threshold, period and contract) with a pending delivery
        row per sink (and `NOTIFY talkmeter_alerts` when `notify`). Returns the claimed ones
        (with their ids) and the view the decision was made on."""
        ...

    async def claim_notice(
        self, notification: Notification, sinks: list[str], notify: bool
    ) -> Notification | None:
        """Claim a call-start notice (once per conversation); None when it was already claimed."""
        ...

    async def pending(self, pbx: str) -> list[tuple[Notification, dict[str, int]]]:
        """Notifications this PBX's daemon claimed whose deliveries are still pending, with the
        attempts each sink already had."""
        ...

    async def put_live(self, pbx: str, rows: Sequence[LiveRow]) -> None:
        """Write the conversations in progress (for `talkmeter.quota_now`)."""
        ...

    async def drop_live(self, conversation_ids: Sequence[str]) -> None: ...

    async def keep_live(self, pbx: str, conversation_ids: Sequence[str]) -> None:
        """Refresh this PBX's rows that are still live; drop the others."""
        ...


@dataclass(frozen=True, slots=True)
class LiveRow:
    """A conversation in progress as `talkmeter.quota_now` shows it (times: epoch seconds)."""

    conversation_id: str
    client_id: str
    contract_id: str
    channel: str
    client_number: str | None
    consultants: tuple[str, ...]
    started_at: float
    as_of: float
    talk_ms: int
    counted_ms: int
    talking: bool
    counting: bool
    on_hold: bool
    ended: bool


# --- the calls in progress -------------------------------------------------------------------------


def epoch_ms(moment: float) -> int:
    """The call model's epoch seconds as accounting's milliseconds (the same rounding)."""
    return to_ms(datetime.fromtimestamp(moment, UTC))


@dataclass(slots=True)
class _Call:
    conversation: Conversation
    started_ms: int
    intervals: list[Interval] = field(default_factory=list)
    open: OpenStretch | None = None
    on_hold: bool = False
    ended_ms: int | None = None
    recorded: bool = False
    client_id: str | None = None
    contract_id: str | None = None
    resolving: bool = False
    noticed: bool = False

    @property
    def conversation_id(self) -> str:
        return self.conversation.conversation_id

    def talk(self, at: int) -> None:
        if self.open is None:
            self.open = OpenStretch(at, self.on_hold)

    def stop(self, at: int) -> None:
        """Talk stopped at `at` (the call model reports it after its debounce, so `at` may lie
        before changes already applied: everything after it is cut)."""
        self._close(at)
        self.intervals = [replace(i, end_ms=min(i.end_ms, at)) for i in self.intervals if i.start_ms < at]

    def hold(self, at: int, on_hold: bool) -> None:
        self.on_hold = on_hold
        if self.open is not None:
            self._close(at)
            self.open = OpenStretch(at, on_hold)

    def end(self, conversation: Conversation) -> None:
        """The exact segments, as the record that accounting will rate has them."""
        self.conversation = conversation
        self.intervals = [Interval(epoch_ms(s.start), epoch_ms(s.end), s.hold) for s in conversation.segments]
        self.open = None
        self.ended_ms = epoch_ms(conversation.ended_at if conversation.ended_at is not None else 0.0)

    def live(self) -> LiveConversation:
        return LiveConversation(self.conversation_id, self.started_ms, tuple(self.intervals), self.open)

    def counting(self, contract: Contract) -> bool:
        return self.open is not None and (contract.hold_billable or not self.open.hold)

    def _close(self, at: int) -> None:
        if self.open is not None and at > self.open.start_ms:
            self.intervals.append(Interval(self.open.start_ms, at, self.open.hold))
        self.open = None


@dataclass(frozen=True, slots=True)
class _Hangup:
    """A recorded conversation whose crossings are checked (the periods of its days count too)."""

    conversation_id: str
    contract_id: str | None
    started_at: float
    ended_at: float
    days: tuple[date, ...] = ()


@dataclass(slots=True)
class _Client:
    quota: ClientQuota
    settled: dict[str, Settled] = field(default_factory=dict)
    raised: set[AlertKey] = field(default_factory=set)
    calls: dict[str, _Call] = field(default_factory=dict)
    hangups: list[_Hangup] = field(default_factory=list)
    timer: Timer | None = None
    check_queued: bool = False

    @property
    def client_id(self) -> str:
        return self.quota.info.client_id

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.quota.info.timezone)

    def contract(self, contract_id: str | None) -> Contract | None:
        return next((c for c in self.quota.contracts if c.contract_id == contract_id), None)

    def live_calls(self, contract_id: str, recorded: Iterable[str] = ()) -> list[_Call]:
        skip = set(recorded)
        return [
            c
            for c in self.calls.values()
            if c.contract_id == contract_id and not c.recorded and c.conversation_id not in skip
        ]

    def contracts_in_play(self) -> list[Contract]:
        wanted = {c.contract_id for c in self.calls.values()} | {h.contract_id for h in self.hangups}
        return [c for c in self.quota.contracts if c.contract_id in wanted]


# --- the engine ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    kind: str  # "check" | "recorded" | "start"
    key: str  # conversation id, or client id
    hangup: _Hangup | None = None

    @property
    def urgency(self) -> int:
        """Crossings first: a check decides an alert due now; a notice can wait a moment."""
        return {"check": 0, "recorded": 1}.get(self.kind, 2)


class AlertEngine:
    def __init__(
        self,
        store: AlertStore,
        dispatcher: Dispatcher,
        *,
        pbx: str,
        clock: Clock,
        timers: Timers,
        channels_of: Callable[[str], tuple[str, ...]] = lambda conversation_id: (),
        call_start_notices: bool = True,
        notify: bool = True,
        language: Language = "ru",
        is_transient: Callable[[BaseException], bool] = lambda error: isinstance(error, OSError),
        sleep: Sleep = asyncio.sleep,
        observer: AlertObserver | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.pbx = pbx
        self.clock = clock
        self.timers = timers
        self.channels_of = channels_of
        self.call_start_notices = call_start_notices
        self.notify = notify
        self.language = language
        self._is_transient = is_transient
        self._sleep = sleep
        self._calls: dict[str, _Call] = {}
        self._clients: dict[str, _Client] = {}
        self._jobs: asyncio.PriorityQueue[tuple[int, int, _Job]] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._owners: dict[str, tuple[float, list[str]]] = {}  # number -> (looked up at, clients)
        self._resumed = asyncio.Event()
        self._store_failing = False
        self._board_dirty: set[str] = set()
        self._dirty: dict[str, _Client] = {}
        self._board_gone: set[str] = set()
        self._board_failing = False
        self.observer = observer or dispatcher.observer
        self.raised = 0
        self.notices = 0

    # --- input: effects (synchronous, never awaits) ----------------------------------------------

    def on_effect(self, effect: Effect) -> None:
        if isinstance(effect, ConversationStarted):
            self._started(effect.conversation)
            return
        if isinstance(effect, ConversationEnded):
            call = self._calls.get(effect.conversation.conversation_id)
            if call is not None:
                call.end(effect.conversation)
                self._changed(call)
            return
        if not isinstance(effect, TalkStarted | TalkStopped | HoldStarted | HoldStopped):
            return
        call = self._calls.get(effect.conversation_id)
        if call is None or call.ended_ms is not None:
            return  # not seen starting (restored after a restart): checked when recorded
        at = epoch_ms(effect.at)
        if isinstance(effect, TalkStarted):
            call.talk(at)
            if call.client_id is None and not call.resolving:
                self._resolve(call)  # an outbound call learns its number by the time it is answered
        elif isinstance(effect, TalkStopped):
            call.stop(at)
        else:
            call.hold(at, isinstance(effect, HoldStarted))
        self._changed(call)

    def recorded(
        self, conversation: Mapping[str, Any], client_id: str | None, contract_id: str | None
    ) -> None:
        """A conversation is committed to the ledger (under `client_id`, `contract_id`): check its
        client's alerts against the new settled usage. Returns at once and never raises: the
        writer calls it, and nothing here may cost a conversation its recording."""
        try:
            self._recorded(conversation, client_id, contract_id)
        except Exception as error:
            log.error(
                "alert.recorded_failed",
                conversation_id=conversation.get("conversation_id"),
                error=repr(error),
            )

    def _recorded(
        self, conversation: Mapping[str, Any], client_id: str | None, contract_id: str | None
    ) -> None:
        conversation_id = str(conversation["conversation_id"])
        call = self._calls.pop(conversation_id, None)
        self._board_gone.add(conversation_id)
        if call is not None:
            call.recorded = True  # from now on it is in the settled usage, never live talk
        if client_id is None or contract_id is None:  # unmatched, unanswered: no usage changed
            if call is not None and call.client_id in self._clients:
                self._forget_call(self._clients[call.client_id], conversation_id)
            return
        started = datetime.fromisoformat(str(conversation["started_at"])).timestamp()
        ended = datetime.fromisoformat(str(conversation["ended_at"])).timestamp()
        self._queue(_Job("recorded", client_id, _Hangup(conversation_id, contract_id, started, ended)))

    def _started(self, conversation: Conversation) -> None:
        call = _Call(conversation, epoch_ms(conversation.started_at))
        self._calls[conversation.conversation_id] = call
        if conversation.direction == "inbound" or conversation.client_number is not None:
            self._resolve(call)

    def _resolve(self, call: _Call) -> None:
        call.resolving = True
        self._queue(_Job("start", call.conversation_id))

    def _changed(self, call: _Call) -> None:
        client = self._clients.get(call.client_id or "")
        if client is not None:
            self._board_dirty.add(call.conversation_id)
            self._replan_soon(client)

    def _replan_soon(self, client: _Client) -> None:
        """Plan once after the effects applied together (a burst of events, one plan)."""
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._replan_dirty)
        self._dirty[client.client_id] = client

    def _replan_dirty(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for client in dirty.values():
            self._plan(client)

    # --- planning (synchronous) --------------------------------------------------------------

    def _plan(self, client: _Client) -> None:
        """Plan every contract in play from the cached view; queue a check when one is due, and
        set the client's timer for the next crossing."""
        now = self.clock.now()
        due, wake = False, None
        for contract in client.contracts_in_play():
            result = self._plan_contract(client, contract, client.settled, client.raised, now)
            due = due or bool(self._relevant(client, contract, result.crossed, now, client.hangups))
            if result.wake_ms is not None:
                wake = result.wake_ms if wake is None else min(wake, result.wake_ms)
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        if due:
            self._queue_check(client)
        elif wake is not None:
            client.timer = self.timers.call_at(wake / 1000, lambda: self._plan(client))

    def _plan_contract(
        self,
        client: _Client,
        contract: Contract,
        settled: Mapping[str, Settled],
        raised: Iterable[AlertKey],
        now: float,
        recorded: Iterable[str] = (),
    ) -> Plan:
        live = [call.live() for call in client.live_calls(contract.contract_id, recorded)]
        usage = settled.get(contract.contract_id, Settled())
        return plan(contract, client.quota.info.timezone, usage, live, epoch_ms(now), raised)

    def _relevant(
        self,
        client: _Client,
        contract: Contract,
        crossed: Iterable[Crossing],
        now: float,
        hangups: Sequence[_Hangup],
    ) -> list[Crossing]:
        """The crossings of the periods in play: today, the days of the calls in progress and of
        the recorded ones being checked, and the contract's term. (A week's other days are read
        for its free-day slots; an old day's threshold is not news any more.)"""
        zone = client.zone
        days = {local_date(epoch_ms(now), zone)}
        for call in client.live_calls(contract.contract_id):
            days |= set(_span_days(call.started_ms / 1000, now, zone))
        for hangup in hangups:
            if hangup.contract_id == contract.contract_id:
                days |= set(hangup.days)
        return [c for c in crossed if is_term(contract, c.key) or c.key.period_start in days]

    def _queue_check(self, client: _Client) -> None:
        if not client.check_queued:
            client.check_queued = True
            self._queue(_Job("check", client.client_id))

    def _queue(self, job: _Job) -> None:
        self._jobs.put_nowait((job.urgency, next(self._order), job))

    # --- the worker ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Work the job queue forever (cancel to stop); first resend what an earlier run left."""
        await self._with_retries(self._resume)
        self._resumed.set()
        while True:
            _, _, job = await self._jobs.get()
            try:
                await self._with_retries(lambda job=job: self._perform(job))  # type: ignore[misc]
            finally:
                self._jobs.task_done()

    async def jobs_done(self) -> None:
        """Until `run` has resumed and every job so far is done (its notifications claimed and
        handed to the sinks)."""
        await self._resumed.wait()
        self._replan_dirty()
        await self._jobs.join()

    async def idle(self) -> None:
        """`jobs_done`, and every notification delivered (tests, benchmarks)."""
        await self.jobs_done()
        await self.dispatcher.wait_idle()

    async def close(self) -> None:
        for client in self._clients.values():
            if client.timer is not None:
                client.timer.cancel()
        await self.dispatcher.close()

    async def _with_retries(self, work: Callable[[], Any]) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                await work()
            except Exception as error:
                if not self._is_transient(error):
                    log.error("alert.job_failed", error=repr(error))
                    return
                if not self._store_failing:
                    self._store_failing = True
                    log.warning("alert.store_unavailable", error=type(error).__name__)
                await self._sleep(backoff.next())
                continue
            if self._store_failing:
                self._store_failing = False
                log.info("alert.store_available")
            return

    async def _perform(self, job: _Job) -> None:
        if job.kind == "start":
            await self._start(job.key)
        elif job.kind == "check":
            client = self._clients.get(job.key)
            if client is not None:
                client.check_queued = False
                await self._check(client)
                if not client.calls:
                    self._forget(client)
        else:
            assert job.hangup is not None
            await self._after_recording(job.key, job.hangup)

    async def _resume(self) -> None:
        for notification, attempts in await self.store.pending(self.pbx):
            self.dispatcher.dispatch(notification, attempts)

    # --- jobs ----------------------------------------------------------------------------------

    async def _start(self, conversation_id: str) -> None:
        """Find the caller's client and contract, load its usage, send the call-start notice.
        Safe to run again after a database error part-way (the notice is claimed once)."""
        call = self._calls.get(conversation_id)
        if call is None or call.noticed:
            return
        number = call.conversation.client_number
        owners = await self._match(number) if number is not None else []
        client = await self._client(owners[0]) if len(owners) == 1 else None
        contract = None
        match: Match = "withheld" if number is None else "ambiguous" if len(owners) > 1 else "unknown"
        if client is not None:
            talk = Talk(conversation_id, call.started_ms, call.conversation.line, ())
            contract = choose_contract(client.quota.contracts, talk, client.zone)
            match = "matched" if contract is not None else "no_contract"
        if client is not None and contract is not None and call.client_id is None:
            call.client_id, call.contract_id = client.client_id, contract.contract_id
            client.calls[conversation_id] = call
            self._board_dirty.add(conversation_id)
        if client is not None and contract is not None and contract.contract_id not in client.settled:
            # A contract already followed is kept current by its checks; one not read yet (a
            # client's first call, a call on another of its contracts, a retry after the read
            # failed) is read now, before the notice and the plan that rest on it.
            await self._refresh(client)
        if self.call_start_notices:
            await self._notice(call, match, client, contract, owners if match == "ambiguous" else [])
        call.noticed = True
        if client is not None and call.client_id is not None:
            self._plan(client)
        elif client is not None and not client.calls:
            self._forget(client)  # nothing to follow: the next call reads its contracts afresh

    async def _notice(
        self, call: _Call, match: Match, client: _Client | None, contract: Contract | None, owners: list[str]
    ) -> None:
        now = self.clock.now()
        standing = None
        if client is not None and contract is not None:
            standing = self._plan_contract(client, contract, client.settled, client.raised, now).standing
        notice = Notification(
            type="call.started",
            decided_at=now,
            pbx=self.pbx,
            match=match,
            call=self._call_info(call),
            client=client.quota.info if client is not None else None,
            contract=contract,
            standing=standing,
            candidates=tuple(owners),
        )
        claimed = await self.store.claim_notice(notice, self.dispatcher.sinks_for(notice), self.notify)
        if claimed is not None:
            self.notices += 1
            self.observer.notice_sent(claimed.match)
            self._send(claimed, "alert.notice")

    async def _after_recording(self, client_id: str, hangup: _Hangup) -> None:
        client = self._clients.get(client_id) or await self._client(client_id)
        if client is None:
            return
        client.hangups.append(
            replace(hangup, days=_span_days(hangup.started_at, hangup.ended_at, client.zone))
        )
        await self._check(client)  # the call stays known meanwhile (recorded: never live talk)
        self._forget_call(client, hangup.conversation_id, keep=True)
        if not client.calls:
            self._forget(client)

    async def _check(self, client: _Client) -> None:
        """Decide and claim, in one transaction, every alert due now (see the module comment)."""
        contracts = client.contracts_in_play()
        if not contracts:
            return
        now = self.clock.now()
        hangups = list(client.hangups)  # kept until the check succeeds (it is retried if not)

        def decide(view: StoreView) -> list[Notification]:
            found = []
            for contract in contracts:
                result = self._plan_contract(client, contract, view.settled, view.raised, now, view.recorded)
                for crossing in self._relevant(client, contract, result.crossed, now, hangups):
                    found.append(self._alert(client, contract, crossing, result.standing, now, hangups))
            return found

        live, days = list(client.calls), self._days(client, now, hangups)
        # A cheap look first: most checks (one after every recording) find nothing due, and need
        # neither the transaction nor the client's lock. What is due is decided again, locked.
        view = await self.store.view(client.client_id, contracts, days, live)
        claimed: list[Notification] = []
        if decide(view):
            claimed, view = await self.store.claim(
                client.client_id, contracts, days, live, decide, self.dispatcher.sinks_for, self.notify
            )
        client.hangups = [hangup for hangup in client.hangups if hangup not in hangups]
        client.settled.update(view.settled)
        client.raised |= view.raised | {n.key for n in claimed if n.key is not None}
        for conversation_id in view.recorded:  # its `recorded` job comes next and forgets it
            if conversation_id in client.calls:
                client.calls[conversation_id].recorded = True
        for notification in claimed:
            self.raised += 1
            key, crossed_at = notification.key, notification.crossed_at
            assert key is not None and crossed_at is not None
            self.observer.alert_raised(key.kind, notification.decided_at - crossed_at)
            self._send(notification, "alert.raised")
        self._plan(client)

    def _alert(
        self,
        client: _Client,
        contract: Contract,
        crossing: Crossing,
        standing: Any,
        now: float,
        hangups: list[_Hangup],
    ) -> Notification:
        call = _call_to_name(client, contract)
        if crossing.at_ms is not None:
            crossed_at = crossing.at_ms / 1000
        else:  # found in the settled usage: during a conversation recorded since
            ends = [h.ended_at for h in hangups]
            ends += [
                c.ended_ms / 1000 for c in client.calls.values() if c.recorded and c.ended_ms is not None
            ]
            crossed_at = max(ends, default=now)
        info = self._call_info(call) if call is not None else self._recorded_call(hangups)
        return Notification(
            type="quota.alert",
            decided_at=now,
            pbx=self.pbx,
            match="matched",
            call=info,
            client=client.quota.info,
            contract=contract,
            standing=standing,
            key=crossing.key,
            crossed_at=crossed_at,
        )

    def _recorded_call(self, hangups: list[_Hangup]) -> CallInfo | None:
        if not hangups:
            return None
        last = hangups[-1]
        return CallInfo(last.conversation_id, self.pbx, "", "", None, "", None, last.ended_at, ended=True)

    def _call_info(self, call: _Call) -> CallInfo:
        conversation = call.conversation
        return CallInfo(
            conversation_id=conversation.conversation_id,
            pbx=conversation.pbx,
            channel=conversation.channel,
            direction=conversation.direction,
            client_number=conversation.client_number,
            client_number_raw=conversation.client_number_raw,
            line=conversation.line,
            started_at=conversation.started_at,
            consultants=tuple(conversation.consultants),
            consultant_channels=()
            if call.ended_ms is not None
            else self.channels_of(conversation.conversation_id),
            ended=call.ended_ms is not None,
        )

    def _send(self, notification: Notification, event: str) -> None:
        body = payload(notification, self.language)
        alert = body["alert"] or {}
        log.info(
            event,
            notification_id=notification.notification_id,
            type=notification.type,
            match=notification.match,
            client_id=(body["client"] or {}).get("id"),
            contract_id=notification.contract.contract_id if notification.contract else None,
            kind=alert.get("kind"),
            percent=alert.get("percent"),
            period=alert.get("period"),
            crossed_at=alert.get("crossed_at"),
            decided_at=body["decided_at"],
            conversation_id=(body["call"] or {}).get("conversation_id"),
            text=text(notification, self.language),
        )
        self.dispatcher.dispatch(notification)

    # --- the live board (talkmeter.quota_now) ----------------------------------------------------

    async def flush_board(self) -> None:
        """Write the conversations in progress that changed, drop those recorded or gone. The
        board is for display only: what the store cannot reach now is written at the next flush;
        what it refuses (a row whose contract was withdrawn meanwhile) is logged and dropped, and
        the rows refused with it are written again at their next change."""
        now = self.clock.now()
        gone, self._board_gone = self._board_gone, set()
        dirty, self._board_dirty = self._board_dirty - gone, set()
        rows = [row for cid in sorted(dirty) if (row := self._board_row(cid, now)) is not None]
        try:
            if gone:
                await self.store.drop_live(sorted(gone))
            await self.store.put_live(self.pbx, rows)
        except Exception as error:
            if not self._is_transient(error):
                log.warning("alert.live_board_failed", error=repr(error), rows=len(rows), dropped=len(gone))
                return
            self._board_gone |= gone  # again at the next flush
            self._board_dirty |= dirty
            if not self._board_failing:
                self._board_failing = True
                log.warning("alert.live_board_unavailable", error=type(error).__name__)
            return
        self._board_failing = False

    async def keep_board(self) -> None:
        """The heartbeat: this daemon's live rows are current; rows of calls it lost are dropped."""
        live = [cid for cid, call in self._calls.items() if call.client_id is not None and not call.recorded]
        await self.store.keep_live(self.pbx, live)

    async def board_forever(self, interval: float = 1.0, heartbeat: float = 30.0) -> None:
        """Flush every `interval` seconds, the heartbeat every `heartbeat` (a task of the service)."""
        since_heartbeat = heartbeat
        while True:
            await self.flush_board()
            if since_heartbeat >= heartbeat:
                since_heartbeat = 0.0
                with contextlib.suppress(Exception):  # the next flush says whether the store is back
                    await self.keep_board()
            await self._sleep(interval)
            since_heartbeat += interval

    def _board_row(self, conversation_id: str, now: float) -> LiveRow | None:
        call = self._calls.get(conversation_id)
        client = self._clients.get(call.client_id or "") if call is not None else None
        contract = client.contract(call.contract_id) if client is not None and call is not None else None
        if call is None or client is None or contract is None or call.recorded:
            return None
        now_ms = epoch_ms(now)
        intervals = [
            *call.intervals,
            *([Interval(call.open.start_ms, now_ms, call.open.hold)] if call.open else []),
        ]
        counted = [i for i in intervals if contract.hold_billable or not i.hold]
        conversation = call.conversation
        return LiveRow(
            conversation_id=conversation_id,
            client_id=client.client_id,
            contract_id=contract.contract_id,
            channel=conversation.channel,
            client_number=conversation.client_number,
            consultants=tuple(conversation.consultants),
            started_at=conversation.started_at,
            as_of=now,
            talk_ms=sum(max(0, i.ms) for i in intervals),
            counted_ms=sum(max(0, i.ms) for i in counted),
            talking=call.open is not None,
            counting=call.counting(contract),
            on_hold=call.on_hold,
            ended=call.ended_ms is not None,
        )

    # --- the client cache ------------------------------------------------------------------------

    async def _match(self, number: str) -> list[str]:
        """The clients of a number, remembered for a minute (a busy client calls in bursts)."""
        now = time.monotonic()
        cached = self._owners.get(number)
        if cached is not None and now - cached[0] < NUMBER_CACHE_SECONDS:
            return cached[1]
        owners = await self.store.match(number)
        if len(self._owners) > 10_000:
            self._owners.clear()
        self._owners[number] = (now, owners)
        return owners

    async def _client(self, client_id: str) -> _Client | None:
        client = self._clients.get(client_id)
        if client is not None:
            return client
        quota = await self.store.load(client_id)
        if quota is None:
            return None
        client = self._clients.setdefault(client_id, _Client(quota))
        return client

    async def _refresh(self, client: _Client) -> None:
        contracts = client.contracts_in_play()
        now = self.clock.now()
        view = await self.store.view(client.client_id, contracts, self._days(client, now), list(client.calls))
        client.settled.update(view.settled)
        client.raised |= view.raised

    def _days(self, client: _Client, now: float, hangups: Sequence[_Hangup] = ()) -> tuple[date, date]:
        """The days whose settled usage a decision needs: from the Monday of the earliest day in
        play (the week's free-day slots) to today."""
        zone = client.zone
        days = [local_date(epoch_ms(now), zone)]
        days += [local_date(call.started_ms, zone) for call in client.calls.values()]
        days += [day for hangup in [*client.hangups, *hangups] for day in hangup.days]
        first, last = min(days), max(days)
        return first - timedelta(days=first.weekday()), last

    def _forget_call(self, client: _Client, conversation_id: str, keep: bool = False) -> None:
        client.calls.pop(conversation_id, None)
        self._calls.pop(conversation_id, None)
        self._board_gone.add(conversation_id)
        if not keep and not client.calls:
            self._forget(client)

    def _forget(self, client: _Client) -> None:
        if client.timer is not None:
            client.timer.cancel()
        if not client.calls and not client.check_queued:
            self._clients.pop(client.client_id, None)


def _call_to_name(client: _Client, contract: Contract) -> _Call | None:
    """The conversation an alert is about: one counting now (the latest started), else one still
    going on, else the one that ended last (it may be recorded already)."""
    calls = [c for c in client.calls.values() if c.contract_id == contract.contract_id]
    going = [c for c in calls if not c.recorded and c.ended_ms is None]
    counting = [c for c in going if c.counting(contract)]
    if counting or going:
        return max(counting or going, key=lambda c: c.started_ms)
    return max(calls, key=lambda c: c.ended_ms or 0, default=None)


def _span_days(start: float, end: float, zone: ZoneInfo) -> tuple[date, ...]:
    """The local days from `start` to `end`."""
    first, last = local_date(epoch_ms(start), zone), local_date(epoch_ms(end), zone)
    return tuple(first + timedelta(days=n) for n in range((last - first).days + 1))
