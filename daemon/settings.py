"""Configuration: environment (`TALKMETER_*`), an optional TOML file, then defaults.

Precedence, highest first: explicit overrides from the command line, environment variables,
the TOML file given with `--config` (or `TALKMETER_CONFIG`), defaults.
Secrets are `SecretStr` so that they print as `**********` in logs and reprs; the AMI secret may
also come from a file (`ami_secret_file`, for systemd credentials), never from the command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from telephony.calls import CallTracker
from telephony.roles import DEFAULT_CONSULTANTS, DEFAULT_IGNORED, DEFAULT_TRUNKS, ChannelRoles


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TALKMETER_", extra="forbid")

    # AMI
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "talkmeter"
    ami_secret: SecretStr | None = None
    ami_secret_file: Path | None = None
    ami_action_timeout: float = Field(5.0, gt=0)
    ami_ping_interval: float = Field(10.0, gt=0)
    ami_ping_timeout: float = Field(5.0, gt=0)
    ami_reconnect_min: float = Field(0.5, gt=0)
    ami_reconnect_max: float = Field(30.0, gt=0)
    ami_auth_retry: float = Field(60.0, gt=0)
    # Call model
    trunk_channels: list[str] = Field(default_factory=lambda: list(DEFAULT_TRUNKS))
    consultant_channels: list[str] = Field(default_factory=lambda: list(DEFAULT_CONSULTANTS))
    ignored_channels: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORED))
    talk_debounce: float = Field(1.0, ge=0)
    default_region: str = "RU"
    pbx: str = "default"
    # Storage
    database_url: SecretStr | None = None
    spool_dir: Path = Path("/var/lib/talkmeter")
    log_level: str = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Command line (init) over environment over the TOML file; `toml_file` is set by
        # `load_settings` on a subclass, so no global state decides which file is read.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def call_tracker(self) -> CallTracker:
        """A fresh call model configured by these settings (roles, debounce, region, PBX name)."""
        roles = ChannelRoles(
            trunks=tuple(self.trunk_channels),
            consultants=tuple(self.consultant_channels),
            ignored=tuple(self.ignored_channels),
        )
        return CallTracker(roles, self.talk_debounce, self.default_region, self.pbx)

    def ami_password(self) -> str:
        """The AMI secret from `ami_secret` or, failing that, from `ami_secret_file`."""
        if self.ami_secret is not None:
            return self.ami_secret.get_secret_value()
        if self.ami_secret_file is not None:
            return self.ami_secret_file.read_text().strip()
        raise ConfigError("no AMI secret: set TALKMETER_AMI_SECRET or TALKMETER_AMI_SECRET_FILE")

    def dsn(self) -> str:
        if self.database_url is None:
            raise ConfigError("no database: set TALKMETER_DATABASE_URL (or database_url in the config file)")
        return self.database_url.get_secret_value()


class ConfigError(RuntimeError):
    """A configuration problem the user must fix; printed without a traceback."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `overrides` (None values ignored), the environment, then `config_file`.

    Without `config_file`, the file named by `TALKMETER_CONFIG` is read, if any.
    """
    config_file = config_file or _env_path("TALKMETER_CONFIG")
    settings_class = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file not found: {config_file}")

        class FileSettings(Settings):
            model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})

        settings_class = FileSettings
    clean = {key: value for key, value in overrides.items() if value is not None}
    try:
        return settings_class(**clean)
    except ValidationError as error:
        raise ConfigError(_describe(error, config_file)) from error


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _describe(error: ValidationError, config_file: Path | None) -> str:
    where = f" (environment or {config_file})" if config_file else " (environment)"
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
    return f"invalid configuration{where}: {problems}"
