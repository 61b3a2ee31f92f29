"""Building the alert engine of the service from its settings (daemon.service wires it in).

The engine follows the PBX's clock, sends AMI UserEvents on the service's own AMI session and asks
the call model which consultant channels a call is with; the AMI link is created by the pipeline
after the engine, so it is reached through `link()` when needed, never held.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from daemon.alerts.delivery import AlertObserver, Dispatcher
from daemon.alerts.engine import AlertEngine, LoopTimers
from daemon.alerts.sinks import sinks_from_settings
from daemon.alerts.store import PgStore
from daemon.settings import Settings
from telephony.ami import AmiLink
from telephony.calls import CallTracker
from telephony.framing import Message


class LinkClock:
    """The PBX's event clock of the link that exists by the time anyone asks."""

    def __init__(self, link: Callable[[], AmiLink]) -> None:
        self._link = link

    def now(self) -> float:
        return self._link().clock.now()


def build_engine(
    settings: Settings,
    pool: Callable[[], Awaitable[asyncpg.Pool]],
    tracker: CallTracker,
    link: Callable[[], AmiLink],
    is_transient: Callable[[BaseException], bool],
    observer: AlertObserver | None = None,
) -> AlertEngine | None:
    """The engine the `[alerts]` settings ask for, or None when alerts are switched off."""
    alerts = settings.alerts
    if not alerts.enabled:
        return None

    async def send_action(action: Mapping[str, object]) -> Message:
        return await link().send_action(action)

    store = PgStore(pool, language=alerts.language, instance=settings.instance)
    dispatcher = Dispatcher(
        sinks_from_settings(alerts, send_action),
        store,
        retry_min=alerts.retry_min,
        retry_max=alerts.retry_max,
        max_attempts=alerts.max_attempts,
        observer=observer,
    )
    clock = LinkClock(link)
    return AlertEngine(
        store,
        dispatcher,
        pbx=settings.pbx,
        clock=clock,
        timers=LoopTimers(clock),
        channels_of=tracker.consultant_channels,
        call_start_notices=alerts.call_start_notices,
        notify=alerts.pg_notify,
        language=alerts.language,
        is_transient=is_transient,
    )
