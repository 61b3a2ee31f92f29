"""kill -9 at random moments: no conversation is lost or counted twice, and the talk lost per kill
is bounded by the checkpoint interval.

The moments are drawn from a seeded RNG; the seed is printed (and named in every failure), and
`TALKMETER_FAULT_SEED=<seed>` replays the same kills.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import GUARD, TRACES, Harness, compare, ledger, seeded, truth

KILLS = 5


@pytest.mark.slow
@pytest.mark.parametrize("trace", ["concurrent_20", "long_call"])
async def test_kill_9_at_random_moments_loses_and_doubles_nothing(
    db_dsn: str, tmp_path: Path, trace: str
) -> None:
    rng, replay = seeded("kill -9")
    expected = truth(trace)
    async with Harness(trace, db_dsn, tmp_path) as harness:
        total = len(harness.trace.events)
        moments = sorted(rng.sample(range(1, total), KILLS))  # after how many events of the trace
        await harness.start()
        killed_at = []
        for moment in moments:
            await harness.daemon.wait_for_log("pipeline.resync")  # up and following the PBX
            await harness.simulator.reached(moment)
            killed_at.append(await harness.kill_and_restart())
        await harness.replayed(GUARD)
        try:
            rows = await harness.recorded(len(expected))
        except TimeoutError:
            rows = await ledger(db_dsn)  # what did arrive: the comparison below says what did not
    result = compare(rows, expected)
    assert (result.lost, result.doubled) == ([], []), f"{replay}: {result.summary()}"
    # Never more talk than there was; never more lost than the bound for each kill during the call.
    for window, error in zip(lifetimes(trace), result.talk_error, strict=True):
        # (a kill just after the talk, before the hangup was read, closes the call at a checkpoint)
        kills = sum(window[0] <= at <= window[1] + harness.loss_bound for at in killed_at)
        assert -harness.loss_bound * kills - 0.2 <= error <= 0.2, f"{replay}: {window} off by {error:.3f} s"
    assert all(daemon.starts == KILLS + 1 for daemon in harness.daemons)


def lifetimes(trace: str) -> list[tuple[float, float]]:
    """Each truth conversation's (INVITE, end of its last talk), from the SIP logs."""
    detail = json.loads((TRACES / f"{trace}.json").read_text())["truth_detail"]["conversations"]
    return [
        (conversation["client_invite_at"], max((s["to"] for s in conversation["segments"]), default=0.0))
        for conversation in detail
    ]
