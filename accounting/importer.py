"""CSV import of clients and contracts: validate every row, then write all of them or none.

Each bad row is reported with its line number (the physical line in the file, counting the
header as line 1, so a person can find it in an editor) and the reason. Import is an upsert
keyed on `client_id` / `contract_id`; a client's numbers become exactly the numbers of its row.
Rows equal to what the database holds are left alone (not even their `updated_at` moves), and the
result says how many rows were created, changed and left alone.
A contract may not move to another client (its ledger rows belong to the first one): such a row
is an error.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import asyncpg

from accounting import store
from accounting.contracts import (
    CLIENT_COLUMNS,
    CONTRACT_COLUMNS,
    Client,
    Contract,
    InvalidRow,
    parse_client_row,
    parse_contract_row,
)
from accounting.queries import QUERIES

Row = TypeVar("Row", Client, Contract)


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class ImportFailed(Exception):
    """The file has errors; nothing was written."""

    def __init__(self, errors: Sequence[RowError]) -> None:
        super().__init__(f"{len(errors)} bad row(s), nothing imported")
        self.errors = list(errors)


@dataclass(frozen=True, slots=True)
class ImportSummary:
    created: int
    changed: int
    unchanged: int

    def __str__(self) -> str:
        return f"{self.created} created, {self.changed} changed, {self.unchanged} left alone (unchanged)"


def decode(data: bytes) -> str:
    """The file's text (UTF-8, with or without the BOM spreadsheets add)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportFailed(
            [RowError(1, f"the file is not UTF-8 ({error.reason} at byte {error.start})")]
        ) from error


def parse_clients(text: str, default_region: str = "RU") -> list[Client]:
    """Every client of a clients CSV; raise `ImportFailed` listing all bad rows."""
    rows = _parse(text, CLIENT_COLUMNS, lambda row: parse_client_row(row, default_region), "client_id")
    return [client for _, client in rows]


def parse_contracts(text: str) -> list[tuple[int, Contract]]:
    """Every contract of a contracts CSV with its line number; raise `ImportFailed` on errors."""
    return _parse(text, CONTRACT_COLUMNS, parse_contract_row, "contract_id")


async def import_clients(conn: asyncpg.Connection, data: bytes, default_region: str = "RU") -> ImportSummary:
    """Upsert the clients of a CSV file in one transaction; say what was created and changed."""
    clients = parse_clients(decode(data), default_region)
    async with conn.transaction():
        stored = await store.stored_clients(conn, [client.client_id for client in clients])
        created = changed = 0
        for client in clients:
            before = stored.get(client.client_id)
            if before is not None and before == replace(client, numbers=tuple(sorted(client.numbers))):
                continue
            await store.save_client(conn, client)
            created, changed = (created + 1, changed) if before is None else (created, changed + 1)
    return ImportSummary(created, changed, len(clients) - created - changed)


async def import_contracts(conn: asyncpg.Connection, data: bytes) -> ImportSummary:
    """Upsert the contracts of a CSV file in one transaction, after checking them against the
    database (known clients, no contract moving to another client)."""
    items = parse_contracts(decode(data))
    async with conn.transaction():
        errors = await _check_against_database(conn, items)
        if errors:
            raise ImportFailed(errors)
        stored = await store.stored_contracts(conn, [contract.contract_id for _, contract in items])
        created = changed = 0
        for _, contract in items:
            before = stored.get(contract.contract_id)
            if before == contract:
                continue
            await store.save_contract(conn, contract)
            created, changed = (created + 1, changed) if before is None else (created, changed + 1)
    return ImportSummary(created, changed, len(items) - created - changed)


async def _check_against_database(
    conn: asyncpg.Connection, items: list[tuple[int, Contract]]
) -> list[RowError]:
    client_ids = sorted({contract.client_id for _, contract in items})
    known = {row["client_id"] for row in await conn.fetch(QUERIES["existing_client_ids"], client_ids)}
    owners = {
        row["contract_id"]: row["client_id"]
        for row in await conn.fetch(
            QUERIES["contract_owners"], [contract.contract_id for _, contract in items]
        )
    }
    errors = []
    for line, contract in items:
        if contract.client_id not in known:
            errors.append(
                RowError(line, f"client {contract.client_id!r} does not exist: import clients first")
            )
        owner = owners.get(contract.contract_id)
        if owner is not None and owner != contract.client_id:
            errors.append(
                RowError(
                    line,
                    f"contract {contract.contract_id!r} belongs to client {owner!r}; "
                    "a contract cannot move to another client (create a new contract)",
                )
            )
    return errors


def _parse(
    text: str, columns: Sequence[str], parse_row: Callable[[Mapping[str, str]], Row], key: str
) -> list[tuple[int, Row]]:
    items: list[tuple[int, Row]] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for line, row in _rows(text, columns, errors):
        try:
            item = parse_row(row)
        except InvalidRow as error:
            errors.append(RowError(line, str(error)))
            continue
        if not _duplicate(getattr(item, key), line, seen, key, errors):
            items.append((line, item))
    if errors:
        raise ImportFailed(errors)
    return items


def _duplicate(value: str, line: int, seen: dict[str, int], column: str, errors: list[RowError]) -> bool:
    if value in seen:
        errors.append(RowError(line, f"{column} {value!r} already appears on line {seen[value]}"))
        return True
    seen[value] = line
    return False


def _rows(
    text: str, columns: Sequence[str], errors: list[RowError]
) -> Iterator[tuple[int, Mapping[str, str]]]:
    """(line number, row) for each data row; header and shape problems go to `errors`."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        errors.append(RowError(1, f"the file is empty; expected the header {','.join(columns)}"))
        return
    missing = [name for name in columns if name not in header]
    unknown = [name for name in header if name not in columns]
    if missing or unknown or len(set(header)) != len(header):
        errors.append(RowError(1, _header_problem(missing, unknown, columns)))
        return
    try:
        for values in reader:
            line = reader.line_num
            if not any(value.strip() for value in values):
                continue  # blank lines are harmless
            if len(values) != len(header):
                errors.append(RowError(line, f"expected {len(header)} fields, found {len(values)}"))
                continue
            yield line, dict(zip(header, values, strict=True))
    except csv.Error as error:
        errors.append(RowError(reader.line_num, f"unreadable CSV: {error}"))


def _header_problem(missing: list[str], unknown: list[str], columns: Sequence[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing column(s) {', '.join(missing)}")
    if unknown:
        parts.append(f"unknown column(s) {', '.join(unknown)}")
    if not parts:
        parts.append("a column appears twice")
    return "; ".join(parts) + f" (expected {','.join(columns)})"
