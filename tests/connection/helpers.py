"""Shared pieces of the connection tests: a fast link configuration, a recording sleep, item waits.

Every test talks to the real simulator over real TCP on 127.0.0.1 (ephemeral ports). Nothing sleeps
to make timing pass: tests wait for the item or the call they expect, with a guard timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TypeVar

from telephony.ami import AmiLink, Item, LinkConfig, Received
from telephony.framing import Message
from telephony.simulator import AmiSimulator, Trace, events_trace

TRACES = Path(__file__).resolve().parents[1] / "traces"
SECRET = "s3cret-Do-Not-Log"
GUARD = 10.0  # seconds: only reached when a test is failing

T = TypeVar("T")


def link_config(port: int, **overrides: float | str) -> LinkConfig:
    values: dict[str, float | str] = {
        "action_timeout": 2.0,
        "ping_interval": 30.0,
        "ping_timeout": 2.0,
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
        "auth_retry": 7.0,
    }
    values.update(overrides)
    return LinkConfig("127.0.0.1", port, "talkmeter", str(values.pop("secret", SECRET)), **values)  # type: ignore[arg-type]


class RecordingSleep:
    """The testing switch for the link's backoff: records each requested delay, waits for none."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._changed = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self._changed.set()
        await asyncio.sleep(0)

    async def calls(self, count: int) -> list[float]:
        async with asyncio.timeout(GUARD):
            while len(self.delays) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.delays[:count]


def frame(**headers: str) -> bytes:
    lines = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    return (lines + "\r\n").encode()


def simple_trace(frames: Iterable[bytes]) -> Trace:
    return events_trace(list(frames), step=0.001)


@contextlib.asynccontextmanager
async def running(link: AmiLink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(link.run(), name="test-link")
    try:
        yield task
    finally:
        link.close()
        async with asyncio.timeout(GUARD):
            await task


@contextlib.asynccontextmanager
async def simulator(trace: Trace, **options: object) -> AsyncIterator[AmiSimulator]:
    options.setdefault("secret", SECRET)
    options.setdefault("speed", 0)
    async with AmiSimulator(trace, **options) as sim:  # type: ignore[arg-type]
        yield sim


async def next_of(queue: asyncio.Queue[Item], kind: type[T]) -> tuple[T, list[Item]]:
    """The next item of `kind`, and everything taken before it."""
    skipped: list[Item] = []
    async with asyncio.timeout(GUARD):
        while True:
            item = await queue.get()
            if isinstance(item, kind):
                return item, skipped
            skipped.append(item)


async def events(queue: asyncio.Queue[Item], count: int) -> list[Message]:
    """The next `count` events from the queue, skipping session items."""
    found: list[Message] = []
    async with asyncio.timeout(GUARD):
        while len(found) < count:
            item = await queue.get()
            if isinstance(item, Received):
                found.append(item.message)
    return found
