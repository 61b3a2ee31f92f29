"""The watch/simulate/demo commands and the logging set-up."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from daemon.cli import build_parser, main
from daemon.logging import REDACTED, configure_logging, redact_secrets


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
