"""Accounting commands: `migrate`, `import clients|contracts`, `report monthly`, `rerate`, `assign`,
`contract end|withdraw`, `check-ledger`.

All of them use the database of the settings (`TALKMETER_DATABASE_URL` or `database_url` in the
`--config` file). Problems a person can fix (bad CSV rows, an old schema, an unreachable
database, a contract that cannot end as asked) are printed as lines on stderr with exit code 2;
the DSN itself is never printed. `check-ledger` exits with 1 when it finds a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

from accounting import audit, reports, store
from accounting.importer import ImportFailed, import_clients, import_contracts
from accounting.ledger import (
    ContractRefused,
    RetryableStorageError,
    assign_conversation,
    end_contract,
    rerate,
    withdraw_contract,
)
from accounting.migrate import MissingRoles, SchemaError, check_schema, migrate
from accounting.store import PrunedConversation
from daemon.settings import ConfigError, load_settings


def register(subparsers: Any) -> None:
    _register_migrate(subparsers)
    _register_import(subparsers)
    _register_report(subparsers)
    _register_rerate(subparsers)
    _register_assign(subparsers)
    _register_contract(subparsers)
    _register_check_ledger(subparsers)


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration file (the database: TALKMETER_DATABASE_URL)",
    )
    return parser


def _register_migrate(subparsers: Any) -> None:
    parser = _with_config(
        subparsers.add_parser("migrate", help="create or update the database schema (as its owner)")
    )
    parser.set_defaults(func=run_migrate)


def _register_import(subparsers: Any) -> None:
    parser = _with_config(subparsers.add_parser("import", help="import clients or contracts from a CSV file"))
    parser.add_argument("kind", choices=("clients", "contracts"))
    parser.add_argument("file", type=Path, help="CSV file (UTF-8, comma-separated, with a header)")
    parser.set_defaults(func=run_import)


def _register_report(subparsers: Any) -> None:
    parser = _with_config(subparsers.add_parser("report", help="print the monthly statement"))
    parser.add_argument("report", choices=("monthly",))
    parser.add_argument("--month", required=True, help="the month, e.g. 2026-11")
    parser.add_argument("--client", help="only this client_id")
    parser.add_argument("--format", choices=("table", "csv"), default="table")
    parser.add_argument(
        "--csv",
        action="store_true",
        help="CSV for Excel and 1C: UTF-8 with BOM, ';' between fields, decimal commas",
    )
    parser.set_defaults(func=run_report)


def _register_rerate(subparsers: Any) -> None:
    parser = _with_config(
        subparsers.add_parser(
            "rerate", help="re-attribute and re-rate conversations after reference data changed"
        )
    )
    parser.add_argument("--client", help="only this client_id (and clients that gain conversations)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="re-attribute and re-rate every conversation from the start, not just what changed",
    )
    parser.set_defaults(func=run_rerate)


def _register_assign(subparsers: Any) -> None:
    parser = _with_config(
        subparsers.add_parser("assign", help="assign an unmatched conversation to a client (then run rerate)")
    )
    parser.add_argument("conversation_id")
    parser.add_argument("client_id")
    parser.add_argument("--note", help="why (kept with the assignment)")
    parser.set_defaults(func=run_assign)


def _register_contract(subparsers: Any) -> None:
    parser = subparsers.add_parser("contract", help="end or withdraw a contract")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    end = _with_config(
        actions.add_parser("end", help="let a contract end on a day (inclusive), then re-rate its client")
    )
    end.add_argument("contract_id")
    end.add_argument("last_day", help="the contract's last day, e.g. 2026-11-30 (client-local)")
    end.set_defaults(func=run_contract_end)
    withdraw = _with_config(
        actions.add_parser("withdraw", help="remove a contract no conversation was ever charged under")
    )
    withdraw.add_argument("contract_id")
    withdraw.set_defaults(func=run_contract_withdraw)


def _register_check_ledger(subparsers: Any) -> None:
    parser = _with_config(
        subparsers.add_parser(
            "check-ledger", help="check that the running state equals what the ledger sums to"
        )
    )
    parser.add_argument("--client", help="only this client_id")
    parser.set_defaults(func=run_check_ledger)


def run_migrate(args: argparse.Namespace) -> int:
    async def job(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        for migration in applied:
            print(f"applied {migration.file_name}")
        if not applied:
            print("schema is up to date")
        return 0

    return _run(args, job, check=False)


def run_import(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {args.file}: {error.strerror}") from error
    region = load_settings(args.config).default_region

    async def job(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            if args.kind == "clients":
                summary = await import_clients(conn, data, region)
            else:
                summary = await import_contracts(conn, data)
        print(f"{args.kind} from {args.file}: {summary}")
        if summary.created or summary.changed:
            print("run `talkmeter rerate` to apply the changes to the ledger")
        return 0

    return _run(args, job)


def run_report(args: argparse.Namespace) -> int:
    try:
        month = reports.parse_month(args.month)
    except ValueError as error:
        raise ConfigError(str(error)) from error

    async def job(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            lines = await reports.monthly_statement(conn, month, args.client)
        if args.csv:
            sys.stdout.flush()
            sys.stdout.buffer.write(reports.format_spreadsheet(lines))
            sys.stdout.buffer.flush()
            return 0
        render = reports.format_csv if args.format == "csv" else reports.format_table
        sys.stdout.write(render(lines))
        return 0

    return _run(args, job)


def run_rerate(args: argparse.Namespace) -> int:
    async def job(pool: asyncpg.Pool) -> int:
        summary = await rerate(pool, args.client, full=args.full)
        print(f"re-rated {summary.clients} client(s), posted {summary.postings} ledger row(s)")
        return 0

    return _run(args, job)


def run_assign(args: argparse.Namespace) -> int:
    async def job(pool: asyncpg.Pool) -> int:
        await assign_conversation(pool, args.conversation_id, args.client_id, args.note)
        print(f"assigned {args.conversation_id} to {args.client_id}; run `talkmeter rerate` to bill it")
        return 0

    return _run(args, job)


def run_contract_end(args: argparse.Namespace) -> int:
    try:
        last_day = date.fromisoformat(args.last_day)
    except ValueError as error:
        raise ConfigError(f"the last day must look like 2026-11-30, not {args.last_day!r}") from error

    async def job(pool: asyncpg.Pool) -> int:
        client_id, summary = await end_contract(pool, args.contract_id, last_day)
        print(
            f"contract {args.contract_id} of {client_id} ends on {last_day.isoformat()}; "
            f"re-rated {summary.clients} client(s), posted {summary.postings} ledger row(s)"
        )
        return 0

    return _run(args, job)


def run_contract_withdraw(args: argparse.Namespace) -> int:
    async def job(pool: asyncpg.Pool) -> int:
        client_id = await withdraw_contract(pool, args.contract_id)
        print(f"contract {args.contract_id} of {client_id} withdrawn")
        return 0

    return _run(args, job)


def run_check_ledger(args: argparse.Namespace) -> int:
    async def job(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            clients = [args.client] if args.client else await store.all_clients(conn)
            found = 0
            for client_id in clients:
                for mismatch in await audit.check_client(conn, client_id):
                    found += 1
                    print(mismatch)
        if found:
            print(
                f"talkmeter: {found} difference(s) between the running state and the ledger", file=sys.stderr
            )
            return 1
        print(f"checked {len(clients)} client(s): the running state equals what the ledger sums to")
        return 0

    return _run(args, job)


def _run(args: argparse.Namespace, job: Callable[[asyncpg.Pool], Awaitable[int]], check: bool = True) -> int:
    dsn = load_settings(args.config).dsn()
    try:
        return asyncio.run(_with_pool(dsn, job, check))
    except ImportFailed as failure:
        for error in failure.errors:
            print(f"talkmeter: {args.file}: {error}", file=sys.stderr)
        print(f"talkmeter: {failure}", file=sys.stderr)
        return 2
    except MissingRoles as error:
        print(f"talkmeter: {error}:", file=sys.stderr)
        for statement in error.statements:
            print(f"    {statement}", file=sys.stderr)
        return 2
    except (SchemaError, LookupError, ContractRefused, PrunedConversation, RetryableStorageError) as error:
        print(f"talkmeter: {error}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as error:
        # asyncpg's messages name the server and the problem, never the password.
        print(f"talkmeter: database error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    except (asyncpg.ClientConfigurationError, ValueError) as error:  # an option asyncpg refuses
        print(f"talkmeter: database_url: {error}", file=sys.stderr)
        return 2


async def _with_pool(dsn: str, job: Callable[[asyncpg.Pool], Awaitable[int]], check: bool) -> int:
    # Two connections: a long rerate reads ahead on the second (see ledger.rerate).
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
        if check:
            async with pool.acquire() as conn:
                await check_schema(conn)
        return await job(pool)
