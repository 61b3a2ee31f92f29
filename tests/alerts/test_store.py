"""The alerts on PostgreSQL: claims once among racing daemons, NOTIFY on commit, delivery rows in
talkmeter.alerts, deliveries resumed after a restart, the quota_now view and `talkmeter quota`,
and what each role may do."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from accounting.quota import AlertKey
from daemon.alerts.engine import LiveRow
from daemon.alerts.messages import CATEGORIES, Notification
from daemon.alerts.sinks import EmailSink, WebhookSink
from daemon.alerts.store import QUERIES
from daemon.cli import main
from tests.accounting.accounting_helpers import conversation_dict
from tests.db import admin, unique_name

from .backends import PostgresBackend
from .line import MIN, NUMBER, Line, contract, quota
from .receivers import GUARD, HttpReceiver, Reply, smtp_server
from .samples import alert


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=6) as created:
        yield created


async def backend(pool: asyncpg.Pool, instance: str | None = None, **rules: Any) -> PostgresBackend:
    made = PostgresBackend(pool, instance=instance)
    terms = contract(**{"free_daily_minutes": 10, "alert_thresholds": (80,), **rules})
    await made.seed([quota(terms)], {NUMBER: ["romashka"]})
    return made


async def test_every_alert_query_fits_the_schema(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for sql in QUERIES.values():
            await conn.prepare(sql)


async def test_listen_talkmeter_alerts_hears_each_claimed_alert_and_notice(pool: asyncpg.Pool) -> None:
    heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def hear(*args: Any) -> None:
        heard.put_nowait(json.loads(args[3]))

    listener = await pool.acquire()
    await listener.add_listener("talkmeter_alerts", hear)
    try:
        async with Line(await backend(pool)) as line:
            line.call()
            await line.play()
            await line.wait(9 * MIN)
        async with asyncio.timeout(GUARD):
            notice, warning = await heard.get(), await heard.get()
    finally:
        await listener.remove_listener("talkmeter_alerts", hear)
        await pool.release(listener)
    assert (notice["type"], notice["match"], notice["client"]["id"]) == (
        "call.started",
        "matched",
        "romashka",
    )
    assert (warning["type"], warning["alert"]["kind"], warning["alert"]["percent"]) == (
        "quota.alert",
        "daily",
        80,
    )
    rows = await pool.fetch("SELECT alert_id, sent_to FROM talkmeter.alerts ORDER BY alert_id")
    assert [(row["alert_id"], row["sent_to"]) for row in rows] == [
        (notice["id"], ["pg_notify"]),
        (warning["id"], ["pg_notify"]),
    ]
    assert heard.empty()


async def test_a_claim_rolled_back_sends_no_notify(pool: asyncpg.Pool) -> None:
    heard: list[str] = []

    def hear(*args: Any) -> None:
        heard.append(args[3])

    listener = await pool.acquire()
    await listener.add_listener("talkmeter_alerts", hear)
    store = (await backend(pool)).store
    terms = contract(free_daily_minutes=10, alert_thresholds=(80, 100))

    def sinks_for(notification: Any) -> list[str]:
        if notification.key.percent == 100:  # after the 80 % was claimed and notified
            raise RuntimeError("the transaction fails part-way")
        return ["webhook"]

    try:
        with pytest.raises(RuntimeError, match="part-way"):
            await store.claim(
                "romashka",
                [terms],
                DAYS,
                [],
                lambda view: [alert_for(terms, 80), alert_for(terms, 100)],
                sinks_for,
                True,
            )
        await listener.execute("SELECT 1")  # a round trip: a notification would have arrived by now
    finally:
        await listener.remove_listener("talkmeter_alerts", hear)
        await pool.release(listener)
    assert heard == []
    assert await pool.fetchval("SELECT count(*) FROM talkmeter.notifications") == 0


DAYS = (date(2026, 11, 23), date(2026, 11, 24))


def alert_for(terms: Any, percent: int = 80) -> Notification:
    key = AlertKey(terms.contract_id, "daily", percent, date(2026, 11, 24))
    return replace(alert(), key=key, contract=terms, notification_id=None)


async def test_racing_claims_from_many_connections_make_one_row(db_dsn: str, pool: asyncpg.Pool) -> None:
    """Eight daemons decide the same crossing at the same moment: one claims it, seven do not."""
    await backend(pool)
    terms = contract(free_daily_minutes=10, alert_thresholds=(80,))
    pools = [await asyncpg.create_pool(db_dsn, min_size=1, max_size=1) for _ in range(8)]
    try:
        stores = [PostgresBackend(each).store for each in pools]
        results = await asyncio.gather(
            *(
                store.claim(
                    "romashka",
                    [terms],
                    DAYS,
                    [],
                    lambda view: [alert_for(terms)],
                    lambda n: ["webhook"],
                    False,
                )
                for store in stores
            )
        )
    finally:
        for each in pools:
            await each.close()
    assert sorted(len(claimed) for claimed, _ in results) == [0] * 7 + [1]
    assert all(AlertKey("K1", "daily", 80, date(2026, 11, 24)) in view.raised for _, view in results)
    assert await pool.fetchval("SELECT count(*) FROM talkmeter.notifications") == 1
    assert await pool.fetchval("SELECT count(*) FROM talkmeter.notification_deliveries") == 1


async def test_delivery_state_per_sink_is_visible_in_talkmeter_alerts(pool: asyncpg.Pool) -> None:
    class Sleepless:
        async def __call__(self, delay: float) -> None:
            pass

    async with smtp_server() as smtp:
        dead = WebhookSink("http://127.0.0.1:9/hook", timeout=5, categories=CATEGORIES)
        mail = EmailSink(
            host="127.0.0.1",
            port=smtp.port,
            security="none",
            sender="t@example.ru",
            recipients=["m@example.ru"],
            timeout=5,
            categories=["threshold"],
        )
        options = {"max_attempts": 3, "sleep": Sleepless()}
        async with Line(await backend(pool), sinks=[dead, mail], options=options) as line:
            line.call()
            await line.play()
            await line.wait(9 * MIN)
    rows = await pool.fetch("SELECT * FROM talkmeter.alerts ORDER BY alert_id")
    notice, warning = rows
    assert (notice["type"], notice["sent_to"], notice["failed_to"]) == (
        "call.started",
        ["pg_notify"],
        ["webhook"],
    )
    assert (warning["kind"], warning["percent"], warning["client_name"]) == ("daily", 80, "Ромашка")
    assert warning["sent_to"] == ["email", "pg_notify"] and warning["failed_to"] == ["webhook"]
    deliveries = json.loads(warning["deliveries"])
    assert deliveries["webhook"]["state"] == "failed" and deliveries["webhook"]["attempts"] == 3
    assert deliveries["webhook"]["error"] == "webhook: ConnectError"
    assert deliveries["email"]["attempts"] == 1 and deliveries["email"]["sent_at"] is not None
    assert warning["text"].startswith("Ромашка: 80% of today's free time used (8:00 of 10:00")
    assert json.loads(warning["payload"])["id"] == warning["alert_id"]


async def test_a_restart_goes_on_delivering_what_was_claimed_and_not_sent(pool: asyncpg.Pool) -> None:
    """Only the daemon that claimed: not another PBX's, nor a standby instance of the same PBX
    (which, starting while the first one still tries a sink, would send the same alerts again)."""
    store = await backend(pool, instance="pbx-a")
    silent_receiver = HttpReceiver(lambda request: Reply(hang=True))
    async with silent_receiver as silent, Line(store, silent, deliveries_settle=False) as line:
        line.call()
        await line.play()
        await line.wait(9 * MIN)
        async with asyncio.timeout(GUARD):
            await silent.wait_for(2)  # the notice and the alert are being sent, no answer yet
    waiting = "SELECT alert_id FROM talkmeter.alerts WHERE pending_to = '{webhook}' ORDER BY alert_id"
    pending = await pool.fetch(waiting)
    assert len(pending) == 2
    async with HttpReceiver() as other:
        async with Line(store, other, name="spb"):
            pass  # another PBX's daemon does not send what msk claimed
        async with Line(PostgresBackend(pool, instance="pbx-b"), other) as standby:
            await standby.settle()  # nor does msk's standby: pbx-a claimed them
    assert other.requests == []
    async with HttpReceiver() as working, Line(store, working) as again:
        await again.settle()
    assert sorted(r.json()["type"] for r in working.requests) == ["call.started", "quota.alert"]
    assert sorted(r.json()["id"] for r in working.requests) == [row["alert_id"] for row in pending]
    states = await pool.fetch("SELECT deliveries->'webhook'->>'state' AS state FROM talkmeter.alerts")
    assert [row["state"] for row in states] == ["sent", "sent"]


# --- quota_now and `talkmeter quota` -------------------------------------------------------------


def daytime_zone() -> str:
    """A client zone where it is now between 03:00 and 21:00, so a conversation two hours ago and
    one in progress fall on the same local day whenever the test runs."""
    for zone in ("Europe/Moscow", "Asia/Vladivostok", "America/New_York", "Asia/Kolkata", "Pacific/Auckland"):
        if 3 <= datetime.now(ZoneInfo(zone)).hour < 21:
            return zone
    raise AssertionError("no zone in daytime")  # the five zones cover every hour


@pytest.fixture
async def today_client(pool: asyncpg.Pool) -> AsyncIterator[PostgresBackend]:
    zone = daytime_zone()
    made = PostgresBackend(pool)
    terms = contract(free_daily_minutes=15, free_days_per_week=2, prepaid_minutes=60, short_call_seconds=10)
    await made.seed([quota(terms, zone)], {NUMBER: ["romashka"]})
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    await made.record(conversation_dict("earlier", two_hours_ago.isoformat(), (5, 20 * 60)))  # 20 minutes
    yield made


def live_row(conversation_id: str, counted_ms: int, seconds_ago: float, **changes: Any) -> LiveRow:
    now = time.time()
    values: dict[str, Any] = {
        "conversation_id": conversation_id,
        "client_id": "romashka",
        "contract_id": "K1",
        "channel": "PJSIP/trunk-1",
        "client_number": NUMBER,
        "consultants": ("101",),
        "started_at": now - 600,
        "as_of": now - seconds_ago,
        "talk_ms": counted_ms,
        "counted_ms": counted_ms,
        "talking": True,
        "counting": True,
        "on_hold": False,
        "ended": False,
    }
    values.update(changes)
    return LiveRow(**values)


async def test_quota_now_counts_recorded_usage_and_the_calls_in_progress(
    pool: asyncpg.Pool, today_client: PostgresBackend
) -> None:
    store = today_client.store
    await store.put_live(
        "msk",
        [
            live_row("msk:1", 180_000, 60),  # 3 minutes a minute ago, still talking: about 4 now
            live_row("msk:2", 5_000, 0, talking=False, counting=False),  # a short call so far: counts nothing
        ],
    )
    row = await pool.fetchrow("SELECT * FROM talkmeter.quota_now WHERE client_id = 'romashka'")
    assert (row["free_daily_seconds"], row["free_used_seconds"], row["free_left_seconds"]) == (900, 900, 0)
    assert (row["free_days_per_week"], row["free_days_used"], row["free_days_left"]) == (2, 1, 1)
    assert row["prepaid_seconds"] == 3600
    assert row["prepaid_used_seconds"] == pytest.approx(Decimal(300 + 240), abs=3)  # 5 recorded + ~4 live
    assert row["prepaid_left_seconds"] == pytest.approx(Decimal(3600 - 540), abs=3)
    assert row["paid_seconds_this_month"] == 0
    assert row["conversations_in_progress"] == 2
    assert row["live_talk_seconds"] == pytest.approx(Decimal(245), abs=3)
    calls = json.loads(row["in_progress"])
    assert [call["conversation_id"] for call in calls] == ["msk:1", "msk:2"]
    # A daemon that stopped refreshing its rows (two minutes) is not shown; recorded ones leave.
    await pool.execute("UPDATE talkmeter.live_conversations SET heartbeat_at = now() - interval '3 minutes'")
    stale = await pool.fetchrow("SELECT * FROM talkmeter.quota_now WHERE client_id = 'romashka'")
    assert stale["conversations_in_progress"] == 0 and stale["prepaid_used_seconds"] == 300


async def test_a_standby_heartbeat_drops_only_the_live_rows_it_wrote(pool: asyncpg.Pool) -> None:
    """Two instances of one PBX each write the board; each heartbeat lists the calls that instance
    follows, and must not drop the row of a call only the other one still follows."""
    first, standby = PostgresBackend(pool, instance="pbx-a"), PostgresBackend(pool, instance="pbx-b")
    await first.seed([quota(contract(free_daily_minutes=10))], {NUMBER: ["romashka"]})
    await first.store.put_live("msk", [live_row("msk:1", 60_000, 0)])
    await standby.store.keep_live("msk", [])  # the standby follows no call (it has just started)
    assert list(await first.live()) == ["msk:1"]
    await first.store.keep_live("msk", [])  # the call is gone for the one that wrote it
    assert await first.live() == {}


async def test_a_day_without_a_free_day_left_shows_none_and_paid_time_counts(
    pool: asyncpg.Pool, today_client: PostgresBackend
) -> None:
    await pool.execute("UPDATE talkmeter.usage_weeks SET free_days = 2")  # pretend two other days took them
    await pool.execute("UPDATE talkmeter.usage_days SET free_ms = 0, prepaid_ms = prepaid_ms + free_ms")
    await pool.execute("UPDATE talkmeter.usage_totals SET free_ms = 0, prepaid_ms = prepaid_ms + free_ms")
    await today_client.store.put_live("msk", [live_row("msk:1", 3_600_000, 0)])  # an hour: beyond the package
    row = await pool.fetchrow("SELECT * FROM talkmeter.quota_now")
    assert (row["free_used_seconds"], row["free_left_seconds"], row["free_days_left"]) == (0, 0, 0)
    assert row["prepaid_left_seconds"] == 0
    assert row["paid_seconds_this_month"] == pytest.approx(Decimal(1200 + 3600 - 3600), abs=3)


async def test_talkmeter_quota_prints_what_is_left(
    pool: asyncpg.Pool, today_client: PostgresBackend, db_dsn: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    await today_client.store.put_live("msk", [live_row("msk:1", 60_000, 0, on_hold=True, counting=False)])
    monkeypatch.setenv("TALKMETER_DATABASE_URL", db_dsn)
    assert await asyncio.to_thread(main, ["quota"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "client",
        "name",
        "contract",
        "free",
        "today",
        "free",
        "days",
        "prepaid",
        "paid",
        "month",
        "in",
        "progress",
    ]
    assert out[1].split() == [
        "romashka",
        "Ромашка",
        "K1",
        "0:15:00",
        "/",
        "0:00:00",
        "1",
        "/",
        "1",
        "0:06:00",
        "/",
        "0:54:00",
        "0:00:00",
        "1:",
        "0:01:00",
    ]
    assert out[3] == "in progress:"
    assert out[4].startswith(f"  romashka  {NUMBER} -> 101  talk 0:01:00 (on hold)  [msk:1]")
    assert await asyncio.to_thread(main, ["quota", "romashka", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["prepaid_left_seconds"] == "3240.000"  # 5 minutes recorded, 1 on hold now
    assert await asyncio.to_thread(main, ["quota", "nobody"]) == 2
    assert capsys.readouterr().err == "talkmeter: no contract of client 'nobody' is valid today\n"


async def test_the_accountant_reads_both_views_and_the_writer_does_what_the_daemon_needs(
    pool: asyncpg.Pool, today_client: PostgresBackend
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE talkmeter_accountant")
        assert len(await conn.fetch("SELECT * FROM talkmeter.quota_now")) == 1
        await conn.fetch("SELECT * FROM talkmeter.alerts")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM talkmeter.notifications")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE talkmeter_writer")
        await daemon_statements(conn)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM talkmeter.notifications")


async def daemon_statements(conn: asyncpg.Connection) -> None:
    """Every statement the daemon's alerts run, on this connection."""
    day, now = date(2026, 11, 24), datetime.now(UTC)
    assert await conn.fetch(QUERIES["clients_with_number"], NUMBER)
    view = await conn.fetchrow(QUERIES["alert_view"], "romashka", ["K1"], date(2026, 1, 1), date(2027, 1, 1),
                               [day], ["earlier"])  # fmt: skip
    assert json.loads(view["days"]) and view["recorded"] == ["earlier"]
    claimed = await conn.fetchval(
        QUERIES["claim_alert"], "romashka", "K1", "daily", 80, day, day, None, "msk", None, now, "{}",
        ["webhook", "pg_notify"], "pbx-a",
    )  # fmt: skip
    await conn.fetchval(QUERIES["claim_notice"], "romashka", "K1", "matched", "msk:9", "msk", now, "{}", [],
                        "pbx-a")  # fmt: skip
    await conn.execute(QUERIES["delivery_attempted"], claimed, "webhook", "sent", 1, None)
    await conn.fetch(QUERIES["pending_deliveries"], "msk", "pbx-a")
    live = ["msk:1"], ["romashka"], ["K1"], ["c"], [None], ["101"], [now], [now], [1], [1], [True], [True]
    await conn.execute(QUERIES["put_live_conversations"], "msk", *live, [False], [False], "pbx-a")
    await conn.execute(QUERIES["keep_live_conversations"], "msk", ["msk:1"], "pbx-a")
    await conn.execute(QUERIES["drop_live_conversations"], ["msk:1"])


async def test_the_accountant_can_run_talkmeter_quota(
    pool: asyncpg.Pool, today_client: PostgresBackend, db_dsn: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    accountant = unique_name("tm_accountant")
    await admin(f"CREATE ROLE {accountant} LOGIN PASSWORD 'pw' IN ROLE talkmeter_accountant")
    parts = urlsplit(db_dsn)
    accountant_dsn = urlunsplit(parts._replace(netloc=f"{accountant}:pw@{parts.netloc.rpartition('@')[2]}"))
    try:
        monkeypatch.setenv("TALKMETER_DATABASE_URL", accountant_dsn)
        assert await asyncio.to_thread(main, ["quota", "romashka"]) == 0
        assert capsys.readouterr().out.splitlines()[1].startswith("romashka")
    finally:
        await admin(f"DROP ROLE {accountant}")
