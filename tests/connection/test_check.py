"""`talkmeter check` against the simulator playing PBXs set up right and wrong, and on captures."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.commands.check import (
    FAIL,
    OK,
    SKIPPED,
    UNKNOWN,
    Result,
    asterisk_of_ami,
    evaluate,
    exit_code,
    observe_pbx,
    render,
)
from daemon.settings import Settings, load_settings
from telephony.simulator import AmiSimulator, events_trace, load_trace
from tests.telephony.scenario import Pbx, Shape

from .helpers import GUARD, SECRET, TRACES, frame

CHECKS = [
    "login", "version", "read system", "read call", "timestamps", "channel list", "bridge list",
    "endpoints", "roles", "measured",
]  # fmt: skip


def settings_for(port: int, **extra: Any) -> Settings:
    return load_settings(None, ami_port=port, ami_secret=SECRET, ami_action_timeout=2.0, **extra)


async def check(sim: AmiSimulator, listen: float = 5.0, **extra: Any) -> tuple[dict[str, Result], int, str]:
    settings = settings_for(sim.port, **extra)
    async with asyncio.timeout(GUARD):
        observations = await observe_pbx(settings, listen)
    results = evaluate(observations, settings)
    return {result.check: result for result in results}, exit_code(results), render(observations, results)


def statuses(results: dict[str, Result]) -> dict[str, str]:
    return {name: result.status for name, result in results.items()}


BEELINE_13 = Shape(13, "SIP", timestamps=False, trunk="beeline")


def beeline(shape: Shape = BEELINE_13, calls: int = 2) -> Pbx:
    pbx = Pbx(shape=shape)
    pbx.calls_in(calls)
    return pbx


async def test_a_pbx_set_up_right_passes_every_check() -> None:
    async with AmiSimulator(load_trace(TRACES / "inbound_answered.ami"), secret=SECRET, speed=0) as sim:
        results, code, report = await check(sim)
    assert code == 0
    assert list(results) == CHECKS
    assert {name for name, status in statuses(results).items() if status != OK} == {"endpoints", "measured"}
    assert results["version"].text == "Asterisk 22.10.1, AMI 11.0.0"
    assert "PJSIPShowEndpoints listed the chan_pjsip endpoints; chan_sip is not loaded" in report
    assert "1 conversation measured while checking, 8.0 s of talk" in report
    assert report.splitlines()[-1] == "every check passed: talkmeter can measure this PBX."


async def test_a_wrong_secret_is_one_clear_line_and_no_retry() -> None:
    async with AmiSimulator(load_trace(TRACES / "inbound_answered.ami"), secret="other", speed=0) as sim:
        results, code, report = await check(sim)
        attempts = len(sim.login_attempts)
    assert code == 1 and attempts == 1
    (login,) = results.values()
    assert login.status == FAIL
    assert login.text.startswith("login refused: Authentication failed. Check ami_user and the secret")
    assert SECRET not in report and "other" not in report


async def test_nobody_listening() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = settings_for(port)
    observations = await observe_pbx(settings, 1.0)
    (login,) = evaluate(observations, settings)
    assert login.status == FAIL
    assert login.text.startswith(f"cannot connect to 127.0.0.1:{port}")
    assert "enabled = yes" in login.text


async def test_refused_core_show_channels_and_endpoint_lists() -> None:
    async with AmiSimulator(load_trace(TRACES / "inbound_answered.ami"), secret=SECRET, speed=0) as sim:
        sim.deny_actions = {"CoreShowChannels", "PJSIPShowEndpoints"}
        results, code, _ = await check(sim)
    assert code == 1
    assert results["channel list"].status == FAIL
    assert results["channel list"].text.startswith(
        "CoreShowChannels: Permission denied. Add system or reporting"
    )
    assert results["endpoints"].status == "info"  # optional: the channels seen still tell the roles
    assert "PJSIPShowEndpoints: Permission denied (optional" in results["endpoints"].text
    assert results["roles"].status == OK


async def test_no_timestamps_and_no_system_class() -> None:
    """A default manager.conf: timestampevents = no; and a user that reads only `call`."""
    trace = load_trace(TRACES / "inbound_answered.ami")
    async with AmiSimulator(trace, secret=SECRET, speed=0, timestampevents=False, read={"call"}) as sim:
        results, code, _ = await check(sim)
    assert code == 1
    assert statuses(results)["timestamps"] == FAIL
    assert "set timestampevents = yes in [general] of manager.conf" in results["timestamps"].text
    assert statuses(results)["read system"] == FAIL
    assert statuses(results)["read call"] == OK


async def run_to_the_end(sim: AmiSimulator) -> None:
    """Another client logs in and stays until the trace is played: the PBX's state moves on."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(frame(Action="Login", Username="talkmeter", Secret=SECRET) + frame(Action="Ping"))
    async with asyncio.timeout(GUARD):
        await sim.finished.wait()
    writer.close()
    await writer.wait_closed()


async def test_calls_up_but_no_call_events_means_read_lacks_call() -> None:
    trace = load_trace(TRACES / "ami_reconnect.session1.ami")  # ends mid-call: two channels stay up
    async with AmiSimulator(trace, secret=SECRET, speed=0, read={"system"}) as sim:
        await run_to_the_end(sim)
        results, code, _ = await check(sim, listen=0.3)
    assert code == 1
    assert results["read call"].status == FAIL
    assert results["read call"].text.startswith("2 channels are up but no call event arrived")
    assert results["timestamps"].status == UNKNOWN
    assert results["roles"].status == OK  # the listed channels still show the roles


async def test_an_idle_pbx_cannot_be_vouched_for() -> None:
    async with AmiSimulator(events_trace([]), secret=SECRET, speed=0, endpoints={}) as sim:
        results, code, _ = await check(sim, listen=0.2)
    assert code == 1
    assert statuses(results) | {"endpoints": "info"} == {
        "login": OK, "version": OK, "read system": OK, "read call": UNKNOWN, "timestamps": UNKNOWN,
        "channel list": OK, "bridge list": OK, "endpoints": "info", "roles": UNKNOWN, "measured": "info",
    }  # fmt: skip
    assert "make a test call" in results["read call"].text


async def test_asterisk_11_is_out_of_scope() -> None:
    async with AmiSimulator(events_trace([]), secret=SECRET, speed=0, ami_version="1.3") as sim:
        results, code, _ = await check(sim, listen=0.1)
    assert code == 1
    assert results["version"].status == FAIL
    assert "Asterisk 11 or older" in results["version"].text


async def test_a_chan_sip_pbx_with_a_trunk_of_its_own_name() -> None:
    """Asterisk 13 with chan_sip: SIPpeers lists `beeline` and the phones; nothing is a client."""
    pbx = beeline()
    endpoints = {"SIP": ["beeline", "101", "102"]}
    trace = events_trace(pbx.frames())
    options: dict[str, Any] = {"ami_version": "2.10.6", "asterisk_version": "13.38.3", "endpoints": endpoints}
    async with AmiSimulator(trace, secret=SECRET, speed=0, **options) as sim:
        results, code, report = await check(sim)
    assert code == 1
    assert results["version"].text == "Asterisk 13.38.3, AMI 2.10.6"
    assert results["roles"].status == FAIL
    assert 'set trunk_channels = ["SIP/beeline-*"]' in results["roles"].text
    assert "chan_pjsip is not loaded; SIPpeers listed the chan_sip endpoints" in report
    assert any(
        line.split()[:3] == ["endpoint", "SIP/beeline", "consultant"] for line in results["roles"].details
    )


async def test_the_suggested_pattern_passes() -> None:
    pbx = beeline(Shape(16, "SIP", timestamps=True, trunk="beeline"))
    async with AmiSimulator(events_trace(pbx.frames()), secret=SECRET, speed=0) as sim:
        results, code, _ = await check(sim, trunk_channels=["SIP/beeline-*"])
    assert code == 0, results
    assert results["roles"].details[0].split()[:3] == ["channels", "SIP/beeline-*", "client"]


def test_asterisk_version_from_the_ami_version() -> None:
    assert [asterisk_of_ami(v) for v in ("2.10.6", "5.0.5", "7.0.3", "9.0.0", "11.0.0", "x")] == [
        "12 or 13", "16", "18", "20", "22", "12 or later",
    ]  # fmt: skip


# --- offline, on captures


@pytest.mark.parametrize(
    "capture",
    sorted(TRACES.glob("*.ami")) + sorted((TRACES / "no-timestamps").glob("*.ami")),
    ids=lambda path: f"{path.parent.name}/{path.stem}",
)
def test_every_recorded_trace(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--trace", str(capture)])
    report = capsys.readouterr().out
    failing = [line for line in report.splitlines() if line.startswith(FAIL)]
    if capture.parent.name == "no-timestamps":
        assert [line.split()[1] for line in failing] == ["timestamps"]
    elif capture.stem == "internal_call":  # no client in it, truthfully
        assert [line.split()[1] for line in failing] == ["roles"]
    elif capture.stem == "ami_reconnect":
        assert failing == []
    else:
        assert failing == [], report
    assert code == (1 if failing else 0)
    assert f"{SKIPPED:5} channel list  CoreShowChannels is not checked on a capture" in report


def test_a_capture_of_a_misnamed_trunk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "pbx.ami"
    capture.write_bytes(beeline(Shape(18, "SIP", timestamps=True, trunk="beeline"), calls=3).capture())
    assert main(["check", "--trace", str(capture)]) == 1
    report = capsys.readouterr().out
    assert "Asterisk 18, AMI 7.0.3" in report
    assert 'set trunk_channels = ["SIP/beeline-*"]' in report
    config = tmp_path / "talkmeter.toml"
    config.write_text('trunk_channels = ["SIP/beeline-*"]\n')
    assert main(["check", "--trace", str(capture), "--config", str(config)]) == 0
    assert "3 conversations measured while checking, 15.0 s of talk" in capsys.readouterr().out


def test_a_queue_with_local_members_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """FreePBX queues dial `Local/<ext>@from-queue`, whose `;2` rings with the client's number."""
    pbx = Pbx()
    client = pbx.inbound("84951234567")
    pbx.answer(client)
    one, two = pbx.local_pair("Local/101@from-queue-0000001a", caller=client)
    pbx.dial(client, one)
    phone = pbx.phone("101")
    pbx.dial(two, phone)
    pbx.after(3)
    pbx.answer(phone, two, one)
    pbx.connect(two, phone)
    pbx.connect(client, one)
    pbx.after(6)
    pbx.hangup(phone, two, one, client)
    capture = tmp_path / "queue.ami"
    capture.write_bytes(pbx.capture())
    assert main(["check", "--trace", str(capture)]) == 0
    report = capsys.readouterr().out
    assert "Local/*" in report and "trunk_channels" not in report


def test_a_missing_capture_or_secret_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TALKMETER_AMI_SECRET", "TALKMETER_AMI_SECRET_FILE", "TALKMETER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert main(["check", "--trace", "/nonexistent.ami"]) == 2
    assert main(["check", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "/nonexistent.ami" in err and "TALKMETER_AMI_SECRET" in err


# --- the command itself, against a simulator in a thread of its own


@pytest.fixture
def simulator_thread() -> Iterator[AmiSimulator]:
    loop = asyncio.new_event_loop()
    sim = AmiSimulator(load_trace(TRACES / "direct_dial.ami"), secret=SECRET, speed=0)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(sim.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(GUARD)
    yield sim
    asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(GUARD)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(GUARD)
    loop.close()


def test_the_command_exits_0_on_a_good_pbx(
    simulator_thread: AmiSimulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALKMETER_AMI_SECRET", SECRET)
    monkeypatch.delenv("TALKMETER_CONFIG", raising=False)
    assert main(["check", "--port", str(simulator_thread.port), "--listen", "5"]) == 0
    report = capsys.readouterr().out
    assert report.splitlines()[0] == f"talkmeter check: 127.0.0.1:{simulator_thread.port} as talkmeter"
    assert SECRET not in report
