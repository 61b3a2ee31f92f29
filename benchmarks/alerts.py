"""How fast quota alerts are: from the crossing to each sink, and their cost to the pipeline.

Usage: .venv/bin/python benchmarks/alerts.py [--clients 50] [--per-client 4] [--copies 20]
       [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

It creates a database of its own (`talkmeter_bench_alerts_<pid>`), migrates it, and drops it at
the end. Figures, each printed as it is taken:

1. Latency. 200 conversations in progress across 50 clients (4 each, drawing together from one
   allowance of two free minutes a day, half of it used by a conversation recorded earlier
   today), the clients' calls starting 0.2 s apart. Each client crosses 50 %, 80 % and 100 % of
   its day and then goes into paid time (4 alerts), and gets a call-start notice per call. The
   engine runs on the real clock with real timers and claims in PostgreSQL; every local sink is
   configured: a webhook and a fake Telegram Bot API (HTTP on 127.0.0.1), SMTP (aiosmtpd), NOTIFY
   talkmeter_alerts (a LISTEN connection) and the AMI UserEvent (the simulator). For every alert
   and sink: the moment it arrived minus the moment the threshold was crossed (the crossing as the
   planner computes it, which the alert carries); p50, p99 and max per sink. Target: p99 < 1 s.
2. Throughput. The recorded concurrent_20 stream (20 callers, each a client with an allowance
   here) x N copies, over TCP through the whole pipeline (simulator -> AMI link -> call model),
   once with alerts off and once on (call-start notices and alerts claimed in PostgreSQL, the
   engine's work sharing the event loop), in one run: events/s each and the ratio. Target: on >=
   80 % of off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import structlog  # noqa: E402

from accounting import store as ledger_store  # noqa: E402
from accounting.contracts import Client, Contract  # noqa: E402
from accounting.ledger import record_conversation  # noqa: E402
from accounting.migrate import migrate  # noqa: E402
from daemon.alerts.delivery import Dispatcher  # noqa: E402
from daemon.alerts.engine import AlertEngine, LoopTimers  # noqa: E402
from daemon.alerts.messages import CATEGORIES  # noqa: E402
from daemon.alerts.sinks import AmiUserEventSink, EmailSink, TelegramBot, WebhookSink  # noqa: E402
from daemon.alerts.store import PgStore  # noqa: E402
from daemon.live import Pipeline  # noqa: E402
from daemon.settings import load_settings  # noqa: E402
from telephony.ami import AmiLink, LinkConfig, SessionStarted  # noqa: E402
from telephony.effects import Conversation, ConversationStarted, TalkStarted  # noqa: E402
from telephony.simulator import AmiSimulator, events_trace, parse_trace  # noqa: E402
from tests.alerts.receivers import HttpReceiver, Reply, TelegramApi, smtp_server  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from pipeline import build_stream  # noqa: E402

ADMIN_DSN = os.environ.get("TALKMETER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TOKEN = "1:bench"
SINKS = ("webhook", "telegram", "email", "notify", "ami")


def dsn_of(admin: str, database: str) -> str:
    return admin.rsplit("/", 1)[0] + "/" + database


def daytime_zone() -> str:
    """A zone where it is now 03:00-20:00, so that "earlier today" and now share a local day."""
    for zone in ("Europe/Moscow", "Asia/Vladivostok", "America/New_York", "Asia/Kolkata", "Pacific/Auckland"):
        if 3 <= datetime.now(ZoneInfo(zone)).hour < 20:
            return zone
    return "UTC"


class WallClock:
    def now(self) -> float:
        return time.time()


# --- 1. latency ------------------------------------------------------------------------------------


class Arrivals:
    """When each notification reached each sink (wall clock), by notification id."""

    def __init__(self) -> None:
        self.at: dict[str, dict[int, float]] = defaultdict(dict)
        self.crossed: dict[int, float] = {}
        self.texts: dict[str, int] = {}
        self.changed = asyncio.Event()

    def arrived(self, sink: str, notification_id: int) -> None:
        self.at[sink].setdefault(notification_id, time.time())
        self.changed.set()

    def payload(self, sink: str, body: dict[str, Any]) -> None:
        notification_id = int(body["id"])
        if body["type"] == "quota.alert":
            self.crossed[notification_id] = datetime.fromisoformat(body["alert"]["crossed_at"]).timestamp()
            self.texts[body["text"]] = notification_id
        self.arrived(sink, notification_id)

    def alerts_at(self, sink: str) -> int:
        return sum(1 for notification_id in self.at[sink] if notification_id in self.crossed)


async def seed_latency(pool: asyncpg.Pool, clients: int, zone: str) -> None:
    earlier = datetime.now(UTC) - timedelta(minutes=30)
    async with pool.acquire() as conn:
        for n in range(clients):
            client_id = f"c{n:02d}"
            await ledger_store.save_client(conn, Client(client_id, f"Клиент {n:02d}", zone, (number(n),)))
            await ledger_store.save_contract(conn, daily_contract(n, client_id, earlier.date()))
    for n in range(clients):  # a minute used earlier today: 50 % is one second of four calls away
        await record_conversation(pool, conversation(f"earlier-{n}", number(n), earlier, 56.0))


def daily_contract(n: int, client_id: str, day: Any) -> Contract:
    """Two free minutes a day, alerts at 50, 80 and 100 %, paid time beyond."""
    return Contract(
        contract_id=f"k{n:02d}",
        client_id=client_id,
        valid_from=day - timedelta(days=1),
        free_daily_minutes=2,
        rate_per_minute=Decimal("2"),
        currency="RUB",
        alert_thresholds=(50, 80, 100),
    )


def number(n: int) -> str:
    return f"+749520000{n:02d}"


def conversation(conversation_id: str, client_number: str, start: datetime, talk: float) -> dict[str, Any]:
    end = start + timedelta(seconds=talk)
    segment = {"consultant": "101", "start": start.isoformat(), "end": end.isoformat(), "seconds": talk}
    return {
        "conversation_id": conversation_id,
        "pbx": "bench",
        "direction": "inbound",
        "client_number": client_number,
        "client_number_raw": client_number,
        "line": "74950000000",
        "consultants": ["101"],
        "started_at": start.isoformat(),
        "answered_at": start.isoformat(),
        "ended_at": end.isoformat(),
        "wait_seconds": 0.0,
        "talk_seconds": talk,
        "hold_seconds": 0.0,
        "segments": [{**segment, "hold": False}],
        "estimated": False,
    }


async def latency(dsn: str, clients: int, per_client: int) -> None:
    zone = daytime_zone()
    arrivals = Arrivals()
    async with asyncpg.create_pool(dsn, min_size=2, max_size=8) as pool:
        await seed_latency(pool, clients, zone)

        def webhook(request: Any) -> Reply:
            arrivals.payload("webhook", request.json())
            return Reply()

        class Telegram(TelegramApi):
            def _answer(self, request: Any) -> Reply:
                reply = super()._answer(request)
                notification = arrivals.texts.get(request.json()["text"])
                if notification is not None:
                    arrivals.arrived("telegram", notification)
                return reply

        async with HttpReceiver(webhook) as hook, Telegram(TOKEN) as telegram, smtp_server() as smtp, \
                AmiSimulator(events_trace([]), secret="bench") as pbx:  # fmt: skip
            smtp.mailbox.on_message = lambda message: arrivals.arrived(
                "email", int(str(message["Message-ID"]).split("talkmeter-")[1].split("@")[0])
            )
            link = AmiLink(LinkConfig("127.0.0.1", pbx.port, "talkmeter", "bench"))
            link_task = asyncio.create_task(link.run())
            while not isinstance(await link.queue.get(), SessionStarted):
                pass
            watcher = asyncio.create_task(watch_user_events(pbx, arrivals))
            listener = await asyncpg.connect(dsn)
            await listener.add_listener(
                "talkmeter_alerts", lambda *a: arrivals.payload("notify", json.loads(a[3]))
            )
            bot = TelegramBot(TOKEN, base_url=telegram.url, timeout=5, categories=CATEGORIES, language="en")
            sinks = [
                WebhookSink(hook.url, timeout=5, categories=CATEGORIES, language="en"),
                *bot.chats(["-100"]),
                EmailSink(host="127.0.0.1", port=smtp.port, security="none", sender="t@example.ru",
                          recipients=["m@example.ru"], timeout=10, categories=CATEGORIES, language="en"),
                AmiUserEventSink(link.send_action, categories=CATEGORIES, language="en"),
            ]  # fmt: skip
            store = PgStore(lambda: _same(pool), language="en")
            clock = WallClock()
            engine = AlertEngine(store, Dispatcher(sinks, store, parallel=8), pbx="bench", clock=clock,
                                 timers=LoopTimers(clock), language="en")  # fmt: skip
            running = asyncio.create_task(engine.run())
            began = time.perf_counter()
            await start_calls(engine, clients, per_client)
            expected = clients * 4
            deadline = time.time() + 120
            while min(arrivals.alerts_at(sink) for sink in SINKS) < expected and time.time() < deadline:
                arrivals.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrivals.changed.wait(), 1.0)
            elapsed = time.perf_counter() - began
            await engine.idle()
            running.cancel()
            watcher.cancel()
            await asyncio.gather(running, watcher, return_exceptions=True)
            await engine.close()
            await listener.close()
            link.close()
            await link_task
    print(f"conversations in progress: {clients * per_client} across {clients} clients; "
          f"{expected} alerts and {clients * per_client} call-start notices in {elapsed:.1f} s")  # fmt: skip
    print(f"{'sink':<10} {'alerts':>7} {'p50':>9} {'p99':>9} {'max':>9}   (crossing -> arrival)")
    for sink in SINKS:
        crossed = arrivals.crossed
        delays = sorted(at - crossed[i] for i, at in arrivals.at[sink].items() if i in crossed)
        if not delays:
            print(f"{sink:<10} {0:>7}")
            continue
        p50 = statistics.median(delays)
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        figures = " ".join(f"{value * 1000:>7.0f}ms" for value in (p50, p99, max(delays)))
        print(f"{sink:<10} {len(delays):>7} {figures}")


async def _same(pool: asyncpg.Pool) -> asyncpg.Pool:
    return pool


async def start_calls(engine: AlertEngine, clients: int, per_client: int) -> None:
    """Each client's calls start together, clients 0.2 s apart, and talk from the first moment."""
    for n in range(clients):
        now = time.time()
        for k in range(per_client):
            conversation_id = f"bench:{n:02d}-{k}"
            call = Conversation(conversation_id, "bench", f"PJSIP/trunk-{n:02d}{k}", "inbound", number(n),
                                number(n), "74950000000", now, consultants=[str(101 + k)])  # fmt: skip
            engine.on_effect(ConversationStarted(now, call))
            engine.on_effect(TalkStarted(now, conversation_id, str(101 + k)))
        await asyncio.sleep(0.2)


async def watch_user_events(pbx: AmiSimulator, arrivals: Arrivals) -> None:
    seen = 0
    while True:
        await pbx.user_event_received.wait()
        pbx.user_event_received.clear()
        for event in pbx.user_events[seen:]:
            if event.get("Type") == "quota.alert" and event.get("AlertID"):
                arrivals.arrived("ami", int(event["AlertID"]))
        seen = len(pbx.user_events)


# --- 2. throughput ---------------------------------------------------------------------------------


async def seed_stream_clients(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for n in range(1, 21):
            client_id = f"q{n:02d}"
            caller = Client(client_id, f"Caller {n}", "Europe/Moscow", (f"+749510000{n:02d}",))
            await ledger_store.save_client(conn, caller)
            await ledger_store.save_contract(conn, Contract(
                contract_id=f"qk{n:02d}", client_id=client_id, valid_from=datetime(2026, 1, 1).date(),
                free_daily_minutes=1, prepaid_minutes=10, rate_per_minute=Decimal("2"), currency="RUB",
                alert_thresholds=(50, 80, 100),
            ))  # fmt: skip


async def throughput(dsn: str, copies: int, rounds: int) -> None:
    stream, events = build_stream(ROOT / "tests" / "traces" / "concurrent_20.ami", copies)
    trace = parse_trace(stream)
    async with asyncpg.create_pool(dsn, min_size=2, max_size=8) as pool:
        await seed_stream_clients(pool)
        runs: dict[bool, list[Run]] = {False: [], True: []}
        for attempt in range(rounds):  # alternating, so warming up and the database's state favour neither
            for alerts in (False, True):
                runs[alerts].append(await over_tcp(trace, pool, alerts, f"{attempt}"))
        off = min(runs[False], key=lambda run: run.elapsed)
        on = min(runs[True], key=lambda run: run.elapsed)
    rate_off, rate_on = events / off.elapsed, events / on.elapsed
    print(f"stream: concurrent_20 x {copies} = {events:,} events, {off.ended} conversations, each recorded "
          f"in PostgreSQL as it ends; best of {rounds} runs of each, alternating")  # fmt: skip
    print(f"{'pipeline, alerts off':<42} {rate_off:>12,.0f} events/s  ({off.elapsed:.3f} s)")
    claimed = f"{on.notices} notices and {on.alerts} alerts claimed"
    print(f"{'pipeline, alerts on':<42} {rate_on:>12,.0f} events/s  ({on.elapsed:.3f} s; {claimed}, "
          f"the engine done {on.after:.2f} s after the stream)")  # fmt: skip
    print(f"{'alerts on / off':<42} {rate_on / rate_off:>12.1%}")


@dataclass
class Run:
    elapsed: float
    ended: int
    notices: int = 0
    alerts: int = 0
    after: float = 0.0


async def over_tcp(trace: Any, pool: asyncpg.Pool, alerts: bool, attempt: str) -> Run:
    """The stream through simulator -> AMI link -> call model, each finished conversation recorded
    as the writer records it; with `alerts`, the engine hears every effect and every recording."""
    finished: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    pbx = f"bench-{'on' if alerts else 'off'}-{attempt}"  # conversation ids of their own in each run

    async def submit(conversation: dict[str, Any]) -> None:
        finished.put_nowait(conversation)

    async with AmiSimulator(trace, secret="bench", speed=0) as simulator:
        port, user = simulator.port, "talkmeter"
        settings = load_settings(None, ami_port=port, ami_secret="bench", ami_user=user, pbx=pbx)
        pipeline = Pipeline(settings, submit)
        engine = None
        if alerts:
            clock = _LinkClock(pipeline.link)
            store = PgStore(lambda: _same(pool), language="en")
            engine = AlertEngine(store, Dispatcher([], store), pbx=pbx, clock=clock, timers=LoopTimers(clock),
                                 channels_of=pipeline.tracker.consultant_channels)  # fmt: skip
            pipeline.on_effect = engine.on_effect

        async def write_forever() -> None:
            while True:
                conversation = await finished.get()
                result = await record_conversation(pool, conversation)
                if engine is not None:
                    engine.recorded(conversation, result.client_id, result.contract_id)
                finished.task_done()

        workers = [asyncio.create_task(write_forever())]
        if engine is not None:
            workers.append(asyncio.create_task(engine.run()))
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        started = time.perf_counter()
        await simulator.finished.wait()
        await pipeline.settle()
        run = Run(time.perf_counter() - started, 0)
        await finished.join()
        if engine is not None:
            await engine.idle()
            run.notices, run.alerts = engine.notices, engine.raised
        run.after = time.perf_counter() - started - run.elapsed
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if engine is not None:
            await engine.close()
        stop.set()
        await task
    run.ended = await pool.fetchval("SELECT count(*) FROM talkmeter.conversations WHERE pbx = $1", pbx)
    return run


class _LinkClock:
    def __init__(self, link: AmiLink) -> None:
        self._link = link

    def now(self) -> float:
        return self._link.clock.now()


# --- main -----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    database = f"talkmeter_bench_alerts_{os.getpid()}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = dsn_of(args.database_url, database)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        print("1. crossing -> sink latency, real clock")
        await latency(dsn, args.clients, args.per_client)
        print("\n2. pipeline throughput, alerts off and on")
        await throughput(dsn, args.copies, args.rounds)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--copies", type=int, default=20, help="copies of the concurrent_20 stream")
    parser.add_argument(
        "--rounds", type=int, default=3, help="throughput runs of each kind (the best is shown)"
    )
    parser.add_argument("--database-url", default=ADMIN_DSN, help="a PostgreSQL that may create databases")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
