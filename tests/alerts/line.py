"""The harness of the engine scenarios: one PBX (the scenario builder), the real call model, the
engine on a clock the test moves, its sinks, and a store (backends.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from accounting.contracts import Contract
from daemon.alerts.delivery import Dispatcher
from daemon.alerts.engine import AlertEngine, ClientQuota
from daemon.alerts.messages import CATEGORIES, ClientInfo
from daemon.alerts.messages import iso as to_iso
from daemon.alerts.sinks import Sink, WebhookSink
from telephony.calls import CallTracker
from telephony.effects import Conversation, ConversationEnded
from tests.telephony.scenario import Chan, Pbx

from .backends import Backend
from .memory import ManualClock
from .receivers import GUARD, HttpReceiver

NUMBER = "+74951234567"
DID_K1 = "74950000001"
MSK_10AM = datetime.fromisoformat("2026-11-24T10:00:00+03:00").timestamp()
MIN = 60.0


def contract(**rules: Any) -> Contract:
    values: dict[str, Any] = {
        "contract_id": "K1",
        "client_id": "romashka",
        "valid_from": datetime(2026, 1, 1).date(),
        "rate_per_minute": Decimal("2"),
        "currency": "RUB",
        "alert_thresholds": (80, 100),
    }
    values.update(rules)
    values["lines"] = frozenset(values.get("lines", ()))
    return Contract(**values)


def quota(terms: Contract | Sequence[Contract], timezone: str = "Europe/Moscow") -> ClientQuota:
    contracts = (terms,) if isinstance(terms, Contract) else tuple(terms)
    return ClientQuota(ClientInfo("romashka", "Ромашка", timezone), contracts)


@dataclass
class Line:
    """One PBX (the scenario builder), the call model, the engine and its webhook, on one clock."""

    backend: Backend
    receiver: HttpReceiver | None = None
    start: float = MSK_10AM
    name: str = "msk"
    sinks: Sequence[Sink] = ()
    options: dict[str, Any] = field(default_factory=dict)
    deliveries_settle: bool = True
    """Settling waits for the deliveries too (False: a sink that never answers is part of the test)."""
    pbx: Pbx = field(init=False)
    tracker: CallTracker = field(init=False)
    clock: ManualClock = field(init=False)
    engine: AlertEngine = field(init=False)
    ended: list[Conversation] = field(default_factory=list)
    _fed: int = 0
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.pbx = Pbx(now=self.start)
        self.tracker = CallTracker(pbx="msk")
        self.clock = ManualClock(self.start)
        sinks = list(self.sinks)
        if self.receiver is not None:
            sinks.append(WebhookSink(self.receiver.url, timeout=5, categories=CATEGORIES, language="en"))
        self.engine = AlertEngine(
            self.backend.store,
            Dispatcher(sinks, self.backend.store, **self.options),
            pbx=self.name,
            clock=self.clock,
            timers=self.clock,
            channels_of=self.tracker.consultant_channels,
            language="en",
        )

    async def __aenter__(self) -> Line:
        self._task = asyncio.create_task(self.engine.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.engine.close()

    async def play(self) -> None:
        """Feed the events written so far, the clock following their timestamps (and timers
        firing on the way), the engine settling after each step as a live daemon would."""
        for message in self.pbx.events[self._fed :]:
            assert message.timestamp is not None
            await self.advance(message.timestamp)
            for effect in self.tracker.feed(message, message.timestamp):
                self.engine.on_effect(effect)
                if isinstance(effect, ConversationEnded):
                    self.ended.append(effect.conversation)
            await self.settle()
        self._fed = len(self.pbx.events)

    async def wait(self, seconds: float) -> None:
        """Time passes on the PBX without any event."""
        self.pbx.after(seconds)
        await self.advance(self.pbx.now)

    async def advance(self, to: float) -> None:
        while (due := self.clock.next_timer) is not None and due <= to:
            self.clock.advance(due)
            await self.settle()
        self.clock.advance(to)

    async def settle(self) -> None:
        async with asyncio.timeout(GUARD):
            await (self.engine.idle() if self.deliveries_settle else self.engine.jobs_done())

    async def record(self, conversation: Conversation) -> None:
        """What the writer does: record the conversation, then tell the engine."""
        data = conversation.to_json()
        client_id, contract_id = await self.backend.record(data)
        self.engine.recorded(data, client_id, contract_id)
        await self.settle()

    def call(
        self, n: int = 1, consultant: str = "101", number: str = NUMBER, line: str = "74950000000"
    ) -> tuple[Chan, Chan]:
        client = self.pbx.client_calls(number, did=line, n=n)
        self.pbx.answer(client)
        agent = self.pbx.consultant(consultant, 10 + n)
        self.pbx.connect(agent, client)
        return client, agent


def alerts(receiver: HttpReceiver) -> list[dict[str, Any]]:
    """The alerts received, in the order they were claimed (each delivery is a task of its own,
    so two claimed together may arrive either way round)."""
    received = [r.json() for r in receiver.requests if r.json()["type"] == "quota.alert"]
    return sorted(received, key=lambda alert: alert["id"])


def crossings(receiver: HttpReceiver) -> list[tuple[str, int | None, str]]:
    return [(a["alert"]["kind"], a["alert"]["percent"], a["alert"]["crossed_at"]) for a in alerts(receiver)]


def iso(moment: float) -> str:
    result = to_iso(moment)
    assert result is not None
    return result
