"""`talkmeter check-config`: the settings the service would run with, where each came from, checked.

It loads the settings exactly as `talkmeter run` does (command line, environment, the TOML file,
defaults), prints every one with its source, secrets masked, then checks what `run` needs
before it connects: the AMI secret can be read and is not empty, a database URL is set and well
formed. It connects to nothing. A problem is one line on stderr and exit code 2, as everywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from accounting.reports import fixed_width
from daemon.alerts.settings import AlertSettings
from daemon.settings import MASK, SECRET_SETTINGS, Loaded, load_with_sources, masked_dsn


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="show the settings run would use and where each came from; check them offline",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML configuration file (default: TALKMETER_CONFIG)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_with_sources(args.config)
    sys.stdout.write(render(loaded))
    settings = loaded.settings
    settings.ami_password()
    settings.dsn()
    settings.check_alert_secrets()
    print("configuration is valid for `talkmeter run` (nothing was connected to)")
    return 0


def render(loaded: Loaded) -> str:
    """One line per setting: name, source, value (secrets masked); aligned for reading."""
    file_note = f"config file: {loaded.config_file}" if loaded.config_file else "config file: none"
    rows = [
        (name, str(loaded.sources[name]), shown_value(name, getattr(loaded.settings, name)))
        for name in type(loaded.settings).model_fields
    ]
    return f"# {file_note}\n" + fixed_width(("setting", "from", "value"), rows, text_columns={0, 1, 2})


def shown_value(name: str, value: Any) -> str:
    if value is None:
        return "(not set)"
    if name in SECRET_SETTINGS:
        secret = value.get_secret_value()
        return masked_dsn(secret) if name == "database_url" else MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, AlertSettings):
        return json.dumps(value.summary(), ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)
