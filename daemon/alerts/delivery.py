"""Getting each claimed notification to every sink that wants it, without one sink holding up
another or the call tracking.

Theory of operation
-------------------
`Dispatcher.dispatch` returns at once: every (notification, sink) pair becomes a delivery task of
its own. A delivery tries its sink, bounded by the sink's timeout and a guard; on failure it waits
(capped exponential backoff with jitter, or what the receiver asked for in `retry_after`) and
tries again, up to `max_attempts`, unless the failure is permanent (a refused login, a 4xx). So a
dead webhook costs its own deliveries their retries and nothing else: the e-mail of the same alert
goes out in its own task at once, and the call model never awaits any of it. A sink takes at most
`parallel` deliveries at a time, so a burst cannot open a hundred connections to one receiver.

Every attempt is written to the journal (the delivery rows of `talkmeter.alerts`: pending, sent,
or failed with the reason, and the number of attempts). Logs follow state changes, not attempts:
`alert.sink_failing` when a sink that worked fails (with the reason), `alert.sink_recovered` when
it works again, `alert.delivery_failed` when a delivery is given up; the counters (`stats`) hold
every attempt. A journal that cannot be written (the database is away) is logged once, the same
way, and the deliveries go on: what the journal missed is still `pending` in the database, and is
sent again after a restart (a receiver may then see an alert twice; its `id` tells them apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from daemon.alerts.messages import Notification
from daemon.alerts.sinks import DeliveryFailed, Sink
from telephony.ami import Backoff, Sleep

log = structlog.get_logger("daemon.alerts")

DeliveryState = Literal["pending", "sent", "failed"]
GUARD_SECONDS = 60.0  # beyond every sink's own timeout: a sink that never returns is a failure


class AlertObserver(Protocol):
    """What the alerts report for metrics (`daemon.metrics.Metrics` implements it)."""

    def alert_raised(self, kind: str, delay: float | None) -> None: ...

    def notice_sent(self, match: str) -> None: ...

    def alert_delivery(self, sink: str, result: str) -> None:
        """`result`: sent, failed (an attempt that will be retried) or given_up."""
        ...


class NoObserver:
    def alert_raised(self, kind: str, delay: float | None) -> None:
        pass

    def notice_sent(self, match: str) -> None:
        pass

    def alert_delivery(self, sink: str, result: str) -> None:
        pass


class Journal(Protocol):
    async def attempted(
        self, notification_id: int, sink: str, state: DeliveryState, attempts: int, error: str | None
    ) -> None: ...


@dataclass(slots=True)
class SinkStats:
    sent: int = 0
    failed_attempts: int = 0
    given_up: int = 0
    failing: bool = False


class Dispatcher:
    def __init__(
        self,
        sinks: Iterable[Sink],
        journal: Journal,
        *,
        retry_min: float = 1.0,
        retry_max: float = 300.0,
        max_attempts: int = 20,
        parallel: int = 4,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        observer: AlertObserver | None = None,
    ) -> None:
        self.sinks = {sink.name: sink for sink in sinks}
        self.observer: AlertObserver = observer or NoObserver()
        self.stats = {name: SinkStats() for name in self.sinks}
        self._journal = journal
        self._retry = (retry_min, retry_max)
        self._max_attempts = max_attempts
        self._limits = {name: asyncio.Semaphore(parallel) for name in self.sinks}
        self._sleep = sleep
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()
        self._journal_failing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def sinks_for(self, notification: Notification) -> list[str]:
        """The sinks that take this kind of notification (their delivery rows are created with it)."""
        return [name for name, sink in self.sinks.items() if notification.category in sink.categories]

    def dispatch(self, notification: Notification, attempts: Mapping[str, int] | None = None) -> None:
        """Start delivering a claimed notification to its sinks (or to those of `attempts`, the
        deliveries left pending by an earlier run, with the attempts they already had)."""
        assert notification.notification_id is not None, "only claimed notifications are sent"
        targets = attempts if attempts is not None else dict.fromkeys(self.sinks_for(notification), 0)
        for name, done in targets.items():
            sink = self.sinks.get(name)
            if sink is None:
                continue  # that sink is no longer configured: its row stays pending, visibly
            task = asyncio.create_task(self._deliver(sink, notification, done), name=f"alert-{name}")
            self._tasks.add(task)
            self._idle.clear()
            task.add_done_callback(self._finished)

    async def wait_idle(self) -> None:
        """Until every delivery started so far is sent or given up (tests, benchmarks)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop: cancel what is still being tried (it stays pending in the database), close sinks."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await sink.close()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("alert.delivery_crashed", task=task.get_name(), error=repr(task.exception()))
        if not self._tasks:
            self._idle.set()

    async def _deliver(self, sink: Sink, notification: Notification, attempts: int) -> None:
        backoff = Backoff(*self._retry, rng=self._rng)
        notification_id = notification.notification_id
        assert notification_id is not None
        while True:
            attempts += 1
            failure = await self._attempt(sink, notification)
            if failure is None:
                self._note(sink.name, None)
                self.observer.alert_delivery(sink.name, "sent")
                await self._write(notification_id, sink.name, "sent", attempts, None)
                return
            give_up = failure.permanent or attempts >= self._max_attempts
            self._note(sink.name, failure.reason)
            await self._write(
                notification_id, sink.name, "failed" if give_up else "pending", attempts, failure.reason
            )
            self.observer.alert_delivery(sink.name, "given_up" if give_up else "failed")
            if give_up:
                self.stats[sink.name].given_up += 1
                log.error(
                    "alert.delivery_failed",
                    sink=sink.name,
                    notification_id=notification_id,
                    attempts=attempts,
                    reason=failure.reason,
                )
                return
            await self._sleep(failure.retry_after if failure.retry_after is not None else backoff.next())

    async def _attempt(self, sink: Sink, notification: Notification) -> DeliveryFailed | None:
        async with self._limits[sink.name]:
            try:
                await asyncio.wait_for(sink.send(notification), GUARD_SECONDS)
            except DeliveryFailed as failure:
                return failure
            except TimeoutError:
                return DeliveryFailed(f"{sink.name}: no answer in {GUARD_SECONDS:g} s")
            except Exception as error:  # a sink's bug must not end the delivery silently
                return DeliveryFailed(f"{sink.name}: {type(error).__name__}")
        return None

    def _note(self, sink: str, reason: str | None) -> None:
        """Count the attempt; log only when the sink goes from working to failing or back."""
        stats = self.stats[sink]
        if reason is None:
            stats.sent += 1
            if stats.failing:
                stats.failing = False
                log.info("alert.sink_recovered", sink=sink)
            return
        stats.failed_attempts += 1
        if not stats.failing:
            stats.failing = True
            log.warning("alert.sink_failing", sink=sink, reason=reason)

    async def _write(
        self, notification_id: int, sink: str, state: DeliveryState, attempts: int, error: str | None
    ) -> None:
        try:
            await self._journal.attempted(notification_id, sink, state, attempts, error)
        except Exception as failure:
            if not self._journal_failing:
                self._journal_failing = True
                log.warning("alert.journal_unavailable", error=type(failure).__name__)
            return
        if self._journal_failing:
            self._journal_failing = False
            log.info("alert.journal_available")
