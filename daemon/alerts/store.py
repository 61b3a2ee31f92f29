"""The alert engine's PostgreSQL side: settled usage, claims, delivery rows, live conversations.

Theory of operation
-------------------
Settled usage comes from the ledger's running state (`usage_days` for the days in play,
`usage_totals` for the term), which accounting keeps in the same transaction as every ledger row:
a read is a few index lookups, whatever the ledger's size.

`claim` is where the database decides who sends. It opens a transaction, takes the client's
rating lock (the advisory lock recording takes, so no ledger row of this client is being posted
meanwhile), reads the settled usage, the alerts already raised and which conversations in progress
are already recorded, lets the engine decide from exactly that, and inserts one row per decided
alert with `ON CONFLICT DO NOTHING` on (client, contract, kind, percent, period): a row that
already exists was claimed by someone else, before or at the same time, and this daemon does not
send it. With the row come its pending delivery rows, one per sink, and, when configured,
`NOTIFY talkmeter_alerts` with the payload, which PostgreSQL delivers at commit: exactly when the
alert is claimed. Call-start notices are claimed the same way, once per conversation.

The conversations in progress reach `talkmeter.quota_now` through `live_conversations`, which the
engine writes in batches (`put_live`) and prunes with a heartbeat (`keep_live`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg

from accounting import store as ledger_store
from accounting.contracts import Contract
from accounting.queries import QUERIES as ACCOUNTING_QUERIES
from accounting.queries import parse_queries
from accounting.quota import AlertKey, Settled, SettledDay, is_term
from daemon.alerts.delivery import DeliveryState
from daemon.alerts.engine import ClientQuota, Decide, LiveRow, SinksFor, StoreView
from daemon.alerts.messages import ClientInfo, Language, Notification, from_payload, payload

QUERIES = parse_queries(
    (Path(ledger_store.__file__).parent / "sql" / "alerts.sql").read_text(encoding="utf-8")
)

PoolSource = Callable[[], Awaitable[asyncpg.Pool]]


class PgStore:
    def __init__(self, pool: PoolSource, *, language: Language = "ru", instance: str | None = None) -> None:
        """`instance`: this talkmeter's name (settings.instance): its claims, the deliveries it
        resumes and the live rows its heartbeat may drop are its own, not a standby's."""
        self._pool = pool
        self.language = language
        self.instance = instance

    async def match(self, number: str) -> list[str]:
        pool = await self._pool()
        return [row["client_id"] for row in await pool.fetch(QUERIES["clients_with_number"], number)]

    async def load(self, client_id: str) -> ClientQuota | None:
        pool = await self._pool()
        async with pool.acquire() as conn:
            client = await ledger_store.load_client(conn, client_id)
            if client is None:
                return None
            contracts = await ledger_store.load_contracts(conn, client_id)
        return ClientQuota(ClientInfo(client.client_id, client.name, client.timezone), tuple(contracts))

    async def view(
        self, client_id: str, contracts: Sequence[Contract], days: tuple[date, date], live: Sequence[str]
    ) -> StoreView:
        pool = await self._pool()
        async with pool.acquire() as conn:
            return await self._view(conn, client_id, contracts, days, live)

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
        pool = await self._pool()
        claimed: list[Notification] = []
        async with pool.acquire() as conn, conn.transaction():
            await ledger_store.lock_client(conn, client_id)
            view = await self._view(conn, client_id, contracts, days, live)
            taken = set(view.raised)
            for notification in decide(view):
                key, contract = notification.key, notification.contract
                assert key is not None and contract is not None
                end = contract.valid_to if is_term(contract, key) else key.period_start
                body = json.dumps(payload(notification, self.language), ensure_ascii=False)
                call = notification.call
                notification_id = await conn.fetchval(
                    QUERIES["claim_alert"],
                    client_id,
                    key.contract_id,
                    key.kind,
                    key.percent,
                    key.period_start,
                    end,
                    call.conversation_id if call else None,
                    notification.pbx,
                    _timestamp(notification.crossed_at),
                    _timestamp(notification.decided_at),
                    body,
                    self._sinks(sinks_for(notification), notify),
                    self.instance,
                )
                taken.add(key)
                if notification_id is not None:  # else another daemon claimed it: it sends it
                    claimed.append(notification.claimed(notification_id))
        return claimed, StoreView(view.settled, frozenset(taken), view.recorded)

    async def claim_notice(
        self, notification: Notification, sinks: list[str], notify: bool
    ) -> Notification | None:
        pool = await self._pool()
        call = notification.call
        assert call is not None
        notification_id = await pool.fetchval(
            QUERIES["claim_notice"],
            notification.client.client_id if notification.client else None,
            notification.contract.contract_id if notification.contract else None,
            notification.match,
            call.conversation_id,
            notification.pbx,
            _timestamp(notification.decided_at),
            json.dumps(payload(notification, self.language), ensure_ascii=False),
            self._sinks(sinks, notify),
            self.instance,
        )
        return None if notification_id is None else notification.claimed(notification_id)

    async def pending(self, pbx: str) -> list[tuple[Notification, dict[str, int]]]:
        pool = await self._pool()
        found = []
        async with pool.acquire() as conn:
            for row in await conn.fetch(QUERIES["pending_deliveries"], pbx, self.instance):
                contract = await self._contract(conn, row["contract_id"])
                key = None
                if row["kind"] is not None:
                    key = AlertKey(row["contract_id"], row["kind"], row["percent"], row["period_start"])
                data = {**json.loads(row["payload"]), "id": row["notification_id"]}
                notification = from_payload(data, key, contract)
                found.append((notification, dict(zip(row["sinks"], row["attempts"], strict=True))))
        return found

    async def attempted(
        self, notification_id: int, sink: str, state: DeliveryState, attempts: int, error: str | None
    ) -> None:
        pool = await self._pool()
        await pool.execute(QUERIES["delivery_attempted"], notification_id, sink, state, attempts, error)

    async def put_live(self, pbx: str, rows: Sequence[LiveRow]) -> None:
        if not rows:
            return
        pool = await self._pool()
        columns: list[list[Any]] = [[] for _ in range(14)]
        for row in rows:
            values = (
                row.conversation_id,
                row.client_id,
                row.contract_id,
                row.channel,
                row.client_number,
                ",".join(row.consultants),
                _timestamp(row.started_at),
                _timestamp(row.as_of),
                row.talk_ms,
                row.counted_ms,
                row.talking,
                row.counting,
                row.on_hold,
                row.ended,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        await pool.execute(QUERIES["put_live_conversations"], pbx, *columns, self.instance)

    async def drop_live(self, conversation_ids: Sequence[str]) -> None:
        pool = await self._pool()
        await pool.execute(QUERIES["drop_live_conversations"], list(conversation_ids))

    async def keep_live(self, pbx: str, conversation_ids: Sequence[str]) -> None:
        pool = await self._pool()
        await pool.execute(QUERIES["keep_live_conversations"], pbx, list(conversation_ids), self.instance)

    # inside transactions

    async def _view(
        self,
        conn: asyncpg.Connection,
        client_id: str,
        contracts: Sequence[Contract],
        days: tuple[date, date],
        live: Sequence[str],
    ) -> StoreView:
        ids = [contract.contract_id for contract in contracts]
        starts = sorted({contract.valid_from for contract in contracts})
        row = await conn.fetchrow(QUERIES["alert_view"], client_id, ids, *days, starts, list(live))
        by_day: dict[str, dict[date, SettledDay]] = defaultdict(dict)
        for contract_id, day, free, prepaid, paid in json.loads(row["days"]):
            by_day[contract_id][date.fromisoformat(day)] = SettledDay(free, prepaid, paid)
        totals = {contract_id: (prepaid, paid) for contract_id, prepaid, paid in json.loads(row["totals"])}
        settled = {}
        for contract_id in ids:
            prepaid, paid = totals.get(contract_id, (0, 0))
            settled[contract_id] = Settled(by_day[contract_id], prepaid, paid)
        raised = frozenset(
            AlertKey(contract_id, kind, percent, date.fromisoformat(start))
            for contract_id, kind, percent, start in json.loads(row["raised"])
        )
        return StoreView(settled, raised, frozenset(row["recorded"]))

    @staticmethod
    def _sinks(sinks: list[str], notify: bool) -> list[str]:
        """The delivery rows to create: NOTIFY's, sent in the claiming statement, last."""
        return [*sinks, "pg_notify"] if notify else list(sinks)

    async def _contract(self, conn: asyncpg.Connection, contract_id: str | None) -> Contract | None:
        if contract_id is None:
            return None
        owners = await conn.fetch(ACCOUNTING_QUERIES["contract_owners"], [contract_id])
        if not owners:
            return None
        contracts = await ledger_store.load_contracts(conn, owners[0]["client_id"])
        return next((c for c in contracts if c.contract_id == contract_id), None)


def _timestamp(moment: float | None) -> datetime | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC)
