"""`talkmeter replay TRACE.ami`: measure the conversations of a recorded AMI capture.

With `--dry-run` it prints one line per finished conversation, in the order they end, then a
summary table, and touches no database: the audit tool for "what would talkmeter have measured on
this capture". `--json` prints the conversation records instead, one JSON object per line.
Conversations still open when the capture ends are closed at their last event, `estimated: true`.

Without `--dry-run` the conversations are recorded and rated in the configured database, exactly as
the daemon records them (idempotent: replaying a capture twice changes nothing), and one line per
conversation says what became of it (rated, unknown number, no contract, duplicate, ...), then the
summary table and the count of each outcome (`--json`: one JSON object per conversation with its
outcome). On a terminal, a progress line on stderr shows how far a long replay has got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from accounting.ledger import record_conversation
from accounting.migrate import SchemaError, check_schema
from daemon.live import WARNINGS
from daemon.logging import configure_logging
from daemon.output import Progress, conversation_line, json_line, summarise, write_line
from daemon.settings import ConfigError, Settings, load_settings
from telephony.calls import WANTED_EVENTS
from telephony.capture import read_capture, timing_beside
from telephony.effects import Anomaly, Conversation, ConversationEnded
from telephony.framing import Malformed, Message


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("replay", help="measure the conversations of a recorded AMI capture")
    parser.add_argument("trace", type=Path, help="raw AMI capture (.ami)")
    parser.add_argument("--dry-run", action="store_true", help="print conversations, write nothing")
    parser.add_argument(
        "--json", action="store_true", help="machine output: one JSON object per line, nothing else"
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument("--timing", type=Path, help="receive-time sidecar (default: TRACE.timing if present)")
    parser.set_defaults(func=run)


def measure_capture(path: Path, settings: Settings, timing_path: Path | None = None) -> list[Conversation]:
    """All conversations of a capture, in the order they ended; anomalies go to stderr."""
    if not path.is_file():
        raise ConfigError(f"no such capture: {path}")
    try:
        timing = timing_beside(path, timing_path)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    tracker = settings.call_tracker()
    finished: list[Conversation] = []
    progress = Progress(f"measuring {path.name}")
    replaced = 0

    def warn_once(message: Message, reason: str) -> None:
        nonlocal replaced
        replaced += 1
        if replaced == 1:
            print(f"talkmeter: warning: {message.event}: {reason}; the estimate is used", file=sys.stderr)

    captured = read_capture(path.read_bytes(), timing, WANTED_EVENTS, warn_once)
    for count, (message, received_at) in enumerate(captured):
        progress.update(count, f" events, {len(finished):,} conversations")
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
    progress.close()
    if replaced > 1:
        print(f"talkmeter: warning: {replaced} Timestamps were not believed in all", file=sys.stderr)
    return finished


def _collect(effect: object, finished: list[Conversation]) -> None:
    if isinstance(effect, ConversationEnded):
        finished.append(effect.conversation)
    elif isinstance(effect, Anomaly) and effect.kind in WARNINGS:
        print(f"talkmeter: warning: {effect.detail}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.log_level)  # logs to stderr: stdout carries the results
    conversations = [c.to_json() for c in measure_capture(args.trace, settings, args.timing)]
    if not args.dry_run:
        measured = [{**conversation, "instance": settings.instance} for conversation in conversations]
        return asyncio.run(_record_all(measured, settings.dsn(), args.json))
    for conversation in conversations:
        write_line(json_line(conversation) if args.json else conversation_line(conversation))
    if not args.json:
        write_line("\n" + summarise(conversations).table().rstrip("\n"))
    return 0


async def _record_all(conversations: list[dict[str, Any]], dsn: str, as_json: bool) -> int:
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
        outcomes: Counter[str] = Counter()
        progress = Progress("recording", len(conversations))
        for done, conversation in enumerate(conversations):
            progress.update(done, " conversations")
            result = await record_conversation(pool, conversation)
            outcomes[result.status] += 1
            charge = result.charge
            if as_json:
                amount = None if charge is None else str(charge.amount)
                currency = None if charge is None else charge.currency
                outcome = {"conversation_id": result.conversation_id, "status": result.status,
                           "client_id": result.client_id, "amount": amount, "currency": currency}  # fmt: skip
                write_line(json.dumps(outcome, ensure_ascii=False))
            else:
                amount = "-" if charge is None else f"{charge.amount} {charge.currency or ''}".strip()
                write_line(f"{result.conversation_id}\t{result.status}\t{result.client_id or '-'}\t{amount}")
        progress.close()
    if not as_json:
        counts = ", ".join(f"{count} {status}" for status, count in sorted(outcomes.items()))
        write_line("\n" + summarise(conversations).table() + f"\nrecorded: {counts or 'nothing'}")
    return 0
