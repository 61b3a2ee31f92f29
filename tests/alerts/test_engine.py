"""The live engine end to end in simulated time: AMI events through the real call model, the
engine's timers on a clock the test moves, alerts delivered to a real webhook receiver. The store
is the in-memory one (the PostgreSQL store runs the same scenarios in test_store.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from accounting.contracts import Contract
from daemon.alerts.delivery import Dispatcher
from daemon.alerts.engine import AlertEngine, ClientQuota
from daemon.alerts.messages import CATEGORIES, ClientInfo
from daemon.alerts.messages import iso as to_iso
from daemon.alerts.sinks import WebhookSink
from telephony.calls import CallTracker
from telephony.effects import Conversation, ConversationEnded
from tests.telephony.scenario import Chan, Pbx

from .memory import ManualClock, MemoryStore
from .receivers import GUARD, HttpReceiver

NUMBER = "+74951234567"
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
    return Contract(**values)


def quota(terms: Contract, timezone: str = "Europe/Moscow") -> ClientQuota:
    return ClientQuota(ClientInfo("romashka", "Ромашка", timezone), (terms,))


@dataclass
class Line:
    """One PBX (the scenario builder), the call model, the engine and its webhook, on one clock."""

    store: MemoryStore
    receiver: HttpReceiver
    start: float = MSK_10AM
    name: str = "msk"
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
        sink = WebhookSink(self.receiver.url, timeout=5, categories=CATEGORIES, language="en")
        self.engine = AlertEngine(
            self.store,
            Dispatcher([sink], self.store),
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
            await self.engine.idle()

    async def record(self, conversation: Conversation, contract_id: str | None = "K1") -> None:
        """What the writer does after the ledger committed the conversation."""
        data = conversation.to_json()
        if contract_id is not None:
            self.store.record(data, contract_id)
        await self.engine.recorded(data, "romashka" if contract_id else None, contract_id)
        await self.settle()

    def call(self, n: int = 1, consultant: str = "101", number: str = NUMBER) -> tuple[Chan, Chan]:
        client = self.pbx.client_calls(number, n=n)
        self.pbx.answer(client)
        agent = self.pbx.consultant(consultant, 10 + n)
        self.pbx.connect(agent, client)
        return client, agent


def alerts(receiver: HttpReceiver) -> list[dict[str, Any]]:
    return [r.json() for r in receiver.requests if r.json()["type"] == "quota.alert"]


def crossings(receiver: HttpReceiver) -> list[tuple[str, int | None, str]]:
    return [(a["alert"]["kind"], a["alert"]["percent"], a["alert"]["crossed_at"]) for a in alerts(receiver)]


def iso(moment: float) -> str:
    result = to_iso(moment)
    assert result is not None
    return result


@pytest.fixture
async def webhook() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver() as receiver:
        yield receiver


def store_for(terms: Contract, timezone: str = "Europe/Moscow", **numbers: list[str]) -> MemoryStore:
    return MemoryStore([quota(terms, timezone)], {NUMBER: ["romashka"], **numbers})


def late(alert: dict[str, Any]) -> float:
    decided = datetime.fromisoformat(alert["decided_at"]).timestamp()
    return decided - datetime.fromisoformat(alert["alert"]["crossed_at"]).timestamp()


async def test_a_call_crossing_the_daily_cap_alerts_within_a_second_of_each_crossing(
    webhook: HttpReceiver,
) -> None:
    store = store_for(contract(free_daily_minutes=10))
    async with Line(store, webhook) as line:
        line.call()
        await line.play()
        answered = line.pbx.now
        await line.wait(12 * MIN)
    assert crossings(webhook) == [
        ("daily", 80, iso(answered + 8 * MIN)),
        ("daily", 100, iso(answered + 10 * MIN)),
        ("overrun", None, iso(answered + 10 * MIN + 0.001)),
    ]
    assert all(0 <= late(alert) < 1.0 for alert in alerts(webhook))
    first = alerts(webhook)[0]
    assert first["call"]["consultant_channels"] == ["PJSIP/101-0000000b"]
    assert first["left"]["free_left_seconds"] == 120.0
    assert first["text"].endswith(f"Call {NUMBER}, consultant 101.")
    assert [n.key.percent for n in store.claimed if n.key] == [80, 100, 0]


async def test_the_call_start_notice_says_who_it_is_and_what_is_left(webhook: HttpReceiver) -> None:
    store = store_for(contract(free_daily_minutes=10, prepaid_minutes=60))
    async with Line(store, webhook) as line:
        line.call()
        await line.play()
    (notice,) = [r.json() for r in webhook.requests]
    assert (notice["type"], notice["match"], notice["client"]["id"]) == (
        "call.started",
        "matched",
        "romashka",
    )
    assert notice["left"]["free_left_seconds"] == 600.0 and notice["left"]["prepaid_left_seconds"] == 3600.0
    assert (
        notice["text"]
        == f"Call from Ромашка ({NUMBER}): free today 10:00 of 10:00 left; prepaid 1:00:00 of 1:00:00 left."
    )
    assert store.notified[0]["type"] == "call.started"


@pytest.mark.parametrize(
    ("number", "match", "text"),
    [
        ("+74959999999", "unknown", "Call from +74959999999: no client has this number."),
        ("anonymous", "withheld", "Call from a withheld number: the client is unknown."),
        (
            "+74950000001",
            "ambiguous",
            "Call from +74950000001: the number belongs to several clients (a, b).",
        ),
    ],
)
async def test_an_unmatched_caller_gets_a_notice_saying_so(
    webhook: HttpReceiver, number: str, match: str, text: str
) -> None:
    store = MemoryStore(
        [quota(contract(free_daily_minutes=10))], {NUMBER: ["romashka"], "+74950000001": ["a", "b"]}
    )
    async with Line(store, webhook) as line:
        line.call(number=number)
        await line.play()
        await line.wait(20 * MIN)
    (notice,) = [r.json() for r in webhook.requests]
    assert (notice["match"], notice["client"], notice["text"]) == (match, None, text)
    assert notice["candidates"] == (["a", "b"] if match == "ambiguous" else [])


async def test_two_conversations_of_one_client_cross_earlier_than_either_alone(webhook: HttpReceiver) -> None:
    store = store_for(contract(free_daily_minutes=10, alert_thresholds=(80,)))
    async with Line(store, webhook) as line:
        line.call(1, "101")
        await line.play()
        first = line.pbx.now
        await line.wait(2 * MIN)
        line.call(2, "102")
        await line.play()
        second = line.pbx.now
        await line.wait(6 * MIN)
    # 8 counted minutes: 5 of the first call and 3 of the second, at first + 5 min.
    assert second - first == pytest.approx(2 * MIN)
    assert crossings(webhook)[0] == ("daily", 80, iso(first + 5 * MIN))


@pytest.mark.parametrize(("hold_billable", "delay"), [(True, 0.0), (False, 2 * MIN)])
async def test_hold_delays_the_crossing_only_when_not_billable(
    webhook: HttpReceiver, hold_billable: bool, delay: float
) -> None:
    store = store_for(contract(free_daily_minutes=20, alert_thresholds=(80,), hold_billable=hold_billable))
    async with Line(store, webhook) as line:
        _, agent = line.call()
        await line.play()
        answered = line.pbx.now
        await line.wait(MIN)
        line.pbx.hold(agent)
        await line.play()
        await line.wait(2 * MIN)
        line.pbx.unhold(agent)
        await line.play()
        await line.wait(16 * MIN)
    assert crossings(webhook) == [("daily", 80, iso(answered + 16 * MIN + delay))]


async def test_80_and_100_percent_of_the_prepaid_package(webhook: HttpReceiver) -> None:
    store = store_for(contract(prepaid_minutes=100))
    async with Line(store, webhook) as line:
        client, agent = line.call()  # an earlier call uses 75 of the 100 prepaid minutes
        await line.play()
        await line.wait(75 * MIN)
        line.pbx.hangup(client, agent)
        await line.play()
        await line.record(line.ended[0])
        assert crossings(webhook) == []
        line.call(2)
        await line.play()
        answered = line.pbx.now
        await line.wait(30 * MIN)
    assert crossings(webhook) == [
        ("prepaid", 80, iso(answered + 5 * MIN)),
        ("prepaid", 100, iso(answered + 25 * MIN)),
        ("overrun", None, iso(answered + 25 * MIN + 0.001)),
    ]
    assert alerts(webhook)[0]["alert"]["period"] == {"kind": "term", "start": "2026-01-01", "end": None}


async def test_the_daily_allowance_resets_at_the_clients_midnight(webhook: HttpReceiver) -> None:
    # Vladivostok (UTC+10): its midnight is 14:00 UTC. A call from 13:50 UTC: the old day's 80 %
    # at 13:58, and the new day's 80 % only 8 minutes after its midnight.
    start = datetime.fromisoformat("2026-11-24T13:50:00+00:00").timestamp()
    store = store_for(contract(free_daily_minutes=10, alert_thresholds=(80,)), "Asia/Vladivostok")
    async with Line(store, webhook, start=start) as line:
        line.call()
        await line.play()
        answered = line.pbx.now
        await line.wait(20 * MIN)
    midnight = datetime.fromisoformat("2026-11-25T00:00:00+10:00").timestamp()
    assert [
        (a["alert"]["kind"], a["alert"]["period"]["start"], a["alert"]["crossed_at"]) for a in alerts(webhook)
    ] == [
        ("daily", "2026-11-24", iso(answered + 8 * MIN)),  # the old day ends just as its 10 minutes do
        ("daily", "2026-11-25", iso(midnight + 8 * MIN)),
    ]


async def test_a_restart_between_two_thresholds_sends_neither_twice_and_skips_none(
    webhook: HttpReceiver,
) -> None:
    store = store_for(contract(free_daily_minutes=10, alert_thresholds=(80, 100)))
    async with Line(store, webhook) as first:
        client, agent = first.call()
        await first.play()
        answered = first.pbx.now
        await first.wait(9 * MIN)
    assert crossings(webhook) == [("daily", 80, iso(answered + 8 * MIN))]
    # The daemon restarts: the new one did not see the call start; it goes on and ends.
    second = Line(store, webhook, start=first.pbx.now)
    second.pbx, second.tracker = first.pbx, first.tracker
    second._fed = len(first.pbx.events)
    async with second as line:
        await line.wait(3 * MIN)
        line.pbx.hangup(client, agent)
        await line.play()
        assert crossings(webhook)[1:] == []  # the engine never saw this call: known at hangup
        await line.record(line.ended[0])
        hung_up = iso(line.pbx.now)
        assert crossings(webhook)[1:] == [("daily", 100, hung_up), ("overrun", None, hung_up)]
        line.call(2)  # a later call of the day: nothing more to say about 80 % or 100 %
        await line.play()
        await line.wait(5 * MIN)
    assert [c[:2] for c in crossings(webhook)] == [("daily", 80), ("daily", 100), ("overrun", None)]
    assert all(a["call"]["in_progress"] is False for a in alerts(webhook)[1:])
    assert [n.key.percent for n in store.claimed if n.key] == [80, 100, 0]


async def test_two_engines_racing_on_one_client_send_once(webhook: HttpReceiver) -> None:
    """Both see the same call (as two daemons could see one client's calls) and decide at once."""
    store = store_for(contract(free_daily_minutes=10, alert_thresholds=(80,)))
    async with Line(store, webhook) as one, Line(store, webhook, name="msk-2") as two:
        two.pbx = one.pbx
        one.call()
        await one.play()
        await two.play()
        one.pbx.after(9 * MIN)
        one.clock.advance(one.pbx.now)
        two.clock.advance(one.pbx.now)
        await asyncio.gather(one.settle(), two.settle())
    assert [c[:2] for c in crossings(webhook)] == [("daily", 80)]
    assert len([r for r in webhook.requests if r.json()["type"] == "call.started"]) == 1
    assert one.engine.raised + two.engine.raised == 1
