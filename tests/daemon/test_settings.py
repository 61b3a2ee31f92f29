"""Configuration: command line over environment over the TOML file; secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.settings import ConfigError, load_settings


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
    with pytest.raises(ConfigError, match=r"invalid configuration .*ami_port.*no_such_setting"):
        load_settings(config)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="no AMI secret"):
        load_settings().ami_password()
