"""The live engine end to end in simulated time: AMI events through the real call model, the
engine's timers on a clock the test moves, alerts delivered to a real webhook receiver. Every
scenario runs on both stores: in memory, and PostgreSQL with the real ledger (conversations
recorded by accounting, the settled usage read from its running state)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import date, datetime
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from accounting.contracts import Contract
from accounting.ledger import withdraw_contract
from daemon.metrics import Metrics
from tests.db import admin, dsn_for, unique_name

from .backends import Backend, MemoryBackend, PostgresBackend
from .line import DID_K1, MIN, NUMBER, Line, alerts, contract, crossings, iso, quota
from .receivers import GUARD, HttpReceiver


@pytest.fixture
async def webhook() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver() as receiver:
        yield receiver


Make = Callable[..., Awaitable[Backend]]


@pytest.fixture(params=["memory", "postgres"])
async def backend_for(request: pytest.FixtureRequest, template_db: str) -> AsyncIterator[Make]:
    """`await backend_for(contracts, timezone, numbers)`: a store with the client romashka."""
    made: list[tuple[asyncpg.Pool, str]] = []

    async def make(
        terms: Contract | Sequence[Contract],
        timezone: str = "Europe/Moscow",
        numbers: dict[str, list[str]] | None = None,
    ) -> Backend:
        clients = [quota(terms, timezone)]
        owners = {NUMBER: ["romashka"], **(numbers or {})}
        if request.param == "memory":
            return MemoryBackend(clients, owners)
        name = unique_name("tm_alerts")
        await admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        pool = await asyncpg.create_pool(dsn_for(name), min_size=1, max_size=4)
        made.append((pool, name))
        backend = PostgresBackend(pool)
        await backend.seed(clients, owners)
        return backend

    yield make
    for pool, name in made:
        await pool.close()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def late(alert: dict[str, Any]) -> float:
    decided = datetime.fromisoformat(alert["decided_at"]).timestamp()
    return decided - datetime.fromisoformat(alert["alert"]["crossed_at"]).timestamp()


async def test_a_call_crossing_the_daily_cap_alerts_within_a_second_of_each_crossing(
    backend_for: Make,
    webhook: HttpReceiver,
) -> None:
    backend = await backend_for(contract(free_daily_minutes=10))
    async with Line(backend, webhook) as line:
        line.call()
        await line.play()
        answered = line.pbx.now
        await line.wait(12 * MIN)
    assert crossings(webhook) == [
        ("daily", 80, iso(answered + 8 * MIN)),
        ("daily", 100, iso(answered + 10 * MIN)),
        ("overrun", None, iso(answered + 10 * MIN + 0.001)),
    ]
    assert all(0 <= late(alert) < 1.0 for alert in alerts(webhook))
    first = alerts(webhook)[0]
    assert first["call"]["consultant_channels"] == ["PJSIP/101-0000000b"]
    assert first["left"]["free_left_seconds"] == 120.0
    assert first["text"].endswith(f"Call {NUMBER}, consultant 101.")
    assert [kind for kind, _, _ in await backend.claimed()] == ["daily", "daily", "overrun"]


async def test_the_call_start_notice_says_who_it_is_and_what_is_left(
    backend_for: Make, webhook: HttpReceiver
) -> None:
    backend = await backend_for(contract(free_daily_minutes=10, prepaid_minutes=60))
    async with Line(backend, webhook) as line:
        line.call()
        await line.play()
    (notice,) = [r.json() for r in webhook.requests]
    assert (notice["type"], notice["match"], notice["client"]["id"]) == (
        "call.started",
        "matched",
        "romashka",
    )
    assert notice["left"]["free_left_seconds"] == 600.0 and notice["left"]["prepaid_left_seconds"] == 3600.0
    assert (
        notice["text"]
        == f"Call from Ромашка ({NUMBER}): free today 10:00 of 10:00 left; prepaid 1:00:00 of 1:00:00 left."
    )


@pytest.mark.parametrize(
    ("number", "match", "text"),
    [
        ("+74959999999", "unknown", "Call from +74959999999: no client has this number."),
        ("anonymous", "withheld", "Call from a withheld number: the client is unknown."),
        (
            "+74950000001",
            "ambiguous",
            "Call from +74950000001: the number belongs to several clients (a, b).",
        ),
    ],
)
async def test_an_unmatched_caller_gets_a_notice_saying_so(
    backend_for: Make, webhook: HttpReceiver, number: str, match: str, text: str
) -> None:
    backend = await backend_for(contract(free_daily_minutes=10), numbers={"+74950000001": ["a", "b"]})
    async with Line(backend, webhook) as line:
        line.call(number=number)
        await line.play()
        await line.wait(20 * MIN)
    (notice,) = [r.json() for r in webhook.requests]
    assert (notice["match"], notice["client"], notice["text"]) == (match, None, text)
    assert notice["candidates"] == (["a", "b"] if match == "ambiguous" else [])


async def test_two_conversations_of_one_client_cross_earlier_than_either_alone(
    backend_for: Make, webhook: HttpReceiver
) -> None:
    backend = await backend_for(contract(free_daily_minutes=10, alert_thresholds=(80,)))
    async with Line(backend, webhook) as line:
        line.call(1, "101")
        await line.play()
        first = line.pbx.now
        await line.wait(2 * MIN)
        line.call(2, "102")
        await line.play()
        second = line.pbx.now
        await line.wait(6 * MIN)
    # 8 counted minutes: 5 of the first call and 3 of the second, at first + 5 min.
    assert second - first == pytest.approx(2 * MIN)
    assert crossings(webhook)[0] == ("daily", 80, iso(first + 5 * MIN))


@pytest.mark.parametrize(("hold_billable", "delay"), [(True, 0.0), (False, 2 * MIN)])
async def test_hold_delays_the_crossing_only_when_not_billable(
    backend_for: Make, webhook: HttpReceiver, hold_billable: bool, delay: float
) -> None:
    backend = await backend_for(
        contract(free_daily_minutes=20, alert_thresholds=(80,), hold_billable=hold_billable)
    )
    async with Line(backend, webhook) as line:
        _, agent = line.call()
        await line.play()
        answered = line.pbx.now
        await line.wait(MIN)
        line.pbx.hold(agent)
        await line.play()
        await line.wait(2 * MIN)
        line.pbx.unhold(agent)
        await line.play()
        await line.wait(16 * MIN)
    assert crossings(webhook) == [("daily", 80, iso(answered + 16 * MIN + delay))]


async def test_80_and_100_percent_of_the_prepaid_package(backend_for: Make, webhook: HttpReceiver) -> None:
    backend = await backend_for(contract(prepaid_minutes=100))
    async with Line(backend, webhook) as line:
        client, agent = line.call()  # an earlier call uses 75 of the 100 prepaid minutes
        await line.play()
        await line.wait(75 * MIN)
        line.pbx.hangup(client, agent)
        await line.play()
        await line.record(line.ended[0])
        assert crossings(webhook) == []
        line.call(2)
        await line.play()
        answered = line.pbx.now
        await line.wait(30 * MIN)
    assert crossings(webhook) == [
        ("prepaid", 80, iso(answered + 5 * MIN)),
        ("prepaid", 100, iso(answered + 25 * MIN)),
        ("overrun", None, iso(answered + 25 * MIN + 0.001)),
    ]
    assert alerts(webhook)[0]["alert"]["period"] == {"kind": "term", "start": "2026-01-01", "end": None}


async def test_the_daily_allowance_resets_at_the_clients_midnight(
    backend_for: Make, webhook: HttpReceiver
) -> None:
    # Vladivostok (UTC+10): its midnight is 14:00 UTC. A call from 13:50 UTC: the old day's 80 %
    # at 13:58, and the new day's 80 % only 8 minutes after its midnight.
    start = datetime.fromisoformat("2026-11-24T13:50:00+00:00").timestamp()
    backend = await backend_for(contract(free_daily_minutes=10, alert_thresholds=(80,)), "Asia/Vladivostok")
    async with Line(backend, webhook, start=start) as line:
        line.call()
        await line.play()
        answered = line.pbx.now
        await line.wait(20 * MIN)
    midnight = datetime.fromisoformat("2026-11-25T00:00:00+10:00").timestamp()
    assert [
        (a["alert"]["kind"], a["alert"]["period"]["start"], a["alert"]["crossed_at"]) for a in alerts(webhook)
    ] == [
        ("daily", "2026-11-24", iso(answered + 8 * MIN)),  # the old day ends just as its 10 minutes do
        ("daily", "2026-11-25", iso(midnight + 8 * MIN)),
    ]


async def test_a_restart_between_two_thresholds_sends_neither_twice_and_skips_none(
    backend_for: Make,
    webhook: HttpReceiver,
) -> None:
    backend = await backend_for(contract(free_daily_minutes=10, alert_thresholds=(80, 100)))
    async with Line(backend, webhook) as first:
        client, agent = first.call()
        await first.play()
        answered = first.pbx.now
        await first.wait(9 * MIN)
    assert crossings(webhook) == [("daily", 80, iso(answered + 8 * MIN))]
    # The daemon restarts: the new one did not see the call start; it goes on and ends.
    second = Line(backend, webhook, start=first.pbx.now)
    second.pbx, second.tracker = first.pbx, first.tracker
    second._fed = len(first.pbx.events)
    async with second as line:
        await line.wait(3 * MIN)
        line.pbx.hangup(client, agent)
        await line.play()
        assert crossings(webhook)[1:] == []  # the engine never saw this call: known at hangup
        await line.record(line.ended[0])
        hung_up = iso(line.pbx.now)
        assert crossings(webhook)[1:] == [("daily", 100, hung_up), ("overrun", None, hung_up)]
        line.call(2)  # a later call of the day: nothing more to say about 80 % or 100 %
        await line.play()
        await line.wait(5 * MIN)
    assert [c[:2] for c in crossings(webhook)] == [("daily", 80), ("daily", 100), ("overrun", None)]
    assert all(a["call"]["in_progress"] is False for a in alerts(webhook)[1:])
    assert [kind for kind, _, _ in await backend.claimed()] == ["daily", "daily", "overrun"]


async def test_two_engines_racing_on_one_client_send_once(backend_for: Make, webhook: HttpReceiver) -> None:
    """Both see the same call (as two daemons could see one client's calls) and decide at once."""
    backend = await backend_for(contract(free_daily_minutes=10, alert_thresholds=(80,)))
    async with Line(backend, webhook) as one, Line(backend, webhook, name="msk-2") as two:
        two.pbx = one.pbx
        one.call()
        await one.play()
        await two.play()
        one.pbx.after(9 * MIN)
        one.clock.advance(one.pbx.now)
        two.clock.advance(one.pbx.now)
        await asyncio.gather(one.settle(), two.settle())
    assert [c[:2] for c in crossings(webhook)] == [("daily", 80)]
    assert len([r for r in webhook.requests if r.json()["type"] == "call.started"]) == 1
    assert one.engine.raised + two.engine.raised == 1


async def test_the_calls_in_progress_are_written_for_quota_now_until_recorded(
    backend_for: Make, webhook: HttpReceiver
) -> None:
    backend = await backend_for(contract(free_daily_minutes=10, hold_billable=False))
    async with Line(backend, webhook) as line:
        client, agent = line.call()
        await line.play()
        await line.wait(2 * MIN)
        line.pbx.hold(agent)
        await line.play()
        await line.wait(MIN)
        await line.engine.flush_board()
        (figures,) = (await backend.live()).values()
        assert figures == (180_000, 120_000, True)  # three minutes of talk, the last one on hold
        line.pbx.unhold(agent)
        line.pbx.hangup(client, agent)
        await line.play()
        await line.record(line.ended[0])
        await line.engine.flush_board()
        assert await backend.live() == {}


async def test_a_call_on_a_second_contract_of_a_followed_client_starts_from_its_own_usage(
    backend_for: Make, webhook: HttpReceiver
) -> None:
    """The client is already followed for its K1 call when a K2 call starts: K2's settled usage
    (5 minutes this morning) is read then, for the notice and for the timing of its alerts."""
    k1 = contract(contract_id="K1", free_daily_minutes=10, alert_thresholds=(80,), lines={DID_K1})
    k2 = contract(contract_id="K2", free_daily_minutes=10, alert_thresholds=(80,))
    backend = await backend_for([k1, k2])
    async with Line(backend, webhook) as line:
        client, agent = line.call(1, "101")  # this morning's call on K2 (the catch-all)
        await line.play()
        await line.wait(5 * MIN)
        line.pbx.hangup(client, agent)
        await line.play()
        await line.record(line.ended[0])
        line.call(2, "102", line=DID_K1)  # a K1 call in progress: the client is followed
        await line.play()
        await line.wait(MIN)
        line.call(3, "103")  # and a K2 call
        await line.play()
        second = line.pbx.now
        await line.wait(4 * MIN)
    notices = [r.json() for r in webhook.requests if r.json()["type"] == "call.started"]
    assert [(n["contract"]["id"], n["left"]["free_left_seconds"]) for n in notices] == [
        ("K2", 600.0),
        ("K1", 600.0),
        ("K2", 300.0),
    ]
    assert notices[-1]["text"].endswith("free today 5:00 of 10:00 left.")
    assert [(a["contract"]["id"], *c) for a, c in zip(alerts(webhook), crossings(webhook), strict=True)] == [
        ("K2", "daily", 80, iso(second + 3 * MIN))
    ]
    assert all(0 <= late(alert) < 1.0 for alert in alerts(webhook))


async def test_a_contract_imported_after_a_call_without_one_covers_the_next_call(
    backend_for: Make, webhook: HttpReceiver
) -> None:
    """A client met on a call no contract covers is not kept with its contracts of then."""
    not_yet = contract(contract_id="K0", free_daily_minutes=10, valid_from=date(2027, 1, 1))
    backend = await backend_for(not_yet)
    async with Line(backend, webhook) as line:
        client, agent = line.call(1)
        await line.play()
        await line.wait(MIN)
        line.pbx.hangup(client, agent)
        await line.play()
        await line.record(line.ended[0])
        await backend.add_contract(contract(free_daily_minutes=10, alert_thresholds=(80,)))
        line.call(2)
        await line.play()
        answered = line.pbx.now
        await line.wait(9 * MIN)
    notices = [r.json() for r in webhook.requests if r.json()["type"] == "call.started"]
    assert [(n["match"], (n["contract"] or {}).get("id")) for n in notices] == [
        ("no_contract", None),
        ("matched", "K1"),
    ]
    assert crossings(webhook) == [("daily", 80, iso(answered + 8 * MIN))]


async def board_until(board: asyncio.Task[None], done: Callable[[], Awaitable[bool]]) -> None:
    """Until `done` says so (polled: nothing tells when the board task wrote); fail if the board
    task stops meanwhile."""
    async with asyncio.timeout(GUARD):
        while not await done():
            if board.done():
                board.result()
                raise AssertionError("the board task stopped")
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("backend_for", ["postgres"], indirect=True)
async def test_a_live_board_row_the_database_refuses_is_dropped_and_the_board_goes_on(
    backend_for: Make, webhook: HttpReceiver
) -> None:
    """The board is for display only: a contract withdrawn under a call in progress (possible
    when no notice names it) makes its row a foreign-key violation, which is logged and dropped;
    the board task lives on."""
    k1 = contract(contract_id="K1", free_daily_minutes=10, lines={DID_K1})
    backend = await backend_for([k1, contract(contract_id="K2", free_daily_minutes=10)])
    assert isinstance(backend, PostgresBackend)

    async def rows() -> list[tuple[int, int, bool]]:
        return list((await backend.live()).values())

    async def both_written() -> bool:
        return len(await rows()) == 2

    async def k2_written_again() -> bool:  # with its minute of talk
        return [talk for talk, _, _ in await rows()] == [MIN * 1000]

    async with Line(backend, webhook) as line:
        line.engine.call_start_notices = False
        _, on_k1 = line.call(1, "101", line=DID_K1)
        _, on_k2 = line.call(2, "102")
        await line.play()
        board = asyncio.create_task(line.engine.board_forever(interval=0.01))
        await board_until(board, both_written)
        await withdraw_contract(backend.pool, "K1")  # its live row goes with it

        async def refused() -> bool:
            return any(log["event"] == "alert.live_board_failed" for log in logs)

        with capture_logs() as logs:
            await line.wait(MIN)
            line.pbx.hold(on_k1)
            line.pbx.hold(on_k2)  # both rows change: the batch with K1's is refused
            await line.play()
            await board_until(board, refused)
            line.pbx.unhold(on_k2)
            await line.play()
            await board_until(board, k2_written_again)
        board.cancel()
        await asyncio.gather(board, return_exceptions=True)
    (failed,) = [log for log in logs if log["event"] == "alert.live_board_failed"]
    assert failed["log_level"] == "warning" and "ForeignKeyViolation" in failed["error"]


async def test_the_alerts_raised_and_the_notices_sent_are_counted_in_the_metrics(
    backend_for: Make, webhook: HttpReceiver
) -> None:
    backend = await backend_for(contract(free_daily_minutes=10))
    metrics = Metrics()
    async with Line(backend, webhook, options={"observer": metrics}) as line:
        line.call()
        await line.play()
        await line.wait(12 * MIN)
        line.call(2, number="anonymous")
        await line.play()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert [sample("talkmeter_alerts_raised_total", kind=kind) for kind in ("daily", "overrun")] == [2.0, 1.0]
    assert sample("talkmeter_alert_delay_seconds_count") == 3.0
    assert sample("talkmeter_alert_delay_seconds_bucket", le="1.0") == 3.0  # decided as crossed
    notices = [sample("talkmeter_call_notices_total", match=match) for match in ("matched", "withheld")]
    assert notices == [1.0, 1.0]
