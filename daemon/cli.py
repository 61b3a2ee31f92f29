"""The `talkmeter` command: one sub-command per job, each defined in its own module.

Every command module exposes `register(subparsers)`, which adds its parser and sets `func`, a
callable taking the parsed arguments and returning the exit code. Errors the user can fix
(configuration, bad input files, an unreachable service) are printed as one line, without a
traceback, and give exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from daemon.metrics import talkmeter_version
from daemon.settings import ConfigError

# In the order a new user meets them (the order of `talkmeter --help`).
COMMAND_MODULES = (
    "daemon.commands.demo",
    "daemon.commands.check",
    "daemon.commands.watch",
    "daemon.commands.simulate",
    "daemon.commands.replay",
    "daemon.commands.check_config",
    "daemon.commands.run",
    "daemon.commands.accounting",
    "daemon.commands.quota",
)

DESCRIPTION = """\
talkmeter measures the real talk time between your clients and your consultants on an Asterisk
PBX (not ringing, queues or IVR; hold apart; across transfers) and bills it against each client's
support contract in PostgreSQL, where accountants read it with plain SQL."""

EPILOG = """\
start here:
  talkmeter demo                       watch it measure recorded real calls (no PBX, no database)
  talkmeter check --host PBX           is your PBX set up for it? one line per check, with the fix
  talkmeter watch --host PBX           measure your own PBX's calls live (TALKMETER_AMI_SECRET)
set up the service:
  talkmeter migrate                    create the schema in TALKMETER_DATABASE_URL
  talkmeter import clients FILE.csv    clients and their numbers (then: import contracts FILE.csv)
  talkmeter check-config --config F    check the settings without connecting to anything
  talkmeter run --config F             the service (systemd: talkmeter@.service)

Settings come from TALKMETER_* environment variables and a TOML file (--config); secrets only
from the environment or a file. `talkmeter COMMAND --help` tells more; the README tells all."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="talkmeter",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"talkmeter {talkmeter_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as error:
        print(f"talkmeter: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `talkmeter ... | head`: the reader left, which is not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # Python flushes stdout at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
