"""Recording finished conversations and keeping the ledger equal to the rating of what was talked.

Theory of operation
===================

`record_conversation` is what the daemon calls for every finished conversation. In one
transaction it stores the conversation (idempotent on its id), decides whose it is (an
assignment, else a number that belongs to exactly one client), and settles that client: under a
per-client lock it re-rates the contract the conversation falls under and appends the ledger
rows that make the ledger agree with the rating (see `postings`), together with the running state
those rows change (current values of the keys, usage per day, week and contract: see `usage`).
Rating again under the lock is what makes two daemons safe: whoever comes second sees the first
one's committed conversations and rates them together, so the caps hold exactly, and a
conversation that talked earlier but ended later corrects the others through adjustment rows.

The frontier. Only the conversations from the *frontier* on are re-rated: the new conversation's
start, pulled back to the start of any conversation of the client still going on at that moment
(repeatedly, while they overlap). Rating is causal (nothing talked after a moment changes what
was consumed before it), and no conversation straddles the frontier, so rating from it, given
what the conversations before it consumed (`PriorUsage`), equals rating the whole contract again.

What a recording reads, all by index ranges of one client (see `sql/queries.sql`):
- the client's conversations that ended at or after the new one's start, for the frontier;
- the conversations and segments that started from the frontier on, and the current value of
  their ledger keys (`current_charges`);
- the contract's running state from a week before the frontier's day on, and its totals
  (`usage_days`, `usage_totals`). What the conversations before the frontier consumed is that
  running state less what the keys from the frontier on hold (`usage.prior_usage`).
It then appends the ledger rows and updates the keys' values and the running state by key. No
query reads the conversations or the ledger rows before the frontier, so the work follows the
conversations that overlap the new one (or started after it but were recorded first) and its
day, never the contract's history.

Re-rating follows what changed. Triggers in the database queue every client whose reference data
changes (a contract, its time zone, a number, an assignment), with the moment from which its
rating may differ (`pending_rerates`). `rerate` takes each queued client in one transaction under
its lock: it re-attributes the client's conversations from that moment (a conversation another
client now owns is released, and that client queued), then re-rates all its contracts from the
frontier of that moment on, in windows of about WINDOW conversations that end where no
conversation straddles. The first (small) window is rated from the running state, like a
recording; the rater then carries the allowances from window to window in memory
(`rating.ClientRater`), so the next windows are read ahead (on a second connection when the pool
has one to spare) and rated in a thread while the rows of the one before are written: rating is
Python and writing is PostgreSQL, and the two overlap. It reads the affected range only and holds
up to three windows in memory. `rerate --full` queues every client from its first conversation.
Recordings of a client wait while it is re-rated.

Several instances may record the same conversation (the standby set-up, see `versions`): each
arrival takes the conversation's transaction lock first, then compares itself with the version
the ledger keeps. A first version is recorded as above; the same measurement again changes
nothing; a version that is not better is stored beside the kept one for audit; an exact version
superseding an estimated one replaces the conversation's facts (the old version is stored beside
it, the conversation's keys move to its start) and its client is re-rated from the earlier of the
two starts, as `rerate` does, so the change reaches the ledger as adjustment rows. Locks are
always taken conversation first, then client, so two instances writing the same conversations at
once, in any order, double nothing. They can deadlock in one case: a supersede takes the old
client's lock, then the new client's, so two supersedes moving conversations between two clients
in opposite directions may wait for each other. PostgreSQL detects the cycle after
`deadlock_timeout` and aborts one of them (deadlock_detected, a TransactionRollbackError): its
caller gets a `RetryableStorageError` with nothing written, and the daemon records that version
again from its spool.

Errors: `InvalidConversation` (from `conversations`) means the input is wrong and retrying is
useless; `RetryableStorageError` means the database was unreachable or aborted the transaction;
nothing was written and the caller should keep the conversation and try again later.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from accounting import store
from accounting.contracts import Client, Contract
from accounting.conversations import FinishedConversation, Talk, from_ms, parse_conversation, to_ms
from accounting.postings import Key, LedgerState, Posting, plan_postings
from accounting.queries import QUERIES
from accounting.rating import (
    Charge,
    ClientRater,
    ClientRating,
    choose_contract,
    local_date,
    local_midnight_ms,
)
from accounting.usage import DayKey, Usage, plan_usage, prior_usage
from accounting.versions import SET_ASIDE, Outcome, decide, differences

log = structlog.get_logger("talkmeter.accounting")

RecordStatus = Literal["rated", "duplicate", "unanswered", "no_contract", "withheld", "unknown", "ambiguous"]


class RetryableStorageError(Exception):
    """The database could not take the write now; nothing was written, try again later."""


@dataclass(frozen=True, slots=True)
class RecordResult:
    conversation_id: str
    status: RecordStatus
    client_id: str | None = None
    contract_id: str | None = None
    charge: Charge | None = None
    """The conversation's rating as posted (None unless status is 'rated')."""
    postings: int = 0
    """Ledger rows appended, including adjustments of the client's other conversations."""
    version: Outcome = "first"
    """What this version did (see `versions.decide`); anything but first or superseded is a
    'duplicate' status: the ledger did not change."""
    compared: FinishedConversation | None = None
    """The version the ledger kept when this one arrived (None for a first version)."""


@dataclass(frozen=True, slots=True)
class Settlement:
    charges: dict[str, Charge]
    postings: int
    uncovered: tuple[str, ...] = ()


WINDOW = 1_000
"""How many conversations `rerate` rates at once (more when they overlap all the way)."""
FIRST_WINDOW = 250
"""The first window's size: nothing overlaps its rating."""


async def record_conversation(pool: asyncpg.Pool, conversation: Mapping[str, Any]) -> RecordResult:
    """Store, attribute and rate one finished conversation (the call tracker's JSON dict)."""
    record = parse_conversation(conversation)
    result = await _record(pool, record)
    charge = result.charge
    log.info(
        "conversation.recorded",
        conversation_id=result.conversation_id,
        status=result.status,
        client_id=result.client_id,
        contract_id=result.contract_id,
        talk_ms=record.talk.talk_ms,
        amount=None if charge is None else str(charge.amount),
        postings=result.postings,
        instance=record.instance,
        version=result.version,
    )
    _log_version(record, result)
    return result


def _log_version(record: FinishedConversation, result: RecordResult) -> None:
    kept = result.compared
    if kept is None or result.version in ("first", "identical"):
        return
    values = {
        "conversation_id": record.conversation_id,
        "kept_instance": kept.instance,
        "instance": record.instance,
        "differences": differences(kept, record),
        "kept_talk_ms": kept.talk.talk_ms,
        "talk_ms": record.talk.talk_ms,
    }
    if result.version == "superseded":
        log.info("conversation.superseded", **values)
    elif result.version == "disagreed":
        log.warning("conversation.instances_disagree", **values)
    else:
        log.info("conversation.version_not_better", **values, estimated=record.estimated)


async def _record(pool: asyncpg.Pool, record: FinishedConversation) -> RecordResult:
    async with _retryable(), pool.acquire() as conn, conn.transaction():
        await store.lock_conversation(conn, record.conversation_id)
        kept = await store.load_kept(conn, record.conversation_id)
        if kept is None:
            return await _record_first(conn, record)
        outcome = decide(kept.version, record)
        if outcome == "superseded":
            return await _supersede(conn, kept, record)
        if outcome in SET_ASIDE:
            await store.set_aside(conn, record, outcome, kept.version)
        return RecordResult(
            record.conversation_id, "duplicate", kept.client_id, version=outcome, compared=kept.version
        )


async def _record_first(conn: asyncpg.Connection, record: FinishedConversation) -> RecordResult:
    if not await store.insert_conversation(conn, record):  # a talkmeter that takes no conversation lock
        return RecordResult(record.conversation_id, "duplicate", version="identical")
    client_id, status = await store.attribute(conn, record.conversation_id)
    if client_id is None:
        return RecordResult(record.conversation_id, cast(RecordStatus, status))
    await store.lock_client(conn, client_id)
    return await _rate_new(conn, client_id, record.talk)


async def _supersede(
    conn: asyncpg.Connection, kept: store.Kept, record: FinishedConversation
) -> RecordResult:
    """Make an exact version the kept one, and re-rate whoever the conversation belonged to and
    belongs to now from the earlier of the two starts. Client locks are taken before the
    conversation's row is changed (re-rating changes rows under the client's lock), old client
    first."""
    conversation_id = record.conversation_id
    if kept.client_id is not None:
        await store.lock_client(conn, kept.client_id)
    await store.set_aside(conn, kept.version, "superseded", record)
    await store.replace_conversation(conn, record)
    client_id, status = await store.attribute(conn, conversation_id)
    if client_id is not None and client_id != kept.client_id:
        await store.lock_client(conn, client_id)
    since = min(kept.version.started_at, record.started_at)
    postings, charge = 0, None
    for owner in dict.fromkeys(owner for owner in (kept.client_id, client_id) if owner is not None):
        rerated = await _rerate_from(conn, owner, since, False, f"superseded {conversation_id}")
        postings += rerated.postings
        charge = rerated.charges.get(conversation_id, charge)
    final = cast(RecordStatus, status)
    if client_id is not None:
        final = "rated" if charge is not None else "unanswered" if record.talk.talk_ms == 0 else "no_contract"
    return RecordResult(
        conversation_id,
        final,
        client_id,
        None if charge is None else charge.contract_id,
        charge,
        postings,
        "superseded",
        kept.version,
    )


async def _rate_new(conn: asyncpg.Connection, client_id: str, talk: Talk) -> RecordResult:
    conversation_id = talk.conversation_id
    if talk.talk_ms == 0:
        return RecordResult(conversation_id, "unanswered", client_id)
    client = await store.load_client(conn, client_id)
    assert client is not None  # the conversation resolved to it inside this transaction
    contracts = await store.load_contracts(conn, client_id)
    contract = choose_contract(contracts, talk, ZoneInfo(client.timezone))
    if contract is None:
        await store.set_match_statuses(conn, {conversation_id: "no_contract"})
        return RecordResult(conversation_id, "no_contract", client_id)
    front = await store.frontier(conn, client_id, from_ms(talk.started_ms))
    since, until = store.window([contract])
    loaded = await store.load_talks(conn, client_id, front if since is None else max(front, since), until)
    settlement = await _settle(
        conn, client, contracts, [contract], front, loaded.talks, None, f"conversation {conversation_id}"
    )
    return RecordResult(
        conversation_id,
        "rated",
        client_id,
        contract.contract_id,
        settlement.charges.get(conversation_id),
        settlement.postings,
    )


async def _settle(
    conn: asyncpg.Connection,
    client: Client,
    contracts: list[Contract],
    rated: Sequence[Contract],
    front: datetime,
    talks: list[Talk],
    cut: datetime | None,
    reason: str,
) -> Settlement:
    """Make the ledger of the `rated` contracts, for the conversations started in [front, cut),
    equal the rating of `talks` (the client's conversations started then), `front` being a
    frontier and `cut` one too (or None: up to now)."""
    opened = await _open(conn, client, contracts, rated, front, cut)
    plan = _plan(opened.rater, talks, opened.current, cut)
    postings = await _apply(conn, client.client_id, opened.ids, plan, opened.days, reason)
    return Settlement(plan.charges, postings, plan.rating.uncovered)


@dataclass(frozen=True, slots=True)
class _Opened:
    """What settling from a frontier starts from: the rater, charged with what the conversations
    before the frontier consumed, the keys from the frontier on, and the running days read."""

    ids: list[str]
    rater: ClientRater
    current: dict[Key, store.Current]
    days: _Days


@dataclass(frozen=True, slots=True)
class _Days:
    """Running days of the rated contracts as they are now, read from `first` to `last` (None:
    to the last there is)."""

    rows: dict[DayKey, Usage]
    first: date
    last: date | None

    def cover(self, touched: list[date]) -> bool:
        return min(touched) >= self.first and (self.last is None or max(touched) <= self.last)


@dataclass(frozen=True, slots=True)
class _Plan:
    rating: ClientRating
    posted: dict[Key, LedgerState]
    postings: list[Posting]

    @property
    def charges(self) -> dict[str, Charge]:
        return {charge.conversation_id: charge for charge in self.rating.charges}


async def _open(
    conn: asyncpg.Connection,
    client: Client,
    contracts: list[Contract],
    rated: Sequence[Contract],
    front: datetime,
    cut: datetime | None,
) -> _Opened:
    zone = ZoneInfo(client.timezone)
    ids = [contract.contract_id for contract in rated]
    day = local_date(to_ms(front), zone)
    # The keys from the frontier on: those before the cut are settled now; all of them up to the
    # end of the frontier's day say what the conversations after it used on that day.
    end_of_day = from_ms(local_midnight_ms(day + timedelta(days=1), zone))
    current = await store.load_current(
        conn, client.client_id, ids, front, None if cut is None else max(cut, end_of_day)
    )
    # The running days the rating and the changes need: a week before the frontier's day up to a
    # little past the window (a recording's window is open; a rerate's days beyond are summed).
    last_day = None if cut is None else local_date(to_ms(cut), zone) + timedelta(days=2)
    days, totals = await store.load_usage(conn, client.client_id, ids, day - timedelta(days=7), last_day)
    prior = {
        contract_id: prior_usage(
            contract_id,
            day,
            days,
            totals.get(contract_id, Usage()),
            [known.value for key, known in current.items() if key[1] == contract_id],
        )
        for contract_id in ids
    }
    rater = ClientRater(contracts, client.timezone, frozenset(ids), prior)
    return _Opened(ids, rater, current, _Days(days, day - timedelta(days=7), last_day))


def _plan(
    rater: ClientRater, talks: list[Talk], current: Mapping[Key, store.Current], cut: datetime | None
) -> _Plan:
    """Rate the next window and say the ledger rows that make its keys agree. No I/O: only the
    rater changes (it carries the allowances), so a rerate runs it in a thread while the window
    before is written."""
    rating = rater.rate(talks)
    desired = {(charge.conversation_id, charge.contract_id): charge for charge in rating.charges}
    posted = {key: known.value for key, known in current.items() if cut is None or known.started_at < cut}
    return _Plan(rating, posted, plan_postings(desired, posted))


async def _apply(
    conn: asyncpg.Connection, client_id: str, ids: list[str], plan: _Plan, days: _Days | None, reason: str
) -> int:
    """Append the plan's ledger rows and the running-state changes they make; `days` are running
    days read since the last write, if any. Returns the rows appended."""
    postings, posted = plan.postings, plan.posted
    if not postings:
        return 0
    touched = [day for posting in postings for day in (*posting.current.days, posting.current.day)]
    touched += [
        day
        for posting in postings
        if (key := (posting.conversation_id, posting.contract_id)) in posted
        for day in (*posted[key].days, posted[key].day)
    ]
    if days is None or not days.cover(touched):
        # A rerate's later windows, a key dated far from its start (the client's time zone
        # changed), or a conversation longer than a day: read the days the rows touch.
        rows, _ = await store.load_usage(conn, client_id, ids, min(touched), max(touched))
        days = _Days(rows, min(touched), max(touched))
    changes = plan_usage(
        (
            (posting.contract_id, posted.get((posting.conversation_id, posting.contract_id)), posting.current)
            for posting in postings
        ),
        days.rows,
    )
    await store.post(conn, client_id, postings, reason)
    await store.add_usage(conn, client_id, changes)
    return len(postings)


def _statuses(resolved: dict[str, str], uncovered: tuple[str, ...]) -> dict[str, str]:
    statuses = dict(resolved)
    statuses.update(dict.fromkeys(uncovered, "no_contract"))
    return statuses


@dataclass(frozen=True, slots=True)
class RerateSummary:
    clients: int
    postings: int


async def rerate(pool: asyncpg.Pool, client_id: str | None = None, full: bool = False) -> RerateSummary:
    """Apply the reference-data changes queued since the last rerate: re-attribute and re-rate
    each queued client (or `client_id` only, and whoever gains its conversations) from the moment
    its rating may differ. With `full`, every client (or `client_id`) is queued from its first
    conversation first."""
    async with _retryable(), pool.acquire() as conn, _spare(pool) as reader:
        if full:
            async with conn.transaction():
                await conn.execute(QUERIES["queue_every_client"], client_id)
                await conn.execute(QUERIES["refresh_unattributed_statuses"])
        scope = None if client_id is None else {client_id}
        clients: set[str] = set()
        postings = 0
        while todo := [c for c in await store.pending_clients(conn) if scope is None or c in scope]:
            for target in todo:
                posted, gaining = await _rerate_client(conn, target, reader)
                clients.add(target)
                postings += posted
                if scope is not None:
                    scope |= gaining
        return RerateSummary(len(clients), postings)


@asynccontextmanager
async def _spare(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection | None]:
    """A second connection, for reading a long rerate's windows ahead while the first one writes,
    if the pool has one to spare now (None: the rerate reads on its own connection)."""
    if pool.get_idle_size() == 0 and pool.get_size() >= pool.get_max_size():
        yield None
        return
    async with pool.acquire() as reader:
        yield reader


async def _rerate_client(
    conn: asyncpg.Connection, client_id: str, reader: asyncpg.Connection | None = None
) -> tuple[int, set[str]]:
    """Settle one queued client; returns the rows posted and the clients its conversations moved to."""
    postings, gaining = 0, set[str]()
    async with conn.transaction():
        await store.lock_client(conn, client_id)
        while (mark := await store.pending_rerate(conn, client_id)) is not None:
            rerated = await _rerate_from(conn, client_id, mark.since, mark.reattribute, reader=reader)
            postings += rerated.postings
            gaining |= rerated.gaining
            if await store.finish_rerate(conn, client_id, mark.revision):
                break
    return postings, gaining


@dataclass(frozen=True, slots=True)
class Rerated:
    postings: int
    gaining: set[str]
    """The clients the client's conversations moved to (queued for their own rerate)."""
    charges: dict[str, Charge]
    """The rating of the conversations re-rated, by conversation."""


async def _rerate_from(
    conn: asyncpg.Connection,
    client_id: str,
    since: datetime,
    reattribute: bool,
    reason: str = "rerate",
    reader: asyncpg.Connection | None = None,
) -> Rerated:
    client = await store.load_client(conn, client_id)
    if client is None:
        return Rerated(0, set(), {})
    contracts = await store.load_contracts(conn, client_id)
    gaining: dict[str, datetime] = {}
    if reattribute:
        for owner, started in await store.release_conversations(conn, client_id, since):
            if owner is not None:
                gaining[owner] = min(started, gaining.get(owner, started))
        for owner, started in gaining.items():
            await store.queue_rerate(conn, owner, started, True)
        await store.attach_conversations(conn, client_id, since)
    front = await store.frontier(conn, client_id, since)
    if front == since:  # nothing straddles `since`: start at the first conversation or key after it
        first = await store.next_start(conn, client_id, since)
        if first is None:
            return Rerated(0, set(gaining), {})
        front = first
    postings, charges = await _rerate_windows(conn, reader, client, contracts, front, reattribute, reason)
    return Rerated(postings, set(gaining), charges)


async def _rerate_windows(
    conn: asyncpg.Connection,
    reader: asyncpg.Connection | None,
    client: Client,
    contracts: list[Contract],
    front: datetime,
    reattribute: bool,
    reason: str,
) -> tuple[int, dict[str, Charge]]:
    """Re-rate the client's contracts from the frontier `front` on, window by window; returns the
    ledger rows posted and the charges."""
    client_id, contract_ids = client.client_id, [contract.contract_id for contract in contracts]
    # A small first window: it is rated before anything else can overlap it.
    loaded, cut = await _window(conn, client_id, front, reattribute, FIRST_WINDOW)
    opened = await _open(conn, client, contracts, contracts, front, cut)
    rater = opened.rater
    plan = _plan(rater, loaded.talks, opened.current, cut)
    days: _Days | None = opened.days
    # Windows read ahead of the one being written, each planned in a thread (rating is pure
    # Python) as soon as it is read and the window before it is planned: the rater carries the
    # allowances from one to the next. Reading ahead is safe: a window writes only keys and
    # statuses of conversations started before its cut, and every window read ahead starts after.
    # With a `reader` (a second connection: see `rerate`), the reads run while this connection
    # writes; they see what is committed, which for the windows ahead is what this transaction
    # sees, unless conversations are re-attributed in it (then it reads them itself).
    ahead: deque[tuple[store.ClientTalks, datetime | None, asyncio.Future[_Plan]]] = deque()
    reading_from, planning = cut, None
    source = conn if reader is None or reattribute else reader

    async def read_ahead() -> None:
        nonlocal reading_from, planning
        while reading_from is not None and len(ahead) < 2:
            later, later_cut = await _window(source, client_id, reading_from, reattribute)
            current = await store.load_current(source, client_id, contract_ids, reading_from, later_cut)
            planning = asyncio.ensure_future(_plan_after(planning, rater, later.talks, current, later_cut))
            ahead.append((later, later_cut, planning))
            reading_from = later_cut

    postings, charges = 0, dict[str, Charge]()
    reading: asyncio.Future[None] | None = None
    try:
        while True:
            if reading is None or reading.done():
                if reading is not None:
                    await reading  # its error, if any
                reading = asyncio.ensure_future(read_ahead())
                if source is conn:
                    await reading
            postings += await _apply(conn, client_id, contract_ids, plan, days, reason)
            statuses = _statuses(loaded.statuses, plan.rating.uncovered)
            await store.set_match_statuses(
                conn, {cid: status for cid, status in statuses.items() if loaded.stored.get(cid) != status}
            )
            charges.update(plan.charges)
            if not ahead:
                await reading
            if not ahead:
                return postings, charges
            loaded, cut, following = ahead.popleft()
            plan, days = await following, None
    finally:
        # On an error, let the reads and the threads finish before the transaction is rolled back.
        if reading is not None:
            await asyncio.gather(reading, return_exceptions=True)
        await asyncio.gather(*(task for _, _, task in ahead), return_exceptions=True)


async def _plan_after(
    previous: asyncio.Future[_Plan] | None,
    rater: ClientRater,
    talks: list[Talk],
    current: dict[Key, store.Current],
    cut: datetime | None,
) -> _Plan:
    """Plan a window in a thread once the window before it is planned (the rater is sequential)."""
    if previous is not None:
        await previous
    return await asyncio.to_thread(_plan, rater, talks, current, cut)


async def _window(
    conn: asyncpg.Connection, client_id: str, front: datetime, reattribute: bool, size: int | None = None
) -> tuple[store.ClientTalks, datetime | None]:
    """The client's conversations from the frontier `front` up to the next frontier after about
    `size` (default WINDOW) of them (None when they reach the end), resolved again when
    `reattribute`."""
    count = size or WINDOW
    while True:
        end = await store.nth_start(conn, client_id, front, count)
        loaded = await store.load_talks(conn, client_id, front, end, resolve=reattribute)
        following = None if end is None else await store.next_start(conn, client_id, end)
        if following is None:
            return loaded, None
        spans = [(talk.started_ms, loaded.ends_ms[talk.conversation_id]) for talk in loaded.talks]
        cut_ms = cut_point(spans, to_ms(following))
        if cut_ms is not None:
            cut = from_ms(cut_ms)
            kept = [talk for talk in loaded.talks if talk.started_ms < cut_ms]
            return replace(loaded, talks=kept), cut
        count *= 2


def cut_point(spans: list[tuple[int, int]], following: int) -> int | None:
    """The latest moment a window of conversations, (start, end) in ms, may stop at: a start
    (after the first conversation's, or `following`, the first start after the window) before
    which every conversation has ended. None when they overlap all the way."""
    cut: int | None = None
    latest_end: int | None = None
    for index, (start, end) in enumerate(sorted(spans)):
        if index > 0 and latest_end is not None and start > latest_end:
            cut = start
        latest_end = end if latest_end is None else max(latest_end, end)
    if latest_end is None or following > latest_end:
        cut = following
    return cut


class ContractRefused(Exception):
    """A contract cannot be ended or withdrawn as asked; the message says why and what to do."""


async def end_contract(pool: asyncpg.Pool, contract_id: str, last_day: date) -> tuple[str, RerateSummary]:
    """Let the contract end on `last_day` (client-local, inclusive; not before its start, not after
    the last day it has: ending never extends a contract), then re-rate its client from the first
    day that changed. Returns the client and what the rerate posted."""
    async with _retryable(), _contract_errors(), pool.acquire() as conn:
        client_id: str = await conn.fetchval(QUERIES["end_contract"], contract_id, last_day)
    return client_id, await rerate(pool, client_id)


async def withdraw_contract(pool: asyncpg.Pool, contract_id: str) -> str:
    """Remove a contract no conversation was ever charged under (imported by mistake); returns its
    client. A contract in the ledger, or one an alert or notice named, stays: end it instead."""
    async with _retryable(), _contract_errors(), pool.acquire() as conn:
        client_id: str = await conn.fetchval(QUERIES["withdraw_contract"], contract_id)
    return client_id


@asynccontextmanager
async def _contract_errors() -> AsyncIterator[None]:
    """talkmeter.end_contract/withdraw_contract say 'no such contract' with no_data_found and
    'refused' with check_violation."""
    try:
        yield
    except asyncpg.NoDataFoundError as error:
        raise LookupError(error.args[0]) from error
    except asyncpg.CheckViolationError as error:
        raise ContractRefused(error.args[0]) from error


async def assign_conversation(
    pool: asyncpg.Pool, conversation_id: str, client_id: str, note: str | None
) -> None:
    """A person's decision that a conversation belongs to a client; `rerate` applies it."""
    async with _retryable(), pool.acquire() as conn:
        if not await conn.fetchval(QUERIES["conversation_exists"], conversation_id):
            raise LookupError(f"no conversation {conversation_id!r}")
        if await store.load_client(conn, client_id) is None:
            raise LookupError(f"no client {client_id!r}")
        await conn.execute(QUERIES["assign_conversation"], conversation_id, client_id, note)


_RETRYABLE = (
    asyncpg.TransactionRollbackError,  # serialization failures and deadlocks
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.QueryCanceledError,  # statement_timeout, lock_timeout
    OSError,
    asyncio.TimeoutError,
)


@asynccontextmanager
async def _retryable() -> AsyncIterator[None]:
    try:
        yield
    except (*_RETRYABLE, asyncpg.InterfaceError) as error:
        if not _is_retryable(error):
            raise
        raise RetryableStorageError(f"{type(error).__name__}: {error}") from error


def _is_retryable(error: BaseException | None) -> bool:
    """A lost connection surfaces from `Transaction.__aexit__` as an InterfaceError raised while
    handling the real cause, so the chain is searched; other InterfaceErrors are bugs."""
    while error is not None:
        if isinstance(error, _RETRYABLE):
            return True
        error = error.__cause__ or error.__context__
    return False
