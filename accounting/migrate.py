"""Forward-only schema migrations: numbered `.sql` files applied once each, in order.

`migrate` holds a session advisory lock for the whole run, so two instances started together
apply each file once; every file runs in its own transaction together with the row that records
it, so a failing file leaves nothing half-applied. Each applied file's SHA-256 is kept: when an
applied file has changed on disk, `migrate` and `check_schema` refuse, because the database no
longer matches what the files say (write a new migration instead of editing an old one).

The daemon calls `check_schema` at start and refuses to run on a schema older (or newer) than
its own migrations.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from accounting.queries import QUERIES

MIGRATIONS_DIR_ENV = "TALKMETER_MIGRATIONS_DIR"
# "talkmig" in ASCII: one fixed key per cluster database for the migration lock.
MIGRATION_LOCK_KEY = 0x74616C6B6D6967

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaError(RuntimeError):
    """The database schema does not match this talkmeter; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def migrations_dir() -> Path:
    override = os.environ.get(MIGRATIONS_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files in version order; other files in the directory are an error."""
    folder = directory or migrations_dir()
    if not folder.is_dir():
        raise SchemaError(f"migrations directory not found: {folder}")
    found: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise SchemaError(f"migration file name must look like 0001_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise SchemaError(f"two migration files with version {version:04d}")
        data = path.read_bytes()
        found[version] = Migration(
            version, match.group(2), data.decode("utf-8"), hashlib.sha256(data).hexdigest()
        )
    return [found[version] for version in sorted(found)]


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Apply the pending migrations; return those applied (empty when up to date)."""
    migrations = load_migrations(directory)
    await conn.execute(QUERIES["lock_migrations"], MIGRATION_LOCK_KEY)
    try:
        async with conn.transaction():
            await conn.execute(QUERIES["bootstrap_migrations"])
        applied = await _applied(conn)
        _verify(migrations, applied)
        pending = [migration for migration in migrations if migration.version not in applied]
        for migration in pending:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    QUERIES["record_migration"], migration.version, migration.name, migration.checksum
                )
        return pending
    finally:
        await conn.execute(QUERIES["unlock_migrations"], MIGRATION_LOCK_KEY)


async def check_schema(conn: asyncpg.Connection, directory: Path | None = None) -> None:
    """Raise `SchemaError` unless the database has exactly this talkmeter's migrations."""
    migrations = load_migrations(directory)
    if not await conn.fetchval(QUERIES["migrations_table_exists"]):
        raise SchemaError("the database has no talkmeter schema: run `talkmeter migrate`")
    applied = await _applied(conn)
    _verify(migrations, applied)
    missing = [migration.file_name for migration in migrations if migration.version not in applied]
    if missing:
        raise SchemaError(
            f"the database schema is older than this talkmeter (missing {', '.join(missing)}): "
            "run `talkmeter migrate`"
        )


async def _applied(conn: asyncpg.Connection) -> dict[int, tuple[str, str]]:
    rows = await conn.fetch(QUERIES["applied_migrations"])
    return {row["version"]: (row["name"], row["checksum"]) for row in rows}


def _verify(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    known = {migration.version: migration for migration in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise SchemaError(
                f"the database has migration {version:04d}_{name}.sql, which this talkmeter does not "
                "know: it is newer than this program"
            )
        if migration.checksum != checksum:
            raise SchemaError(
                f"migration {migration.file_name} was changed after it was applied "
                f"(database {checksum[:12]}, file {migration.checksum[:12]}): restore the file and "
                "put the change in a new migration"
            )
