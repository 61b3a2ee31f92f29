"""CSV import: every bad row reported by line number with its reason, and nothing written."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import asyncpg
import pytest

from accounting.contracts import Contract
from accounting.importer import (
    ImportFailed,
    ImportSummary,
    decode,
    import_clients,
    import_contracts,
    parse_clients,
    parse_contracts,
)

CLIENTS = """client_id,name,timezone,numbers
C1,"Romashka, LLC",,84951234567; +7 (495) 123-45-68 ;74951234567
C2,Vasilek JSC,Asia/Vladivostok,4951234569
C3,No phones yet,Europe/Moscow,
"""

CONTRACT_HEADER = (
    "contract_id,client_id,valid_from,valid_to,free_daily_minutes,free_days_per_week,prepaid_minutes,"
    "rate_per_minute,currency,billing_increment_seconds,minimum_billable_seconds,short_call_seconds,"
    "overage,hold_billable,lines,alert_thresholds\n"
)
CONTRACTS = CONTRACT_HEADER + (
    'K1,C1,2026-11-01,,15,2,600,"2,50",rub,60,60,10,bill,false,74950000000;queue-1c,80;100\n'
    "K2,C2,2026-01-01,2026-12-31,,,,,,,,,,,,\n"
)


def errors_of(failure: pytest.ExceptionInfo[ImportFailed]) -> list[str]:
    return [str(error) for error in failure.value.errors]


def test_clients_are_parsed_with_normalised_numbers() -> None:
    c1, c2, c3 = parse_clients(CLIENTS)
    assert (c1.client_id, c1.name, c1.timezone) == ("C1", "Romashka, LLC", "Europe/Moscow")
    assert c1.numbers == ("+74951234567", "+74951234568")
    assert (c2.timezone, c2.numbers) == ("Asia/Vladivostok", ("+74951234569",))
    assert c3.numbers == ()


def test_contracts_are_parsed_with_defaults_for_empty_rules() -> None:
    (line1, k1), (line2, k2) = parse_contracts(CONTRACTS)
    assert (line1, line2) == (2, 3)
    assert k1 == Contract(
        contract_id="K1",
        client_id="C1",
        valid_from=date(2026, 11, 1),
        valid_to=None,
        free_daily_minutes=15,
        free_days_per_week=2,
        prepaid_minutes=600,
        rate_per_minute=Decimal("2.50"),
        currency="RUB",
        billing_increment_seconds=60,
        minimum_billable_seconds=60,
        short_call_seconds=10,
        overage="bill",
        hold_billable=False,
        lines=frozenset({"74950000000", "queue-1c"}),
        alert_thresholds=(80, 100),
    )
    assert (k2.overage, k2.hold_billable, k2.billing_increment_seconds, k2.rate_per_minute) == (
        "flag",
        True,
        1,
        None,
    )
    assert k2.valid_to == date(2026, 12, 31)


def test_every_bad_client_row_is_reported_by_line() -> None:
    text = (
        "client_id,name,timezone,numbers\n"
        "C1,Good,,84951234567\n"
        "C2,,Europe/Moscow,\n"
        "C3,Bad zone,Mars/Olympus,\n"
        '"C4","Multi\nline name",,not-a-number\n'
        "C1,Again,,\n"
        "C5,Too,many,fields,here\n"
        "bad id!,Name,,\n"
    )
    with pytest.raises(ImportFailed) as failure:
        parse_clients(text)
    assert errors_of(failure) == [
        "line 3: name is empty",
        "line 4: timezone 'Mars/Olympus' is not an IANA time zone",
        "line 6: numbers: 'not-a-number' is not a valid phone number",
        "line 7: client_id 'C1' already appears on line 2",
        "line 8: expected 4 fields, found 5",
        "line 9: client_id 'bad id!' may hold only letters, digits and _.:- (64 at most)",
    ]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("K,C1,2026-13-01,,,,,,,,,,,,,", "valid_from: '2026-13-01' is not a date (YYYY-MM-DD)"),
        ("K,C1,,,,,,,,,,,,,,", "valid_from is empty"),
        ("K,C1,2026-11-02,2026-11-01,,,,,,,,,,,,", "valid_to is before valid_from"),
        ("K,C1,2026-11-01,,15,8,,,,,,,,,,", "free_days_per_week must be between 1 and 7"),
        ("K,C1,2026-11-01,,,2,,,,,,,,,,", "free_days_per_week needs free_daily_minutes"),
        ("K,C1,2026-11-01,,-5,,,,,,,,,,,", "free_daily_minutes must not be negative"),
        ("K,C1,2026-11-01,,1.5,,,,,,,,,,,", "free_daily_minutes: '1.5' is not a whole number"),
        ("K,C1,2026-11-01,,,,,2,,,,,,,,", "rate_per_minute needs a currency"),
        ("K,C1,2026-11-01,,,,,abc,RUB,,,,,,,", "rate_per_minute: 'abc' is not a number"),
        ("K,C1,2026-11-01,,,,,1.23456,RUB,,,,,,,", "rate_per_minute may have at most 4 decimal places"),
        (
            "K,C1,2026-11-01,,,,,2,RUBLES,,,,,,,",
            "currency must be an ISO 4217 code such as RUB, not 'RUBLES'",
        ),
        ("K,C1,2026-11-01,,,,,,,,,,bill,,,", "overage 'bill' needs rate_per_minute"),
        ("K,C1,2026-11-01,,,,,2,RUB,,,,maybe,,,", "overage must be 'bill' or 'flag', not 'maybe'"),
        ("K,C1,2026-11-01,,,,,2,RUB,0,,,,,,", "billing_increment_seconds must be at least 1"),
        ("K,C1,2026-11-01,,,,,2,RUB,,,,,perhaps,,", "hold_billable: 'perhaps' is not true or false"),
        ("K,C1,2026-11-01,,,,,2,RUB,,,,,,,80;x", "alert_thresholds: 'x' is not a whole number"),
        ("K,C1,2026-11-01,,,,,2,RUB,,,,,,,0", "alert_thresholds must be percentages between 1 and 1000"),
    ],
)
def test_bad_contract_rows_say_why(row: str, reason: str) -> None:
    with pytest.raises(ImportFailed) as failure:
        parse_contracts(CONTRACT_HEADER + "K0,C1,2026-11-01,,,,,,,,,,,,,\n" + row + "\n")
    assert errors_of(failure) == [f"line 3: {reason}"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "line 1: the file is empty; expected the header client_id,name,timezone,numbers"),
        (
            "client_id,name,numbers\n",
            "line 1: missing column(s) timezone (expected client_id,name,timezone,numbers)",
        ),
        (
            "client_id,name,timezone,numbers,vip\n",
            "line 1: unknown column(s) vip (expected client_id,name,timezone,numbers)",
        ),
    ],
)
def test_header_problems(text: str, reason: str) -> None:
    with pytest.raises(ImportFailed) as failure:
        parse_clients(text)
    assert errors_of(failure) == [reason]


@pytest.mark.db
async def test_import_writes_all_rows_or_none(conn: asyncpg.Connection) -> None:
    assert await import_clients(conn, CLIENTS.encode()) == ImportSummary(3, 0, 0)
    bad = CONTRACTS + "K3,C9,2026-11-01,,,,,,,,,,,,,\n"
    with pytest.raises(ImportFailed) as failure:
        await import_contracts(conn, bad.encode())
    assert errors_of(failure) == ["line 4: client 'C9' does not exist: import clients first"]
    assert await conn.fetchval("SELECT count(*) FROM talkmeter.contracts") == 0
    assert await import_contracts(conn, CONTRACTS.encode()) == ImportSummary(2, 0, 0)
    moved = CONTRACT_HEADER + "K1,C2,2026-11-01,,,,,,,,,,,,,\n"
    with pytest.raises(ImportFailed) as failure:
        await import_contracts(conn, moved.encode())
    assert "a contract cannot move to another client" in errors_of(failure)[0]


@pytest.mark.db
async def test_reimport_is_an_upsert_and_replaces_numbers(conn: asyncpg.Connection) -> None:
    await import_clients(conn, CLIENTS.encode())
    await import_clients(conn, b"client_id,name,timezone,numbers\nC1,Romashka,Europe/Samara,+74951234999\n")
    row = await conn.fetchrow("SELECT name, timezone FROM talkmeter.clients WHERE client_id = 'C1'")
    assert tuple(row) == ("Romashka", "Europe/Samara")
    numbers = await conn.fetch("SELECT number FROM talkmeter.client_numbers WHERE client_id = 'C1'")
    assert [r["number"] for r in numbers] == ["+74951234999"]
    assert await conn.fetchval("SELECT count(*) FROM talkmeter.clients") == 3


def test_a_file_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ImportFailed, match="1 bad row"):
        decode("client_id,name\nC1,Ромашка\n".encode("cp1251"))
