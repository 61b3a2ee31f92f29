"""Static checks as part of the one test run: ruff, mypy, and the dependency rule of the pure core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

PURE_MODULES = [
    "telephony.framing",
    "telephony.stamps",
    "telephony.numbers",
    "telephony.roles",
    "telephony.effects",
    "telephony.calls",
    "telephony.capture",
    "accounting.rating",
    "accounting.contracts",
    "accounting.conversations",
    "accounting.postings",
    "accounting.usage",
    "accounting.quota",
    "accounting.versions",
]
FORBIDDEN = ["asyncio", "asyncpg", "panoramisk", "socket", "structlog"]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff() -> None:
    result = run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_pure_core_imports_no_io() -> None:
    """The call model and rating core take events and time as input: no network, no event loop."""
    probe = (
        "import importlib, sys\n"
        f"for name in {PURE_MODULES!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    result = run(sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
