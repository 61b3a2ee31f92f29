"""Services in the test's own process, several following one simulated PBX (the standby set-up):
the settings of one instance, and a store that says when it has recorded enough."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from accounting.ledger import RecordResult
from daemon.service import Database
from daemon.settings import Settings


class CountingDatabase(Database):
    """The real store; `done` is set once `expected` conversations were recorded through it."""

    def __init__(self, dsn: str, expected: int) -> None:
        super().__init__(dsn)
        self.expected = expected
        self.results: list[RecordResult] = []
        self.done = asyncio.Event()

    async def record(self, conversation: dict[str, Any]) -> RecordResult:
        result = await super().record(conversation)
        self.results.append(result)
        if len(self.results) >= self.expected:
            self.done.set()
        return result


def instance_settings(instance: str, port: int, dsn: str, spool: Path, secret: str, **extra: Any) -> Settings:
    """Instance `instance` of the PBX on `port`, its spool in a directory of its own under `spool`."""
    return Settings(
        ami_port=port,
        ami_secret=secret,
        database_url=dsn,
        spool_dir=spool / instance,
        instance=instance,
        ami_reconnect_min=0.05,
        ami_reconnect_max=0.2,
        **extra,
    )
