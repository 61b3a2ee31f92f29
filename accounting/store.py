"""The PostgreSQL adapter: domain values in and out of the `talkmeter` schema, nothing more.

Every function takes a connection the caller already holds (and, where it matters, a
transaction the caller opened); the SQL is in `sql/queries.sql`. JSON is passed as text and
cast in SQL, so callers need no connection-level codecs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta

import asyncpg

from accounting.contracts import Client, Contract
from accounting.conversations import FinishedConversation, Interval, Talk, from_ms, to_ms
from accounting.postings import DayCounts, Key, LedgerState, Posting
from accounting.queries import QUERIES
from accounting.rating import PriorUsage

# Contract validity is in client-local dates; any zone is within ±14 h of UTC, so this margin
# loads every conversation a contract might cover (rating filters by the exact local date).
_ZONE_MARGIN = timedelta(days=1)


async def insert_conversation(conn: asyncpg.Connection, conversation: FinishedConversation) -> bool:
    """Store the conversation and its segments; False when it was already stored."""
    inserted = await conn.fetchval(
        QUERIES["insert_conversation"],
        conversation.conversation_id,
        conversation.pbx,
        conversation.direction,
        conversation.client_number,
        conversation.client_number_raw,
        conversation.line,
        list(conversation.consultants),
        conversation.started_at,
        conversation.answered_at,
        conversation.ended_at,
        conversation.wait_ms,
        conversation.talk.talk_ms,
        conversation.talk.hold_ms,
        conversation.estimated,
    )
    if inserted is None:
        return False
    intervals = conversation.intervals
    await conn.execute(
        QUERIES["insert_segments"],
        conversation.conversation_id,
        list(range(len(intervals))),
        [interval.consultant for interval in intervals],
        [from_ms(interval.start_ms) for interval in intervals],
        [from_ms(interval.end_ms) for interval in intervals],
        [interval.hold for interval in intervals],
    )
    return True


async def resolve(conn: asyncpg.Connection, conversation_id: str) -> tuple[str | None, str]:
    row = await conn.fetchrow(QUERIES["resolve_conversation"], conversation_id)
    return row["client_id"], row["status"]


async def set_attribution(
    conn: asyncpg.Connection, conversation_id: str, client_id: str | None, status: str
) -> None:
    await conn.execute(QUERIES["set_attribution"], conversation_id, client_id, status)


async def lock_client(conn: asyncpg.Connection, client_id: str) -> None:
    """Serialise rating of this client until the caller's transaction ends."""
    await conn.execute(QUERIES["lock_client"], client_id)


async def load_client(conn: asyncpg.Connection, client_id: str) -> Client | None:
    row = await conn.fetchrow(QUERIES["client"], client_id)
    return None if row is None else Client(row["client_id"], row["name"], row["timezone"], ())


async def load_contracts(conn: asyncpg.Connection, client_id: str) -> list[Contract]:
    return [contract_from_row(row) for row in await conn.fetch(QUERIES["client_contracts"], client_id)]


async def stored_contracts(conn: asyncpg.Connection, contract_ids: list[str]) -> dict[str, Contract]:
    """The contracts with these ids as the database has them (to tell a changed row from a new one)."""
    rows = await conn.fetch(QUERIES["contracts_by_id"], contract_ids)
    return {row["contract_id"]: contract_from_row(row) for row in rows}


async def stored_clients(conn: asyncpg.Connection, client_ids: list[str]) -> dict[str, Client]:
    """The clients with these ids as the database has them, numbers sorted."""
    rows = await conn.fetch(QUERIES["clients_by_id"], client_ids)
    return {
        row["client_id"]: Client(row["client_id"], row["name"], row["timezone"], tuple(row["numbers"]))
        for row in rows
    }


def contract_from_row(row: asyncpg.Record) -> Contract:
    return Contract(
        contract_id=row["contract_id"],
        client_id=row["client_id"],
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
        free_daily_minutes=row["free_daily_minutes"],
        free_days_per_week=row["free_days_per_week"],
        prepaid_minutes=row["prepaid_minutes"],
        rate_per_minute=row["rate_per_minute"],
        currency=row["currency"],
        billing_increment_seconds=row["billing_increment_seconds"],
        minimum_billable_seconds=row["minimum_billable_seconds"],
        short_call_seconds=row["short_call_seconds"],
        overage=row["overage"],
        hold_billable=row["hold_billable"],
        lines=frozenset(row["lines"]),
        alert_thresholds=tuple(row["alert_thresholds"]),
    )


def window(contracts: list[Contract]) -> tuple[datetime | None, datetime | None]:
    """UTC bounds of the start times of the conversations these contracts may cover."""
    if not contracts:
        return None, None
    since = min(_utc_midnight(contract.valid_from) for contract in contracts) - _ZONE_MARGIN
    if any(contract.valid_to is None for contract in contracts):
        return since, None
    last = max(contract.valid_to for contract in contracts if contract.valid_to is not None)
    return since, _utc_midnight(last) + timedelta(days=1) + _ZONE_MARGIN


def _utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


async def load_talks(
    conn: asyncpg.Connection, client_id: str, since: datetime | None, until: datetime | None
) -> tuple[list[Talk], dict[str, str]]:
    """The client's conversations started in [since, until), and their resolution statuses."""
    rows = await conn.fetch(QUERIES["client_conversations"], client_id, since, until)
    segments = await conn.fetch(QUERIES["client_segments"], client_id, since, until)
    intervals: dict[str, list[Interval]] = defaultdict(list)
    for segment in segments:
        intervals[segment["conversation_id"]].append(
            Interval(
                to_ms(segment["start_at"]), to_ms(segment["end_at"]), segment["hold"], segment["consultant"]
            )
        )
    talks = [
        Talk(
            row["conversation_id"],
            to_ms(row["started_at"]),
            row["line"],
            tuple(intervals[row["conversation_id"]]),
        )
        for row in rows
    ]
    return talks, {row["conversation_id"]: row["status"] for row in rows}


async def frontier(conn: asyncpg.Connection, client_id: str, start: datetime) -> datetime:
    """The earliest moment from which re-rating is exact: no conversation of the client that
    started before it was still going on at it (conversations overlapping are pulled in)."""
    while True:
        earliest = await conn.fetchval(QUERIES["earliest_start_still_talking"], client_id, start)
        if earliest is None or earliest >= start:
            return start
        start = earliest


async def prior_usage(
    conn: asyncpg.Connection, contract: Contract, before: datetime, from_day: date
) -> PriorUsage:
    """What the contract's conversations started before `before` consumed (free from `from_day`);
    the ledger is only asked about the allowances the contract has."""
    free: dict[date, int] = {}
    prepaid = 0
    key = (contract.client_id, contract.contract_id, before)
    if contract.free_daily_minutes is not None:
        rows = await conn.fetch(QUERIES["settled_free_by_day"], *key, from_day)
        free = {row["day"]: int(row["free_ms"]) for row in rows}
    if contract.prepaid_minutes is not None:
        prepaid = int(await conn.fetchval(QUERIES["settled_prepaid"], *key))
    return PriorUsage(free, prepaid)


async def set_match_statuses(conn: asyncpg.Connection, statuses: dict[str, str]) -> None:
    ids = sorted(statuses)
    await conn.execute(QUERIES["set_match_statuses"], ids, [statuses[i] for i in ids])


async def load_posted(
    conn: asyncpg.Connection, client_id: str, contract_ids: list[str] | None, since: datetime | None = None
) -> dict[Key, LedgerState]:
    """The ledger's value of the client's keys (of `contract_ids`, of conversations started at or
    after `since`; None = all)."""
    days: dict[Key, dict[date, DayCounts]] = defaultdict(dict)
    for row in await conn.fetch(QUERIES["posted_days"], client_id, contract_ids, since):
        key = (row["conversation_id"], row["contract_id"])
        # sum() of bigint is numeric in PostgreSQL: back to int for exact integer arithmetic.
        days[key][row["day"]] = (
            int(row["talk_ms"]),
            int(row["free_ms"]),
            int(row["prepaid_ms"]),
            int(row["paid_ms"]),
        )
    posted: dict[Key, LedgerState] = {}
    for row in await conn.fetch(QUERIES["posted_charges"], client_id, contract_ids, since):
        key = (row["conversation_id"], row["contract_id"])
        posted[key] = LedgerState(
            day=row["day"],
            talk_ms=int(row["talk_ms"]),
            hold_ms=int(row["hold_ms"]),
            excluded_ms=int(row["excluded_ms"]),
            free_ms=int(row["free_ms"]),
            prepaid_ms=int(row["prepaid_ms"]),
            paid_ms=int(row["paid_ms"]),
            billable_seconds=int(row["billable_seconds"]),
            amount=row["amount"],
            currency=row["currency"],
            over_quota=row["over_quota"],
            short_call=row["short_call"],
            tier_changes=tuple((change["at"], change["tier"]) for change in json.loads(row["tier_changes"])),
            days=days.get(key, {}),
        )
    return posted


async def post(conn: asyncpg.Connection, client_id: str, postings: list[Posting], reason: str) -> None:
    """Append the ledger rows (and their per-day rows)."""
    for posting in postings:
        value = posting.value
        charge_id = await conn.fetchval(
            QUERIES["insert_charge"],
            posting.conversation_id,
            posting.contract_id,
            client_id,
            posting.kind,
            reason,
            value.day,
            value.talk_ms,
            value.hold_ms,
            value.excluded_ms,
            value.free_ms,
            value.prepaid_ms,
            value.paid_ms,
            value.billable_seconds,
            value.amount,
            value.currency,
            value.over_quota,
            value.short_call,
            json.dumps([{"at": at, "tier": tier} for at, tier in value.tier_changes]),
        )
        days = sorted(value.days)
        await conn.execute(
            QUERIES["insert_charge_days"],
            charge_id,
            client_id,
            days,
            *([value.days[day][column] for day in days] for column in range(4)),
        )


async def save_client(conn: asyncpg.Connection, client: Client) -> None:
    """Upsert the client; its numbers become exactly `client.numbers`."""
    await conn.execute(QUERIES["upsert_client"], client.client_id, client.name, client.timezone)
    await conn.execute(QUERIES["replace_client_numbers"], client.client_id, list(client.numbers))


async def save_contract(conn: asyncpg.Connection, contract: Contract) -> None:
    await conn.execute(
        QUERIES["upsert_contract"],
        contract.contract_id,
        contract.client_id,
        contract.valid_from,
        contract.valid_to,
        contract.free_daily_minutes,
        contract.free_days_per_week,
        contract.prepaid_minutes,
        contract.rate_per_minute,
        contract.currency,
        contract.billing_increment_seconds,
        contract.minimum_billable_seconds,
        contract.short_call_seconds,
        contract.overage,
        contract.hold_billable,
        sorted(contract.lines),
        list(contract.alert_thresholds),
    )
