"""The accounting commands end to end: migrate, import, a conversation recorded, rerate, report."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from accounting_helpers import conversation_dict

from accounting.ledger import record_conversation
from accounting.migrate import load_migrations
from daemon.cli import main
from tests.db import admin, dsn_for, unique_name

pytestmark = pytest.mark.db

CLIENTS = "client_id,name,timezone,numbers\nC1,Romashka LLC,,84951234567\n"
CONTRACTS = (
    "contract_id,client_id,valid_from,valid_to,free_daily_minutes,free_days_per_week,prepaid_minutes,"
    "rate_per_minute,currency,billing_increment_seconds,minimum_billable_seconds,short_call_seconds,"
    "overage,hold_billable,lines,alert_thresholds\n"
    "K1,C1,2026-11-01,,15,,60,2.00,RUB,60,,10,bill,true,,80\n"
)


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty database, configured through TALKMETER_DATABASE_URL as a user would."""
    name = unique_name("tm_cli")
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("TALKMETER_DATABASE_URL", dsn_for(name))
    monkeypatch.delenv("TALKMETER_CONFIG", raising=False)
    yield dsn_for(name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def query(dsn: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def record(dsn: str, *conversations: dict[str, Any]) -> None:
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
        for conversation in conversations:
            await record_conversation(pool, conversation)


def test_month_end_from_the_command_line(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "report", "monthly", "--month", "2026-11")
    assert code == 2 and "run `talkmeter migrate`" in err
    assert run(capsys, "migrate")[1] == "".join(f"applied {m.file_name}\n" for m in load_migrations())
    assert run(capsys, "migrate")[1] == "schema is up to date\n"

    clients, contracts = tmp_path / "clients.csv", tmp_path / "contracts.csv"
    clients.write_text(CLIENTS)
    contracts.write_text(CONTRACTS)
    assert run(capsys, "import", "clients", str(clients))[0] == 0
    assert run(capsys, "import", "contracts", str(contracts))[0] == 0

    asyncio.run(
        record(
            database,
            conversation_dict("a", "2026-11-24T10:00:00+03:00", (2, 600)),
            conversation_dict("b", "2026-11-24T11:00:00+03:00", (2, 5)),  # short call
            conversation_dict("c", "2026-11-24T12:00:00+03:00", (2, 4000.5)),
        )
    )
    capsys.readouterr()  # the canonical log lines of record_conversation
    code, out, _ = run(capsys, "report", "monthly", "--month", "2026-11", "--format", "csv")
    assert code == 0
    [line] = list(csv.DictReader(io.StringIO(out)))
    assert line["client_id"] == "C1" and line["conversations"] == "3"
    assert Decimal(line["free_seconds"]) == 900
    assert Decimal(line["prepaid_seconds"]) == 3600
    assert Decimal(line["talk_seconds"]) == Decimal("4605.500")
    # c: 5 free + 60 prepaid minutes, then 100.5 s paid -> two started minutes at 2.00.
    assert (line["billable_seconds"], line["amount"], line["currency"]) == ("120", "4.00", "RUB")
    assert Decimal(line["prepaid_remaining_seconds"]) == 0

    code, table, _ = run(capsys, "report", "monthly", "--month", "2026-11", "--client", "C1")
    assert code == 0 and "Romashka LLC" in table and "4.00 RUB" in table and "1:16:45" in table

    # The contract gets cheaper: rerate posts one adjustment.
    contracts.write_text(CONTRACTS.replace("2.00,RUB", "1.00,RUB"))
    assert run(capsys, "import", "contracts", str(contracts))[0] == 0
    assert run(capsys, "rerate")[1] == "re-rated 1 client(s), posted 1 ledger row(s)\n"
    assert run(capsys, "rerate")[1] == "re-rated 0 client(s), posted 0 ledger row(s)\n"
    assert run(capsys, "rerate", "--full")[1] == "re-rated 1 client(s), posted 0 ledger row(s)\n"
    total = asyncio.run(query(database, "SELECT sum(amount) AS s FROM talkmeter.conversation_charges"))
    assert total[0]["s"] == Decimal("2.00")


def test_a_bad_file_writes_nothing_and_names_the_lines(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "migrate")
    clients = tmp_path / "clients.csv"
    clients.write_text(CLIENTS + "C2,Second,,84951230000\nC3,,Nowhere/City,\n")
    code, _, err = run(capsys, "import", "clients", str(clients))
    assert code == 2
    assert f"{clients}: line 4: name is empty" in err
    assert "nothing imported" in err
    assert asyncio.run(query(database, "SELECT * FROM talkmeter.clients")) == []


def test_errors_never_show_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "TALKMETER_DATABASE_URL", dsn_for("tm_no_such_db").replace("postgres@", "postgres:s3cret@")
    )
    code, out, err = run(capsys, "migrate")
    assert code == 2 and "database error" in err
    assert "s3cret" not in out + err


def test_a_bad_month_is_a_usage_error(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "report", "monthly", "--month", "November")
    assert code == 2 and "month must look like 2026-11" in err


def month_end_queries() -> list[str]:
    """The SELECT statements of the README's month-end section."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("#### Month-end queries", 1)[1].split("\n### ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```sql")[1:]]
    statements = [part.strip() for block in blocks for part in block.split(";")]
    return [s for s in statements if s.split("\n")[-1].strip() and "SELECT" in s]


def test_the_documented_queries_run_as_an_accountant(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "migrate")
    (tmp_path / "c.csv").write_text(CLIENTS)
    (tmp_path / "k.csv").write_text(CONTRACTS.replace(",bill,", ",flag,"))
    run(capsys, "import", "clients", str(tmp_path / "c.csv"))
    run(capsys, "import", "contracts", str(tmp_path / "k.csv"))
    asyncio.run(
        record(
            database,
            conversation_dict("a", "2026-11-24T23:50:00+03:00", (2, 6000)),
            conversation_dict("u", "2026-11-25T10:00:00+03:00", (2, 60), number=None),
        )
    )
    queries = [sql.replace("'romashka'", "'C1'") for sql in month_end_queries()]
    assert len(queries) == 8

    async def run_all() -> list[list[Any]]:
        conn = await asyncpg.connect(database)
        try:
            await conn.execute("SET ROLE talkmeter_accountant")
            return [list(await conn.fetch(sql)) for sql in queries]
        finally:
            await conn.close()

    invoices, detail, disagreements, flagged, capped, weeks, unmatched, lines = asyncio.run(run_all())
    assert len(invoices) == 1 and len(detail) == 1 and disagreements == []
    assert len(flagged) == 1 and len(capped) == 1 and len(unmatched) == 1 and len(lines) == 1
    assert [(w["week"].isoformat(), w["free_days_used"]) for w in weeks] == [("2026-11-23", 2)]
    assert invoices[0]["contracts"] == "K1"


def test_import_says_what_it_created_changed_and_left_alone(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "migrate")
    clients, contracts = tmp_path / "clients.csv", tmp_path / "contracts.csv"
    clients.write_text(CLIENTS + "C2,Vasilek,,84951230000\n")
    contracts.write_text(CONTRACTS)
    assert run(capsys, "import", "clients", str(clients))[1] == (
        f"clients from {clients}: 2 created, 0 changed, 0 left alone (unchanged)\n"
        "run `talkmeter rerate` to apply the changes to the ledger\n"
    )
    assert run(capsys, "import", "contracts", str(contracts))[1].startswith(
        f"contracts from {contracts}: 1 created, 0 changed, 0 left alone"
    )
    before = asyncio.run(query(database, "SELECT client_id, updated_at FROM talkmeter.clients ORDER BY 1"))
    # The same numbers written differently, and one client renamed.
    clients.write_text(CLIENTS.replace("84951234567", "+7 495 123-45-67") + "C2,Vasilek JSC,,84951230000\n")
    assert run(capsys, "import", "clients", str(clients))[1].startswith(
        f"clients from {clients}: 0 created, 1 changed, 1 left alone (unchanged)\n"
    )
    after = asyncio.run(query(database, "SELECT client_id, updated_at FROM talkmeter.clients ORDER BY 1"))
    assert after[0] == before[0] and after[1]["updated_at"] > before[1]["updated_at"]
    assert run(capsys, "import", "contracts", str(contracts))[1] == (
        f"contracts from {contracts}: 0 created, 0 changed, 1 left alone (unchanged)\n"
    )


def login_in(role: str, database: str) -> tuple[str, str]:
    """A login role in `role` (cluster-wide, dropped by the caller) and its DSN on `database`."""
    name = unique_name("tm_login")
    asyncio.run(admin(f"CREATE ROLE {name} LOGIN PASSWORD 'pw' IN ROLE {role}"))
    parts = urlsplit(database)
    return name, urlunsplit(parts._replace(netloc=f"{name}:pw@{parts.netloc.rpartition('@')[2]}"))


def test_the_readme_privileges_the_writer_records_and_both_report(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "migrate")
    writer, writer_dsn = login_in("talkmeter_writer", database)
    accountant, accountant_dsn = login_in("talkmeter_accountant", database)
    try:
        monkeypatch.setenv("TALKMETER_DATABASE_URL", writer_dsn)
        trace = str(Path(__file__).resolve().parents[1] / "traces" / "hold.ami")
        assert run(capsys, "replay", trace, "--json")[0] == 0
        assert run(capsys, "report", "monthly", "--month", "2026-11")[0] == 0
        monkeypatch.setenv("TALKMETER_DATABASE_URL", accountant_dsn)
        for command in (("report", "monthly", "--month", "2026-11", "--csv"), ("check-ledger",), ("rerate",)):
            code, _, err = run(capsys, *command)
            assert (code, err) == (0, ""), command
    finally:
        asyncio.run(admin(f"DROP ROLE {writer}, {accountant}"))  # they own nothing: only inherited grants


def test_a_database_option_asyncpg_refuses_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TALKMETER_DATABASE_URL", dsn_for("x") + "?target_session_attrs=bogus")
    code, _, err = run(capsys, "migrate")
    assert (
        code == 2 and err.startswith("talkmeter: database_url: target_session_attrs") and err.count("\n") == 1
    )


def as_accountant(dsn: str) -> str:
    """The same database, the session's role the accountant's (the login stays the test's)."""
    return dsn + "?role=talkmeter_accountant"


@pytest.fixture
def month_end(database: str, tmp_path: Path) -> str:
    """A migrated database with Romashka (Cyrillic name) and three conversations in November."""
    clients, contracts = tmp_path / "clients.csv", tmp_path / "contracts.csv"
    clients.write_text(CLIENTS.replace("Romashka LLC", "ООО Ромашка"))
    contracts.write_text(CONTRACTS + "K0,C1,2027-01-01,,,,,,,,,,flag,,,\n")
    for argv in (
        ["migrate"],
        ["import", "clients", str(clients)],
        ["import", "contracts", str(contracts)],
        ["rerate"],
    ):
        assert main(argv) == 0
    asyncio.run(
        record(
            database,
            conversation_dict("a", "2026-11-24T10:00:00+03:00", (2, 600)),
            conversation_dict("c", "2026-11-24T12:00:00+03:00", (2, 4000.5)),
            conversation_dict("d", "2026-11-28T12:00:00+03:00", (2, 900)),
        )
    )
    return database


def test_the_accountant_role_runs_the_monthly_report(
    month_end: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: `report monthly` failed for the accountant (schema_migrations: permission denied),
    and the statement named neither the client nor the contract."""
    monkeypatch.setenv("TALKMETER_DATABASE_URL", as_accountant(month_end))
    code, out, err = run(capsys, "report", "monthly", "--month", "2026-11", "--format", "csv")
    assert (code, err) == (0, "")
    [line] = list(csv.DictReader(io.StringIO(out)))
    assert (line["client_id"], line["client_name"], line["contracts"]) == ("C1", "ООО Ромашка", "K1")
    code, table, _ = run(capsys, "report", "monthly", "--month", "2026-11")
    assert code == 0 and "ООО Ромашка" in table and "K1" in table


def test_the_csv_for_excel_and_1c(
    month_end: str, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """UTF-8 with a BOM, ';' between fields, decimal commas, CRLF: what Russian Excel and 1C open."""
    monkeypatch.setenv("TALKMETER_DATABASE_URL", as_accountant(month_end))
    capsysbinary.readouterr()
    assert main(["report", "monthly", "--month", "2026-11", "--csv"]) == 0
    data = capsysbinary.readouterr().out
    assert data.startswith(b"\xef\xbb\xbf")
    text = data[3:].decode("utf-8")
    assert "\r\n" in text and "\n" not in text.replace("\r\n", "")
    header, row = [line.split(";") for line in text.strip().split("\r\n")]
    values = dict(zip(header, row, strict=True))
    assert values["client_name"] == "ООО Ромашка"
    assert values["talk_seconds"] == "5500,500"
    assert values["amount"] == "4,00"
    assert values["month"] == "2026-11-01"


def test_contract_end_rerates_and_withdraw_removes_an_unused_contract(
    month_end: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: a contract imported by mistake could neither end nor go away. The accountant ends
    one (and the conversations after its end are reversed at once) and withdraws one never used."""
    monkeypatch.setenv("TALKMETER_DATABASE_URL", as_accountant(month_end))
    code, out, err = run(capsys, "contract", "end", "K1", "2026-11-25")
    assert (code, err) == (0, "")
    assert out == "contract K1 of C1 ends on 2026-11-25; re-rated 1 client(s), posted 1 ledger row(s)\n"
    charged = asyncio.run(query(month_end, "SELECT conversation_id FROM talkmeter.conversation_charges"))
    assert sorted(row["conversation_id"] for row in charged) == ["a", "c"]
    unmatched = asyncio.run(
        query(month_end, "SELECT conversation_id, reason FROM talkmeter.unmatched_conversations")
    )
    assert [tuple(row) for row in unmatched] == [("d", "no_contract")]

    code, _, err = run(capsys, "contract", "end", "K1", "2026-10-01")
    assert code == 2 and "cannot end before it starts" in err
    code, _, err = run(capsys, "contract", "withdraw", "K1")
    assert code == 2 and "end it instead" in err
    code, _, err = run(capsys, "contract", "withdraw", "nope")
    assert code == 2 and "no contract 'nope'" in err
    code, out, _ = run(capsys, "contract", "withdraw", "K0")
    assert (code, out) == (0, "contract K0 of C1 withdrawn\n")
    contracts = asyncio.run(query(month_end, "SELECT contract_id FROM talkmeter.client_contracts"))
    assert [row["contract_id"] for row in contracts] == ["K1"]
    code, _, err = run(capsys, "contract", "end", "K1", "30.11.2026")
    assert code == 2 and "must look like 2026-11-30" in err


def test_contract_end_never_extends_or_reopens_a_contract(
    month_end: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Accountants may end a contract, not change its terms: a later last day than it has is
    refused, the same one changes nothing."""
    monkeypatch.setenv("TALKMETER_DATABASE_URL", as_accountant(month_end))
    assert run(capsys, "contract", "end", "K1", "2026-11-25")[0] == 0
    for later in ("2026-11-26", "2027-12-31"):
        code, out, err = run(capsys, "contract", "end", "K1", later)
        assert (code, out) == (2, "") and err.count("\n") == 1
        assert "already ends on 2026-11-25" in err
    assert run(capsys, "contract", "end", "K1", "2026-11-25")[0] == 0
    assert run(capsys, "contract", "end", "K1", "2026-11-24")[0] == 0
    ends = asyncio.run(query(month_end, "SELECT valid_to FROM talkmeter.contracts WHERE contract_id = 'K1'"))
    assert [row["valid_to"].isoformat() for row in ends] == ["2026-11-24"]


def test_withdraw_refuses_a_contract_an_alert_was_sent_under(
    month_end: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The alert names the contract (notifications.contract_id): withdrawing it was a foreign-key
    traceback; it is a refusal on one line, and the contract stays."""
    asyncio.run(
        query(
            month_end,
            "INSERT INTO talkmeter.notifications (type, client_id, contract_id, match, conversation_id, "
            "pbx, decided_at, payload) "
            "VALUES ('call.started', 'C1', 'K0', 'matched', 'e', 'default', now(), '{}')",
        )
    )
    monkeypatch.setenv("TALKMETER_DATABASE_URL", as_accountant(month_end))
    code, out, err = run(capsys, "contract", "withdraw", "K0")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "alerts" in err and "end it instead" in err
    contracts = asyncio.run(query(month_end, "SELECT contract_id FROM talkmeter.client_contracts"))
    assert sorted(row["contract_id"] for row in contracts) == ["K0", "K1"]


def test_check_ledger_from_the_command_line(
    month_end: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TALKMETER_DATABASE_URL", as_accountant(month_end))
    assert run(capsys, "check-ledger") == (
        0,
        "checked 1 client(s): the running state equals what the ledger sums to\n",
        "",
    )
    asyncio.run(query(month_end, "UPDATE talkmeter.usage_totals SET amount = amount + 1 RETURNING 1"))
    code, out, err = run(capsys, "check-ledger", "--client", "C1")
    assert code == 1 and out.startswith("usage_totals C1/K1: the ledger sums to")
    assert "1 difference(s)" in err


async def accountant_fetch(dsn: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET ROLE talkmeter_accountant")
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_accountants_see_clients_contracts_and_weekly_free_days(month_end: str) -> None:
    """Was: the accountant could read neither clients nor contracts, and the weekly free days
    were shown nowhere."""
    [romashka, *_] = asyncio.run(
        accountant_fetch(month_end, "SELECT * FROM talkmeter.client_contracts ORDER BY contract_id DESC")
    )
    assert (romashka["client_name"], romashka["numbers"], romashka["contract_id"]) == (
        "ООО Ромашка",
        ["+74951234567"],
        "K1",
    )
    assert (romashka["free_daily_minutes"], romashka["prepaid_minutes"]) == (15, 60)
    weeks = asyncio.run(
        accountant_fetch(
            month_end, "SELECT * FROM talkmeter.weekly_usage WHERE client_id = 'C1' ORDER BY week"
        )
    )
    # Monday 23 November: the 24th and the 28th took free time.
    assert [(str(w["week"]), w["free_days_used"], w["conversations"]) for w in weeks] == [
        ("2026-11-23", 2, 3)
    ]
    assert weeks[0]["free_seconds"] == Decimal("1800.000")
    # K1 has no weekly limit: no count of days left (0 read as "none left").
    assert (weeks[0]["free_days_per_week"], weeks[0]["free_days_left"]) == (None, None)
