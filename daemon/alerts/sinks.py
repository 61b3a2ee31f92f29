"""Where alerts go: a webhook, Telegram chats, e-mail, and the PBX itself (an AMI UserEvent).

Each sink sends one notification, once, within its own timeout, and either returns (delivered)
or raises `DeliveryFailed` saying whether trying again can help (`permanent`) and, when the
receiver said so, after how long (`retry_after`). Retrying, backoff, counting and logging are the
dispatcher's (`daemon.alerts.delivery`); a sink keeps no state about earlier attempts. The
PostgreSQL `NOTIFY talkmeter_alerts` is not a sink here: it is sent inside the transaction that
claims the alert, so it is delivered exactly when the alert is (see `daemon.alerts.store`), and
the structured log line `alert.raised` is written for every alert by the engine.

Reasons never carry secrets: not the webhook's URL (it may hold a token) nor its headers, not the
Telegram bot token (it is part of Telegram's URL), not the SMTP password. They name the error
class and the receiver's status code or reply.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib
import httpx

from daemon.alerts.messages import (
    Category,
    Language,
    Notification,
    payload,
    subject,
    text,
)
from daemon.alerts.settings import AlertSettings
from telephony.ami import AmiError
from telephony.framing import Message

USER_AGENT = "talkmeter"
USER_EVENT = "TalkmeterQuota"
_RETRYABLE_STATUS = frozenset({408, 425, 429})


class DeliveryFailed(Exception):
    """The receiver did not take the notification; `permanent` when trying again cannot help."""

    def __init__(self, reason: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after


class Sink(Protocol):
    name: str
    """Stable name, kept in the delivery rows: `webhook`, `telegram:<chat>`, `email`, `ami`."""
    categories: frozenset[Category]

    async def send(self, notification: Notification) -> None: ...

    async def close(self) -> None: ...


def _http_failure(kind: str, status: int, detail: str = "") -> DeliveryFailed:
    permanent = 400 <= status < 500 and status not in _RETRYABLE_STATUS
    reason = f"{kind} answered HTTP {status}" + (f": {detail}" if detail else "")
    return DeliveryFailed(reason, permanent=permanent)


def _transport_failure(kind: str, error: Exception) -> DeliveryFailed:
    # httpx's messages can quote the URL (and so a token in it): only the class is kept.
    return DeliveryFailed(f"{kind}: {type(error).__name__}")


class WebhookSink:
    """`POST` the JSON payload to one URL; any 2xx is delivered, other 4xx are permanent."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        language: Language = "ru",
        categories: Iterable[Category],
    ) -> None:
        self.name = "webhook"
        self.categories = frozenset(categories)
        self.language = language
        self._url = url
        self._client = httpx.AsyncClient(
            timeout=timeout, headers={"User-Agent": USER_AGENT, **(headers or {})}, follow_redirects=False
        )

    async def send(self, notification: Notification) -> None:
        body = json.dumps(payload(notification, self.language), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if notification.notification_id is not None:
            headers["Idempotency-Key"] = f"talkmeter-{notification.notification_id}"
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as error:
            raise _transport_failure("webhook", error) from None
        if not response.is_success:
            failure = _http_failure("webhook", response.status_code)
            failure.retry_after = _retry_after(response.headers.get("Retry-After"))
            raise failure

    async def close(self) -> None:
        await self._client.aclose()


def _retry_after(value: str | None) -> float | None:
    """An HTTP `Retry-After` (seconds, or a date) as seconds from now; None when absent or unreadable."""
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as every HTTP date is
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


class TelegramChat:
    """Bot API `sendMessage` to one chat. Several chats share one HTTP client (`TelegramBot`)."""

    def __init__(self, bot: TelegramBot, chat_id: str) -> None:
        self.name = f"telegram:{chat_id}"
        self.categories = bot.categories
        self._bot = bot
        self._chat_id = chat_id

    async def send(self, notification: Notification) -> None:
        await self._bot.send_message(self._chat_id, text(notification, self._bot.language))

    async def close(self) -> None:
        await self._bot.close()


class TelegramBot:
    """The Bot API at `base_url` (https://api.telegram.org, or a local server in tests)."""

    def __init__(
        self,
        token: str,
        *,
        base_url: str,
        timeout: float,
        language: Language = "ru",
        categories: Iterable[Category],
    ) -> None:
        self.categories = frozenset(categories)
        self.language = language
        self._method_url = f"{base_url.rstrip('/')}/bot{token}/sendMessage"
        self._client = httpx.AsyncClient(timeout=timeout, headers={"User-Agent": USER_AGENT})
        self._closed = False

    def chats(self, chat_ids: Iterable[str]) -> list[TelegramChat]:
        return [TelegramChat(self, str(chat_id)) for chat_id in chat_ids]

    async def send_message(self, chat_id: str, message: str) -> None:
        body = {"chat_id": chat_id, "text": message, "disable_web_page_preview": True}
        try:
            response = await self._client.post(self._method_url, json=body)
        except httpx.HTTPError as error:
            raise _transport_failure("telegram", error) from None
        answer = _json(response)
        if response.is_success and answer.get("ok") is True:
            return
        description = str(answer.get("description") or "")[:200]
        failure = _http_failure("telegram", response.status_code, description)
        parameters = answer.get("parameters")
        if isinstance(parameters, dict) and isinstance(parameters.get("retry_after"), int | float):
            failure.retry_after = float(parameters["retry_after"])  # Telegram's flood control
        raise failure

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


class EmailSink:
    """One message per notification to every recipient, over SMTP (STARTTLS, SSL or plain)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: str,
        sender: str,
        recipients: Iterable[str],
        username: str | None = None,
        password: str | None = None,
        timeout: float,
        ca_file: Path | None = None,
        language: Language = "ru",
        categories: Iterable[Category],
    ) -> None:
        self.name = "email"
        self.categories = frozenset(categories)
        self.language = language
        self.sender = sender
        self.recipients = list(recipients)
        # The Message-ID's domain: the sender's (make_msgid's default, socket.getfqdn(), is a DNS
        # lookup that would block the event loop for every message), else the server's name.
        self._domain = parseaddr(sender)[1].rpartition("@")[2] or host
        self._options: dict[str, Any] = {
            "hostname": host,
            "port": port,
            "use_tls": security == "ssl",
            "start_tls": security == "starttls",
            "username": username,
            "password": password,
            "timeout": timeout,
        }
        if ca_file is not None and security != "none":
            self._options["tls_context"] = ssl.create_default_context(cafile=str(ca_file))

    def message(self, notification: Notification) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = subject(notification, self.language)
        message["Date"] = format_datetime(datetime.fromtimestamp(notification.decided_at, UTC))
        message["Message-ID"] = make_msgid(f"talkmeter-{notification.notification_id}", domain=self._domain)
        message.set_content(text(notification, self.language) + "\n")
        return message

    async def send(self, notification: Notification) -> None:
        try:
            await aiosmtplib.send(self.message(notification), **self._options)
        except aiosmtplib.SMTPResponseException as error:
            permanent = 500 <= error.code < 600
            raise DeliveryFailed(f"smtp: {type(error).__name__} {error.code}", permanent=permanent) from None
        except aiosmtplib.SMTPRecipientsRefused as error:
            reason = f"smtp: every recipient refused ({len(error.recipients)})"
            raise DeliveryFailed(reason, permanent=True) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as error:
            raise DeliveryFailed(f"smtp: {type(error).__name__}") from None

    async def close(self) -> None:
        return None


SendAction = Callable[[Mapping[str, object]], Awaitable[Message]]


class AmiUserEventSink:
    """`UserEvent: TalkmeterQuota` on the PBX the daemon follows, through its own AMI session
    (the manager.conf user needs `write = user`; see the README)."""

    def __init__(self, send_action: SendAction, *, language: Language = "ru", categories: Iterable[Category]):
        self.name = "ami"
        self.categories = frozenset(categories)
        self.language = language
        self._send_action = send_action

    async def send(self, notification: Notification) -> None:
        try:
            reply = await self._send_action(user_event(notification, self.language))
        except AmiError as error:  # not connected, no answer in time, connection lost
            raise DeliveryFailed(f"ami: {type(error).__name__}") from None
        if reply.response != "Success":
            refusal = reply.get("Message") or "error"
            hint = "; the AMI user needs write = user" if "denied" in refusal.lower() else ""
            raise DeliveryFailed(f"ami: {refusal}{hint}", permanent=bool(hint))

    async def close(self) -> None:
        return None


def user_event(notification: Notification, language: Language = "ru") -> dict[str, object]:
    """The UserEvent action's headers (the README lists them)."""
    n = notification
    call, s = n.call, n.standing
    headers: dict[str, object] = {
        "Action": "UserEvent",
        "UserEvent": USER_EVENT,
        "Type": n.type,
        "AlertID": "" if n.notification_id is None else n.notification_id,
        "Match": n.match,
        "Client": n.client.client_id if n.client else "",
        "ClientName": n.client.name if n.client else "",
        "ContractID": n.contract.contract_id if n.contract else "",
    }
    if n.key is not None:
        headers["Kind"] = n.key.kind
        headers["Percent"] = n.key.percent
        headers["PeriodStart"] = n.key.period_start.isoformat()
    if call is not None:
        headers["Channel"] = call.consultant_channels[0] if call.consultant_channels else ""
        headers["ConsultantChannels"] = ",".join(call.consultant_channels)
        headers["Consultants"] = ",".join(call.consultants)
        headers["ClientChannel"] = call.channel
        headers["ClientNumber"] = call.client_number or call.client_number_raw
        headers["ConversationID"] = call.conversation_id
    if s is not None:
        headers["FreeLeftSeconds"] = "" if s.free_cap_ms is None else s.free_left_ms // 1000
        week = s.free_days_per_week
        headers["FreeDaysLeft"] = "" if week is None else max(0, week - s.free_days_used)
        headers["PrepaidLeftSeconds"] = "" if s.prepaid_ms is None else s.prepaid_left_ms // 1000
        headers["PaidNow"] = "yes" if s.paid_now else "no"
    headers["Text"] = text(n, language)
    return headers


def sinks_from_settings(alerts: AlertSettings, send_action: SendAction) -> list[Sink]:
    """The sinks the `[alerts]` settings configure (the log and NOTIFY are not sinks here)."""
    sinks: list[Sink] = []
    language = alerts.language
    if alerts.webhook is not None:
        hook = alerts.webhook
        headers = {name: value.get_secret_value() for name, value in hook.headers.items()}
        sinks.append(
            WebhookSink(
                hook.url, timeout=hook.timeout, headers=headers, language=language, categories=hook.events
            )
        )
    if alerts.telegram is not None:
        chat = alerts.telegram
        bot = TelegramBot(
            chat.token(),
            base_url=chat.base_url,
            timeout=chat.timeout,
            language=language,
            categories=chat.events,
        )
        sinks.extend(bot.chats(chat.chat_ids))
    if alerts.email is not None:
        mail = alerts.email
        sinks.append(
            EmailSink(
                host=mail.host,
                port=mail.smtp_port(),
                security=mail.security,
                sender=mail.sender,
                recipients=mail.recipients,
                username=mail.username,
                password=mail.smtp_password(),
                timeout=mail.timeout,
                ca_file=mail.ca_file,
                language=language,
                categories=mail.events,
            )
        )
    if alerts.ami.enabled:
        sinks.append(AmiUserEventSink(send_action, language=language, categories=alerts.ami.events))
    return sinks
