"""`talkmeter run`: the service (see daemon.service); what systemd starts."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from daemon.logging import configure_logging
from daemon.service import run_until_signalled
from daemon.settings import load_settings
from daemon.writer import FatalStorageError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="follow the PBX and record every conversation in PostgreSQL")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    settings.ami_password()  # a missing secret or database is a clear error now, not a loop later
    settings.dsn()
    configure_logging(settings.log_level)
    try:
        asyncio.run(run_until_signalled(settings))
    except FatalStorageError as error:
        print(f"talkmeter: {error}", file=sys.stderr)
        return 1
    return 0
