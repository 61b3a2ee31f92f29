"""Real PostgreSQL for every test that needs one: the schema is migrated once into a template
database, and every test gets its own copy (`CREATE DATABASE … TEMPLATE …`, a file copy,
milliseconds). The server is `TALKMETER_TEST_DATABASE_URL` (see tests/db.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from accounting.migrate import migrate
from tests.db import admin, dsn_for, unique_name


async def _build_template(name: str) -> None:
    await admin(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(dsn_for(name))
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = unique_name("tm_template")
    asyncio.run(_build_template(name))
    yield name
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def db_dsn(template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = unique_name("tm_test")
    await admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield dsn_for(name)
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_dsn() -> AsyncIterator[str]:
    """A database without the talkmeter schema."""
    name = unique_name("tm_empty")
    await admin(f'CREATE DATABASE "{name}"')
    yield dsn_for(name)
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
