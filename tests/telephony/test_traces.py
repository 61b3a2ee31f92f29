"""Every recorded trace reproduces its SIP-measured ground truth (tests/traces/README.md).

The traces are real Asterisk 22 AMI streams; the truth comes from the SIP messages, independent of
Asterisk. Tolerances: talk and hold within 0.2 s (far above the traces' own AMI-vs-SIP
difference); consultants, order, number, direction and line exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from daemon.commands.replay import measure_capture
from daemon.settings import Settings

TRACES = Path(__file__).resolve().parents[1] / "traces"
CASES = sorted(TRACES.glob("*.json")) + sorted((TRACES / "no-timestamps").glob("*.json"))
TOLERANCE = 0.2


def measured(truth_file: Path) -> list[dict[str, Any]]:
    capture = truth_file.with_suffix(".ami")
    conversations = [c.to_json() for c in measure_capture(capture, Settings())]
    return sorted(conversations, key=lambda c: c["started_at"])  # truth lists them by INVITE


def truth(truth_file: Path) -> list[dict[str, Any]]:
    return json.loads(truth_file.read_text())["truth"]["conversations"]


def test_every_trace_is_covered() -> None:
    assert len(CASES) == 17


@pytest.mark.parametrize("truth_file", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_trace_reproduces_ground_truth(truth_file: Path) -> None:
    expected, got = truth(truth_file), measured(truth_file)
    assert len(got) == len(expected)
    for mine, real in zip(got, expected, strict=True):
        assert mine["client_number"] == real["client_number"]
        assert mine["direction"] == real["direction"]
        assert mine["line"] == real["line"]
        assert mine["consultants"] == real["consultants"]
        assert (mine["answered_at"] is not None) == real["answered"]
        assert mine["talk_seconds"] == pytest.approx(real["talk_seconds"], abs=TOLERANCE)
        assert mine["hold_seconds"] == pytest.approx(real["hold_seconds"], abs=TOLERANCE)
        if real["wait_seconds"] is None:
            assert mine["wait_seconds"] is None
        else:
            assert mine["wait_seconds"] == pytest.approx(real["wait_seconds"], abs=TOLERANCE)
        assert mine["estimated"] is False
        assert sum(s["seconds"] for s in mine["segments"]) == pytest.approx(mine["talk_seconds"], abs=0.002)


def test_raw_caller_ids_are_kept_beside_the_normalised_number() -> None:
    got = measured(TRACES / "caller_id_formats.json")
    sent = [c["client_number_sent"] for c in truth(TRACES / "caller_id_formats.json")]
    assert [c["client_number_raw"] for c in got] == [
        "84951234567",
        "74951234567",
        "+74951234567",
        "4951234567",
        "anonymous",
        "+74957778899",
    ]
    assert sent[:4] == [c["client_number_raw"] for c in got][:4]


def test_segments_follow_the_transfer_with_hold_in_between() -> None:
    (conversation,) = measured(TRACES / "attended_transfer.json")
    detail = json.loads((TRACES / "attended_transfer.json").read_text())["truth_detail"]["conversations"][0]
    kinds = [(s["consultant"], s["hold"]) for s in conversation["segments"]]
    assert kinds == [("101", False), ("101", True), ("102", False)]
    hold = conversation["segments"][1]
    assert hold["seconds"] == pytest.approx(detail["holds"][0]["seconds"] - 0.261, abs=TOLERANCE)


def test_accuracy_is_far_above_asterisk_cdr() -> None:
    """Sum of absolute errors over all traces: ours against CDR billsec of the same calls."""
    ours = cdr = 0.0
    for truth_file in CASES:
        expected = truth(truth_file)
        for mine, real in zip(measured(truth_file), expected, strict=True):
            ours += abs(mine["talk_seconds"] - real["talk_seconds"])
        details = json.loads(truth_file.read_text())
        billsec = sum(
            float(row.get("BillableSeconds", 0))
            for row in details.get("cdr_events", [])
            if row.get("Disposition") == "ANSWERED" and "trunk" in row.get("Channel", "")
        )
        cdr += abs(billsec - sum(c["talk_seconds"] for c in expected))
    assert ours < 0.5
    assert cdr > 20 * ours
