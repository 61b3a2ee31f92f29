"""Recording finished conversations and keeping the ledger equal to the rating of what was talked.

`record_conversation` is what the daemon calls for every finished conversation. In one
transaction it stores the conversation (idempotent on its id), decides whose it is (an
assignment, else a number that belongs to exactly one client), and settles that client: under a
per-client lock it re-rates the contract the conversation falls under and appends the ledger
rows that make the ledger agree with the rating (see `postings`). Rating again under the lock
is what makes two daemons safe: whoever comes second sees the first one's committed
conversations and rates them together, so the caps hold exactly, and a conversation that
talked earlier but ended later corrects the others through adjustment rows.

Only the conversations from the *frontier* on are re-rated: the new conversation's start,
pulled back to the start of any conversation of the client still going on at that moment
(repeatedly, while they overlap). Rating is causal (nothing talked after a moment changes what
was consumed before it), and no conversation straddles the frontier, so the usage before it can
be read from the ledger (`PriorUsage`) and the result equals rating the whole contract again.
The cost of a recording therefore depends on the overlap around it, not on the contract's
history. `rerate` still re-rates each client's contracts from their start.

Errors: `InvalidConversation` (from `conversations`) means the input is wrong and retrying is
useless; `RetryableStorageError` means the database was unreachable or aborted the transaction;
nothing was written and the caller should keep the conversation and try again later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from accounting import store
from accounting.contracts import Client, Contract
from accounting.conversations import FinishedConversation, Talk, from_ms, parse_conversation, to_ms
from accounting.postings import plan_postings
from accounting.queries import QUERIES
from accounting.rating import Charge, choose_contract, local_date, rate_client

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


@dataclass(frozen=True, slots=True)
class Settlement:
    charges: dict[str, Charge]
    postings: int


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
    )
    return result


async def _record(pool: asyncpg.Pool, record: FinishedConversation) -> RecordResult:
    async with _retryable(), pool.acquire() as conn, conn.transaction():
        if not await store.insert_conversation(conn, record):
            return RecordResult(record.conversation_id, "duplicate")
        client_id, status = await store.resolve(conn, record.conversation_id)
        if client_id is None:
            await store.set_attribution(conn, record.conversation_id, None, status)
            return RecordResult(record.conversation_id, cast(RecordStatus, status))
        await store.lock_client(conn, client_id)
        await store.set_attribution(conn, record.conversation_id, client_id, status)
        return await _rate_new(conn, client_id, record.talk)


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
    settlement = await _settle_from(conn, client, contracts, contract, talk)
    return RecordResult(
        conversation_id,
        "rated",
        client_id,
        contract.contract_id,
        settlement.charges.get(conversation_id),
        settlement.postings,
    )


async def _settle_from(
    conn: asyncpg.Connection, client: Client, contracts: list[Contract], contract: Contract, new: Talk
) -> Settlement:
    """Re-rate one contract from the frontier of a new conversation on (see the module comment)."""
    zone = ZoneInfo(client.timezone)
    since, until = store.window([contract])
    front = await store.frontier(conn, client.client_id, from_ms(new.started_ms))
    talks, _ = await store.load_talks(
        conn, client.client_id, front if since is None else max(front, since), until
    )
    # Days before the frontier's week cannot take free time or week slots any more.
    first_day = local_date(to_ms(front), zone) - timedelta(days=7)
    prior = await store.prior_usage(conn, contract, front, first_day)
    only = frozenset({contract.contract_id})
    rating = rate_client(contracts, client.timezone, talks, only, {contract.contract_id: prior})
    desired = {(charge.conversation_id, charge.contract_id): charge for charge in rating.charges}
    posted = await store.load_posted(conn, client.client_id, [contract.contract_id], front)
    postings = plan_postings(desired, posted)
    await store.post(conn, client.client_id, postings, f"conversation {new.conversation_id}")
    return Settlement({charge.conversation_id: charge for charge in rating.charges}, len(postings))


async def settle_client(conn: asyncpg.Connection, client_id: str, reason: str) -> Settlement:
    """Make the ledger of all the client's contracts equal the rating of all its conversations,
    and mark the conversations no contract covers. The caller holds the client's lock
    (`store.lock_client`) inside an open transaction."""
    client = await store.load_client(conn, client_id)
    if client is None:
        return Settlement({}, 0)
    contracts = await store.load_contracts(conn, client_id)
    talks, statuses = await store.load_talks(conn, client_id, None, None)
    rating = rate_client(contracts, client.timezone, talks)
    desired = {(charge.conversation_id, charge.contract_id): charge for charge in rating.charges}
    posted = await store.load_posted(conn, client_id, None)
    postings = plan_postings(desired, posted)
    await store.post(conn, client_id, postings, reason)
    await store.set_match_statuses(conn, _statuses(statuses, rating.uncovered))
    return Settlement({charge.conversation_id: charge for charge in rating.charges}, len(postings))


def _statuses(resolved: dict[str, str], uncovered: tuple[str, ...]) -> dict[str, str]:
    statuses = dict(resolved)
    statuses.update(dict.fromkeys(uncovered, "no_contract"))
    return statuses


@dataclass(frozen=True, slots=True)
class RerateSummary:
    clients: int
    postings: int


async def rerate(pool: asyncpg.Pool, client_id: str | None = None) -> RerateSummary:
    """Re-attribute conversations after number, assignment or contract changes and post the
    adjustments: for every client, or for `client_id` and whoever gains conversations."""
    async with _retryable(), pool.acquire() as conn:
        postings = 0
        # First detach what no longer belongs to its client (reversing its charges), so that a
        # conversation is never charged to two clients at once.
        releasing = sorted({row["client_id"] for row in await conn.fetch(QUERIES["attributions_to_release"])})
        for owner in releasing:
            async with conn.transaction():
                await store.lock_client(conn, owner)
                await conn.execute(QUERIES["release_client_conversations"], owner)
                postings += (await settle_client(conn, owner, "rerate")).postings
        await conn.execute(QUERIES["refresh_unattributed_statuses"])
        targets = await _rerate_targets(conn, client_id)
        for target in targets:
            async with conn.transaction():
                await store.lock_client(conn, target)
                await conn.execute(QUERIES["attach_client_conversations"], target)
                postings += (await settle_client(conn, target, "rerate")).postings
        return RerateSummary(len(set(releasing) | set(targets)), postings)


async def _rerate_targets(conn: asyncpg.Connection, client_id: str | None) -> list[str]:
    if client_id is None:
        return [row["client_id"] for row in await conn.fetch(QUERIES["all_clients"])]
    waiting = await conn.fetch(QUERIES["clients_waiting_attachment"])
    return sorted({client_id} | {row["client_id"] for row in waiting})


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
