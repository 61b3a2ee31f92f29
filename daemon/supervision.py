"""Supervision: a group of named tasks that live and die together, and can always be stopped.

Theory of operation
-------------------
The service is a few long-lived tasks (the pipeline, the writer, the checkpointer, ...), and each
of them is essential: if one dies, the others must not limp on (a dead checkpointer would leave
the calls unprotected while the PBX still sees a healthy client). `first_death` waits until one
task ends or `stop` is set, and names what ended and why (`TaskDied`).

Stopping must be bounded whatever the tasks do. A task can fail to obey a cancel: a library that
swallows `CancelledError`, a `wait_for` in Python 3.11 that returns a result instead of raising
when the cancel and the result arrive together (that is how the service once hung for good after
its checkpointer died), a blocking call. So every stop cancels and then waits at most a bounded
time (`cancel_within`); whatever is still running after that is named in `StopForced`. Inside the
process nothing can kill a task, so the command line turns `StopForced` into an immediate exit of
the process (systemd then restarts it): the only stop that cannot be refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog

log = structlog.get_logger("daemon.supervision")

Task = asyncio.Task[None]


class TaskDied(Exception):
    """An essential task failed or ended on its own; `task` names it, `error` is why."""

    def __init__(self, task: str, error: BaseException) -> None:
        super().__init__(f"task {task} died: {error!r}")
        self.task = task
        self.error = error


class StopForced(Exception):
    """Tasks that did not stop within the bound after being cancelled."""

    def __init__(self, tasks: list[str], cause: BaseException | None = None) -> None:
        super().__init__(f"tasks did not stop when cancelled: {', '.join(tasks)}")
        self.tasks = tasks
        self.cause = cause


def death_of(task: Task) -> TaskDied:
    """Why a finished task is no longer running (a nested `TaskDied` is passed on as it is)."""
    if task.cancelled():
        return TaskDied(task.get_name(), asyncio.CancelledError("cancelled"))
    error = task.exception()
    if isinstance(error, TaskDied):
        return error
    died = TaskDied(task.get_name(), error or RuntimeError("ended on its own"))
    died.__cause__ = error
    return died


async def first_death(tasks: Iterable[Task], stop: asyncio.Event | None = None) -> TaskDied | None:
    """Wait until a task ends (its `TaskDied`) or `stop` is set (None)."""
    watched = list(tasks)
    waits: set[asyncio.Future[Any]] = set(watched)
    stopping = None if stop is None else asyncio.ensure_future(stop.wait())
    if stopping is not None:
        waits.add(stopping)
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stopping is not None:
            stopping.cancel()
    ended = [task for task in watched if task in done]  # in the caller's order
    return death_of(ended[0]) if ended else None


async def cancel_within(tasks: Iterable[Task], seconds: float) -> list[str]:
    """Cancel `tasks` and wait at most `seconds`; return the names of those still running."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=seconds)
    for task in pending:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a failure while stopping is not news
    return sorted(task.get_name() for task in pending if not task.done())
