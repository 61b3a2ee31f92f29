"""A standby instance (see README, "High availability"): kill -9 either of two talkmeters
following one PBX at any moment, and no talk is lost and nothing is doubled.

Two `talkmeter run` processes follow the simulated PBX, one AMI session each, with their own
`instance` names and spools, into one PostgreSQL where every caller of the trace is a client with a
contract (so every conversation is also rated). The replay starts once both are logged in and then
waits for neither: a dead instance misses what happens while it is down, as with Asterisk. Each
test compares every conversation in the ledger with the trace's SIP truth (tests/traces/*.json).

The kill moments are drawn from a seeded RNG, like the single-instance kill tests: the seed is
printed and named in every failure, and `TALKMETER_FAULT_SEED=<seed>` replays the same kills.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from accounting import audit

from .harness import GUARD, Daemon, Harness, LogLine, callers_are_clients, compare, ledger, seeded, truth

pytestmark = pytest.mark.slow

KILLS = 5
TOLERANCE = 0.01  # seconds of talk, per conversation


def standby(trace: str, dsn: str, workdir: Path, speed: float = 10.0) -> Harness:
    return Harness(trace, dsn, workdir, instances=2, speed=speed)


async def assert_the_ledger_is_the_truth(dsn: str, name: str, why: str = "") -> None:
    """Each conversation once, not estimated, its talk within 0.01 s of the truth; one charge per
    answered conversation; the running state equal to the ledger (`talkmeter check-ledger`)."""
    expected = truth(name)
    rows = await ledger(dsn)
    result = compare(rows, expected)
    assert (result.lost, result.doubled) == ([], []), f"{why}: {result.summary()}"
    assert result.worst <= TOLERANCE, f"{why}: {result.summary()}"
    assert [row["conversation_id"] for row in rows if row["estimated"]] == [], why
    conn = await asyncpg.connect(dsn)
    try:
        charged = await conn.fetch(
            "SELECT conversation_id, count(*) AS keys FROM talkmeter.conversation_charges GROUP BY 1"
        )
        assert sorted(row["conversation_id"] for row in charged) == sorted(
            row["conversation_id"] for row in rows if row["talk_ms"]
        ), why
        assert {row["keys"] for row in charged} == {1}, why
        for client in {
            row["client_id"] for row in await conn.fetch("SELECT client_id FROM talkmeter.clients")
        }:
            assert await audit.check_client(conn, client) == [], why
    finally:
        await conn.close()


@pytest.mark.parametrize("trace", ["concurrent_20", "long_call"])
async def test_killing_either_of_two_instances_at_any_moment_loses_no_talk(
    db_dsn: str, tmp_path: Path, trace: str
) -> None:
    rng, replay = seeded("standby kill -9")
    expected = truth(trace)
    await callers_are_clients(db_dsn, (conversation["client_number"] for conversation in expected))
    async with standby(trace, db_dsn, tmp_path) as harness:
        total = len(harness.trace.events)
        victim = harness.daemons[rng.randrange(2)]
        moments = sorted(rng.sample(range(1, total), KILLS))  # after how many events of the trace
        restarted_at_last = rng.random() < 0.5
        await harness.start()
        for number, moment in enumerate(moments):
            await harness.simulator.reached(moment)
            if number < KILLS - 1 or restarted_at_last:
                await harness.kill_and_restart(harness.daemons.index(victim))
            else:
                victim.kill()  # and not restarted: the other one goes on alone
                await victim.exited()
        await harness.replayed(GUARD)
        await harness.recorded(len(expected))
        for daemon in harness.daemons:
            await daemon.stop()  # SIGTERM: what each one holds is written (or stays in its spool)
    why = f"{replay}: {victim.name} killed {KILLS} times, restarted after the last: {restarted_at_last}"
    await assert_the_ledger_is_the_truth(db_dsn, trace, why)


async def test_two_instances_alive_measure_every_conversation_identically(
    db_dsn: str, tmp_path: Path
) -> None:
    expected = truth("concurrent_20")
    await callers_are_clients(db_dsn, (conversation["client_number"] for conversation in expected))
    async with standby("concurrent_20", db_dsn, tmp_path, speed=20.0) as harness:
        await harness.start()
        await harness.replayed(GUARD)
        await harness.recorded(len(expected))
        async with asyncio.timeout(GUARD), harness.changed:  # each one records each conversation
            await harness.changed.wait_for(
                lambda: all(len(recorded(daemon)) >= len(expected) for daemon in harness.daemons)
            )
        for daemon in harness.daemons:
            await daemon.stop()
    versions = sorted(line["version"] for daemon in harness.daemons for line in recorded(daemon))
    assert versions == ["first"] * len(expected) + ["identical"] * len(expected)
    for daemon in harness.daemons:
        assert len({line["conversation_id"] for line in recorded(daemon)}) == len(expected)
    await assert_the_ledger_is_the_truth(db_dsn, "concurrent_20")
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM talkmeter.conversation_versions") == 0
        instances = await conn.fetch("SELECT DISTINCT instance FROM talkmeter.conversations")
    finally:
        await conn.close()
    assert {row["instance"] for row in instances} <= {"talkmeter-0", "talkmeter-1"}


async def test_an_estimated_version_after_the_exact_one_changes_nothing(db_dsn: str, tmp_path: Path) -> None:
    """One instance stops mid-call (its checkpoint holds the call); the call ends while it is down
    and the other records it exactly; restarted, the first closes the call at its checkpoint,
    estimated, and that version, arriving second, is only kept for audit."""
    expected = truth("long_call")
    await callers_are_clients(db_dsn, (conversation["client_number"] for conversation in expected))
    async with standby("long_call", db_dsn, tmp_path, speed=20.0) as harness:
        stopping, staying = harness.daemons
        talking = next(
            index
            for index, event in enumerate(harness.trace.events, 1)
            if event.name == "BridgeEnter" and b"PJSIP/trunk" in event.raw
        )
        await harness.start()
        await harness.simulator.reached(talking + 10)
        assert await stopping.terminate() == 0  # a stop checkpoints the calls in progress
        await harness.replayed(GUARD)
        await staying.wait_for_log("conversation.recorded")
        await stopping.start()
        late = await stopping.wait_for_log("conversation.recorded")
        for daemon in harness.daemons:
            await daemon.stop()
    assert (late["version"], late["instance"]) == ("not_better", "talkmeter-0")
    await assert_the_ledger_is_the_truth(db_dsn, "long_call")
    conn = await asyncpg.connect(db_dsn)
    try:
        kept = await conn.fetchrow("SELECT instance, estimated FROM talkmeter.conversations")
        aside = await conn.fetchrow(
            "SELECT instance, outcome, compared_with, estimated, talk_ms FROM talkmeter.conversation_versions"
        )
    finally:
        await conn.close()
    assert tuple(kept) == ("talkmeter-1", False)
    assert tuple(aside)[:4] == ("talkmeter-0", "not_better", "talkmeter-1", True)
    assert aside["talk_ms"] < expected[0]["talk_seconds"] * 1000  # closed where it stopped following


def recorded(daemon: Daemon) -> list[LogLine]:
    return daemon.events("conversation.recorded")
