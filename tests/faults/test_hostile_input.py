"""Input that cannot hurt: hostile timestamps, caller IDs and garbage on the AMI link.

Each test plays a recorded trace with one thing made hostile and compares what was measured (and,
live, what arrived in PostgreSQL) with the trace's truth.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.commands.replay import measure_capture
from daemon.service import serve
from daemon.settings import Settings
from telephony.simulator import AmiSimulator, parse_trace

from .harness import GUARD, SECRET, TRACES, ledger, truth

TRUNK = "PJSIP/trunk-0000006f"  # the client's channel in long_call
BRIDGED_AT = "1795716685.733758"  # its BridgeEnter


def hostile(name: str, event: str, channel: str, header: str, value: str) -> bytes:
    """Trace `name` with `header` of the first `event` about `channel` set to `value`."""
    data = (TRACES / f"{name}.ami").read_bytes()
    frames = data.split(b"\r\n\r\n")
    for index, frame in enumerate(frames):
        if frame.lstrip(b"\r\n").startswith(f"Event: {event}\r\n".encode()) and (
            f"\r\nChannel: {channel}\r\n".encode() in frame + b"\r\n"
        ):
            pattern = re.compile(rb"(\r\n" + header.encode() + rb": )[^\r]*")
            frames[index], count = pattern.subn(lambda m: m.group(1) + value.encode(), frame, count=1)
            assert count == 1, f"{event} of {channel} has no {header}"
            return b"\r\n\r\n".join(frames)
    raise AssertionError(f"no {event} about {channel} in {name}")


def settings(
    port: int = 5038, dsn: str = "postgresql://unused", spool: Path = Path("."), **extra: Any
) -> Settings:
    values: dict[str, Any] = {"ami_reconnect_min": 0.05, "ami_reconnect_max": 0.2, **extra}
    return Settings(ami_port=port, ami_secret=SECRET, database_url=dsn, spool_dir=spool, **values)


async def serve_bytes(data: bytes, dsn: str, spool: Path, count: int) -> None:
    """The service in-process on a trace given as bytes, until `count` conversations are recorded."""
    async with AmiSimulator(parse_trace(data), secret=SECRET, speed=0) as sim:
        stop = asyncio.Event()
        service = asyncio.create_task(serve(settings(sim.port, dsn, spool), stop, stop_grace=2.0))
        async with asyncio.timeout(GUARD):
            while len(await ledger(dsn)) < count:
                if service.done():
                    service.result()  # the service died: say why
                await asyncio.sleep(0.05)
        stop.set()
        async with asyncio.timeout(GUARD):
            await service


BAD_STAMPS = ["nan", "-1", "inf", "1e300", "yesterday", f"{float(BRIDGED_AT) - 3600:.6f}"]


@pytest.mark.parametrize("event", ["BridgeEnter", "Hangup"])
@pytest.mark.parametrize("value", BAD_STAMPS)
def test_a_replay_measures_through_a_bad_timestamp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], event: str, value: str
) -> None:
    """Was: `inf` or `1e300` raised OverflowError at the call's end; `nan` or `-1` on the
    BridgeEnter gave 73.509 s instead of 70.0, without a word."""
    capture = tmp_path / "long_call.ami"
    capture.write_bytes(hostile("long_call", event, TRUNK, "Timestamp", value))
    (conversation,) = measure_capture(capture, settings())
    measured = conversation.to_json()
    (expected,) = truth("long_call")
    assert measured["talk_seconds"] == pytest.approx(expected["talk_seconds"], abs=0.01)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "estimate is used" in line]
    assert len(warnings) == 1 and event in warnings[0]


@pytest.mark.parametrize(
    ("event", "value"), [("BridgeEnter", "nan"), ("BridgeEnter", "-1"), ("Hangup", "inf")]
)
async def test_the_service_measures_through_a_bad_timestamp(
    db_dsn: str, tmp_path: Path, event: str, value: str
) -> None:
    with capture_logs() as logs:
        await serve_bytes(hostile("long_call", event, TRUNK, "Timestamp", value), db_dsn, tmp_path, count=1)
    (row,) = await ledger(db_dsn)
    (expected,) = truth("long_call")
    assert row["talk_ms"] / 1000 == pytest.approx(expected["talk_seconds"], abs=0.05)
    (warning,) = [entry for entry in logs if entry["event"] == "ami.timestamp_replaced"]
    assert warning["message"] == event and warning["reason"]
