"""Following a live PBX: the AMI link feeding the call model, as two supervised tasks.

Theory of operation
-------------------
`ami-link` (telephony.ami.AmiLink) reads the PBX and only enqueues; `call-consumer` takes the items
one by one, in order, and applies them to one `CallTracker`: events with `feed`, the post-login
listing with `resync`, and about once a second `tick`, so that a talk stop whose debounce has run
out is reported even when no event follows. Each finished conversation goes to `on_conversation`
(printing for `watch` and `demo`, the database later); the reader never waits for it.

The time given to `tick` must never run ahead of what has been applied, or a debounce could expire
on a gap that an event still in the queue would have closed: when the queue is empty it is the
link's event clock (the PBX's `Timestamp`s plus elapsed time), otherwise the time of the last
applied event (`applied_until`). A checkpoint is stamped the same way, and taken only when every
conversation that has left the tracker has been handed over (`checkpoint`): a crash then finds each
conversation in the checkpoint or in the spool, never in neither.

Supervision (daemon.supervision): if either task ends or fails, everything stops and the failure is
raised as `TaskDied`. Stopping (the `stop` event) is graceful and bounded: the link logs off (no new
work), the consumer drains the queue for at most `grace` seconds, open conversations are closed as
estimated at their last known moment (`close_all`) and handed over, or, with `on_stop`, handed to
it to checkpoint, and then anything left is cancelled; a task that does not obey the cancel within
`CANCEL_SECONDS` is named in `StopForced`. No `asyncio.wait_for` here: in Python 3.11 it can swallow
a cancel (see telephony.ami `_wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog

from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.supervision import StopForced, cancel_within, first_death
from telephony.ami import (
    AmiLink,
    EventClock,
    Item,
    LinkConfig,
    LinkObserver,
    Received,
    Resync,
    SessionLost,
    SessionStarted,
    Sleep,
)
from telephony.calls import WANTED_EVENTS, CallTracker, Snapshot
from telephony.effects import Anomaly, ConversationEnded, Effect

log = structlog.get_logger("daemon.live")

OnConversation = Callable[[dict[str, Any]], Awaitable[None]]
OnEffect = Callable[[Effect], None]
OnStop = Callable[[CallTracker, float], Awaitable[None]]
TICK_SECONDS = 1.0
CANCEL_SECONDS = 1.0  # how long a cancelled task may take to end before the stop is forced


class Pipeline:
    """The link and the consumer for one PBX. `run(stop)` until `stop` is set or a task fails."""

    def __init__(
        self,
        settings: Settings,
        on_conversation: OnConversation,
        *,
        on_effect: OnEffect | None = None,
        tracker: CallTracker | None = None,
        on_stop: OnStop | None = None,
        sleep: Sleep = asyncio.sleep,
        grace: float = 5.0,
        metrics: Metrics | None = None,
        observer: LinkObserver | None = None,
        clock: EventClock | None = None,
    ) -> None:
        """`tracker`: a restored one (default: a fresh one from `settings`). `on_stop(tracker, now)`:
        called at a graceful stop instead of closing open conversations (to checkpoint them).
        `metrics`: where the link and the call model report (the link through `observer`, by
        default the metrics' own). `sleep` and `clock` are the testing switches of the link
        (backoff waits, receive times)."""
        if observer is None and metrics is not None:
            observer = metrics.link_observer()
        config = LinkConfig.from_settings(settings)
        self.link = AmiLink(config, wanted=WANTED_EVENTS, sleep=sleep, observer=observer, clock=clock)
        self.metrics = metrics
        if metrics is not None:
            metrics.count_dropped(self.link.dropped_events)
        self.tracker = tracker or settings.call_tracker()
        self.on_stop = on_stop
        self.on_conversation = on_conversation
        self.on_effect = on_effect
        self.grace = grace
        self.applied = 0
        self.resynced = asyncio.Event()  # set each time a snapshot has been applied
        self._position = float("-inf")  # time of the last applied event
        # Effects applied to the tracker and not yet handed over, in order. A conversation that has
        # ended is in here until `on_conversation` (the spool) has it, so that a checkpoint, which
        # no longer lists it, is only taken when this is empty: never in neither file.
        self._unhanded: deque[Effect] = deque()
        self._all_handed = asyncio.Event()
        self._all_handed.set()
        self._first_told = False  # `on_effect` has seen the first of `_unhanded` already

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set (graceful, bounded) or a task dies (`TaskDied` names it)."""
        link = asyncio.create_task(self.link.run(), name="ami-link")
        consumer = asyncio.create_task(self._consume(), name="call-consumer")
        tasks = [link, consumer]
        death = None
        try:
            death = await first_death(tasks, stop)
            if death is None:
                await self._stop_gracefully(link, consumer)
        finally:
            stuck = await cancel_within(tasks, CANCEL_SECONDS)
            if stuck:
                raise StopForced(stuck, death)
        if death is not None:
            raise death

    async def checkpoint(self) -> list[dict[str, Any]]:
        """The calls in progress as of the events applied, to save: taken when every conversation
        that has left the tracker has been handed over (spooled), never between the two."""
        while self._unhanded:
            await self._all_handed.wait()
        return self.tracker.checkpoint(self.applied_until())

    async def settle(self) -> None:
        """Wait until everything the PBX has sent so far is applied (a ping round trip, then the queue)."""
        await self.link.ping()
        await self.link.queue.join()

    # stopping

    async def _stop_gracefully(self, link: asyncio.Task[None], consumer: asyncio.Task[None]) -> None:
        log.info("pipeline.stopping", queue_depth=self.link.queue_depth)
        self.link.close()
        deadline = time.monotonic() + self.grace
        await asyncio.wait([link], timeout=self.grace)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.link.queue.join()
        except TimeoutError:
            log.warning("pipeline.drain_timeout", left=self.link.queue_depth)
        if await cancel_within([consumer], CANCEL_SECONDS):
            raise StopForced(["call-consumer"])
        remaining = max(0.1, deadline - time.monotonic())
        try:
            async with asyncio.timeout(remaining):
                await self._hand_over()  # what a cancel interrupted comes first
                if self.on_stop is not None:
                    await self.on_stop(self.tracker, self.applied_until())
                else:
                    self._to_hand(self.tracker.close_all())
                    await self._hand_over()
        except TimeoutError:
            log.warning("pipeline.close_timeout")
        log.info("pipeline.stopped", applied=self.applied)

    # the consumer

    async def _consume(self) -> None:
        queue = self.link.queue
        last_tick = time.monotonic()
        while True:
            item = await _next_item(queue, TICK_SECONDS)
            try:
                effects = self._apply(item) if item is not None else []
                if time.monotonic() - last_tick >= TICK_SECONDS:
                    last_tick = time.monotonic()
                    effects += self.tracker.tick(self.applied_until())
                    if self.metrics is not None:
                        self.metrics.conversations_in_progress(len(self.tracker.open_conversations))
                self._to_hand(effects)  # no await since the tracker changed: see `checkpoint`
                await self._hand_over()
            finally:
                if item is not None:
                    queue.task_done()

    def _apply(self, item: Item) -> list[Effect]:
        if isinstance(item, Received):
            self.applied += 1
            message = item.message
            self._position = message.timestamp or item.received_at
            return self.tracker.feed(message, item.received_at)
        if isinstance(item, Resync):
            snapshot = Snapshot(item.at, list(item.channels), list(item.bridges), item.lost_at)
            log.info("pipeline.resync", channels=len(item.channels), bridges=len(item.bridges))
            effects = self.tracker.resync(snapshot)
            self.resynced.set()
            return effects
        if isinstance(item, SessionStarted):
            log.info("pipeline.session_started", version=item.version)
        elif isinstance(item, SessionLost):
            log.info("pipeline.session_lost", reason=item.reason)
        return []

    def applied_until(self) -> float:
        """The moment the tracker's state stands at: the link's clock when nothing waits in the
        queue, else the time of the last applied event (ticks and checkpoints must not run ahead)."""
        if self.link.queue.empty():
            return self.link.clock.now()
        return self._position

    def _to_hand(self, effects: list[Effect]) -> None:
        if effects:
            self._unhanded.extend(effects)
            self._all_handed.clear()

    async def _hand_over(self) -> None:
        """Hand the applied effects over, in order. One that a cancel interrupted (at a stop) stays
        first and is handed over again: a conversation spooled twice is recorded once (the ledger
        keeps one per id), one never spooled would be lost."""
        while self._unhanded:
            effect = self._unhanded[0]
            if not self._first_told:
                self._first_told = True
                if self.on_effect is not None:
                    self.on_effect(effect)
            if isinstance(effect, ConversationEnded):
                await self.on_conversation(effect.conversation.to_json())
            elif isinstance(effect, Anomaly):
                log_anomaly(effect)
            self._unhanded.popleft()
            self._first_told = False
        self._all_handed.set()


#: anomalies the admin must act on: logged as warnings under their own stable names
WARNINGS = {"unmatched_channels": "calls.unmatched_channels", "no_timestamp": "calls.no_timestamp"}


def log_anomaly(anomaly: Anomaly) -> None:
    name = WARNINGS.get(anomaly.kind)
    if name is not None:
        log.warning(name, detail=anomaly.detail)
    else:
        log.info("pipeline.anomaly", kind=anomaly.kind, detail=anomaly.detail)


async def _next_item(queue: asyncio.Queue[Item], wait: float) -> Item | None:
    # get_nowait first: wrapping every get in wait_for would cost a task per event.
    try:
        return queue.get_nowait()
    except asyncio.QueueEmpty:
        pass
    try:
        async with asyncio.timeout(wait):
            return await queue.get()
    except TimeoutError:
        return None


async def follow(
    settings: Settings,
    on_conversation: OnConversation,
    stop: asyncio.Event,
    *,
    on_effect: OnEffect | None = None,
    tracker: CallTracker | None = None,
    on_stop: OnStop | None = None,
    observer: LinkObserver | None = None,
) -> None:
    """Follow the PBX of `settings` until `stop` is set; `on_conversation(json)` for each one that ends.

    See `Pipeline` for `tracker` (restored state), `on_stop` (checkpoint instead of closing) and
    `observer` (what the AMI link reports).
    """
    pipeline = Pipeline(
        settings, on_conversation, on_effect=on_effect, tracker=tracker, on_stop=on_stop, observer=observer
    )
    await pipeline.run(stop)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM only set `stop`; the previous handlers are restored afterwards."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
