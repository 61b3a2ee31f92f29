"""Forward-only schema migrations: numbered `.sql` files applied once each, in order.

`migrate` holds a session advisory lock for the whole run, so two instances started together
apply each file once; every file runs in its own transaction together with the row that records
it, so a failing file leaves nothing half-applied. Each applied file's SHA-256 is kept: when an
applied file has changed on disk, `migrate` and `check_schema` refuse, because the database no
longer matches what the files say (write a new migration instead of editing an old one).

The files ship inside the `accounting` package (`accounting/migrations`, a link to the top-level
`migrations/` folder where they are edited; the wheel carries copies) and are read with
`importlib.resources`, so an installed talkmeter needs no clone. `TALKMETER_MIGRATIONS_DIR`
points elsewhere (tests, a hotfix).

Roles are the one thing a schema owner should not need rights for. They are cluster-wide, and
PostgreSQL checks CREATEROLE before it checks whether a role exists, so 0001's
"create unless it exists" blocks fail for an owner without CREATEROLE even when the roles are
there. The runner therefore takes those blocks (the `ROLE_BLOCK` idiom, and only it) out of the
SQL it executes and does their job itself, in the same transaction: a missing role is created
when the owner may create roles; otherwise nothing is applied and `MissingRoles` gives the
administrator the `CREATE ROLE` lines to run. The file itself, and so its checksum in databases
migrated before, is unchanged. Any other `CREATE ROLE` in a migration is refused when the files
are loaded.

The daemon calls `check_schema` at start and refuses to run on a schema older (or newer) than
its own migrations.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from accounting.queries import QUERIES

MIGRATIONS_DIR_ENV = "TALKMETER_MIGRATIONS_DIR"
# "talkmig" in ASCII: one fixed key per cluster database for the migration lock.
MIGRATION_LOCK_KEY = 0x74616C6B6D6967

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: how a migration says "this role must exist" (0001's idiom); the runner executes it itself
ROLE_BLOCK = re.compile(
    r"DO \$\$\s*BEGIN\s*CREATE ROLE ([a-z_][a-z0-9_]*) NOLOGIN;\s*"
    r"EXCEPTION WHEN duplicate_object OR unique_violation THEN\s*NULL;\s*END\s*\$\$;",
    re.IGNORECASE,
)
_ANY_CREATE_ROLE = re.compile(r"\bCREATE\s+ROLE\b", re.IGNORECASE)


class SchemaError(RuntimeError):
    """The database schema does not match this talkmeter; the message says what to do."""


class MissingRoles(SchemaError):
    """Roles the schema needs do not exist and the connected role may not create them."""

    def __init__(self, user: str, roles: list[str]) -> None:
        self.roles = roles
        self.statements = [f"CREATE ROLE {role} NOLOGIN;" for role in roles]
        super().__init__(
            f"the role(s) {', '.join(roles)} do not exist and {user} may not create roles; nothing was "
            "applied. Ask a PostgreSQL administrator to run the lines below, then run "
            "`talkmeter migrate` again"
        )


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str
    roles: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, version: int, name: str, data: bytes) -> Migration:
        """A migration from its file's bytes: the checksum is of the bytes, unchanged; role
        blocks are taken out of the SQL to execute (see the module comment)."""
        text = data.decode("utf-8")
        roles = tuple(match.group(1) for match in ROLE_BLOCK.finditer(text))
        sql = ROLE_BLOCK.sub("", text)
        if _ANY_CREATE_ROLE.search(sql):
            raise SchemaError(
                f"{version:04d}_{name}.sql creates a role outside the runner's idiom; write it as "
                "0001_initial.sql does"
            )
        return cls(version, name, sql, hashlib.sha256(data).hexdigest(), roles)

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def migrations_dir() -> Traversable:
    """Where the migration files are: `TALKMETER_MIGRATIONS_DIR`, else the ones shipped in the package."""
    override = os.environ.get(MIGRATIONS_DIR_ENV)
    if override:
        return Path(override)
    return files("accounting") / "migrations"


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files in version order; other files in the directory are an error."""
    folder = directory or migrations_dir()
    if not folder.is_dir():
        raise SchemaError(f"migrations directory not found: {folder}")
    found: dict[int, Migration] = {}
    for path in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if not path.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise SchemaError(f"migration file name must look like 0001_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise SchemaError(f"two migration files with version {version:04d}")
        found[version] = Migration.parse(version, match.group(2), path.read_bytes())
    return [found[version] for version in sorted(found)]


async def migrate(conn: asyncpg.Connection, directory: Traversable | None = None) -> list[Migration]:
    """Apply the pending migrations; return those applied (empty when up to date).

    Raises `MissingRoles`, before applying anything, when a pending migration needs a role that
    does not exist and the connected role may not create it.
    """
    migrations = load_migrations(directory)
    await conn.execute(QUERIES["lock_migrations"], MIGRATION_LOCK_KEY)
    try:
        async with conn.transaction():
            await conn.execute(QUERIES["bootstrap_migrations"])
        applied = await _applied(conn)
        _verify(migrations, applied)
        pending = [migration for migration in migrations if migration.version not in applied]
        await _check_roles(conn, pending)
        for migration in pending:
            async with conn.transaction():
                for role in await _missing_roles(conn, migration.roles):
                    await conn.execute(f"CREATE ROLE {role} NOLOGIN")  # a name ROLE_BLOCK matched
                await conn.execute(migration.sql)
                await conn.execute(
                    QUERIES["record_migration"], migration.version, migration.name, migration.checksum
                )
        return pending
    finally:
        await conn.execute(QUERIES["unlock_migrations"], MIGRATION_LOCK_KEY)


async def check_schema(conn: asyncpg.Connection, directory: Traversable | None = None) -> None:
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


async def _check_roles(conn: asyncpg.Connection, pending: list[Migration]) -> None:
    needed = list(dict.fromkeys(role for migration in pending for role in migration.roles))
    missing = await _missing_roles(conn, needed)
    if missing and not await conn.fetchval(QUERIES["may_create_roles"]):
        raise MissingRoles(await conn.fetchval("SELECT current_user"), missing)


async def _missing_roles(conn: asyncpg.Connection, roles: tuple[str, ...] | list[str]) -> list[str]:
    if not roles:
        return []
    existing = {row["rolname"] for row in await conn.fetch(QUERIES["existing_roles"], list(roles))}
    return [role for role in roles if role not in existing]


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
