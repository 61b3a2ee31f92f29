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

from daemon.settings import ConfigError

COMMAND_MODULES = (
    "daemon.commands.replay",
    "daemon.commands.simulate",
    "daemon.commands.watch",
    "daemon.commands.demo",
    "daemon.commands.accounting",
    "daemon.commands.run",
    "daemon.commands.check_config",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="talkmeter", description=__doc__.splitlines()[0])
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
