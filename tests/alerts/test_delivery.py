"""The dispatcher with real sinks and receivers: independence, retries, backoff, journal, logs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.alerts.delivery import DeliveryState, Dispatcher
from daemon.alerts.messages import CATEGORIES
from daemon.alerts.sinks import EmailSink, TelegramBot, WebhookSink

from .receivers import GUARD, HttpReceiver, Reply, TelegramApi, smtp_server
from .samples import alert, call_started


class MemoryJournal:
    """The delivery rows, kept in a list (the PostgreSQL journal is tested with the store)."""

    def __init__(self, fail: bool = False) -> None:
        self.rows: list[tuple[int, str, DeliveryState, int, str | None]] = []
        self.fail = fail
        self.changed = asyncio.Condition()

    async def attempted(
        self, notification_id: int, sink: str, state: DeliveryState, attempts: int, error: str | None
    ) -> None:
        if self.fail:
            raise ConnectionRefusedError("database down")
        async with self.changed:
            self.rows.append((notification_id, sink, state, attempts, error))
            self.changed.notify_all()

    async def wait_for(self, sink: str, state: DeliveryState) -> None:
        async with asyncio.timeout(GUARD), self.changed:
            await self.changed.wait_for(lambda: any(row[1:3] == (sink, state) for row in self.rows))

    def of(self, sink: str) -> list[tuple[DeliveryState, int, str | None]]:
        return [(state, attempts, error) for _, name, state, attempts, error in self.rows if name == sink]


class RecordingSleep:
    """The testing switch for backoff: records each delay and waits for none of it."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def failing_then_ok(*statuses: int) -> Any:
    plan: Iterator[int] = iter(statuses)
    return lambda request: Reply(next(plan, 200))


async def deliver(dispatcher: Dispatcher, *notifications: Any) -> None:
    for notification in notifications:
        dispatcher.dispatch(notification)
    async with asyncio.timeout(GUARD):
        await dispatcher.wait_idle()
    await dispatcher.close()


async def test_a_dead_webhook_does_not_delay_the_email() -> None:
    async with HttpReceiver(lambda request: Reply(hang=True)) as dead, smtp_server() as smtp:
        hook = WebhookSink(dead.url, timeout=30, categories=CATEGORIES)
        mail = EmailSink(host="127.0.0.1", port=smtp.port, security="none", sender="t@example.ru",
                         recipients=["m@example.ru"], timeout=5, categories=CATEGORIES)  # fmt: skip
        journal = MemoryJournal()
        dispatcher = Dispatcher([hook, mail], journal, sleep=RecordingSleep())
        dispatcher.dispatch(alert())
        await journal.wait_for("email", "sent")
        await dead.wait_for(1)
        assert journal.of("email") == [("sent", 1, None)]
        assert journal.of("webhook") == []  # still waiting for its answer
        await dispatcher.close()
    assert journal.of("webhook") == []  # left pending in the database, for the next start


async def test_failures_are_retried_with_backoff_counted_and_logged_once_per_state_change() -> None:
    async with HttpReceiver(failing_then_ok(500, 503, 502)) as receiver:
        journal, sleep = MemoryJournal(), RecordingSleep()
        hook = WebhookSink(receiver.url, timeout=5, categories=CATEGORIES)
        dispatcher = Dispatcher([hook], journal, retry_min=1.0, retry_max=300.0, sleep=sleep, rng=lambda: 1.0)
        with capture_logs() as logs:
            await deliver(dispatcher, alert())
    assert len(receiver.requests) == 4
    assert journal.of("webhook") == [
        ("pending", 1, "webhook answered HTTP 500"),
        ("pending", 2, "webhook answered HTTP 503"),
        ("pending", 3, "webhook answered HTTP 502"),
        ("sent", 4, None),
    ]
    assert sleep.delays == [1.0, 2.0, 4.0]  # doubling (the jitter is pinned to its top here)
    stats = dispatcher.stats["webhook"]
    assert (stats.sent, stats.failed_attempts, stats.given_up, stats.failing) == (1, 3, 0, False)
    assert [(e["event"], e.get("reason")) for e in logs if e["event"].startswith("alert.")] == [
        ("alert.sink_failing", "webhook answered HTTP 500"),
        ("alert.sink_recovered", None),
    ]


async def test_a_permanent_refusal_is_failed_at_once_and_too_many_attempts_give_up() -> None:
    async with HttpReceiver(lambda request: Reply(404)) as gone, HttpReceiver(lambda r: Reply(500)) as broken:
        journal = MemoryJournal()
        sinks = [WebhookSink(gone.url, timeout=5, categories=CATEGORIES)]
        with capture_logs() as logs:
            await deliver(Dispatcher(sinks, journal, sleep=RecordingSleep()), alert())
            flaky = Dispatcher([WebhookSink(broken.url, timeout=5, categories=CATEGORIES)], journal,
                               max_attempts=3, sleep=RecordingSleep())  # fmt: skip
            await deliver(flaky, alert(18))
    assert journal.rows[0] == (17, "webhook", "failed", 1, "webhook answered HTTP 404")
    assert [row[2:4] for row in journal.rows[1:]] == [("pending", 1), ("pending", 2), ("failed", 3)]
    failed = [e for e in logs if e["event"] == "alert.delivery_failed"]
    assert [(e["notification_id"], e["attempts"]) for e in failed] == [(17, 1), (18, 3)]


async def test_telegram_flood_control_waits_as_long_as_telegram_asks() -> None:
    async with TelegramApi("1:t") as api:
        api.failures["7"] = [Reply(429, {"ok": False, "description": "Too Many Requests",
                                         "parameters": {"retry_after": 12}})]  # fmt: skip
        bot = TelegramBot("1:t", base_url=api.url, timeout=5, categories=CATEGORIES)
        sleep, journal = RecordingSleep(), MemoryJournal()
        await deliver(Dispatcher(bot.chats(["7", "8"]), journal, sleep=sleep), alert())
    assert sleep.delays == [12.0]
    assert journal.of("telegram:7")[-1] == ("sent", 2, None)
    assert journal.of("telegram:8") == [("sent", 1, None)]


async def test_each_sink_gets_only_the_events_it_is_configured_for() -> None:
    async with TelegramApi("1:t") as api, HttpReceiver() as hook:
        bot = TelegramBot("1:t", base_url=api.url, timeout=5, categories=["threshold", "overrun"])
        webhook = WebhookSink(hook.url, timeout=5, categories=CATEGORIES)
        dispatcher = Dispatcher([*bot.chats(["7"]), webhook], MemoryJournal())
        assert dispatcher.sinks_for(call_started()) == ["webhook"]
        assert dispatcher.sinks_for(alert()) == ["telegram:7", "webhook"]
        await deliver(dispatcher, call_started(), alert())
    assert len(api.messages()) == 1 and len(hook.requests) == 2


async def test_a_journal_that_cannot_be_written_is_logged_once_and_delivery_goes_on() -> None:
    async with HttpReceiver() as hook:
        dispatcher = Dispatcher(
            [WebhookSink(hook.url, timeout=5, categories=CATEGORIES)], MemoryJournal(fail=True)
        )
        with capture_logs() as logs:
            await deliver(dispatcher, alert(1), alert(2), alert(3))
    assert len(hook.requests) == 3
    assert [e["event"] for e in logs if e["event"].startswith("alert.journal")] == [
        "alert.journal_unavailable"
    ]


async def test_only_claimed_notifications_are_sent() -> None:
    dispatcher = Dispatcher([], MemoryJournal())
    with pytest.raises(AssertionError, match="claimed"):
        dispatcher.dispatch(alert(notification_id=None))  # type: ignore[arg-type]
