"""The call model's effects do not depend on hash order: same input, same effects, any PYTHONHASHSEED.

String hashing is salted per process, so a `set` of Uniqueids iterates in a different order in each
run; anything that walks one to decide the order of effects makes live output (and what listeners
act on) change from run to run. Each check runs fresh interpreters with fixed seeds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from telephony.effects import HoldStarted

from .effects_dump import conference_hold

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ("0", "1", "2", "3", "4", "5", "6", "7")


def in_fresh_interpreter(seed: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_hold_of_two_clients_is_reported_in_a_fixed_order() -> None:
    holds = [effect for effect in conference_hold() if isinstance(effect, HoldStarted)]
    assert [effect.conversation_id for effect in holds] == sorted(effect.conversation_id for effect in holds)
    script = "from tests.telephony.effects_dump import conference_hold as c; print([repr(e) for e in c()])"
    outputs = {in_fresh_interpreter(seed, "-c", script).stdout for seed in SEEDS}
    assert len(outputs) == 1, "the order of effects changed with PYTHONHASHSEED"


@pytest.mark.slow
def test_every_trace_gives_the_same_effects_under_two_hash_seeds() -> None:
    first, second = (
        in_fresh_interpreter(seed, "-m", "tests.telephony.effects_dump") for seed in ("0", "4242")
    )
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.count("\n") > 150  # 41 conversations and their talk and hold
    assert first.stdout == second.stdout


@pytest.mark.slow
@pytest.mark.parametrize("seed", ["0", "4242"])
def test_trace_tests_pass_under_hash_seed(seed: str) -> None:
    result = in_fresh_interpreter(
        seed, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/telephony/test_traces.py"
    )
    assert result.returncode == 0, result.stdout[-3000:]
