"""Output for people (a line per conversation, a summary table, progress on a terminal) and for
machines (`--json`: records only)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from daemon.cli import main
from daemon.output import Progress, summarise

TRACES = Path(__file__).resolve().parents[1] / "traces"


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_demo_prints_a_line_per_conversation_then_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--speed", "0"]) == 0
    out = capsys.readouterr().out
    lines, table = out.split("\n\n")
    assert len(lines.splitlines()) == 21
    assert "+74951234567 -> 101, 102  talk 0:00:15  hold 0:00:06  wait 3.5 s" in lines
    assert table.splitlines()[0].split() == ["conversations", "answered", "talk", "hold", "avg", "wait"]
    assert table.splitlines()[1].split() == ["all", "21", "21", "0:02:32", "0:00:06", "16.7", "s"]
    assert [row.split()[1] for row in table.splitlines()[2:]] == ["101", "102", "103", "104", "105", "106"]


def test_the_shipped_demo_does_not_depend_on_the_machines_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: the demo read TALKMETER_CONFIG and the TALKMETER_* variables: a trunk pattern of the
    user's PBX measured nothing, a missing config file made it exit 2."""
    monkeypatch.setenv("TALKMETER_TRUNK_CHANNELS", '["SIP/beeline-*"]')
    monkeypatch.setenv("TALKMETER_CONFIG", str(tmp_path / "missing.toml"))
    assert main(["demo", "--speed", "0", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 21


def test_json_keeps_the_records_for_machines_and_nothing_else(capsys: pytest.CaptureFixture[str]) -> None:
    trace = str(TRACES / "attended_transfer.ami")
    assert main(["demo", "--trace", trace, "--speed", "0", "--json"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["consultants"] == ["101", "102"]
    assert main(["replay", trace, "--dry-run", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["consultants"] for line in out.splitlines()] == [["101", "102"]]
    assert err == ""  # no progress on a pipe


def test_replay_ends_with_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(TRACES / "blind_transfer.ami"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-3:] == [
        "all                         1         1  0:00:09  0:00:00     3.5 s",
        "consultant 101              1         1  0:00:04  0:00:00     3.5 s",
        "consultant 102              1         0  0:00:05  0:00:00         -",
    ]


def conversation(consultants: list[str], segments: list[tuple[str, float, bool]], wait: float | None) -> dict:
    return {
        "consultants": consultants,
        "talk_seconds": sum(seconds for _, seconds, _ in segments),
        "hold_seconds": sum(seconds for _, seconds, hold in segments if hold),
        "wait_seconds": wait,
        "segments": [{"consultant": c, "seconds": s, "hold": h} for c, s, h in segments],
    }


def test_the_summary_splits_talk_hold_and_wait_by_consultant() -> None:
    summary = summarise(
        [
            conversation(
                ["101", "102"], [("101", 60.4, False), ("101", 30.0, True), ("102", 100.0, False)], 4.0
            ),
            conversation(["102"], [("102", 9.6, False)], 2.0),
            conversation([], [], None),  # abandoned
        ]
    )
    assert summary.table().splitlines()[1:] == [
        "all                         3         2  0:03:20  0:00:30     3.0 s",
        "consultant 101              1         1  0:01:30  0:00:30     4.0 s",
        "consultant 102              2         1  0:01:50  0:00:00     2.0 s",
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only_and_is_erased_at_the_end() -> None:
    now = [0.0]
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        now[0] = 0.0
        progress = Progress("recording", 600, stream=stream, clock=lambda: now[0])
        for done in range(0, 600, 100):
            now[0] += 0.25
            progress.update(done, " conversations")
        progress.close()
    shown = terminal.getvalue()
    assert shown.startswith("\rrecording: 0 of 600 conversations")
    assert "\rrecording: 500 of 600 conversations" in shown
    assert shown.endswith("\r" + " " * len("recording: 500 of 600 conversations") + "\r")
    assert pipe.getvalue() == ""
