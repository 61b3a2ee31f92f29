"""`talkmeter watch`: follow a live PBX and print each conversation as it ends, one JSON per line.

The admin's first check before any database exists: talkmeter measuring calls on their own PBX.
Host, port and user come from the options or the configuration; the secret only from the
environment (`TALKMETER_AMI_SECRET`) or a file (`TALKMETER_AMI_SECRET_FILE`), never from the command
line, where every user of the machine could read it. Logs go to stderr, conversations to stdout.
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
from daemon.settings import Settings, load_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("watch", help="print conversations measured live on an AMI server")
    parser.add_argument("--host", help="AMI host (default from configuration: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="AMI port (default 5038)")
    parser.add_argument("--user", help="AMI user (manager.conf section)")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, ami_host=args.host, ami_port=args.port, ami_user=args.user)
    settings.ami_password()  # no secret: a ConfigError now, not a login loop later
    configure_logging(settings.log_level)
    return asyncio.run(watch(settings))


async def print_conversation(conversation: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(conversation, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def watch(settings: Settings) -> int:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await follow(settings, print_conversation, stop)
    return 0
