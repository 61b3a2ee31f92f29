"""In-memory stand-ins for the engine's ports: the store (the alert rows and the ledger's settled
usage, the latter computed by rating the recorded conversations, as the running state of the
ledger would hold it) and a clock with timers that the test moves by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from accounting.contracts import Contract
from accounting.conversations import Talk, parse_conversation
from accounting.quota import AlertKey, Settled, settled_of
from accounting.rating import rate_contract
from daemon.alerts.delivery import DeliveryState
from daemon.alerts.engine import ClientQuota, Decide, LiveRow, SinksFor, StoreView
from daemon.alerts.messages import Notification, payload


class MemoryStore:
    def __init__(self, clients: Sequence[ClientQuota], numbers: dict[str, list[str]]) -> None:
        self.clients = {quota.info.client_id: quota for quota in clients}
        self.numbers = numbers
        self.talks: dict[str, list[Talk]] = defaultdict(list)  # by contract
        self.claimed: list[Notification] = []
        self.notified: list[dict[str, Any]] = []
        self.deliveries: dict[tuple[int, str], tuple[DeliveryState, int, str | None]] = {}
        self.lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._notices: set[str] = set()
        self.live: dict[str, LiveRow] = {}

    # the ledger, as far as alerts see it

    def record(self, conversation: dict[str, Any], contract_id: str) -> None:
        self.talks[contract_id].append(parse_conversation(conversation).talk)

    def settled(self, contract: Contract) -> Settled:
        timezone = next(q.info.timezone for q in self.clients.values() if contract in q.contracts)
        return settled_of(rate_contract(contract, timezone, self.talks[contract.contract_id]))

    @property
    def keys(self) -> list[AlertKey]:
        return [n.key for n in self.claimed if n.key is not None]

    # the port

    async def match(self, number: str) -> list[str]:
        return list(self.numbers.get(number, []))

    async def load(self, client_id: str) -> ClientQuota | None:
        return self.clients.get(client_id)

    async def view(
        self, client_id: str, contracts: Sequence[Contract], days: tuple[date, date], live: Sequence[str]
    ) -> StoreView:
        recorded = {t.conversation_id for talks in self.talks.values() for t in talks}
        return StoreView(
            {contract.contract_id: self.settled(contract) for contract in contracts},
            frozenset(key for key in self.keys if key.contract_id in {c.contract_id for c in contracts}),
            frozenset(recorded & set(live)),
        )

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
        async with self.lock:
            view = await self.view(client_id, contracts, days, live)
            claimed = []
            for notification in decide(view):
                if notification.key in self.keys:
                    continue
                claimed.append(self._claim(notification, sinks_for(notification), notify))
            return claimed, view

    async def claim_notice(
        self, notification: Notification, sinks: list[str], notify: bool
    ) -> Notification | None:
        assert notification.call is not None
        if notification.call.conversation_id in self._notices:
            return None
        self._notices.add(notification.call.conversation_id)
        return self._claim(notification, sinks, notify)

    async def pending(self, pbx: str) -> list[tuple[Notification, dict[str, int]]]:
        found = []
        for notification in self.claimed:
            assert notification.notification_id is not None
            waiting = {sink: attempts for (nid, sink), (state, attempts, _) in self.deliveries.items()
                       if nid == notification.notification_id and state == "pending"}  # fmt: skip
            if waiting and notification.pbx == pbx:
                found.append((notification, waiting))
        return found

    async def put_live(self, pbx: str, rows: Sequence[LiveRow]) -> None:
        self.live.update({row.conversation_id: row for row in rows})

    async def drop_live(self, conversation_ids: Sequence[str]) -> None:
        for conversation_id in conversation_ids:
            self.live.pop(conversation_id, None)

    async def keep_live(self, pbx: str, conversation_ids: Sequence[str]) -> None:
        self.live = {cid: row for cid, row in self.live.items() if cid in conversation_ids}

    async def attempted(
        self, notification_id: int, sink: str, state: DeliveryState, attempts: int, error: str | None
    ) -> None:
        self.deliveries[(notification_id, sink)] = (state, attempts, error)

    def _claim(self, notification: Notification, sinks: list[str], notify: bool) -> Notification:
        claimed = notification.claimed(next(self._ids))
        self.claimed.append(claimed)
        for sink in sinks:
            self.deliveries[(claimed.notification_id, sink)] = ("pending", 0, None)  # type: ignore[index]
        if notify:
            self.notified.append(payload(claimed))
        return claimed


@dataclass(order=True)
class _Timer:
    when: float
    order: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """The PBX's clock, moved by the test; timers fire in order as it passes them."""

    def __init__(self, now: float) -> None:
        self._now = now
        self._timers: list[_Timer] = []
        self._order = itertools.count()
        self.fired: list[float] = []

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(when, next(self._order), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, to: float) -> None:
        while self._timers and self._timers[0].when <= to:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, timer.when)
            self.fired.append(timer.when)
            timer.callback()
        self._now = max(self._now, to)

    @property
    def next_timer(self) -> float | None:
        live = [t.when for t in self._timers if not t.cancelled]
        return min(live, default=None)
