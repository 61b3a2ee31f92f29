"""Each sink against a real receiver on 127.0.0.1: what arrives, and how failures are reported."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon.alerts.messages import CATEGORIES, payload
from daemon.alerts.sinks import (
    AmiUserEventSink,
    DeliveryFailed,
    EmailSink,
    TelegramBot,
    WebhookSink,
)
from telephony.ami import AmiLink, LinkConfig, SessionStarted
from telephony.simulator import AmiSimulator, events_trace

from .receivers import GUARD, HttpReceiver, Reply, TelegramApi, self_signed, smtp_server
from .samples import alert, call_started

TOKEN = "123456:AAE-secret-bot-token"


def webhook(url: str, timeout: float = 5.0) -> WebhookSink:
    return WebhookSink(url, timeout=timeout, headers={"Authorization": "Bearer hook-secret"},
                       categories=CATEGORIES, language="en")  # fmt: skip


async def test_the_webhook_posts_the_documented_json_payload() -> None:
    async with HttpReceiver() as receiver:
        sink = webhook(receiver.url + "/talkmeter")
        await sink.send(alert())
        await sink.close()
    (request,) = receiver.requests
    assert (request.method, request.path) == ("POST", "/talkmeter")
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.headers["authorization"] == "Bearer hook-secret"
    assert request.headers["idempotency-key"] == "talkmeter-17"
    body = request.json()
    assert body == payload(alert(), "en")
    assert body["alert"] == {
        "kind": "daily",
        "percent": 80,
        "period": {"kind": "day", "start": "2026-11-24", "end": "2026-11-24"},
        "crossed_at": "2026-11-24T07:08:00.000+00:00",
    }
    assert body["left"]["free_left_seconds"] == 180.0 and body["left"]["free_days_left"] == 1
    assert body["call"]["consultant_channels"] == ["PJSIP/101-00000012"]
    assert body["text"] == (
        "Ромашка: 80% of today's free time used (12:00 of 15:00, 3:00 left). "
        "Call +74951234567, consultant 101."
    )


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(500, False), (503, False), (429, False), (408, False), (400, True), (404, True), (410, True)],
)
async def test_the_webhook_says_which_failures_are_worth_retrying(status: int, permanent: bool) -> None:
    async with HttpReceiver(lambda request: Reply(status)) as receiver:
        sink = webhook(receiver.url + "/hook?token=url-secret")
        with pytest.raises(DeliveryFailed) as failure:
            await sink.send(alert())
        await sink.close()
    assert failure.value.permanent is permanent
    assert failure.value.reason == f"webhook answered HTTP {status}"


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(429, "7", 7.0), (503, "120", 120.0), (503, "Wed, 21 Oct 2015 07:28:00 GMT", 0.0), (429, "soon", None),
     (500, None, None)],
)  # fmt: skip
async def test_the_webhook_passes_on_the_receivers_retry_after(
    status: int, retry_after: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    async with HttpReceiver(lambda request: Reply(status, headers=headers)) as receiver:
        sink = webhook(receiver.url)
        with pytest.raises(DeliveryFailed) as failure:
            await sink.send(alert())
        await sink.close()
    assert failure.value.retry_after == expected  # a date gone by: at once


async def test_a_silent_or_absent_webhook_fails_within_its_timeout_without_naming_the_url() -> None:
    async with HttpReceiver(lambda request: Reply(hang=True)) as receiver:
        sink = webhook(receiver.url + "/hook?token=url-secret", timeout=0.2)
        with pytest.raises(DeliveryFailed) as silent:
            await sink.send(alert())
        await sink.close()
    refused = webhook("http://127.0.0.1:9/hook?token=url-secret")  # the discard port: refused
    with pytest.raises(DeliveryFailed) as absent:
        await refused.send(alert())
    await refused.close()
    for failure in (silent.value, absent.value):
        assert not failure.permanent
        assert "secret" not in failure.reason and "127.0.0.1" not in failure.reason
    assert silent.value.reason == "webhook: ReadTimeout"
    assert absent.value.reason == "webhook: ConnectError"


async def test_telegram_sends_the_text_to_each_chat() -> None:
    async with TelegramApi(TOKEN) as api:
        bot = TelegramBot(TOKEN, base_url=api.url, timeout=5, categories=CATEGORIES, language="ru")
        for chat in bot.chats(["-1001", "42"]):
            await chat.send(alert())
        await bot.close()
    assert [(m["chat_id"], m["disable_web_page_preview"]) for m in api.messages()] == [
        ("-1001", True),
        ("42", True),
    ]
    assert api.messages()[0]["text"] == (
        "Ромашка: использовано 80% бесплатного времени на сегодня (12:00 из 15:00, осталось 3:00). "
        "Звонок +74951234567, консультант 101."
    )


async def test_telegram_flood_control_and_refusals() -> None:
    async with TelegramApi(TOKEN) as api:
        api.failures["-1001"] = [
            Reply(
                429,
                {
                    "ok": False,
                    "error_code": 429,
                    "description": "Too Many Requests: retry after 3",
                    "parameters": {"retry_after": 3},
                },
            ),
            Reply(403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was kicked"}),
        ]
        bot = TelegramBot(TOKEN, base_url=api.url, timeout=5, categories=CATEGORIES)
        (chat,) = bot.chats(["-1001"])
        with pytest.raises(DeliveryFailed) as flood:
            await chat.send(alert())
        with pytest.raises(DeliveryFailed) as kicked:
            await chat.send(alert())
        wrong = TelegramBot("999:wrong", base_url=api.url, timeout=5, categories=CATEGORIES)
        with pytest.raises(DeliveryFailed) as unauthorized:
            await wrong.chats(["-1001"])[0].send(alert())
        await bot.close()
        await wrong.close()
    assert (flood.value.permanent, flood.value.retry_after) == (False, 3.0)
    assert kicked.value.permanent and "bot was kicked" in kicked.value.reason
    assert (
        unauthorized.value.permanent
        and unauthorized.value.reason == "telegram answered HTTP 401: Unauthorized"
    )
    assert all(TOKEN not in failure.value.reason for failure in (flood, kicked, unauthorized))


def mail_sink(port: int, security: str = "none", **options: object) -> EmailSink:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "security": security,
        "sender": "talkmeter@example.ru",
        "timeout": 5,
        "categories": CATEGORIES,
        "recipients": ["manager@example.ru", "lead@example.ru"],
        **options,
    }
    return EmailSink(**values)  # type: ignore[arg-type]


async def test_email_plain_one_message_to_every_recipient_in_russian() -> None:
    async with smtp_server() as server:
        sink = mail_sink(server.port, language="ru")
        await sink.send(alert())
    (message,) = server.mailbox.messages
    (envelope,) = server.mailbox.envelopes
    assert envelope.rcpt_tos == ["manager@example.ru", "lead@example.ru"]
    assert message["Subject"] == "talkmeter: Ромашка: 80% бесплатного времени на сегодня"
    assert message["From"] == "talkmeter@example.ru"
    assert "talkmeter-17" in message["Message-ID"]
    body = message.get_content()
    assert body.startswith("Ромашка: использовано 80% бесплатного времени на сегодня (12:00 из 15:00")


@pytest.mark.parametrize("sender", ["talkmeter@example.ru", "Talkmeter <talkmeter@example.ru>"])
def test_the_message_id_names_the_senders_domain(sender: str) -> None:
    """Not the host's: make_msgid would ask socket.getfqdn(), a DNS lookup on the event loop."""
    message = mail_sink(25, sender=sender).message(alert())
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@example.ru>")
    assert message["From"] == sender


@pytest.mark.parametrize("security", ["starttls", "ssl"])
async def test_email_over_tls_with_login(security: str, tmp_path: Path) -> None:
    ca_file, context = self_signed(tmp_path)
    tls = {"starttls": context} if security == "starttls" else {"implicit_tls": context}
    async with smtp_server(login=("talkmeter", "mail-secret"), **tls) as server:  # type: ignore[arg-type]
        sink = mail_sink(server.port, security, username="talkmeter", password="mail-secret",
                         ca_file=ca_file, language="en")  # fmt: skip
        await sink.send(call_started())
    assert server.logins == [("talkmeter", "mail-secret")]
    (message,) = server.mailbox.messages
    assert message["Subject"] == "talkmeter: call from Ромашка"
    assert message.get_content().startswith("Call from Ромашка (+74951234567): free today 3:00 of 15:00 left")


async def test_email_wrong_password_is_permanent_and_a_missing_server_is_not(tmp_path: Path) -> None:
    ca_file, context = self_signed(tmp_path)
    async with smtp_server(login=("talkmeter", "mail-secret"), starttls=context) as server:
        sink = mail_sink(server.port, "starttls", username="talkmeter", password="wrong", ca_file=ca_file)
        with pytest.raises(DeliveryFailed) as refused:
            await sink.send(alert())
    assert refused.value.permanent and refused.value.reason == "smtp: SMTPAuthenticationError 535"
    assert server.mailbox.messages == []
    with pytest.raises(DeliveryFailed) as absent:
        await mail_sink(9).send(alert())
    assert not absent.value.permanent and "wrong" not in absent.value.reason


@pytest.fixture
async def pbx_link() -> tuple[AmiSimulator, AmiLink]:  # type: ignore[misc]
    async with AmiSimulator(events_trace([]), secret="ami-secret") as simulator:
        link = AmiLink(LinkConfig("127.0.0.1", simulator.port, "talkmeter", "ami-secret"))
        running = asyncio.create_task(link.run())
        async with asyncio.timeout(GUARD):
            while not isinstance(await link.queue.get(), SessionStarted):
                pass
        yield simulator, link
        link.close()
        await running


async def test_ami_user_event_carries_the_consultants_channel_the_client_and_what_is_left(
    pbx_link: tuple[AmiSimulator, AmiLink],
) -> None:
    simulator, link = pbx_link
    await AmiUserEventSink(link.send_action, categories=CATEGORIES, language="en").send(alert())
    (event,) = simulator.user_events
    assert event["UserEvent"] == "TalkmeterQuota"
    expected = {
        "Type": "quota.alert", "AlertID": "17", "Kind": "daily", "Percent": "80", "Client": "romashka",
        "ClientName": "Ромашка", "Channel": "PJSIP/101-00000012", "ClientChannel": "PJSIP/trunk-00000011",
        "Consultants": "101", "ConversationID": "msk:1795503600.17", "FreeLeftSeconds": "180",
        "FreeDaysLeft": "1", "PrepaidLeftSeconds": "34800", "PaidNow": "no",
    }  # fmt: skip
    assert {key: event[key] for key in expected} == expected
    assert event["Text"].startswith("Ромашка: 80% of today's free time used")


async def test_ami_user_event_refused_names_the_missing_permission(
    pbx_link: tuple[AmiSimulator, AmiLink],
) -> None:
    simulator, link = pbx_link
    simulator.deny_actions.add("UserEvent")
    with pytest.raises(DeliveryFailed) as refused:
        await AmiUserEventSink(link.send_action, categories=CATEGORIES).send(alert())
    assert refused.value.permanent
    assert refused.value.reason == "ami: Permission denied; the AMI user needs write = user"
