"""`talkmeter watch`: follow a live PBX and print each conversation as it ends, one JSON per line.

The admin's first check before any database exists: talkmeter measuring calls on their own PBX.
Host, port and user come from the options or the configuration; the secret only from the
environment (`TALKMETER_AMI_SECRET`) or a file (`TALKMETER_AMI_SECRET_FILE`), never from the command
line, where every user of the machine could read it. Logs go to stderr, conversations to stdout.

Unlike the service, which retries a missing PBX forever, `watch` is a first check run by a person:
if it has never been logged in and its first attempts fail (three refused connections, or at once
when the port answers but not as AMI, or the login is refused), it stops with exit code 2 and a
one-line hint of what to check. Once it has been logged in, it reconnects like the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from daemon.live import follow, stop_on_signals
from daemon.logging import configure_logging
from daemon.settings import ConfigError, Settings, load_settings
from telephony.ami import LinkObserver

#: refused or timed-out connections before `watch` gives up, when it has never been logged in
FIRST_CONTACT_ATTEMPTS = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="measure your PBX's calls live and print each conversation (no database)",
        description="Connects to the PBX's AMI and prints each conversation as it ends. The secret comes "
        "from TALKMETER_AMI_SECRET or TALKMETER_AMI_SECRET_FILE, never from the command line. If the "
        "first attempts fail (nothing listening, not an AMI port, login refused), it stops with a hint.",
    )
    parser.add_argument("--host", help="AMI host (default from configuration: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="AMI port (default 5038)")
    parser.add_argument("--user", help="AMI user (manager.conf section)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, ami_host=args.host, ami_port=args.port, ami_user=args.user)
    settings.ami_password()  # no secret: a ConfigError now, not a login loop later
    configure_logging(settings.log_level)
    first_contact = FirstContact(settings)
    code = asyncio.run(watch(settings, first_contact))
    if first_contact.hint is not None:
        raise ConfigError(first_contact.hint)
    return code


async def print_conversation(conversation: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(conversation, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def watch(settings: Settings, first_contact: FirstContact | None = None) -> int:
    stop = asyncio.Event()
    if first_contact is not None:
        first_contact.stop = stop
    with stop_on_signals(stop):
        await follow(settings, print_conversation, stop, observer=first_contact)
    return 0


class FirstContact(LinkObserver):
    """Stops `watch` with a hint when the PBX cannot be reached before any session started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop: asyncio.Event | None = None
        self.hint: str | None = None
        self.logged_in = False
        self.refused = 0

    def session_started(self) -> None:
        self.logged_in = True

    def attempt_failed(self, stage: str, reason: str) -> None:
        if self.logged_in or self.hint is not None:
            return
        hint = self._hint(stage, reason)
        if hint is not None:
            self.hint = hint
            if self.stop is not None:
                self.stop.set()

    def _hint(self, stage: str, reason: str) -> str | None:
        where, user = f"{self.settings.ami_host}:{self.settings.ami_port}", self.settings.ami_user
        if stage == "login":
            return (
                f"the PBX at {where} refused the login of {user!r} ({reason}): check --user (ami_user), "
                "the secret in TALKMETER_AMI_SECRET(_FILE) and the permit line of that "
                "manager.conf section"
            )
        if stage == "not_ami":
            return (
                f"{where} answered, but not as Asterisk's manager interface (no 'Asterisk Call Manager' "
                "greeting): check --port (ami_port; AMI listens on 5038 unless manager.conf says otherwise)"
            )
        self.refused += 1
        if self.refused < FIRST_CONTACT_ATTEMPTS:
            return None
        return (
            f"cannot reach the AMI at {where} ({reason}) after {self.refused} attempts: check --host and "
            "--port (ami_host, ami_port), and that manager.conf has enabled = yes with that port and a "
            "bindaddr this machine can reach"
        )
