"""Configuration: command line over environment over the TOML file; secrets never shown."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.settings import ConfigError, Settings, dsn_problem, load_settings


def test_file_environment_and_command_line_in_that_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "msk.toml"
    config.write_text(
        'ami_host = "10.0.0.5"\nami_port = 5039\npbx = "msk"\ntrunk_channels = ["PJSIP/beeline-*"]\n'
    )
    monkeypatch.setenv("TALKMETER_AMI_PORT", "6000")
    settings = load_settings(config, ami_host="127.0.0.9")
    assert (settings.ami_host, settings.ami_port, settings.pbx) == ("127.0.0.9", 6000, "msk")
    assert settings.trunk_channels == ["PJSIP/beeline-*"]


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "spb.toml"
    config.write_text('pbx = "spb"\n')
    monkeypatch.setenv("TALKMETER_CONFIG", str(config))
    assert load_settings().pbx == "spb"


def test_secrets_are_hidden_and_read_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "ami-secret"
    secret_file.write_text("from-a-file\n")
    monkeypatch.setenv("TALKMETER_AMI_SECRET_FILE", str(secret_file))
    monkeypatch.setenv("TALKMETER_DATABASE_URL", "postgresql://u:db-password@h/db")
    settings = load_settings()
    assert settings.ami_password() == "from-a-file"
    assert settings.dsn().endswith("@h/db")
    shown = repr(settings) + str(settings.model_dump())
    assert "from-a-file" not in shown and "db-password" not in shown


def test_bad_configuration_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('ami_port = "five"\nno_such_setting = 1\n')
    with pytest.raises(ConfigError, match=r"invalid configuration: .*ami_port.*no_such_setting"):
        load_settings(config)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="no AMI secret"):
        load_settings().ami_password()


# --- every mistake is one line naming the setting, exit code 2 ------------------------------------

PASSWORD = "pw-Never-Shown"


def _file(tmp_path: Path, content: bytes) -> list[str]:
    config = tmp_path / "talkmeter.toml"
    config.write_bytes(content)
    return ["run", "--config", str(config)]


def _env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> list[str]:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return ["run"]


def _secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str) -> list[str]:
    (tmp_path / "secret").write_text(content)
    return _env(monkeypatch, TALKMETER_AMI_SECRET_FILE=str(tmp_path / "secret"))


def _dsn(monkeypatch: pytest.MonkeyPatch, url: str) -> list[str]:
    return _env(monkeypatch, TALKMETER_AMI_SECRET="x", TALKMETER_DATABASE_URL=url)


MISTAKES: dict[str, tuple[Callable[[Path, pytest.MonkeyPatch], list[str]], str]] = {
    "TOML syntax error": (
        lambda tmp, mp: _file(tmp, b'ami_host = "10.0.0.5"\nami_port = \n'),
        r"talkmeter\.toml is not valid TOML: .*line 2.*; fix that line",
    ),
    "TOML not UTF-8": (
        lambda tmp, mp: _file(tmp, 'pbx = "Москва"\n'.encode("cp1251")),
        r"talkmeter\.toml is not UTF-8 text \(byte 7\): save it as UTF-8",
    ),
    "ami_port 99999": (
        lambda tmp, mp: _file(tmp, b"ami_port = 99999\n"),
        r"ami_port = 99999 in .*talkmeter\.toml: must be a TCP port number from 1 to 65535",
    ),
    "missing secret file": (
        lambda tmp, mp: _env(mp, TALKMETER_AMI_SECRET_FILE=str(tmp / "nope")),
        r"ami_secret_file \(TALKMETER_AMI_SECRET_FILE\) .*nope does not exist: create it",
    ),
    "empty secret file": (
        lambda tmp, mp: _secret_file(tmp, mp, "\n"),
        r"ami_secret_file \(TALKMETER_AMI_SECRET_FILE\) .*secret is empty: put the manager\.conf secret",
    ),
    "DSN without scheme": (
        lambda tmp, mp: _dsn(mp, f"talkmeter:{PASSWORD}@db.example/talkmeter"),
        r"database_url from TALKMETER_DATABASE_URL: the URL has no scheme: write it as postgresql://",
    ),
    "DSN port abc": (
        lambda tmp, mp: _dsn(mp, f"postgresql://talkmeter:{PASSWORD}@db.example:abc/talkmeter"),
        r"database_url from TALKMETER_DATABASE_URL: the port 'abc' in the URL is not a number",
    ),
    "DSN sslmode=bogus": (
        lambda tmp, mp: _dsn(mp, f"postgresql://talkmeter:{PASSWORD}@db.example/talkmeter?sslmode=bogus"),
        r"database_url from TALKMETER_DATABASE_URL: sslmode=bogus is not one of disable, allow, prefer",
    ),
    "DSN broken IPv6": (
        lambda tmp, mp: _dsn(mp, f"postgresql://talkmeter:{PASSWORD}@[::1/talkmeter"),
        r"database_url from TALKMETER_DATABASE_URL: the URL has a broken IPv6 address: write it in brackets",
    ),
    "log_level bogus": (
        lambda tmp, mp: _env(mp, TALKMETER_LOG_LEVEL="bogus"),
        r"log_level = 'bogus' from TALKMETER_LOG_LEVEL: must be one of debug, info, warning, error",
    ),
    "reconnect_min > reconnect_max": (
        lambda tmp, mp: _file(tmp, b"ami_reconnect_min = 10\nami_reconnect_max = 1\n"),
        r"ami_reconnect_min \(10\) is greater than ami_reconnect_max \(1\): make the minimum the smaller one",
    ),
    "instance with a space": (
        lambda tmp, mp: _env(mp, TALKMETER_INSTANCE="pbx a"),
        r"instance = 'pbx a' from TALKMETER_INSTANCE: use 1 to 64 ASCII letters, digits, '\.', '_', '-'",
    ),
    "webhook URL, from a nested variable, with its token": (
        lambda tmp, mp: _env(mp, TALKMETER_ALERTS__WEBHOOK__URL=f"ftp://hooks.example/{PASSWORD}"),
        r"alerts\.webhook\.url from TALKMETER_ALERTS__WEBHOOK__URL: must start with http:// or https://",
    ),
    "default_region ZZ": (
        lambda tmp, mp: _file(tmp, b'default_region = "ZZ"\n'),
        r"default_region = 'ZZ' in .*talkmeter\.toml: must be a two-letter region code .* such as RU",
    ),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TALKMETER_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_is_one_line_naming_the_setting_with_exit_code_2(
    mistake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare, expected = MISTAKES[mistake]
    argv = prepare(tmp_path, monkeypatch)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("talkmeter: "), err
    assert re.search(expected, err), err
    assert PASSWORD not in err


@pytest.mark.usefixtures("clean_env")
def test_check_config_shows_every_setting_its_source_and_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "msk.toml"
    config.write_text('ami_host = "10.0.0.5"\npbx = "msk"\n')
    secret = tmp_path / "ami-secret"
    secret.write_text("hunter2\n")
    monkeypatch.setenv("TALKMETER_AMI_SECRET_FILE", str(secret))
    monkeypatch.setenv(
        "TALKMETER_DATABASE_URL",
        f"postgresql://daemon:{PASSWORD}@db.example/tm?sslmode=require&sslpassword={PASSWORD}",
    )
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()[2:-1]}
    assert set(rows) == set(Settings.model_fields)
    assert rows["ami_host"].split() == ["file", str(config), '"10.0.0.5"']
    assert rows["ami_port"].split() == ["default", "5038"]
    assert rows["ami_secret_file"].split() == ["environment", "TALKMETER_AMI_SECRET_FILE", str(secret)]
    assert rows["database_url"].split() == [
        "environment",
        "TALKMETER_DATABASE_URL",
        "postgresql://daemon:********@db.example/tm?sslmode=require&sslpassword=********",
    ]
    assert "hunter2" not in out and PASSWORD not in out
    assert out.endswith("configuration is valid for `talkmeter run` (nothing was connected to)\n")
    # What `run` needs but is missing is an error there too, after the listing.
    monkeypatch.delenv("TALKMETER_DATABASE_URL")
    assert main(["check-config", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        "talkmeter: no database: set TALKMETER_DATABASE_URL (or database_url in the config file)\n"
    )


def test_instance_defaults_to_the_host_name_and_is_shown_by_check_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TALKMETER_INSTANCE", raising=False)
    monkeypatch.setattr("socket.gethostname", lambda: "pbx-a.example")
    assert load_settings().instance == "pbx-a.example"
    monkeypatch.setattr("socket.gethostname", lambda: "_odd host/" + "x" * 80)
    odd = load_settings().instance
    assert odd.startswith("odd-host-") and len(odd) == 64  # always a valid name
    monkeypatch.setenv("TALKMETER_INSTANCE", "standby-2")
    assert load_settings().instance == "standby-2"
    monkeypatch.setenv("TALKMETER_AMI_SECRET", "x")
    monkeypatch.setenv("TALKMETER_DATABASE_URL", "postgresql://h/db")
    assert main(["check-config"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("instance "))
    assert row.split() == ["instance", "environment", "TALKMETER_INSTANCE", '"standby-2"']


def test_the_database_url_is_checked_without_ever_repeating_it() -> None:
    good = [
        "postgresql://u:p@h/db",
        "postgres://h:5432/db",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://u@[::1]:5432/db",
        "postgresql://u@h1:5432,h2:5433/db?sslmode=verify-full",
    ]
    assert [dsn_problem(url) for url in good] == [None] * len(good)
    bad = {
        "mysql://u:p@h/db": "must start with postgresql://",
        "postgresql://u:p@h:0/db": "not a number from 1 to 65535",
        "postgresql://u:p@::1/db": "IPv6 address without brackets",
        "postgresql://u:p@h/db?port=x": "port=x in the URL",
    }
    for url, problem in bad.items():
        message = dsn_problem(url)
        assert message is not None and problem in message and ":p@" not in message


@pytest.mark.parametrize("name", ["../../x", "..", ".", "", "a/b", "msk x", "-msk", "x" * 65, "мск", "a\0b"])
def test_a_pbx_name_is_restricted_to_safe_characters(name: str) -> None:
    """Was: `pbx = "../../x"` put the spool outside `spool_dir` (the name is a directory in it)."""
    with pytest.raises(ConfigError, match="pbx"):
        load_settings(pbx=name)


@pytest.mark.parametrize("name", ["default", "msk", "msk-2", "spb_office.1", "A1", "x" * 64])
def test_ordinary_pbx_names_are_accepted(name: str, tmp_path: Path) -> None:
    settings = load_settings(pbx=name, spool_dir=tmp_path)
    assert (settings.spool_dir / settings.pbx).resolve().parent == tmp_path.resolve()


@pytest.mark.usefixtures("clean_env")
def test_an_smtp_port_out_of_range_is_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: accepted, and every e-mail alert then failed at delivery, 20 attempts each."""
    config = tmp_path / "msk.toml"
    config.write_text('[alerts.email]\nhost = "smtp.example"\nport = 99999\n')
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("talkmeter: invalid configuration: alerts.email.port = 99999") and "65535" in err
