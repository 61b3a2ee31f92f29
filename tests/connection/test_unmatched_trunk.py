"""A trunk named otherwise than the patterns: replay, watch and run warn instead of staying silent.

The capture is a chan_sip PBX on Asterisk 13 without timestamps whose trunk peer is `beeline`:
with the default `trunk_channels` (`SIP/trunk-*`) its channels `SIP/beeline-…` match the default
consultant pattern `SIP/*`, so every call looks like two consultants talking and nothing is
recorded. The warning names the channels and the pattern to add to `trunk_channels`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.cli import main
from daemon.service import serve
from daemon.settings import Settings
from telephony.effects import Anomaly, Effect
from telephony.simulator import AmiSimulator, events_trace
from tests.telephony.scenario import Pbx, Shape

from .helpers import GUARD, SECRET
from .test_pipeline import measure

BEELINE = Shape(13, "SIP", timestamps=False, trunk="beeline")
PATTERN = '"SIP/beeline-*" to trunk_channels'


def beeline_pbx(calls: int = 6) -> Pbx:
    pbx = Pbx(shape=BEELINE)
    pbx.calls_in(calls)
    return pbx


def warnings_in(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "calls.unmatched_channels"]


def test_replay_prints_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "beeline.ami"
    capture.write_bytes(beeline_pbx().capture())
    assert main(["replay", str(capture), "--dry-run", "--json"]) == 0
    out, err = capsys.readouterr()
    assert out == ""  # nothing measured, as before, but now it says why
    (warning,) = [line for line in err.splitlines() if "bridged calls had consultants" in line]
    assert warning.startswith("talkmeter: warning: 5 bridged calls")
    assert "SIP/beeline-0000001a" in warning and PATTERN in warning


async def test_watch_logs_one_warning() -> None:
    """`watch` (and `demo`) run this pipeline: one warning line, however many calls follow."""
    async with AmiSimulator(events_trace(beeline_pbx(12).frames()), secret=SECRET, speed=0) as sim:
        with capture_logs() as logs:
            found = await measure(sim)
    assert found == []
    (warning,) = warnings_in(logs)
    assert warning["log_level"] == "warning"
    assert PATTERN in warning["detail"]


async def test_run_logs_the_warning(db_dsn: str, tmp_path: Path) -> None:
    async with AmiSimulator(events_trace(beeline_pbx().frames()), secret=SECRET, speed=0) as sim:
        config = Settings(ami_port=sim.port, ami_secret=SECRET, database_url=db_dsn, spool_dir=tmp_path,
                          ami_reconnect_min=0.05, ami_reconnect_max=0.2)  # fmt: skip
        reported = asyncio.Event()

        def on_effect(effect: Effect) -> None:
            if isinstance(effect, Anomaly) and effect.kind == "unmatched_channels":
                reported.set()

        stop = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(serve(config, stop, on_effect=on_effect, stop_grace=0.5))
            async with asyncio.timeout(GUARD):
                await reported.wait()
                stop.set()
                await task
    (warning,) = warnings_in(logs)
    assert PATTERN in warning["detail"]


def test_the_right_pattern_measures_the_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "beeline.ami"
    capture.write_bytes(beeline_pbx().capture())
    config = tmp_path / "talkmeter.toml"
    config.write_text('trunk_channels = ["SIP/beeline-*"]\n')
    assert main(["replay", str(capture), "--dry-run", "--json", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6
    assert "bridged calls had consultants" not in err
