"""Checking that the running state equals what the ledger sums to (`talkmeter check-ledger`).

The ledger (`charges`, `charge_days`) is the truth; `current_charges` and the usage tables are
kept beside it in the same transactions (see `usage`). This check sums one client's ledger rows
in SQL, derives the running state from those sums with the same pure functions the writes use
(`usage.summarise`), and compares both with what the tables hold. It also checks that every key
starts when its conversation does: rating reads keys by start, and a key left at another start
would have its 'charge' row posted again. It reads the client's whole ledger, one client at a
time: it is an audit, not something rating does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from accounting import store
from accounting.usage import Running, summarise, without_zeros


@dataclass(frozen=True, slots=True)
class Mismatch:
    client_id: str
    table: str
    key: str
    ledger: str
    stored: str
    truth: str = "the ledger sums to"
    """What `ledger` is: the ledger's sums, or the conversation's start for a key's start."""

    def __str__(self) -> str:
        return (
            f"{self.table} {self.client_id}/{self.key}: "
            f"{self.truth} {self.ledger}, the table holds {self.stored}"
        )


async def check_client(conn: asyncpg.Connection, client_id: str) -> list[Mismatch]:
    """Every difference between the client's running state and its ledger (none when they agree)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        ledger = await store.ledger_keys(conn, client_id)
        stored = await store.stored_keys(conn, client_id)
        running = await store.stored_usage(conn, client_id)
        misdated = await store.misdated_keys(conn, client_id)
    mismatches = [
        Mismatch(client_id, "current_charges", "/".join(key), repr(ledger.get(key)), repr(stored.get(key)))
        for key in sorted(set(ledger) | set(stored))
        if _normalised(ledger.get(key)) != _normalised(stored.get(key))
    ]
    mismatches += [
        Mismatch(
            client_id,
            "current_charges",
            "/".join(key),
            conversation_start.isoformat(),
            key_start.isoformat(),
            "started_at: its conversation starts at",
        )
        for key, (key_start, conversation_start) in sorted(misdated.items())
    ]
    expected = without_zeros(summarise((key[1], record.value) for key, record in ledger.items()))
    mismatches += _compare(client_id, expected, without_zeros(running))
    return mismatches


def _normalised(record: store.KeyRecord | None) -> store.KeyRecord | None:
    return None if record is None else record._replace(value=record.value.normalised())


def _compare(client_id: str, expected: Running, stored: Running) -> list[Mismatch]:
    found: list[Mismatch] = []
    tables: list[tuple[str, Mapping[Any, object], Mapping[Any, object]]] = [
        ("usage_days", expected.days, stored.days),
        ("usage_weeks", expected.weeks, stored.weeks),
        ("usage_totals", expected.totals, stored.totals),
        ("usage_months", expected.months, stored.months),
    ]
    for table, want, have in tables:
        for key in sorted(set(want) | set(have), key=repr):
            if want.get(key) != have.get(key):
                found.append(Mismatch(client_id, table, _key(key), repr(want.get(key)), repr(have.get(key))))
    return found


def _key(key: object) -> str:
    if isinstance(key, tuple):
        return "/".join(str(part) for part in key)
    return str(key)
