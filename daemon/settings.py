"""Configuration: environment (`TALKMETER_*`), an optional TOML file, then defaults.

Precedence, highest first: explicit overrides from the command line, environment variables,
the TOML file given with `--config` (or `TALKMETER_CONFIG`), defaults.
Secrets are `SecretStr` so that they print as `**********` in logs and reprs; the AMI secret may
also come from a file (`ami_secret_file`, for systemd credentials), never from the command line.
Nested settings (the `[alerts]` table) are set from the environment with `__` between the keys.

Every mistake a person can make here is a `ConfigError`: one line that names the setting, where
its value came from (file, environment, command line) and what to do; the CLI prints it and exits
with code 2. Values are checked when the settings are loaded (ports, log level, backoff order,
region, the database URL's shape); the secret file is read only by the commands that need it.
Error messages never contain a secret: not the AMI secret, not the database URL, not the alert
sinks' tokens, passwords or headers.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import phonenumbers
from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.alerts.settings import AlertSettings
from telephony.calls import CallTracker
from telephony.roles import DEFAULT_CONSULTANTS, DEFAULT_IGNORED, DEFAULT_TRUNKS, ChannelRoles

ENV_PREFIX = "TALKMETER_"
LOG_LEVELS = ("debug", "info", "warning", "error")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SECRET_SETTINGS = frozenset({"ami_secret", "database_url"})
MASK = "********"
#: what a pbx or instance name may be: it names a directory and goes into ids and the ledger
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def this_host() -> str:
    """The default `instance`: the host name, cut to what `instance` accepts (so it is always valid)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:64]
    return name or "talkmeter"


def _instance_name(value: str) -> str:
    if not _SAFE_NAME.fullmatch(value):
        raise ValueError(
            "use 1 to 64 ASCII letters, digits, '.', '_', '-' (a letter or digit first); it names this "
            "daemon in the ledger: the host name, e.g. pbx-a.example"
        )
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port number from 1 to 65535")
    return value


Port = Annotated[int, AfterValidator(_port)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", env_nested_delimiter="__")
    #: the TOML file's values; `load_settings` sets them on a subclass made for one call
    file_values: ClassVar[dict[str, Any]] = {}

    # AMI
    ami_host: str = "127.0.0.1"
    ami_port: Port = 5038
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
    #: which daemon this is, when several follow one PBX (written with every conversation it measures)
    instance: Annotated[str, AfterValidator(_instance_name)] = Field(default_factory=this_host)
    # Storage
    database_url: SecretStr | None = None
    database_timeout: float = Field(15.0, gt=0)
    spool_dir: Path = Path("/var/lib/talkmeter")
    checkpoint_interval: float = Field(5.0, gt=0)
    # Running
    log_level: str = "info"
    metrics_port: int | None = Field(None, ge=0, le=65535)  # 0: any free port (tests)
    metrics_host: str = "127.0.0.1"
    # Live quota alerts and call-start notices (daemon/alerts/settings.py)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Command line (init) over environment over the TOML file, whose values `load_settings`
        # gives a subclass (`file_values`), so no global state decides which file is read.
        file_values = getattr(settings_cls, "file_values", {})
        return (init_settings, env_settings, InitSettingsSource(settings_cls, file_values))

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.lower()

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                "must be a two-letter region code of the phone numbering plans, such as RU, KZ, BY or DE"
            )
        return value.upper()

    @field_validator("database_url")
    @classmethod
    def _usable_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            problem = dsn_problem(value.get_secret_value())
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _backoff_in_order(self) -> Settings:
        if self.ami_reconnect_min > self.ami_reconnect_max:
            raise ValueError(
                f"ami_reconnect_min ({self.ami_reconnect_min:g}) is greater than ami_reconnect_max "
                f"({self.ami_reconnect_max:g}): make the minimum the smaller one"
            )
        return self

    @field_validator("pbx")
    @classmethod
    def _safe_pbx_name(cls, name: str) -> str:
        # The name is a directory under spool_dir and the prefix of every conversation id.
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError("use 1 to 64 ASCII letters, digits, '.', '_', '-' (a letter or digit first)")
        return name

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
            if not self.ami_secret.get_secret_value():
                raise ConfigError(
                    "ami_secret (TALKMETER_AMI_SECRET) is empty: set it to the manager.conf secret"
                )
            return self.ami_secret.get_secret_value()
        if self.ami_secret_file is not None:
            return read_secret_file(self.ami_secret_file)
        raise ConfigError("no AMI secret: set TALKMETER_AMI_SECRET or TALKMETER_AMI_SECRET_FILE")

    def check_alert_secrets(self) -> None:
        """The alert sinks' secret files can be read (a `ConfigError` naming the file if not)."""
        try:
            self.alerts.read_secrets()
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def dsn(self) -> str:
        if self.database_url is None:
            raise ConfigError("no database: set TALKMETER_DATABASE_URL (or database_url in the config file)")
        return self.database_url.get_secret_value()


class ConfigError(RuntimeError):
    """A configuration problem the user must fix; printed without a traceback."""


def read_secret_file(path: Path) -> str:
    """The secret in `path`, stripped; a `ConfigError` naming the setting when it cannot be used."""
    where = f"ami_secret_file (TALKMETER_AMI_SECRET_FILE) {path}"
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{where} does not exist: create it with the manager.conf secret, or fix the path"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory: point it at the file holding the secret") from None
    except PermissionError:
        raise ConfigError(f"{where} cannot be read by this user: fix its owner or mode") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text: write the secret as plain text") from None
    except OSError as error:
        raise ConfigError(f"{where} cannot be read: {error.strerror}") from None
    if not secret:
        raise ConfigError(f"{where} is empty: put the manager.conf secret in it")
    return secret


# --- loading, and saying where each value came from ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """Where a setting's value came from: `default`, `file`, `environment` or `command line`."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.detail}".strip()

    def phrase(self) -> str:
        """How an error message says it: `in FILE`, `from TALKMETER_X`, `from --x`, `(default)`."""
        if self.kind == "file":
            return f"in {self.detail}"
        if self.kind == "default":
            return "(the default)"
        return f"from {self.detail}"


@dataclass(frozen=True, slots=True)
class Loaded:
    settings: Settings
    sources: dict[str, Source]
    config_file: Path | None


def built_in_settings(**values: Any) -> Settings:
    """Settings from `values` and the defaults only: no environment, no configuration file."""

    class BuiltIn(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    return BuiltIn(**values)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `overrides` (None values ignored), the environment, then `config_file`.

    Without `config_file`, the file named by `TALKMETER_CONFIG` is read, if any.
    """
    return load_with_sources(config_file, **overrides).settings


def load_with_sources(config_file: Path | None = None, **overrides: Any) -> Loaded:
    """`load_settings`, and where each setting's value came from (for `check-config`)."""
    config_file = config_file or _env_path("TALKMETER_CONFIG")
    file_values = read_config_file(config_file) if config_file is not None else {}
    clean = {key: value for key, value in overrides.items() if value is not None}
    sources = _sources(file_values, config_file, clean)

    class FileSettings(Settings):
        pass

    FileSettings.file_values = file_values

    try:
        settings = FileSettings(**clean)
    except ValidationError as error:
        raise ConfigError(describe(error, sources)) from None
    return Loaded(settings, sources, config_file)


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file's values; a `ConfigError` saying what is wrong with the file otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (check --config or TALKMETER_CONFIG)") from None
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.start}): save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}; fix that line") from None


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _sources(
    file_values: dict[str, Any], config_file: Path | None, overrides: dict[str, Any]
) -> dict[str, Source]:
    environment = {name.lower(): name for name in os.environ}
    sources = {}
    for name in Settings.model_fields:
        nested = (ENV_PREFIX + name + "__").lower()  # TALKMETER_ALERTS__WEBHOOK__URL sets alerts
        variable = environment.get((ENV_PREFIX + name).lower()) or next(
            (variable for lower, variable in sorted(environment.items()) if lower.startswith(nested)), None
        )
        if name in overrides:
            sources[name] = Source("command line", "--" + name.removeprefix("ami_").replace("_", "-"))
        elif variable is not None:
            sources[name] = Source("environment", variable)
        elif name in file_values:
            sources[name] = Source("file", str(config_file))
        else:
            sources[name] = Source("default")
    for name in file_values:
        sources.setdefault(name, Source("file", str(config_file)))
    return sources


def describe(error: ValidationError, sources: dict[str, Source]) -> str:
    """One line for all the problems: each names the setting, its source, the problem, the fix."""
    problems = []
    for item in error.errors():
        setting = ".".join(map(str, item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if not setting:  # a check across settings: its message names them
            problems.append(message)
            continue
        where = sources.get(str(item["loc"][0]), Source("default")).phrase()
        if item["type"] == "extra_forbidden":
            problems.append(f"{setting} {where} is not a talkmeter setting (check its spelling)")
            continue
        shown = "" if _is_secret(setting) else _shown(item.get("input"))
        problems.append(f"{setting}{shown} {where}: {message}")
    return "invalid configuration: " + "; ".join(problems)


def _is_secret(setting: str) -> bool:
    """The AMI secret, the database URL, and any nested setting that names a secret (the alert
    sinks' bot_token, password, headers) or may carry one (a webhook URL often holds its token)."""
    leaf = setting.split(".")
    return setting in SECRET_SETTINGS or any(
        word in part for part in leaf for word in ("token", "password", "secret", "headers", "url")
    )


def _shown(value: object) -> str:
    if value is None or isinstance(value, dict | list):
        return ""
    text = repr(value) if isinstance(value, str) else str(value)
    return f" = {text[:60]}"


# --- the database URL ---------------------------------------------------------------------------


def dsn_problem(url: str) -> str | None:
    """What is wrong with a PostgreSQL URL, in words that never repeat it (it may hold a password)."""
    example = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"
    scheme, separator, _ = url.partition("://")
    if not separator:
        return f"the URL has no scheme: write it as {example}"
    if scheme not in ("postgresql", "postgres"):
        return f"the URL must start with postgresql:// (it starts with {scheme[:20]}://)"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the URL has a broken IPv6 address: write it in brackets, as in postgresql://USER@[::1]:5432/DATABASE"
    hosts = parts.netloc.rpartition("@")[2]
    for host in hosts.split(",") if hosts else []:
        problem = _host_problem(host)
        if problem:
            return problem
    query = parse_qs(parts.query)
    for mode in query.get("sslmode", []):
        if mode not in SSL_MODES:
            return f"sslmode={mode[:20]} is not one of {', '.join(SSL_MODES)}"
    for port in query.get("port", []):
        if not _valid_port(port):
            return f"port={port[:20]} in the URL is not a port number from 1 to 65535"
    return None


def _host_problem(host: str) -> str | None:
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        if not bracket or not address or (rest and not rest.startswith(":")):
            return "the URL has a broken IPv6 address: write it in brackets, as in postgresql://USER@[::1]:5432/DATABASE"
        port = rest[1:] if rest else None
    elif host.count(":") > 1:
        return "the URL has an IPv6 address without brackets: write it as [::1]:5432"
    else:
        _, colon, port_text = host.partition(":")
        port = port_text if colon else None
    if port is not None and not _valid_port(port):
        return f"the port {port[:20]!r} in the URL is not a number from 1 to 65535"
    return None


def _valid_port(text: str) -> bool:
    return text.isdigit() and 1 <= int(text) <= 65535


def masked_dsn(url: str) -> str:
    """The URL with its passwords (in the user part, as `password=` or as `sslpassword=`, the
    client key's) replaced by asterisks."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":" + MASK
    query = "&".join(
        f"{key}={MASK}" if key in ("password", "sslpassword") else f"{key}={value}"
        for key, _, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hosts}", query=query))
