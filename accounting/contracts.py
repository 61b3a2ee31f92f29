"""Clients and contracts as plain data, and the validation of their CSV rows.

A contract is a set of optional rules (see `rating` for what they mean together). An empty CSV
value switches a rule off; the few rules that cannot be "off" get a documented default:

- `billing_increment_seconds`: 1 (per second); `minimum_billable_seconds`: 0;
- `overage`: `bill` when the contract has a rate, otherwise `flag` (a contract without a price
  cannot bill anything, so its time beyond the allowances is flagged for the support manager);
- `hold_billable`: true (the consultant is busy with the client while holding; a contract must
  say `false` to exclude hold).

Validation functions raise `InvalidRow` with a reason a person can act on; the importer adds
the line number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telephony.numbers import normalize as normalize_number

DEFAULT_TIMEZONE = "Europe/Moscow"

Overage = Literal["bill", "flag"]

CLIENT_COLUMNS = ("client_id", "name", "timezone", "numbers")
CONTRACT_COLUMNS = (
    "contract_id",
    "client_id",
    "valid_from",
    "valid_to",
    "free_daily_minutes",
    "free_days_per_week",
    "prepaid_minutes",
    "rate_per_minute",
    "currency",
    "billing_increment_seconds",
    "minimum_billable_seconds",
    "short_call_seconds",
    "overage",
    "hold_billable",
    "lines",
    "alert_thresholds",
)

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f"}


class InvalidRow(ValueError):
    """A reference-data row that cannot be accepted; the message says why."""


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    timezone: str
    numbers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Contract:
    contract_id: str
    client_id: str
    valid_from: date
    valid_to: date | None = None
    free_daily_minutes: int | None = None
    free_days_per_week: int | None = None
    prepaid_minutes: int | None = None
    rate_per_minute: Decimal | None = None
    currency: str | None = None
    billing_increment_seconds: int = 1
    minimum_billable_seconds: int = 0
    short_call_seconds: int | None = None
    overage: Overage = "bill"
    hold_billable: bool = True
    lines: frozenset[str] = frozenset()
    alert_thresholds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_contract(self)

    def covers(self, day: date, line: str | None) -> bool:
        """True when the contract is valid on the client-local `day` and covers `line`."""
        if day < self.valid_from or (self.valid_to is not None and day > self.valid_to):
            return False
        return not self.lines or (line is not None and line in self.lines)

    @property
    def free_daily_ms(self) -> int | None:
        return None if self.free_daily_minutes is None else self.free_daily_minutes * 60_000

    @property
    def prepaid_ms(self) -> int | None:
        return None if self.prepaid_minutes is None else self.prepaid_minutes * 60_000


def check_contract(contract: Contract) -> None:
    """Raise `InvalidRow` when the rules contradict each other or are out of range."""
    if contract.valid_to is not None and contract.valid_to < contract.valid_from:
        raise InvalidRow("valid_to is before valid_from")
    if contract.free_days_per_week is not None and not 1 <= contract.free_days_per_week <= 7:
        raise InvalidRow("free_days_per_week must be between 1 and 7")
    if contract.free_days_per_week is not None and contract.free_daily_minutes is None:
        raise InvalidRow("free_days_per_week needs free_daily_minutes")
    if contract.billing_increment_seconds < 1:
        raise InvalidRow("billing_increment_seconds must be at least 1")
    if contract.rate_per_minute is not None and contract.rate_per_minute < 0:
        raise InvalidRow("rate_per_minute must not be negative")
    if contract.rate_per_minute is not None and _decimal_places(contract.rate_per_minute) > 4:
        raise InvalidRow("rate_per_minute may have at most 4 decimal places")
    if contract.rate_per_minute is not None and contract.currency is None:
        raise InvalidRow("rate_per_minute needs a currency")
    if contract.currency is not None and not _CURRENCY.match(contract.currency):
        raise InvalidRow(f"currency must be an ISO 4217 code such as RUB, not {contract.currency!r}")
    if contract.overage == "bill" and contract.rate_per_minute is None:
        raise InvalidRow("overage 'bill' needs rate_per_minute")
    if any(not 1 <= value <= 1000 for value in contract.alert_thresholds):
        raise InvalidRow("alert_thresholds must be percentages between 1 and 1000")


def _decimal_places(number: Decimal) -> int:
    exponent = number.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def parse_client_row(row: Mapping[str, str | None], default_region: str = "RU") -> Client:
    """A `Client` from one CSV row (`client_id,name,timezone,numbers`)."""
    client_id = _identifier(row, "client_id")
    name = _text(row, "name")
    if name is None:
        raise InvalidRow("name is empty")
    timezone = _text(row, "timezone") or DEFAULT_TIMEZONE
    check_timezone(timezone)
    numbers: list[str] = []
    for raw in _list(row, "numbers"):
        number = normalize_number(raw, default_region)
        if number is None:
            raise InvalidRow(f"numbers: {raw!r} is not a valid phone number")
        if number not in numbers:
            numbers.append(number)
    return Client(client_id, name, timezone, tuple(numbers))


def parse_contract_row(row: Mapping[str, str | None]) -> Contract:
    """A `Contract` from one CSV row with the columns of `CONTRACT_COLUMNS`."""
    valid_from = _date(row, "valid_from")
    if valid_from is None:
        raise InvalidRow("valid_from is empty")
    rate = _decimal(row, "rate_per_minute")
    overage = _text(row, "overage")
    if overage is not None and overage.lower() not in ("bill", "flag"):
        raise InvalidRow(f"overage must be 'bill' or 'flag', not {overage!r}")
    hold = _boolean(row, "hold_billable")
    currency = _text(row, "currency")
    return Contract(
        contract_id=_identifier(row, "contract_id"),
        client_id=_identifier(row, "client_id"),
        valid_from=valid_from,
        valid_to=_date(row, "valid_to"),
        free_daily_minutes=_count(row, "free_daily_minutes"),
        free_days_per_week=_count(row, "free_days_per_week"),
        prepaid_minutes=_count(row, "prepaid_minutes"),
        rate_per_minute=rate,
        currency=currency.upper() if currency else None,
        billing_increment_seconds=_or(_count(row, "billing_increment_seconds"), 1),
        minimum_billable_seconds=_or(_count(row, "minimum_billable_seconds"), 0),
        short_call_seconds=_count(row, "short_call_seconds"),
        overage=_overage(overage, rate),
        hold_billable=True if hold is None else hold,
        lines=frozenset(_list(row, "lines")),
        alert_thresholds=tuple(_count_value(v, "alert_thresholds") for v in _list(row, "alert_thresholds")),
    )


def check_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidRow(f"timezone {name!r} is not an IANA time zone") from error


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _overage(value: str | None, rate: Decimal | None) -> Overage:
    if value is None:
        return "bill" if rate is not None else "flag"
    return "bill" if value.lower() == "bill" else "flag"


def _text(row: Mapping[str, str | None], column: str) -> str | None:
    value = (row.get(column) or "").strip()
    return value or None


def _identifier(row: Mapping[str, str | None], column: str) -> str:
    value = _text(row, column)
    if value is None:
        raise InvalidRow(f"{column} is empty")
    if not _IDENTIFIER.match(value):
        raise InvalidRow(f"{column} {value!r} may hold only letters, digits and _.:- (64 at most)")
    return value


def _list(row: Mapping[str, str | None], column: str) -> list[str]:
    return [part.strip() for part in (_text(row, column) or "").split(";") if part.strip()]


def _count(row: Mapping[str, str | None], column: str) -> int | None:
    value = _text(row, column)
    return None if value is None else _count_value(value, column)


def _count_value(value: str, column: str) -> int:
    try:
        number = int(value)
    except ValueError as error:
        raise InvalidRow(f"{column}: {value!r} is not a whole number") from error
    if number < 0:
        raise InvalidRow(f"{column} must not be negative")
    return number


def _decimal(row: Mapping[str, str | None], column: str) -> Decimal | None:
    value = _text(row, column)
    if value is None:
        return None
    try:
        number = Decimal(value.replace(",", "."))
    except InvalidOperation as error:
        raise InvalidRow(f"{column}: {value!r} is not a number") from error
    if not number.is_finite():
        raise InvalidRow(f"{column}: {value!r} is not a number")
    return number


def _date(row: Mapping[str, str | None], column: str) -> date | None:
    value = _text(row, column)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as error:
        raise InvalidRow(f"{column}: {value!r} is not a date (YYYY-MM-DD)") from error


def _boolean(row: Mapping[str, str | None], column: str) -> bool | None:
    value = _text(row, column)
    if value is None:
        return None
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidRow(f"{column}: {value!r} is not true or false")
