"""The two stores the engine scenarios run on: in memory, and PostgreSQL with the real ledger
(clients, contracts and numbers saved as `talkmeter import` saves them; conversations recorded by
accounting.ledger.record_conversation, which keeps the running usage state the alerts read)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import asyncpg

from accounting import store as ledger_store
from accounting.contracts import Client, Contract
from accounting.conversations import parse_conversation
from accounting.ledger import record_conversation
from accounting.rating import choose_contract
from daemon.alerts.delivery import Journal
from daemon.alerts.engine import AlertStore, ClientQuota
from daemon.alerts.store import PgStore

from .memory import MemoryStore


class Store(AlertStore, Journal, Protocol):
    """What the engine and its dispatcher need of one store."""


class Backend(Protocol):
    @property
    def store(self) -> Store: ...

    async def record(self, conversation: dict[str, Any]) -> tuple[str | None, str | None]:
        """Record a finished conversation as the writer does: (client, contract) it went to."""
        ...

    async def add_contract(self, contract: Contract) -> None:
        """What `talkmeter import` does with a new contract of the client."""
        ...

    async def claimed(self) -> list[tuple[str, int, str]]:
        """(kind, percent, period start) of every alert claimed, in claiming order."""
        ...

    async def live(self) -> dict[str, tuple[int, int, bool]]:
        """The calls in progress written for quota_now: (talk_ms, counted_ms, on hold)."""
        ...


class MemoryBackend:
    def __init__(self, clients: Sequence[ClientQuota], numbers: dict[str, list[str]]) -> None:
        self.store = MemoryStore(clients, numbers)

    async def record(self, conversation: dict[str, Any]) -> tuple[str | None, str | None]:
        owners = self.store.numbers.get(conversation["client_number"] or "", [])
        if len(owners) != 1:
            return None, None
        quota = self.store.clients[owners[0]]
        talk = parse_conversation(conversation).talk
        contract = choose_contract(quota.contracts, talk, ZoneInfo(quota.info.timezone))
        if contract is None:
            return owners[0], None
        self.store.record(conversation, contract.contract_id)
        return owners[0], contract.contract_id

    async def add_contract(self, contract: Contract) -> None:
        quota = self.store.clients[contract.client_id]
        self.store.clients[contract.client_id] = replace(quota, contracts=(*quota.contracts, contract))

    async def claimed(self) -> list[tuple[str, int, str]]:
        return [(key.kind, key.percent, key.period_start.isoformat()) for key in self.store.keys]

    async def live(self) -> dict[str, tuple[int, int, bool]]:
        return {cid: (row.talk_ms, row.counted_ms, row.on_hold) for cid, row in self.store.live.items()}


class PostgresBackend:
    def __init__(self, pool: asyncpg.Pool, language: str = "en", instance: str | None = None) -> None:
        self.pool = pool
        self.store: Store = PgStore(self._pool, language=language, instance=instance)  # type: ignore[arg-type]

    async def _pool(self) -> asyncpg.Pool:
        return self.pool

    async def seed(self, clients: Sequence[ClientQuota], numbers: dict[str, list[str]]) -> None:
        async with self.pool.acquire() as conn:
            owned = {owner for owners in numbers.values() for owner in owners}
            for client_id in sorted(owned | {q.info.client_id for q in clients}):
                quota = next((q for q in clients if q.info.client_id == client_id), None)
                mine = tuple(number for number, owners in numbers.items() if client_id in owners)
                name, timezone = (
                    (quota.info.name, quota.info.timezone) if quota else (client_id, "Europe/Moscow")
                )
                await ledger_store.save_client(conn, Client(client_id, name, timezone, mine))
                for contract in quota.contracts if quota else ():
                    await ledger_store.save_contract(conn, contract)

    async def record(self, conversation: dict[str, Any]) -> tuple[str | None, str | None]:
        result = await record_conversation(self.pool, conversation)
        return result.client_id, result.contract_id

    async def add_contract(self, contract: Contract) -> None:
        async with self.pool.acquire() as conn:
            await ledger_store.save_contract(conn, contract)

    async def claimed(self) -> list[tuple[str, int, str]]:
        rows = await self.pool.fetch(
            "SELECT kind, percent, period_start FROM talkmeter.notifications "
            "WHERE type = 'quota.alert' ORDER BY notification_id"
        )
        return [(row["kind"], row["percent"], row["period_start"].isoformat()) for row in rows]

    async def live(self) -> dict[str, tuple[int, int, bool]]:
        rows = await self.pool.fetch(
            "SELECT conversation_id, talk_ms, counted_ms, on_hold FROM talkmeter.live_conversations"
        )
        return {row["conversation_id"]: (row["talk_ms"], row["counted_ms"], row["on_hold"]) for row in rows}
