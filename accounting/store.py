"""The PostgreSQL adapter: domain values in and out of the `talkmeter` schema, nothing more.

Every function takes a connection the caller already holds (and, where it matters, a
transaction the caller opened); the SQL is in `sql/queries.sql`. JSON is passed as text and
cast in SQL, so callers need no connection-level codecs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import asyncpg

from accounting.contracts import Client, Contract
from accounting.conversations import FinishedConversation, Interval, Talk, as_record, from_ms, to_ms
from accounting.postings import DayCounts, Key, LedgerState, Posting
from accounting.queries import QUERIES
from accounting.usage import DayKey, Running, Usage, Week
from accounting.versions import differences, fingerprint

# Contract validity is in client-local dates; any zone is within ±14 h of UTC, so this margin
# loads every conversation a contract might cover (rating filters by the exact local date).
_ZONE_MARGIN = timedelta(days=1)


async def insert_conversation(conn: asyncpg.Connection, conversation: FinishedConversation) -> bool:
    """Store the conversation and its segments; False when it was already stored."""
    inserted = await conn.fetchval(
        QUERIES["insert_conversation"],
        conversation.conversation_id,
        conversation.pbx,
        *_facts(conversation),
        *_segments(conversation),
    )
    return inserted is not None


def _facts(conversation: FinishedConversation) -> list[object]:
    """What one version of a conversation says, in the column order of its queries."""
    return [
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
        conversation.instance,
    ]


def _segments(conversation: FinishedConversation) -> list[list[Any]]:
    intervals = conversation.intervals
    return [
        list(range(len(intervals))),
        [interval.consultant for interval in intervals],
        [from_ms(interval.start_ms) for interval in intervals],
        [from_ms(interval.end_ms) for interval in intervals],
        [interval.hold for interval in intervals],
    ]


async def lock_conversation(conn: asyncpg.Connection, conversation_id: str) -> None:
    """Serialise every version of this conversation until the caller's transaction ends."""
    await conn.execute(QUERIES["lock_conversation"], conversation_id)


@dataclass(frozen=True, slots=True)
class Kept:
    """The version of a conversation the ledger keeps, and whom it is attributed to now."""

    version: FinishedConversation
    client_id: str | None


async def load_kept(conn: asyncpg.Connection, conversation_id: str) -> Kept | None:
    row = await conn.fetchrow(QUERIES["kept_version"], conversation_id)
    if row is None:
        return None
    segments = zip(
        row["starts"] or (),
        row["ends"] or (),
        row["holds"] or (),
        row["segment_consultants"] or (),
        strict=True,
    )
    version = FinishedConversation(
        conversation_id=row["conversation_id"],
        pbx=row["pbx"],
        direction=row["direction"],
        client_number=row["client_number"],
        client_number_raw=row["client_number_raw"],
        line=row["line"],
        consultants=tuple(row["consultants"]),
        started_at=row["started_at"],
        answered_at=row["answered_at"],
        ended_at=row["ended_at"],
        wait_ms=row["wait_ms"],
        estimated=row["estimated"],
        intervals=tuple(
            Interval(to_ms(start), to_ms(end), hold, consultant) for start, end, hold, consultant in segments
        ),
        instance=row["instance"],
    )
    return Kept(version, row["client_id"])


async def replace_conversation(conn: asyncpg.Connection, conversation: FinishedConversation) -> None:
    """Make `conversation` the kept version: its facts and segments replace the stored ones, and
    the conversation's ledger keys move to its start (they are read by start)."""
    await conn.execute(QUERIES["replace_conversation"], conversation.conversation_id, *_facts(conversation))
    await conn.execute(QUERIES["insert_segments"], conversation.conversation_id, *_segments(conversation))


async def set_aside(
    conn: asyncpg.Connection, version: FinishedConversation, outcome: str, compared: FinishedConversation
) -> None:
    """Store a version that is not (or no longer) kept, for audit; once per fingerprint."""
    await conn.execute(
        QUERIES["insert_version"],
        version.conversation_id,
        fingerprint(version),
        version.instance,
        outcome,
        compared.instance,
        json.dumps(differences(version, compared)),
        version.estimated,
        version.started_at,
        version.ended_at,
        version.talk.talk_ms,
        version.talk.hold_ms,
        json.dumps(as_record(version), ensure_ascii=False),
    )


async def attribute(conn: asyncpg.Connection, conversation_id: str) -> tuple[str | None, str]:
    """Give the conversation the client it resolves to (or none); returns it and the status."""
    row = await conn.fetchrow(QUERIES["attribute_conversation"], conversation_id)
    return row["client_id"], row["status"]


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


@dataclass(frozen=True, slots=True)
class ClientTalks:
    talks: list[Talk]
    statuses: dict[str, str]
    """The status each conversation should have if a contract covers it (matched, assigned, ...)."""
    stored: dict[str, str]
    """Each conversation's match_status as stored now."""
    ends_ms: dict[str, int]
    """Each conversation's end (ended_at), which a frontier is about."""


class PrunedConversation(Exception):
    """A conversation to rate has lost its segments (a retention job removed them): rating it again
    would reverse its charges, so nothing is written."""


async def load_talks(
    conn: asyncpg.Connection, client_id: str, since: datetime, until: datetime | None, resolve: bool = False
) -> ClientTalks:
    """The client's conversations started in [since, until) and the status each should have
    (resolved again with `resolve`); `PrunedConversation` when one of them talked but its segments
    are gone."""
    rows = await conn.fetch(QUERIES["client_conversations"], client_id, since, until, resolve)
    talks = [
        Talk(
            row["conversation_id"],
            row["started_ms"],
            row["line"],
            tuple(
                Interval(start, end, hold, consultant)
                for start, end, hold, consultant in zip(
                    row["starts"] or (),
                    row["ends"] or (),
                    row["holds"] or (),
                    row["consultants"] or (),
                    strict=True,
                )
            ),
        )
        for row in rows
    ]
    for talk, row in zip(talks, rows, strict=True):
        if talk.talk_ms != row["talk_ms"]:
            raise PrunedConversation(
                f"conversation {talk.conversation_id} of {client_id} (started "
                f"{from_ms(talk.started_ms).isoformat()}) has lost its segments (retention): it cannot be "
                "rated again; re-rate only what started later"
            )
    return ClientTalks(
        talks,
        {row["conversation_id"]: row["status"] for row in rows},
        {row["conversation_id"]: row["match_status"] for row in rows},
        {row["conversation_id"]: row["ended_ms"] for row in rows},
    )


async def frontier(conn: asyncpg.Connection, client_id: str, start: datetime) -> datetime:
    """The earliest moment from which re-rating is exact: no conversation of the client that
    started before it was still going on at it (conversations overlapping are pulled in)."""
    result: datetime = await conn.fetchval(QUERIES["frontier"], client_id, start)
    return result


async def nth_start(conn: asyncpg.Connection, client_id: str, at: datetime, places: int) -> datetime | None:
    """The start of the client's conversation `places` after its first one from `at` on."""
    result: datetime | None = await conn.fetchval(QUERIES["nth_start"], client_id, at, places)
    return result


async def next_start(conn: asyncpg.Connection, client_id: str, at: datetime) -> datetime | None:
    """The first start at or after `at` of the client's conversations and ledger keys."""
    result: datetime | None = await conn.fetchval(QUERIES["next_start"], client_id, at)
    return result


async def set_match_statuses(conn: asyncpg.Connection, statuses: dict[str, str]) -> None:
    if not statuses:
        return
    ids = sorted(statuses)
    await conn.execute(QUERIES["set_match_statuses"], ids, [statuses[i] for i in ids])


class Current(NamedTuple):
    started_at: datetime
    value: LedgerState


async def load_current(
    conn: asyncpg.Connection,
    client_id: str,
    contract_ids: Sequence[str] | None,
    since: datetime,
    until: datetime | None = None,
) -> dict[Key, Current]:
    """The current value of the client's ledger keys (of `contract_ids`, None = all) whose
    conversations started in [since, until)."""
    document = await conn.fetchval(
        QUERIES["current_charges"],
        client_id,
        None if contract_ids is None else list(contract_ids),
        since,
        until,
    )
    keys = json.loads(document)
    return {(key[0], key[1]): Current(datetime.fromisoformat(key[2]), _current(key)) for key in keys}


def _current(key: list[Any]) -> LedgerState:
    """A key's value from one entry of the `current_charges` query's document."""
    return LedgerState(
        day=date.fromisoformat(key[3]),
        talk_ms=key[4],
        hold_ms=key[5],
        excluded_ms=key[6],
        free_ms=key[7],
        prepaid_ms=key[8],
        paid_ms=key[9],
        billable_seconds=key[10],
        amount=Decimal(key[11]),
        currency=key[12],
        over_quota=key[13],
        short_call=key[14],
        tier_changes=tuple((change["at"], change["tier"]) for change in key[15]),
        days={date.fromisoformat(day): _counts(counts) for day, counts in key[16].items()},
    )


def _state(row: asyncpg.Record, days: str | None = None) -> LedgerState:
    """A key's value from a row of `current_charges` (or of sums of the ledger: sum() of bigint is
    numeric in PostgreSQL, so the counts go back to int for exact integer arithmetic)."""
    return LedgerState(
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
        days={
            date.fromisoformat(day): _counts(counts)
            for day, counts in json.loads(row["days"] if days is None else days).items()
        },
    )


def _counts(values: list[int]) -> DayCounts:
    talk, free, prepaid, paid = values
    return talk, free, prepaid, paid


async def load_usage(
    conn: asyncpg.Connection,
    client_id: str,
    contract_ids: Sequence[str],
    from_day: date,
    to_day: date | None = None,
) -> tuple[dict[DayKey, Usage], dict[str, Usage]]:
    """The running state of the contracts: their days from `from_day` to `to_day` (None: the last),
    and their totals less what the days after `to_day` used."""
    days: dict[DayKey, Usage] = {}
    totals: dict[str, Usage] = {}
    for row in await conn.fetch(QUERIES["usage"], client_id, list(contract_ids), from_day, to_day):
        if row["day"] is None:
            totals[row["contract_id"]] = _usage(row)
        else:
            days[(row["contract_id"], row["day"])] = _usage(row)
    return days, totals


def _usage(row: asyncpg.Record) -> Usage:
    return Usage(
        row["talk_ms"],
        row["free_ms"],
        row["prepaid_ms"],
        row["paid_ms"],
        row["conversations"],
        row["billable_seconds"],
        row["amount"],
    )


async def post(conn: asyncpg.Connection, client_id: str, postings: list[Posting], reason: str) -> None:
    """Append the ledger rows (and their per-day rows) and save the keys' current values."""
    if not postings:
        return
    await conn.execute(QUERIES["post"], client_id, reason, post_document(postings))


def post_document(postings: list[Posting]) -> str:
    """The JSON array the post statement reads (see queries.sql `post`)."""
    rows = ",".join(
        f'{{"position":{position},"conversation_id":{_string(posting.conversation_id)},'
        f'"contract_id":{_string(posting.contract_id)},"kind":"{posting.kind}",'
        f'{_value_members(posting.value)},"current":{{{_value_members(posting.current)}}}}}'
        for position, posting in enumerate(postings)
    )
    return f"[{rows}]"


_string = json.encoder.encode_basestring_ascii
"""A str as a JSON string: what json.dumps does for one, without its call overhead."""


def _value_members(value: LedgerState) -> str:
    """A ledger row's columns (or a key's value) as the members of the JSON object the post
    statement reads: amounts and dates as text, so that nothing goes through a float. Written
    out by hand rather than by json.dumps, which was a quarter of a whole-history rerate's
    Python; every string that is not a date is escaped as json.dumps does, every number is an int."""
    tier_changes = ",".join(
        f'{{"at":{_string(at)},"tier":{_string(tier)}}}' for at, tier in value.tier_changes
    )
    days = ",".join(
        f'"{day.isoformat()}":[{int(talk)},{int(free)},{int(prepaid)},{int(paid)}]'
        for day, (talk, free, prepaid, paid) in sorted(value.days.items())
    )
    currency = "null" if value.currency is None else _string(value.currency)
    over_quota, short_call = ("true" if flag else "false" for flag in (value.over_quota, value.short_call))
    return (
        f'"day":"{value.day.isoformat()}","talk_ms":{int(value.talk_ms)},"hold_ms":{int(value.hold_ms)},'
        f'"excluded_ms":{int(value.excluded_ms)},"free_ms":{int(value.free_ms)},'
        f'"prepaid_ms":{int(value.prepaid_ms)},"paid_ms":{int(value.paid_ms)},'
        f'"billable_seconds":{int(value.billable_seconds)},"amount":"{value.amount}",'
        f'"currency":{currency},"over_quota":{over_quota},"short_call":{short_call},'
        f'"tier_changes":[{tier_changes}],"days":{{{days}}}'
    )


async def add_usage(conn: asyncpg.Connection, client_id: str, changes: Running) -> None:
    """Add the running-state changes (see `usage.plan_usage`)."""
    if not (changes.days or changes.weeks or changes.totals or changes.months):
        return
    days, weeks, totals = sorted(changes.days), sorted(changes.weeks), sorted(changes.totals)
    months = sorted(changes.months)
    await conn.execute(
        QUERIES["add_usage"],
        client_id,
        [contract_id for contract_id, _ in days],
        [day for _, day in days],
        *_usage_columns([changes.days[key] for key in days]),
        [contract_id for contract_id, _ in weeks],
        [week for _, week in weeks],
        [changes.weeks[key].free_days for key in weeks],
        [changes.weeks[key].free_ms for key in weeks],
        totals,
        *_usage_columns([changes.totals[key] for key in totals]),
        [contract_id for contract_id, _ in months],
        [month for _, month in months],
        *_usage_columns([changes.months[key] for key in months]),
    )


def _usage_columns(usages: list[Usage]) -> list[list[int] | list[Decimal]]:
    return [
        [u.talk_ms for u in usages],
        [u.free_ms for u in usages],
        [u.prepaid_ms for u in usages],
        [u.paid_ms for u in usages],
        [u.conversations for u in usages],
        [u.billable_seconds for u in usages],
        [u.amount for u in usages],
    ]


# ----- re-rating what changed ----------------------------------------------------------------


class Pending(NamedTuple):
    since: datetime
    reattribute: bool
    revision: int


async def pending_clients(conn: asyncpg.Connection) -> list[str]:
    return [row["client_id"] for row in await conn.fetch(QUERIES["pending_rerates"])]


async def pending_rerate(conn: asyncpg.Connection, client_id: str) -> Pending | None:
    row = await conn.fetchrow(QUERIES["pending_rerate"], client_id)
    return None if row is None else Pending(row["since"], row["reattribute"], row["revision"])


async def queue_rerate(conn: asyncpg.Connection, client_id: str, since: datetime, reattribute: bool) -> None:
    await conn.execute(QUERIES["queue_rerate"], client_id, since, reattribute)


async def finish_rerate(conn: asyncpg.Connection, client_id: str, revision: int) -> bool:
    """Clear the client's mark; False when a change arrived since `revision` was read."""
    status: str = await conn.execute(QUERIES["finish_rerate"], client_id, revision)
    return status == "DELETE 1"


async def release_conversations(
    conn: asyncpg.Connection, client_id: str, since: datetime
) -> list[tuple[str | None, datetime]]:
    """Detach the client's conversations from `since` that no longer resolve to it; returns each
    one's new client (None when nobody) and start."""
    rows = await conn.fetch(QUERIES["release_client_conversations"], client_id, since)
    return [(row["new_client_id"], row["started_at"]) for row in rows]


async def attach_conversations(conn: asyncpg.Connection, client_id: str, since: datetime) -> None:
    await conn.execute(QUERIES["attach_client_conversations"], client_id, since)


# ----- the ledger against its running state ------------------------------------------------


class KeyRecord(NamedTuple):
    value: LedgerState
    postings: int
    last_charge_id: int


async def ledger_keys(conn: asyncpg.Connection, client_id: str) -> dict[Key, KeyRecord]:
    """Every key of the client as the ledger's rows sum to (not the running state)."""
    days: dict[Key, dict[date, DayCounts]] = defaultdict(dict)
    for row in await conn.fetch(QUERIES["ledger_key_days"], client_id):
        counts = (int(row["talk_ms"]), int(row["free_ms"]), int(row["prepaid_ms"]), int(row["paid_ms"]))
        if any(counts):
            days[(row["conversation_id"], row["contract_id"])][row["day"]] = counts
    return {
        (row["conversation_id"], row["contract_id"]): KeyRecord(
            replace(_state(row, "{}"), days=days.get((row["conversation_id"], row["contract_id"]), {})),
            row["postings"],
            row["last_charge_id"],
        )
        for row in await conn.fetch(QUERIES["ledger_keys"], client_id)
    }


async def stored_keys(conn: asyncpg.Connection, client_id: str) -> dict[Key, KeyRecord]:
    """Every key of the client as `current_charges` holds it."""
    return {
        (row["conversation_id"], row["contract_id"]): KeyRecord(
            _state(row), row["postings"], row["last_charge_id"]
        )
        for row in await conn.fetch(QUERIES["stored_current_charges"], client_id)
    }


async def misdated_keys(conn: asyncpg.Connection, client_id: str) -> dict[Key, tuple[datetime, datetime]]:
    """The client's keys whose start differs from their conversation's: (the key's, the conversation's)."""
    return {
        (row["conversation_id"], row["contract_id"]): (row["started_at"], row["conversation_started_at"])
        for row in await conn.fetch(QUERIES["misdated_keys"], client_id)
    }


async def stored_usage(conn: asyncpg.Connection, client_id: str) -> Running:
    """The client's whole running state as the tables hold it."""
    return Running(
        {
            (row["contract_id"], row["day"]): _usage(row)
            for row in await conn.fetch(QUERIES["stored_usage_days"], client_id)
        },
        {
            (row["contract_id"], row["week"]): Week(row["free_days"], row["free_ms"])
            for row in await conn.fetch(QUERIES["stored_usage_weeks"], client_id)
        },
        {
            row["contract_id"]: _usage(row)
            for row in await conn.fetch(QUERIES["stored_usage_totals"], client_id)
        },
        {
            (row["contract_id"], row["month"]): _usage(row)
            for row in await conn.fetch(QUERIES["stored_usage_months"], client_id)
        },
    )


async def all_clients(conn: asyncpg.Connection) -> list[str]:
    return [row["client_id"] for row in await conn.fetch(QUERIES["all_clients"])]


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
