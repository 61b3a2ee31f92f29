"""Real PostgreSQL databases for the service tests (same helpers as the accounting tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from accounting.migrate import migrate
from tests.accounting.accounting_db import admin, dsn_for, unique_name


@pytest.fixture(scope="session")
def service_template() -> Iterator[str]:
    name = unique_name("tm_service_template")

    async def build() -> None:
        await admin(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(dsn_for(name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    yield name
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def service_dsn(service_template: str) -> AsyncIterator[str]:
    name = unique_name("tm_service")
    await admin(f'CREATE DATABASE "{name}" TEMPLATE "{service_template}"')
    yield dsn_for(name)
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def bare_dsn() -> AsyncIterator[str]:
    name = unique_name("tm_bare")
    await admin(f'CREATE DATABASE "{name}"')
    yield dsn_for(name)
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
