"""Input that cannot hurt: hostile timestamps, caller IDs and garbage on the AMI link.

Each test plays a recorded trace with one thing made hostile and compares what was measured (and,
live, what arrived in PostgreSQL) with the trace's truth.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.commands.replay import measure_capture
from telephony.simulator import parse_trace

from .harness import Harness, compare, hostile, ledger, serve_until_recorded, settings, truth

TRUNK = "PJSIP/trunk-0000006f"  # the client's channel in long_call
BRIDGED_AT = "1795716685.733758"  # its BridgeEnter


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
    (conversation,) = measure_capture(capture, settings(5038, "postgresql://unused", tmp_path))
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
        trace = parse_trace(hostile("long_call", event, TRUNK, "Timestamp", value))
        await serve_until_recorded(trace, db_dsn, tmp_path, count=1)
    (row,) = await ledger(db_dsn)
    (expected,) = truth("long_call")
    assert row["talk_ms"] / 1000 == pytest.approx(expected["talk_seconds"], abs=0.05)
    (warning,) = [entry for entry in logs if entry["event"] == "ami.timestamp_replaced"]
    assert warning["message"] == event and warning["reason"]


@pytest.mark.parametrize("caller", ["+74951234567\x00", "+74951234567" + "9" * 500_000], ids=["nul", "500kb"])
async def test_a_hostile_caller_id_is_cleaned_and_the_call_recorded(
    db_dsn: str, tmp_path: Path, caller: str
) -> None:
    """Was: a NUL byte sent the whole conversation to rejected.jsonl, unbilled; 500 KB were stored."""
    data = hostile("inbound_answered", "Newchannel", "PJSIP/trunk-00000000", "CallerIDNum", caller)
    await serve_until_recorded(parse_trace(data), db_dsn, tmp_path, count=1)
    (row,) = await ledger(db_dsn)
    (expected,) = truth("inbound_answered")
    assert row["talk_ms"] / 1000 == pytest.approx(expected["talk_seconds"], abs=0.2)
    raw = row["client_number_raw"]
    assert raw.startswith("+74951234567") and len(raw) <= 256 and "\x00" not in raw
    if caller.endswith("\x00"):
        assert row["client_number"] == "+74951234567"
    assert not (tmp_path / "default" / "rejected.jsonl").exists()


@pytest.mark.slow
async def test_10_mb_garbage_lines_during_calls_lose_nothing(db_dsn: str, tmp_path: Path) -> None:
    """Garbage on the AMI link while 20 calls go on: with and without a line break, glued to
    whatever follows. The session holds, and every conversation arrives whole."""
    expected = truth("concurrent_20")
    async with Harness("concurrent_20", db_dsn, tmp_path) as harness:
        await harness.start()
        await harness.daemon.wait_for_log("pipeline.resync")
        events = len(harness.trace.events)
        for n, end in enumerate([b"\r\n", b"", b"\r\n", b""], 1):
            await harness.simulator.reached(events * n // 5)
            harness.simulator.send_raw(b"\xff" * 10_000_000 + end)
        rows = await harness.recorded(len(expected))
        await harness.replayed()
    result = compare(rows, expected)
    assert (result.lost, result.doubled) == ([], []) and result.worst <= 0.2, result.summary()
    assert harness.daemon.events("ami.malformed_frame")
    assert not harness.daemon.events("ami.ping_timeout") and harness.daemon.starts == 1
    assert [line["session"] for line in harness.daemon.events("ami.session_started")] == [1]
