"""What each notification says, in Russian and English, and the `[alerts]` settings."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from accounting.quota import AlertKey
from daemon.alerts.messages import Notification, duration, payload, subject, text
from daemon.alerts.sinks import sinks_from_settings, user_event
from daemon.cli import main
from daemon.settings import ConfigError, load_settings

from .samples import CONTRACT, STANDING, alert, call_started

DAY = date(2026, 11, 24)


def quota(kind: str, percent: int, **standing: int | bool) -> Notification:
    period = DAY if kind != "prepaid" else CONTRACT.valid_from
    return replace(alert(), key=AlertKey(CONTRACT.contract_id, kind, percent, period),  # type: ignore[arg-type]
                   standing=replace(STANDING, **standing))  # fmt: skip


CASES = [
    (quota("daily", 80), "en", "Ромашка: 80% of today's free time used (12:00 of 15:00, 3:00 left)."),
    (quota("daily", 100, free_used_ms=900_000, free_left_ms=0), "en",
     "Ромашка: today's free time is used up (15:00). Further talk uses the prepaid package (9:40:00 left)."),
    (quota("daily", 100, prepaid_left_ms=0), "ru",
     "Ромашка: бесплатное время на сегодня исчерпано (15:00). Дальше разговор платный."),
    (quota("daily", 150, counted_today_ms=1_350_000), "en",
     "Ромашка: today's talk reached 150% of the free time (22:30 of 15:00)."),
    (quota("prepaid", 80), "ru",
     "Ромашка: использовано 80% предоплаченного пакета (20:00 из 10:00:00, осталось 9:40:00)."),
    (quota("prepaid", 100), "en",
     "Ромашка: the prepaid package is used up (10:00:00); talk beyond the free time is paid."),
    (quota("prepaid", 120), "ru", "Ромашка: время сверх бесплатного достигло 120% предоплаченного пакета."),
    (quota("overrun", 0), "en",
     "Ромашка: the call is now in paid time: the free time and the prepaid package are used up."),
    (quota("overrun", 0), "ru",
     "Ромашка: разговор перешёл в платное время: бесплатное время и пакет исчерпаны."),
]  # fmt: skip


@pytest.mark.parametrize(("notification", "language", "expected"), CASES)
def test_alert_texts(notification: Notification, language: str, expected: str) -> None:
    on_call = {"en": " Call +74951234567, consultant 101.", "ru": " Звонок +74951234567, консультант 101."}
    assert text(notification, language) == expected + on_call[language]  # type: ignore[arg-type]


def test_flagged_overage_says_over_quota() -> None:
    flagged = replace(quota("overrun", 0), contract=replace(CONTRACT, overage="flag"))
    assert text(flagged, "en").startswith("Ромашка: the call is now over quota")
    full = replace(quota("daily", 100, prepaid_left_ms=0), contract=replace(CONTRACT, overage="flag"))
    assert "Further talk is over quota." in text(full, "en")


def test_an_alert_found_at_hangup_names_no_call_in_progress() -> None:
    ended = replace(alert(), call=replace(alert().call, ended=True))  # type: ignore[type-var]
    assert text(ended, "en") == "Ромашка: 80% of today's free time used (12:00 of 15:00, 3:00 left)."
    assert payload(ended)["call"]["in_progress"] is False


CALL_CASES = [
    ("matched", "en", "Call from Ромашка (+74951234567): free today 3:00 of 15:00 left; "
                      "free days this week 1 of 2 left; prepaid 9:40:00 of 10:00:00 left."),
    ("matched", "ru", "Звонит Ромашка (+74951234567): бесплатно сегодня осталось 3:00 из 15:00; бесплатных "
                      "дней на неделе осталось 1 из 2; в пакете осталось 9:40:00 из 10:00:00."),
    ("unknown", "en", "Call from +74951234567: no client has this number."),
    ("unknown", "ru", "Звонок с номера +74951234567: клиент с таким номером не найден."),
    ("ambiguous", "en", "Call from +74951234567: the number belongs to several clients (a, b)."),
    ("no_contract", "ru", "Звонит Ромашка (+74951234567): ни один договор не покрывает этот звонок."),
]  # fmt: skip


@pytest.mark.parametrize(("match", "language", "expected"), CALL_CASES)
def test_call_start_notices(match: str, language: str, expected: str) -> None:
    notice = replace(call_started(), match=match, candidates=("a", "b") if match == "ambiguous" else ())
    if match in ("unknown", "ambiguous"):
        notice = replace(notice, client=None, contract=None, standing=None)
    assert text(notice, language) == expected  # type: ignore[arg-type]


def test_a_withheld_caller() -> None:
    withheld = replace(call_started(), match="withheld", client=None, standing=None,
                       call=replace(call_started().call, client_number=None, client_number_raw="anonymous"))  # type: ignore[type-var]  # fmt: skip
    assert text(withheld, "en") == "Call from a withheld number: the client is unknown."
    assert payload(withheld)["client"] is None and payload(withheld)["match"] == "withheld"


def test_a_client_with_no_allowance_left_is_told_the_time_is_paid() -> None:
    broke = replace(call_started(), standing=replace(STANDING, free_left_ms=0, prepaid_left_ms=0))
    assert text(broke, "en").endswith("prepaid 0:00 of 10:00:00 left; the time is paid.")


NO_DAILY = {"free_cap_ms": None, "free_used_ms": 0, "free_left_ms": 0, "free_days_per_week": None}
NO_PACKAGE = {"prepaid_ms": None, "prepaid_used_ms": 0, "prepaid_left_ms": 0}


@pytest.mark.parametrize(
    ("missing", "fields", "headers"),
    [
        (
            NO_DAILY,
            ["free_daily_seconds", "free_left_seconds", "free_days_left"],
            ["FreeLeftSeconds", "FreeDaysLeft"],
        ),
        (NO_PACKAGE, ["prepaid_seconds", "prepaid_left_seconds"], ["PrepaidLeftSeconds"]),
    ],
)
def test_an_allowance_the_contract_lacks_is_left_null_not_zero(
    missing: dict[str, object], fields: list[str], headers: list[str]
) -> None:
    """As in talkmeter.quota_now: nothing is left of what the contract never had."""
    notification = quota("daily", 80, **missing)  # type: ignore[arg-type]
    left = payload(notification)["left"]
    assert [left[field] for field in fields] == [None] * len(fields)
    event = user_event(notification)
    assert [event[header] for header in headers] == [""] * len(headers)


def test_subjects_and_durations() -> None:
    assert subject(quota("overrun", 0), "ru") == "talkmeter: Ромашка: началось платное время"
    assert subject(quota("prepaid", 80), "en") == "talkmeter: Ромашка: 80% of the prepaid package"
    assert [duration(ms) for ms in (None, 0, 59_999, 61_000, 3_600_000, 36_061_000)] == [
        "0:00", "0:00", "0:59", "1:01", "1:00:00", "10:01:01",
    ]  # fmt: skip


def test_a_term_period_ends_with_the_contract() -> None:
    assert payload(quota("prepaid", 80))["alert"]["period"] == {"kind": "term", "start": "2026-01-01",
                                                                "end": "2026-12-31"}  # fmt: skip
    open_ended = replace(quota("prepaid", 80), contract=replace(CONTRACT, valid_to=None))
    assert payload(open_ended)["alert"]["period"]["end"] is None


# --- settings --------------------------------------------------------------------------------------


def test_alert_settings_from_toml_build_every_sink(tmp_path: Path) -> None:
    token = tmp_path / "telegram"
    token.write_text("123:from-a-file\n")
    config = tmp_path / "talkmeter.toml"
    config.write_text(f"""
[alerts]
language = "en"
[alerts.webhook]
url = "https://crm.example/hook"
headers = {{ Authorization = "Bearer x" }}
[alerts.telegram]
bot_token_file = "{token}"
chat_ids = ["-1001", "42"]
[alerts.email]
host = "smtp.example"
security = "ssl"
sender = "t@example.ru"
recipients = ["m@example.ru"]
password = "mail-secret"
[alerts.ami]
enabled = true
""")
    settings = load_settings(config)
    alerts = settings.alerts
    assert alerts.telegram is not None and alerts.telegram.token() == "123:from-a-file"
    assert alerts.email is not None and alerts.email.smtp_port() == 465
    assert "mail-secret" not in repr(settings) and "Bearer x" not in repr(settings)

    async def never(action: object) -> object:
        raise AssertionError("not sent here")

    sinks = sinks_from_settings(alerts, never)  # type: ignore[arg-type]
    assert [sink.name for sink in sinks] == ["webhook", "telegram:-1001", "telegram:42", "email", "ami"]
    assert sinks[1].categories == {"threshold", "overrun"} and "call_start" in sinks[0].categories


def test_nested_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALKMETER_ALERTS__TELEGRAM__BOT_TOKEN", "999:env")
    monkeypatch.setenv("TALKMETER_ALERTS__TELEGRAM__CHAT_IDS", '["5"]')
    alerts = load_settings(None).alerts
    assert alerts.telegram is not None and alerts.telegram.token() == "999:env"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[alerts.telegram]\nchat_ids = ["1"]', "set bot_token or bot_token_file"),
        ('[alerts.webhook]\nurl = "ftp://x"', "must start with http"),
        ('[alerts.email]\nhost = "h"\nsender = "s"\nrecipients = []', "recipients"),
        ('[alerts]\nlanguage = "de"', "language"),
    ],
)
def test_bad_alert_settings_are_one_clear_error(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_check_config_shows_the_alerts_without_secrets_and_checks_their_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "msk.toml"
    missing = tmp_path / "no-such-token"
    config.write_text(f"""
[alerts.webhook]
url = "https://user:pw@hooks.example/T000/B000/hook-secret-path"
[alerts.telegram]
bot_token_file = "{missing}"
chat_ids = ["-1001"]
[alerts.email]
host = "smtp.example"
sender = "t@example.ru"
recipients = ["m@example.ru"]
password = "mail-secret"
""")
    monkeypatch.setenv("TALKMETER_AMI_SECRET", "ami-secret")
    monkeypatch.setenv("TALKMETER_DATABASE_URL", "postgresql://u@db.example/tm")
    assert main(["check-config", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    (alerts_row,) = [line for line in captured.out.splitlines() if line.startswith("alerts ")]
    assert '"webhook": "hooks.example"' in alerts_row and '"chat_ids": ["-1001"]' in alerts_row
    for secret in ("hook-secret-path", "pw@", "mail-secret"):
        assert secret not in captured.out + captured.err
    assert (
        captured.err
        == f"talkmeter: alerts.telegram.bot_token_file {missing} cannot be read: No such file or directory\n"
    )


def test_a_bad_nested_secret_is_never_repeated_in_the_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[alerts.telegram]\nbot_token = 12345\nchat_ids = ["1"]\n')
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    assert "alerts.telegram.bot_token" in str(error.value) and "12345" not in str(error.value)
