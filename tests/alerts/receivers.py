"""Real receivers on 127.0.0.1 for the alert sinks: an HTTP server (the webhook, and a fake
Telegram Bot API) and an SMTP server (aiosmtpd), both in the test's own event loop, and a
self-signed certificate for the TLS cases. Nothing here is a mock of httpx or aiosmtplib: the
sinks speak real HTTP and SMTP to them over TCP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

GUARD = 10.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)
    hang: bool = False
    """Never answer (a receiver that accepted the connection and went silent)."""
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Request], Reply]


class HttpReceiver:
    """A minimal HTTP/1.1 server: records every request, answers what `respond` says."""

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond: Responder = respond or (lambda request: Reply())
        self.requests: list[Request] = []
        self.received = asyncio.Condition()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HttpReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._closing.set()  # a hanging answer gives up: its connection is closed
        self._server.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def wait_for(self, count: int) -> list[Request]:
        async with asyncio.timeout(GUARD), self.received:
            await self.received.wait_for(lambda: len(self.requests) >= count)
        return self.requests[:count]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                reply = self.respond(request)
                async with self.received:
                    self.requests.append(request)
                    self.received.notify_all()
                if reply.hang:
                    await self._closing.wait()
                    break
                body = json.dumps(reply.body).encode()
                head = f"HTTP/1.1 {reply.status} X\r\nContent-Type: application/json\r\n"
                head += "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


class TelegramApi(HttpReceiver):
    """The Bot API's sendMessage for one token: `ok: true`, or what `fail` says for a chat."""

    def __init__(self, token: str) -> None:
        super().__init__(self._answer)
        self.token = token
        self.failures: dict[str, list[Reply]] = {}

    def messages(self) -> list[dict[str, Any]]:
        return [request.json() for request in self.requests if request.path.endswith("/sendMessage")]

    def _answer(self, request: Request) -> Reply:
        if request.path != f"/bot{self.token}/sendMessage":
            return Reply(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        chat = str(request.json()["chat_id"])
        planned = self.failures.get(chat)
        if planned:
            return planned.pop(0)
        return Reply(200, {"ok": True, "result": {"message_id": len(self.requests) + 1}})


class Mailbox:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Envelope] = []
        self.received = asyncio.Event()
        self.on_message: Callable[[EmailMessage], None] | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        self.messages.append(message)  # type: ignore[arg-type]
        if self.on_message is not None:
            self.on_message(message)  # type: ignore[arg-type]
        self.received.set()
        return "250 OK"


@dataclass
class SmtpServer:
    mailbox: Mailbox
    port: int
    logins: list[tuple[str, str]]


@contextlib.asynccontextmanager
async def smtp_server(
    *,
    login: tuple[str, str] | None = None,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
) -> AsyncIterator[SmtpServer]:
    """aiosmtpd on 127.0.0.1 in this loop: plain, with STARTTLS, or SSL from the first byte."""
    mailbox = Mailbox()
    logins: list[tuple[str, str]] = []

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            given = (data.login.decode(), data.password.decode())
            logins.append(given)
            return AuthResult(success=given == login, handled=False)
        return AuthResult(success=False, handled=False)

    def protocol() -> SMTP:
        return SMTP(
            mailbox,
            hostname="talkmeter-test",
            tls_context=starttls,
            require_starttls=starttls is not None,
            authenticator=authenticate if login else None,
            # aiosmtpd knows TLS only from its own STARTTLS; with SSL from the first byte it must
            # not insist (the connection is encrypted all the same).
            auth_required=login is not None and implicit_tls is None,
            auth_require_tls=implicit_tls is None,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0, ssl=implicit_tls)
    try:
        yield SmtpServer(mailbox, server.sockets[0].getsockname()[1], logins)
    finally:
        server.close()
        await server.wait_closed()


def self_signed(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 (the CA file a client trusts) and the server's context."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context
