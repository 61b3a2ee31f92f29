"""The `[alerts]` part of the configuration: which sinks, where, and what each receives.

Every sink is optional; the structured log always gets every alert. Secrets (the Telegram bot
token, the SMTP password, webhook headers such as `Authorization`) are `SecretStr`, printed as
`**********`, and may come from a file instead (`*_file`, for systemd credentials). In TOML:

    [alerts]
    language = "ru"
    [alerts.webhook]
    url = "https://crm.example/talkmeter"
    [alerts.telegram]
    bot_token_file = "/run/credentials/talkmeter@msk.service/telegram"
    chat_ids = ["-1001234567890"]
    [alerts.email]
    host = "smtp.example"
    sender = "talkmeter@example"
    recipients = ["support-manager@example"]
    [alerts.ami]
    enabled = true

From the environment, nested keys are joined with `__`: `TALKMETER_ALERTS__EMAIL__PASSWORD`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from daemon.alerts.messages import CATEGORIES, Category, Language

ALL: list[Category] = list(CATEGORIES)
ALERTS_ONLY: list[Category] = ["threshold", "overrun"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookSettings(_Section):
    url: str
    timeout: float = Field(5.0, gt=0)
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    events: list[Category] = Field(default_factory=lambda: list(ALL))

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url


class TelegramSettings(_Section):
    bot_token: SecretStr | None = None
    bot_token_file: Path | None = None
    chat_ids: list[str] = Field(min_length=1)
    base_url: str = "https://api.telegram.org"
    timeout: float = Field(10.0, gt=0)
    events: list[Category] = Field(default_factory=lambda: list(ALERTS_ONLY))

    @model_validator(mode="after")
    def _token_given(self) -> TelegramSettings:
        if self.bot_token is None and self.bot_token_file is None:
            raise ValueError("set bot_token or bot_token_file")
        return self

    def token(self) -> str:
        return _secret(self.bot_token, self.bot_token_file, "alerts.telegram.bot_token_file")


class EmailSettings(_Section):
    host: str
    port: int | None = Field(None, ge=1, le=65535)
    """Default: 587 with starttls, 465 with ssl, 25 with none."""
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sender: str
    recipients: list[str] = Field(min_length=1)
    timeout: float = Field(15.0, gt=0)
    ca_file: Path | None = None
    """A CA bundle for a server whose certificate a private CA signed."""
    events: list[Category] = Field(default_factory=lambda: list(ALERTS_ONLY))

    def smtp_port(self) -> int:
        if self.port is not None:
            return self.port
        return {"starttls": 587, "ssl": 465, "none": 25}[self.security]

    def smtp_password(self) -> str | None:
        if self.password is None and self.password_file is None:
            return None
        return _secret(self.password, self.password_file, "alerts.email.password_file")


class AmiEventSettings(_Section):
    enabled: bool = False
    events: list[Category] = Field(default_factory=lambda: list(ALL))


class AlertSettings(_Section):
    enabled: bool = True
    """False: no live alerts, no call-start notices, no rows (quota_now still works)."""
    language: Language = "ru"
    call_start_notices: bool = True
    pg_notify: bool = True
    """NOTIFY talkmeter_alerts with the JSON payload, in the transaction that claims the alert."""
    retry_min: float = Field(1.0, gt=0)
    retry_max: float = Field(300.0, gt=0)
    max_attempts: int = Field(20, ge=1)
    webhook: WebhookSettings | None = None
    telegram: TelegramSettings | None = None
    email: EmailSettings | None = None
    ami: AmiEventSettings = Field(default_factory=AmiEventSettings)

    def read_secrets(self) -> None:
        """Read the secret files now (ValueError saying which and why), so that a missing one is
        an error when the service starts, not when the first alert is sent."""
        if self.telegram is not None:
            self.telegram.token()
        if self.email is not None:
            self.email.smtp_password()

    def summary(self) -> dict[str, object]:
        """What is configured, without secrets (for `check-config`): receivers by host only, as
        a webhook's path or query may itself be a token."""
        shown: dict[str, object] = {
            "enabled": self.enabled,
            "language": self.language,
            "call_start_notices": self.call_start_notices,
            "pg_notify": self.pg_notify,
        }
        if self.webhook is not None:
            shown["webhook"] = urlsplit(self.webhook.url).netloc.rpartition("@")[2]
        if self.telegram is not None:
            shown["telegram"] = {"base_url": self.telegram.base_url, "chat_ids": self.telegram.chat_ids}
        if self.email is not None:
            mail = self.email
            shown["email"] = {"host": mail.host, "port": mail.smtp_port(), "security": mail.security,
                              "recipients": mail.recipients}  # fmt: skip
        shown["ami"] = self.ami.enabled
        return shown


def _secret(value: SecretStr | None, file: Path | None, name: str) -> str:
    if value is not None:
        return value.get_secret_value()
    assert file is not None
    try:
        secret = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ValueError(f"{name} {file} cannot be read: {reason}") from None
    if not secret:
        raise ValueError(f"{name} {file} is empty")
    return secret
