"""`talkmeter replay TRACE.ami`: measure the conversations of a recorded AMI capture.

With `--dry-run` it prints one JSON object per finished conversation, in the order they end, and
touches no database: the audit tool for "what would talkmeter have measured on this capture".
Conversations still open when the capture ends are closed at their last event, `estimated: true`.

Without `--dry-run` the conversations are recorded and rated in the configured database, exactly as
the daemon records them (idempotent: replaying a capture twice changes nothing), and one line per
conversation says what became of it (rated, unknown number, no contract, duplicate, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import asyncpg

from accounting.ledger import record_conversation
from accounting.migrate import SchemaError, check_schema
from daemon.logging import configure_logging
from daemon.settings import ConfigError, Settings, load_settings
from telephony.calls import WANTED_EVENTS
from telephony.capture import parse_timing, read_capture
from telephony.effects import Anomaly, Conversation, ConversationEnded
from telephony.framing import Malformed


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("replay", help="measure the conversations of a recorded AMI capture")
    parser.add_argument("trace", type=Path, help="raw AMI capture (.ami)")
    parser.add_argument("--dry-run", action="store_true", help="print conversations, write nothing")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--timing", type=Path, help="receive-time sidecar (default: TRACE.timing if present)")
    parser.set_defaults(func=run)


def measure_capture(path: Path, settings: Settings, timing_path: Path | None = None) -> list[Conversation]:
    """All conversations of a capture, in the order they ended; anomalies go to stderr."""
    if not path.is_file():
        raise ConfigError(f"no such capture: {path}")
    sidecar = timing_path or path.with_name(path.name + ".timing")
    timing = parse_timing(sidecar.read_text().splitlines()) if sidecar.is_file() else None
    tracker = settings.call_tracker()
    finished: list[Conversation] = []
    for message, received_at in read_capture(path.read_bytes(), timing, WANTED_EVENTS):
        if isinstance(message, Malformed):
            print(
                f"talkmeter: skipped malformed frame ({message.reason}): {message.raw[:80]!r}",
                file=sys.stderr,
            )
            continue
        for effect in tracker.feed(message, received_at):
            _collect(effect, finished)
    for effect in tracker.close_all():
        _collect(effect, finished)
    return finished


def _collect(effect: object, finished: list[Conversation]) -> None:
    if isinstance(effect, ConversationEnded):
        finished.append(effect.conversation)
    elif isinstance(effect, Anomaly) and effect.kind == "no_timestamp":
        print(f"talkmeter: warning: {effect.detail}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.log_level)  # logs to stderr: stdout carries the results
    conversations = measure_capture(args.trace, settings, args.timing)
    if not args.dry_run:
        return _write(conversations, settings)
    for conversation in conversations:
        print(json.dumps(conversation.to_json(), ensure_ascii=False), flush=True)
    return 0


def _write(conversations: list[Conversation], settings: Settings) -> int:
    return asyncio.run(_record_all([c.to_json() for c in conversations], settings.dsn()))


async def _record_all(conversations: list[dict[str, Any]], dsn: str) -> int:
    try:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    except (OSError, asyncpg.PostgresError) as error:
        raise ConfigError(f"cannot reach the database: {type(error).__name__}: {error}") from error
    async with pool:
        async with pool.acquire() as conn:
            try:
                await check_schema(conn)
            except SchemaError as error:
                raise ConfigError(str(error)) from error
        for conversation in conversations:
            result = await record_conversation(pool, conversation)
            amount = (
                "-" if result.charge is None else f"{result.charge.amount} {result.charge.currency or ''}"
            )
            print(f"{result.conversation_id}\t{result.status}\t{result.client_id or '-'}\t{amount.strip()}")
    return 0
