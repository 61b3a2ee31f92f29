"""The watch/simulate/demo commands and the logging set-up."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import structlog

from daemon.cli import build_parser, main
from daemon.logging import REDACTED, configure_logging, redact_secrets
from telephony.simulator import AmiSimulator, load_trace
from tests.connection.helpers import GUARD, TRACES


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # a command may have pointed structlog at a captured stream


@pytest.fixture
def no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TALKMETER_AMI_SECRET", "TALKMETER_AMI_SECRET_FILE", "TALKMETER_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def test_watch_refuses_a_secret_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["watch", "--secret", "hunter2"])
    assert exit_info.value.code == 2


@pytest.mark.usefixtures("no_secret_env")
def test_watch_without_a_secret_is_a_clear_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "--port", "1"]) == 2
    assert "TALKMETER_AMI_SECRET" in capsys.readouterr().err


def test_simulate_and_demo_check_their_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "/nonexistent.ami", "--port", "0"]) == 2
    assert main(["demo", "--trace", "/nonexistent.ami"]) == 2
    err = capsys.readouterr().err
    assert err.count("/nonexistent.ami") == 2


def test_simulate_needs_at_least_one_client_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    trace = str(TRACES / "hold.ami")
    assert main(["simulate", trace, "--port", "0", "--clients", "0"]) == 2
    assert "--clients must be 1 or more" in capsys.readouterr().err


def test_logs_are_json_lines_and_secrets_are_redacted() -> None:
    stream = io.StringIO()
    configure_logging("info", stream)
    try:
        structlog.get_logger("t").info(
            "ami.login", user="talkmeter", secret="hunter2", database_dsn="postgres://x"
        )
        structlog.get_logger("t").debug("hidden")
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "ami.login" and entry["user"] == "talkmeter"
    assert entry["secret"] == REDACTED and entry["database_dsn"] == REDACTED
    assert "hunter2" not in line


def test_redaction_matches_key_names_case_insensitively() -> None:
    event = {"event": "x", "AMI_Password": "p", "token": "t", "user": "u"}
    assert redact_secrets(None, "info", event) == {
        "event": "x",
        "AMI_Password": REDACTED,
        "token": REDACTED,
        "user": "u",
    }


# --- watch's first contact: a hint instead of retrying forever -------------------------------------


@pytest.fixture
def quick_watch(monkeypatch: pytest.MonkeyPatch, no_secret_env: None) -> None:
    monkeypatch.setenv("TALKMETER_AMI_SECRET", "watch-secret")
    monkeypatch.setenv("TALKMETER_AMI_RECONNECT_MIN", "0.01")
    monkeypatch.setenv("TALKMETER_AMI_RECONNECT_MAX", "0.05")
    monkeypatch.setenv("TALKMETER_AMI_ACTION_TIMEOUT", "0.5")
    monkeypatch.setenv("TALKMETER_LOG_LEVEL", "error")


async def watch_exit(port: int, *extra: str) -> int:
    async with asyncio.timeout(GUARD):
        return await asyncio.to_thread(main, ["watch", "--port", str(port), *extra])


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.mark.usefixtures("quick_watch")
async def test_watch_on_a_port_where_nothing_listens_stops_with_a_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert await watch_exit(port) == 2
    assert last_line(capsys.readouterr().err).startswith(
        f"talkmeter: cannot reach the AMI at 127.0.0.1:{port} ("
    )


@pytest.mark.usefixtures("quick_watch")
async def test_watch_on_a_port_that_is_not_ami_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    async def not_asterisk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await reader.read(1 << 16)
        writer.close()

    server = await asyncio.start_server(not_asterisk, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        assert await watch_exit(port) == 2
    assert last_line(capsys.readouterr().err) == (
        f"talkmeter: 127.0.0.1:{port} answered, but not as Asterisk's manager interface (no 'Asterisk Call "
        "Manager' greeting): check --port (ami_port; AMI listens on 5038 unless manager.conf says otherwise)"
    )


@pytest.mark.usefixtures("quick_watch")
async def test_watch_with_a_refused_login_names_what_to_check(capsys: pytest.CaptureFixture[str]) -> None:
    async with AmiSimulator(load_trace(TRACES / "hold.ami"), secret="another-secret", speed=0) as simulator:
        assert await watch_exit(simulator.port) == 2
    err = capsys.readouterr().err
    assert "refused the login of 'talkmeter'" in last_line(err) and "watch-secret" not in err


def test_version_and_help_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"talkmeter {version('talkmeter')}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "bills it against each client's" in top and "talkmeter demo" in top and "check-config" in top
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    run_help = capsys.readouterr().out
    for variable in ("TALKMETER_DATABASE_URL", "TALKMETER_AMI_SECRET ", "TALKMETER_AMI_SECRET_FILE"):
        assert variable in run_help


@pytest.mark.parametrize("command", [["replay", "--dry-run"], ["check", "--trace"]])
@pytest.mark.parametrize("sidecar", [b'{"off": 0}\n', b"\xff\xfe"], ids=["missing key", "not UTF-8"])
def test_a_broken_timing_sidecar_is_one_line_naming_it(
    command: list[str], sidecar: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: `replay` crashed with a traceback on a malformed `.timing` file (`check` did not)."""
    capture = tmp_path / "call.ami"
    capture.write_bytes((TRACES / "inbound_answered.ami").read_bytes())
    (tmp_path / "call.ami.timing").write_bytes(sidecar)
    argv = [*command, str(capture)] if command[0] == "check" else [command[0], str(capture), command[1]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"talkmeter: {tmp_path / 'call.ami.timing'}: ") and err.count("\n") == 1
