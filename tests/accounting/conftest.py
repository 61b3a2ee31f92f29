"""Real PostgreSQL for accounting tests: the schema is migrated once into a template database,
and every test gets its own copy (`CREATE DATABASE … TEMPLATE …`, a file copy, milliseconds)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from accounting_db import admin, dsn_for, unique_name

from accounting.migrate import migrate


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


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=4) as created:
        yield created


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as connection:
        yield connection
