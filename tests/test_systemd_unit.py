"""The systemd unit is hardened: `systemd-analyze security` rates it 2.5 or better (OK), without
taking away what the service needs (network to AMI and PostgreSQL, sd_notify, its state directory,
its credential)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.settings import Settings

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "talkmeter@.service"
TARGET = 2.5


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here (a systemd host has it)")
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 and "--offline" in result.stderr:
        pytest.skip(
            f"this systemd-analyze cannot rate a unit file offline (systemd 250+ can): {result.stderr}"
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_unit_rates_ok_in_systemd_analyze_security() -> None:
    report = analyze()
    (exposure,) = re.findall(r"Overall exposure level for talkmeter@\S*\.service: (\d+\.\d+)", report)
    assert float(exposure) <= TARGET, report
    kernel = ("ProtectKernelTunables=", "ProtectKernelModules=", "ProtectKernelLogs=")
    others = (
        "RestrictNamespaces=~user",
        "UMask=",
        "LockPersonality=",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
    )
    for setting in kernel + others:
        assert re.search(rf"✓ {re.escape(setting)}", report), setting


def test_the_hardening_keeps_what_the_service_needs() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key.strip(), []).append(value.strip())
    families = settings["RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)  # AMI, PostgreSQL, sd_notify
    assert "PrivateNetwork" not in settings and "IPAddressDeny" not in settings
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["StateDirectory"] == ["talkmeter"]
    assert Settings.model_fields["spool_dir"].default == Path("/var/lib/talkmeter")  # StateDirectory
    # The spool directory is left to the TOML file: the environment would override it.
    assert not any(value.startswith("TALKMETER_SPOOL_DIR") for value in settings["Environment"])
    assert "TALKMETER_AMI_SECRET_FILE=%d/ami-secret" in settings["Environment"]
    assert settings["LoadCredential"] == ["ami-secret:/etc/talkmeter/%i.ami-secret"]
    assert "ProcSubset" not in settings  # the process metrics read /proc/stat
