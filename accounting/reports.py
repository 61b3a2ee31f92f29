"""The monthly statement, read from `talkmeter.monthly_statement` and printed as a table or CSV.

Two CSV forms: `format_csv` for programs (comma-separated, decimal point, no BOM) and
`format_spreadsheet` for people who open it in Excel or import it into 1C as Russian locales
expect: UTF-8 with a byte-order mark (so Cyrillic names are read as UTF-8), `;` between fields,
decimal commas, CRLF line ends.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from datetime import date
from decimal import Decimal

import asyncpg

from accounting.queries import QUERIES

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class StatementLine:
    client_id: str
    client_name: str
    contracts: str
    """The contracts used in the month, comma-separated."""
    month: date
    conversations: int
    talk_seconds: Decimal
    free_seconds: Decimal
    prepaid_seconds: Decimal
    billable_seconds: int
    amount: Decimal
    currency: str | None
    prepaid_remaining_seconds: Decimal | None


def parse_month(text: str) -> date:
    """`2026-11` → 2026-11-01; ValueError for anything else."""
    match = _MONTH.match(text.strip())
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"month must look like 2026-11, not {text!r}")
    return date(int(match.group(1)), int(match.group(2)), 1)


async def monthly_statement(
    conn: asyncpg.Connection, month: date, client_id: str | None = None
) -> list[StatementLine]:
    rows = await conn.fetch(QUERIES["monthly_statement"], month, client_id)
    return [StatementLine(**dict(row)) for row in rows]


def format_csv(lines: Sequence[StatementLine]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([field.name for field in fields(StatementLine)])
    for line in lines:
        writer.writerow(["" if value is None else value for value in astuple(line)])
    return out.getvalue()


def format_spreadsheet(lines: Sequence[StatementLine]) -> bytes:
    """The statement as Russian Excel and 1C open it directly (see the module comment)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow([field.name for field in fields(StatementLine)])
    for line in lines:
        writer.writerow([_spreadsheet_cell(value) for value in astuple(line)])
    return out.getvalue().encode("utf-8-sig")


def _spreadsheet_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return str(value).replace(".", ",")
    return str(value)


_TABLE_HEADER = (
    "client",
    "name",
    "contracts",
    "calls",
    "talk",
    "free",
    "prepaid",
    "billable",
    "amount",
    "prepaid left",
)


def format_table(lines: Sequence[StatementLine]) -> str:
    """A fixed-width table for people: durations, billable time included, as h:mm:ss."""
    if not lines:
        return "no charges for this month\n"
    body = [
        (
            line.client_id,
            line.client_name,
            line.contracts,
            str(line.conversations),
            duration(line.talk_seconds),
            duration(line.free_seconds),
            duration(line.prepaid_seconds),
            duration(Decimal(line.billable_seconds)),
            f"{line.amount} {line.currency or ''}".strip(),
            "" if line.prepaid_remaining_seconds is None else duration(line.prepaid_remaining_seconds),
        )
        for line in lines
    ]
    return fixed_width(_TABLE_HEADER, body, text_columns={0, 1, 2})


def fixed_width(header: Sequence[str], body: Sequence[Sequence[str]], text_columns: set[int]) -> str:
    """Columns padded to their widest cell: text columns to the left, figures to the right."""
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    rendered = []
    for row in (header, *body):
        cells = [
            cell.ljust(w) if i in text_columns else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        rendered.append("  ".join(cells).rstrip())
    return "\n".join(rendered) + "\n"


def duration(seconds: Decimal) -> str:
    """h:mm:ss, whole seconds rounded down (the exact value is in the CSV)."""
    total = int(seconds)
    sign = "-" if total < 0 else ""
    hours, rest = divmod(abs(total), 3600)
    return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"
