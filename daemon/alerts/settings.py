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
        return _secret(self.bot_token, self.bot_token_file)


class EmailSettings(_Section):
    host: str
    port: int | None = None
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
        return _secret(self.password, self.password_file)


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


def _secret(value: SecretStr | None, file: Path | None) -> str:
    if value is not None:
        return value.get_secret_value()
    assert file is not None
    return file.read_text(encoding="utf-8").strip()
