"""`talkmeter quota [CLIENT]`: what each client has used and has left now (`talkmeter.quota_now`).

Per client and contract valid today: today's free time used and left (the client's local day),
this ISO week's free days used and left, the prepaid package used and left, paid (or over-quota)
time this month, and the conversations in progress with their talk so far, which count in the
figures already. It reads the view only, so the accountant role can run it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from accounting.reports import duration, fixed_width
from daemon.commands.accounting import _run

QUERY = """
SELECT client_id, client_name, contract_id, timezone, day, free_daily_seconds, free_used_seconds,
       free_left_seconds, free_days_per_week, free_days_used, free_days_left, prepaid_seconds,
       prepaid_used_seconds, prepaid_left_seconds, paid_seconds_this_month, overage,
       conversations_in_progress, live_talk_seconds, in_progress
  FROM talkmeter.quota_now
 WHERE $1::text IS NULL OR client_id = $1
 ORDER BY client_id, contract_id
"""

HEADER = ("client", "name", "contract", "free today", "free days", "prepaid", "paid month", "in progress")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quota",
        help="what each client has used and has left now, conversations in progress included",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument("client", nargs="?", help="only this client_id")
    parser.add_argument("--json", action="store_true", help="one JSON object per client and contract")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    async def job(pool: asyncpg.Pool) -> int:
        rows = [dict(row) for row in await pool.fetch(QUERY, args.client)]
        if args.client is not None and not rows:
            raise LookupError(f"no contract of client {args.client!r} is valid today")
        print(format_json(rows) if args.json else format_table(rows), end="")
        return 0

    return _run(args, job)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per client and contract (`used / left` of each allowance), then the calls."""
    if not rows:
        return "no contract is valid today\n"
    body = [
        (
            row["client_id"],
            row["client_name"],
            row["contract_id"],
            _allowance(row["free_used_seconds"], row["free_left_seconds"]),
            _days(row["free_days_used"], row["free_days_left"], row["free_days_per_week"]),
            _allowance(row["prepaid_used_seconds"], row["prepaid_left_seconds"]),
            duration(row["paid_seconds_this_month"]) + (" (flagged)" if row["overage"] == "flag" else ""),
            _progress(row["conversations_in_progress"], row["live_talk_seconds"]),
        )
        for row in rows
    ]
    text = fixed_width(HEADER, body, text_columns={0, 1, 2})
    calls = [_call_line(row["client_id"], call) for row in rows for call in _calls(row)]
    if calls:
        text += "\nin progress:\n" + "".join(calls)
    return text + "(used / left; days of this week; the calls in progress are counted)\n"


def format_json(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, default=str, ensure_ascii=False) + "\n" for row in _plain(rows))


def _plain(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "in_progress": _calls(row)} for row in rows]


def _calls(row: dict[str, Any]) -> list[dict[str, Any]]:
    calls = row["in_progress"]
    return list(json.loads(calls) if isinstance(calls, str) else calls)


def _allowance(used: Decimal | None, left: Decimal | None) -> str:
    if left is None:
        return "—"
    return f"{duration(used or Decimal(0))} / {duration(left)}"


def _days(used: int, left: int | None, limit: int | None) -> str:
    return "—" if limit is None else f"{used} / {left}"


def _progress(count: int, talk: Decimal) -> str:
    return "—" if not count else f"{count}: {duration(talk)}"


def _call_line(client_id: str, call: dict[str, Any]) -> str:
    consultants = ", ".join(call["consultants"]) or "—"
    state = " (on hold)" if call["on_hold"] else " (ended, being recorded)" if call["ended"] else ""
    number = call["client_number"] or "withheld"
    talk = duration(Decimal(str(call["talk_seconds"])))
    return f"  {client_id}  {number} -> {consultants}  talk {talk}{state}  [{call['conversation_id']}]\n"
