"""Migrations: an empty database migrates to exactly the schema the code expects; changed or
missing files are refused."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from accounting.migrate import SchemaError, check_schema, load_migrations, migrate, migrations_dir
from accounting.queries import QUERIES
from daemon.cli import main
from tests.db import admin, dsn_for, unique_name

pytestmark = pytest.mark.db

SNAPSHOT = Path(__file__).with_name("expected_schema.txt")
UPDATE_SNAPSHOT = os.environ.get("TALKMETER_UPDATE_SCHEMA_SNAPSHOT") == "1"

# The accountants' interface as the README documents it (the views may add columns after these).
VIEW_COLUMNS = {
    "conversation_charges": [
        "conversation_id",
        "client_id",
        "client_name",
        "contract_id",
        "client_number",
        "line",
        "started_at",
        "ended_at",
        "talk_seconds",
        "hold_seconds",
        "free_seconds",
        "prepaid_seconds",
        "paid_seconds",
        "billable_seconds",
        "amount",
        "currency",
        "over_quota",
        "consultants",
    ],
    "daily_usage": [
        "client_id",
        "day",
        "conversations",
        "talk_seconds",
        "free_seconds",
        "prepaid_seconds",
        "billable_seconds",
        "amount",
        "free_cap_seconds",
    ],
    "monthly_statement": [
        "client_id",
        "month",
        "conversations",
        "talk_seconds",
        "free_seconds",
        "prepaid_seconds",
        "billable_seconds",
        "amount",
        "prepaid_remaining_seconds",
    ],
    "line_quality": [
        "line",
        "day",
        "offered",
        "answered",
        "abandoned",
        "median_wait_seconds",
        "p90_wait_seconds",
        "talk_seconds",
    ],
    "unmatched_conversations": ["conversation_id", "reason"],
}

CATALOG = """
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || COALESCE(' default ' || pg_get_expr(d.adbin, d.adrelid), '') AS line,
       c.relkind::text AS kind
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE n.nspname = 'talkmeter' AND c.relkind IN ('r', 'v')
UNION ALL
SELECT 'index ' || indexname || ': ' || indexdef, 'i' FROM pg_indexes WHERE schemaname = 'talkmeter'
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid), 'c'
  FROM pg_constraint WHERE connamespace = 'talkmeter'::regnamespace
UNION ALL
SELECT 'trigger ' || tgname || ' on ' || tgrelid::regclass, 't'
  FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'talkmeter.%'
UNION ALL
SELECT 'function ' || p.oid::regprocedure, 'f'
  FROM pg_proc p WHERE p.pronamespace = 'talkmeter'::regnamespace
UNION ALL
SELECT 'grant ' || grantee || ' ' || privilege_type || ' on ' || table_name, 'g'
  FROM information_schema.role_table_grants
 WHERE table_schema = 'talkmeter' AND grantee LIKE 'talkmeter\\_%'
UNION ALL
SELECT 'column grant ' || grantee || ' ' || privilege_type || ' on ' || table_name || '.' || column_name, 'g'
  FROM information_schema.column_privileges
 WHERE table_schema = 'talkmeter' AND grantee LIKE 'talkmeter\\_%'
   AND NOT EXISTS (SELECT 1 FROM information_schema.role_table_grants g
                    WHERE g.table_schema = 'talkmeter' AND g.table_name = column_privileges.table_name
                      AND g.grantee = column_privileges.grantee
                      AND g.privilege_type = column_privileges.privilege_type)
ORDER BY 1
"""


@pytest.fixture
async def empty(empty_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_dsn)
    yield connection
    await connection.close()


async def schema_lines(conn: asyncpg.Connection) -> list[str]:
    return [row["line"] for row in await conn.fetch(CATALOG)]


async def test_an_empty_database_migrates_to_the_expected_schema(empty: asyncpg.Connection) -> None:
    with pytest.raises(SchemaError, match="run `talkmeter migrate`"):
        await check_schema(empty)
    applied = await migrate(empty)
    assert [m.file_name for m in applied] == [m.file_name for m in load_migrations()]
    assert await migrate(empty) == []
    await check_schema(empty)
    actual = "\n".join(await schema_lines(empty)) + "\n"
    if UPDATE_SNAPSHOT:
        SNAPSHOT.write_text(actual)
    assert actual == SNAPSHOT.read_text(), (
        "schema differs: rerun with TALKMETER_UPDATE_SCHEMA_SNAPSHOT=1 and review"
    )


async def test_views_have_the_columns_accountants_are_promised(conn: asyncpg.Connection) -> None:
    for view, columns in VIEW_COLUMNS.items():
        names = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'talkmeter' "
            "AND table_name = $1 ORDER BY ordinal_position",
            view,
        )
        assert [row["column_name"] for row in names][: len(columns)] == columns


async def test_every_named_query_fits_the_schema(conn: asyncpg.Connection) -> None:
    for name, sql in QUERIES.items():
        if name == "bootstrap_migrations":  # several statements; run by every migrate
            continue
        await conn.prepare(sql)


def next_file_name(name: str) -> str:
    return f"{load_migrations()[-1].version + 1:04d}_{name}.sql"


def copy_migrations(target: Path) -> Path:
    folder = target / "migrations"
    shutil.copytree(migrations_dir(), folder)
    return folder


async def test_a_changed_applied_file_is_refused(empty: asyncpg.Connection, tmp_path: Path) -> None:
    folder = copy_migrations(tmp_path)
    await migrate(empty, folder)
    first = folder / "0001_initial.sql"
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(SchemaError, match=r"0001_initial\.sql was changed after it was applied"):
        await migrate(empty, folder)
    with pytest.raises(SchemaError, match="was changed"):
        await check_schema(empty, folder)


async def test_an_older_schema_is_refused_until_migrated(empty: asyncpg.Connection, tmp_path: Path) -> None:
    folder = copy_migrations(tmp_path)
    await migrate(empty, folder)
    notes = folder / next_file_name("notes")
    notes.write_text("CREATE TABLE talkmeter.notes (note text);\n")
    with pytest.raises(SchemaError, match=rf"older than this talkmeter \(missing {notes.name}\)"):
        await check_schema(empty, folder)
    assert [m.file_name for m in await migrate(empty, folder)] == [notes.name]
    await check_schema(empty, folder)
    # The program without that file meets a newer database: refused as well.
    notes.unlink()
    with pytest.raises(SchemaError, match="newer than this program"):
        await check_schema(empty, folder)


async def test_a_failing_migration_leaves_nothing_behind(empty: asyncpg.Connection, tmp_path: Path) -> None:
    folder = copy_migrations(tmp_path)
    await migrate(empty, folder)
    (folder / next_file_name("broken")).write_text(
        "CREATE TABLE talkmeter.half (x int);\nSELECT no_such_column;\n"
    )
    with pytest.raises(asyncpg.UndefinedColumnError):
        await migrate(empty, folder)
    assert await empty.fetchval("SELECT to_regclass('talkmeter.half')") is None
    assert await empty.fetchval("SELECT max(version) FROM talkmeter.schema_migrations") == len(
        load_migrations()
    )


async def test_two_instances_migrating_at_once_apply_each_file_once(empty_dsn: str) -> None:
    first, second = await asyncpg.connect(empty_dsn), await asyncpg.connect(empty_dsn)
    try:
        applied = await asyncio.gather(migrate(first), migrate(second))
    finally:
        await first.close()
        await second.close()
    assert sorted(len(batch) for batch in applied) == [0, len(load_migrations())]


async def test_bad_file_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_initial.sql").write_text("SELECT 1;")
    with pytest.raises(SchemaError, match=r"0001_name\.sql"):
        load_migrations(tmp_path)
    (tmp_path / "1_initial.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 2;")
    with pytest.raises(SchemaError, match="two migration files with version 0001"):
        load_migrations(tmp_path)


# --- least privilege: roles are the runner's job ---------------------------------------------------


def role_dsn(database: str, role: str, password: str) -> str:
    parts = urlsplit(dsn_for(database))
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A login role without CREATEROLE that owns a fresh database, configured as a user would."""
    role, database, password = unique_name("tm_owner"), unique_name("tm_owned"), "owner-pw"
    asyncio.run(admin(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' NOCREATEROLE"))
    asyncio.run(admin(f'CREATE DATABASE "{database}" OWNER {role}'))
    monkeypatch.setenv("TALKMETER_DATABASE_URL", role_dsn(database, role, password))
    monkeypatch.delenv("TALKMETER_CONFIG", raising=False)
    yield role, database
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    asyncio.run(admin(f"DROP ROLE IF EXISTS {role}"))


def test_an_owner_without_createrole_migrates_when_the_roles_exist(
    owner: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    for role in ("talkmeter_writer", "talkmeter_accountant"):  # cluster-wide: made by an admin once
        asyncio.run(admin(ROLE_IDIOM.format(role=role)))
    assert main(["migrate"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == "".join(f"applied {m.file_name}\n" for m in load_migrations())


def test_missing_roles_are_created_when_allowed_else_the_admin_is_told_what_to_run(
    owner: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    role_name, database = owner
    new_role = unique_name("tm_role")
    (tmp_path / "0001_roles.sql").write_text(
        "CREATE TABLE talkmeter.probe (x int);\n" + ROLE_IDIOM.format(role=new_role) + "\n"
        f"GRANT SELECT ON talkmeter.probe TO {new_role};\n"
    )
    monkeypatch.setenv("TALKMETER_MIGRATIONS_DIR", str(tmp_path))
    try:
        assert main(["migrate"]) == 2
        err = capsys.readouterr().err
        assert f"{new_role} do not exist and {role_name} may not create roles; nothing was applied" in err
        assert f"\n    CREATE ROLE {new_role} NOLOGIN;\n" in err
        assert asyncio.run(fetchval(database, "SELECT to_regclass('talkmeter.probe')")) is None

        asyncio.run(admin(f"ALTER ROLE {role_name} CREATEROLE"))
        assert main(["migrate"]) == 0
        assert (
            asyncio.run(fetchval(database, f"SELECT count(*) FROM pg_roles WHERE rolname = '{new_role}'"))
            == 1
        )
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        asyncio.run(admin(f"DROP ROLE IF EXISTS {new_role}"))


def test_roles_come_out_of_the_executed_sql_and_the_checksum_stays_the_files(tmp_path: Path) -> None:
    first = load_migrations()[0]
    data = (Path(str(migrations_dir())) / first.file_name).read_bytes()
    assert first.roles == ("talkmeter_writer", "talkmeter_accountant")
    assert (
        "CREATE ROLE" not in first.sql and "GRANT USAGE ON SCHEMA talkmeter TO talkmeter_writer" in first.sql
    )
    assert first.checksum == hashlib.sha256(data).hexdigest()
    (tmp_path / "0001_login.sql").write_text("CREATE ROLE someone LOGIN;\n")
    with pytest.raises(SchemaError, match="creates a role outside the runner's idiom"):
        load_migrations(tmp_path)


ROLE_IDIOM = """DO $$
BEGIN
    CREATE ROLE {role} NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;"""


async def fetchval(database: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn_for(database))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()
