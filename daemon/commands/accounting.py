"""Accounting commands: `migrate`, `import clients|contracts`, `report monthly`, `rerate`, `assign`.

All of them use the database of the settings (`TALKMETER_DATABASE_URL` or `database_url` in the
`--config` file). Problems a person can fix (bad CSV rows, an old schema, an unreachable
database) are printed as lines on stderr with exit code 2; the DSN itself is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from accounting import reports
from accounting.importer import ImportFailed, import_clients, import_contracts
from accounting.ledger import RetryableStorageError, assign_conversation, rerate
from accounting.migrate import MissingRoles, SchemaError, check_schema, migrate
from daemon.settings import ConfigError, load_settings


def register(subparsers: Any) -> None:
    _register_migrate(subparsers)
    _register_import(subparsers)
    _register_report(subparsers)
    _register_rerate(subparsers)
    _register_assign(subparsers)


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
    parser.set_defaults(func=run_report)


def _register_rerate(subparsers: Any) -> None:
    parser = _with_config(
        subparsers.add_parser(
            "rerate", help="re-attribute and re-rate conversations after reference data changed"
        )
    )
    parser.add_argument("--client", help="only this client_id (and clients that gain conversations)")
    parser.set_defaults(func=run_rerate)


def _register_assign(subparsers: Any) -> None:
    parser = _with_config(
        subparsers.add_parser("assign", help="assign an unmatched conversation to a client (then run rerate)")
    )
    parser.add_argument("conversation_id")
    parser.add_argument("client_id")
    parser.add_argument("--note", help="why (kept with the assignment)")
    parser.set_defaults(func=run_assign)


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
        render = reports.format_csv if args.format == "csv" else reports.format_table
        sys.stdout.write(render(lines))
        return 0

    return _run(args, job)


def run_rerate(args: argparse.Namespace) -> int:
    async def job(pool: asyncpg.Pool) -> int:
        summary = await rerate(pool, args.client)
        print(f"re-rated {summary.clients} client(s), posted {summary.postings} ledger row(s)")
        return 0

    return _run(args, job)


def run_assign(args: argparse.Namespace) -> int:
    async def job(pool: asyncpg.Pool) -> int:
        await assign_conversation(pool, args.conversation_id, args.client_id, args.note)
        print(f"assigned {args.conversation_id} to {args.client_id}; run `talkmeter rerate` to bill it")
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
    except (SchemaError, LookupError, RetryableStorageError) as error:
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
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        if check:
            async with pool.acquire() as conn:
                await check_schema(conn)
        return await job(pool)
