"""`talkmeter run`: the service (see daemon.service); what systemd starts.

Exit codes: 0 after SIGTERM/SIGINT; 1 when a task of the service died (logged as one
`service.task_died` line naming the task and the error) or the database cannot take our writes;
systemd's `Restart=on-failure` then starts it again. A stop that does not finish in time
(`service.stop_forced`) ends the process at once, also with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from daemon.logging import configure_logging
from daemon.service import run_until_signalled
from daemon.settings import Settings, load_settings
from daemon.supervision import StopForced, TaskDied
from daemon.writer import FatalStorageError

EXIT_FAILURE = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the service: follow the PBX, record and rate every conversation in PostgreSQL",
        description="The long-running service for one PBX (what systemd's talkmeter@.service starts). "
        "It follows every call on the AMI, records each finished conversation in PostgreSQL and rates it "
        "against the client's contract; conversations wait in a spool while the database is away.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML configuration file (default: TALKMETER_CONFIG)"
    )
    parser.set_defaults(func=run)


RUN_EPILOG = """\
environment (the secrets are read from here only, never from the command line):
  TALKMETER_AMI_SECRET          the manager.conf secret of ami_user, or
  TALKMETER_AMI_SECRET_FILE     a file holding it (systemd: LoadCredential=, %d/ami-secret)
  TALKMETER_DATABASE_URL        postgresql://USER:PASSWORD@HOST:5432/DATABASE (a talkmeter_writer login)
  TALKMETER_CONFIG              the TOML file, when --config is not given
  TALKMETER_<SETTING>           any other setting, e.g. TALKMETER_AMI_HOST, TALKMETER_METRICS_PORT

Check it all first with `talkmeter check-config --config FILE`. With metrics_port set, /metrics
and /healthz are served on 127.0.0.1 (metrics_host to change)."""


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    settings.ami_password()  # a missing secret or database is a clear error now, not a loop later
    settings.dsn()
    settings.check_alert_secrets()
    configure_logging(settings.log_level)
    try:
        asyncio.run(_run_or_exit(settings))
    except FatalStorageError as error:
        print(f"talkmeter: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


async def _run_or_exit(settings: Settings) -> None:
    try:
        await run_until_signalled(settings)
    except (StopForced, TaskDied) as failure:
        # The service has stopped what it could, within its bounds, and logged why. asyncio.run's
        # own clean-up and the interpreter's exit would still wait without a bound: for a task that
        # ignores its cancel, or for a disk thread stuck in an fsync (the disk that killed a task).
        # Leave now.
        if isinstance(failure, TaskDied) and isinstance(failure.error, FatalStorageError):
            print(f"talkmeter: {failure.error}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FAILURE)
