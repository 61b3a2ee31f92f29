"""`talkmeter run` with alerts, end to end: the AMI simulator replays a real call, the service
follows it, records it in PostgreSQL and alerts on a webhook, on NOTIFY and as a UserEvent on the
PBX itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg

from accounting import store as ledger_store
from accounting.contracts import Client
from accounting.ledger import record_conversation
from daemon.metrics import Metrics
from daemon.service import Database, _recording, serve
from daemon.settings import Settings
from telephony.simulator import AmiSimulator, load_trace
from tests.accounting.accounting_helpers import conversation_dict
from tests.standby import CountingDatabase, instance_settings

from .backends import PostgresBackend
from .line import MIN, NUMBER, Line, contract, quota
from .receivers import GUARD, HttpReceiver

TRACES = Path(__file__).resolve().parents[1] / "traces"
SECRET = "service-secret"


async def seed(dsn: str) -> None:
    """Romashka, one free minute a day, 55 seconds of it used earlier that day (the trace's call
    is on 26 November 2026, Moscow time, and talks for 8 seconds)."""
    conn = await asyncpg.connect(dsn)
    try:
        await ledger_store.save_client(conn, Client("romashka", "Ромашка", "Europe/Moscow", (NUMBER,)))
        await ledger_store.save_contract(conn, contract(free_daily_minutes=1, alert_thresholds=(100,)))
    finally:
        await conn.close()
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        await record_conversation(pool, conversation_dict("earlier", "2026-11-26T09:00:00+03:00", (2, 55)))


async def until_delivered(dsn: str, count: int) -> None:
    """Until `count` notifications have no delivery pending: a receiver has a request before the
    daemon has the answer and writes its row (stopping in between leaves the row pending)."""
    conn = await asyncpg.connect(dsn)
    try:
        query = "SELECT count(*) FROM talkmeter.alerts WHERE cardinality(pending_to) = 0"
        while True:
            if await conn.fetchval(query) >= count:
                return
            await asyncio.sleep(0.05)  # polls the database: nothing tells us when a row is written
    finally:
        await conn.close()


async def test_the_service_alerts_live_on_every_sink_and_once(db_dsn: str, tmp_path: Path) -> None:
    await seed(db_dsn)
    async with (
        HttpReceiver() as hook,
        AmiSimulator(load_trace(TRACES / "inbound_answered.ami"), secret=SECRET, speed=0) as sim,
    ):
        alerts: dict[str, Any] = {"language": "en", "webhook": {"url": hook.url}, "ami": {"enabled": True}}
        config = Settings(ami_port=sim.port, ami_secret=SECRET, database_url=db_dsn, spool_dir=tmp_path,
                          ami_reconnect_min=0.05, ami_reconnect_max=0.2, alerts=alerts)  # fmt: skip
        stop = asyncio.Event()
        service = asyncio.create_task(serve(config, stop, stop_grace=0.5))
        try:
            async with asyncio.timeout(GUARD):
                requests = await hook.wait_for(3)  # the notice, the 100 %, the overrun
                while len(sim.user_events) < 3:
                    sim.user_event_received.clear()
                    await sim.user_event_received.wait()
                await until_delivered(db_dsn, 3)
        finally:
            stop.set()
            async with asyncio.timeout(GUARD):
                await service
    requests = sorted(requests, key=lambda r: r.json()["id"])  # each delivery is a task of its own
    events = sorted(sim.user_events, key=lambda event: int(event["AlertID"]))
    kinds = [(r.json()["type"], (r.json()["alert"] or {}).get("kind")) for r in requests]
    assert kinds == [("call.started", None), ("quota.alert", "daily"), ("quota.alert", "overrun")]
    daily = requests[1].json()
    assert daily["client"]["name"] == "Ромашка" and daily["call"]["consultants"] == ["101"]
    # 60 s of free time, 55 used before: the 100 % falls 5 s into the call's 8 s of talk. (At this
    # replay speed the check may come after the recording: then the crossing is dated at hangup.)
    assert daily["call"]["started_at"] < daily["alert"]["crossed_at"] <= daily["decided_at"]
    assert [event["Type"] for event in events] == ["call.started", "quota.alert", "quota.alert"]
    assert [event["Client"] for event in events] == ["romashka"] * 3
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch(
            "SELECT type, kind, sent_to, pending_to FROM talkmeter.alerts ORDER BY alert_id"
        )
        live = await conn.fetchval("SELECT count(*) FROM talkmeter.live_conversations")
    finally:
        await conn.close()
    assert [(r["type"], r["kind"], r["sent_to"], r["pending_to"]) for r in rows] == [
        ("call.started", None, ["ami", "pg_notify", "webhook"], []),
        ("quota.alert", "daily", ["ami", "pg_notify", "webhook"], []),
        ("quota.alert", "overrun", ["ami", "pg_notify", "webhook"], []),
    ]
    assert live == 0  # recorded: no longer in progress


async def test_two_instances_following_one_pbx_alert_once_and_leave_no_call_in_progress(
    db_dsn: str, tmp_path: Path
) -> None:
    """The standby set-up: both services follow the PBX and decide the same crossings; each alert
    and notice is claimed, so sent, once; and once the call is recorded (by one of them, the
    other's version being identical) neither shows it in progress any more."""
    await seed(db_dsn)
    async with (
        HttpReceiver() as hook,
        AmiSimulator(
            load_trace(TRACES / "inbound_answered.ami"), secret=SECRET, speed=0, start_clients=2
        ) as sim,
    ):
        alerts: dict[str, Any] = {"language": "en", "webhook": {"url": hook.url}}
        stop = asyncio.Event()
        databases = {name: CountingDatabase(db_dsn, 1) for name in ("pbx-a", "pbx-b")}
        services = [
            asyncio.create_task(serve(settings, stop, database, stop_grace=0.5))
            for settings, database in (
                (instance_settings(name, sim.port, db_dsn, tmp_path, SECRET, alerts=alerts), database)
                for name, database in databases.items()
            )
        ]
        try:
            async with asyncio.timeout(GUARD):
                await hook.wait_for(3)  # the notice, the 100 %, the overrun
                for database in databases.values():
                    await database.done.wait()
                while True:  # polls the database: nothing tells us when a row goes
                    if not await live(db_dsn):
                        break
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            async with asyncio.timeout(GUARD):
                await asyncio.gather(*services)
    assert sorted((r.json()["type"], (r.json()["alert"] or {}).get("kind")) for r in hook.requests) == [
        ("call.started", None),
        ("quota.alert", "daily"),
        ("quota.alert", "overrun"),
    ]
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch("SELECT sent_to, pending_to FROM talkmeter.alerts ORDER BY alert_id")
    finally:
        await conn.close()
    assert [(r["sent_to"], r["pending_to"]) for r in rows] == [(["pg_notify", "webhook"], [])] * 3


async def live(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM talkmeter.live_conversations"))
    finally:
        await conn.close()


async def test_a_call_the_other_instance_recorded_first_leaves_this_ones_calls_in_progress(
    db_dsn: str,
) -> None:
    """With a standby, this daemon's version of a call often finds the other's already recorded
    (identical: the ledger does not change). Its engine must be told all the same, or it keeps the
    call in progress for ever: in its memory, and on the board of quota_now."""
    async with asyncpg.create_pool(db_dsn, min_size=1, max_size=2) as pool:
        backend = PostgresBackend(pool)
        await backend.seed([quota(contract(free_daily_minutes=10))], {NUMBER: ["romashka"]})
        async with Line(backend) as line:
            client, agent = line.call()
            await line.play()
            await line.wait(MIN)
            line.pbx.hangup(client, agent)
            await line.play()
            finished = line.ended[0].to_json()
            await record_conversation(pool, {**finished, "instance": "pbx-a"})  # the other instance
            record = _recording(Database(db_dsn), line.engine, Metrics())
            result = await record({**finished, "instance": "pbx-b"})
            await line.settle()
            await line.engine.flush_board()
            assert (result.status, result.version) == ("duplicate", "identical")
            assert await backend.live() == {}
