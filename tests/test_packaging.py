"""What an installed talkmeter carries: the wheel holds every package, the migrations, the SQL, the
demo's traces and the unit, byte for byte the files developers edit (they are reached through
links inside the packages, so a copy that drifts would be a bug)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "accounting/migrations": ROOT / "migrations",
    "daemon/resources/demo": ROOT / "tests" / "traces",
}
RESOURCES = {
    "talkmeter@.service": ROOT / "systemd" / "talkmeter@.service",
    "grafana-dashboard.json": ROOT / "monitoring" / "grafana-dashboard.json",
}
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def shipped_files(package: str, folder: str) -> dict[str, bytes]:
    directory = files(package).joinpath(folder)
    return {entry.name: entry.read_bytes() for entry in directory.iterdir() if entry.is_file()}


def test_the_packages_reach_the_files_developers_edit() -> None:
    migrations = shipped_files("accounting", "migrations")
    assert migrations == {path.name: path.read_bytes() for path in (ROOT / "migrations").glob("*.sql")}
    demo = shipped_files("daemon", "resources/demo")
    assert demo == {name: (ROOT / "tests" / "traces" / name).read_bytes() for name in demo}
    assert set(demo) == {"attended_transfer.ami", "concurrent_20.ami"}
    assert shipped_files("daemon", "resources") == {
        name: path.read_bytes() for name, path in RESOURCES.items()
    }


@pytest.mark.slow
def test_the_wheel_carries_everything_an_installed_talkmeter_needs(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)  # a clean tree, as CI's clone
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), "."],
        cwd=source, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("talkmeter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        packages = sorted(
            init.parent.relative_to(ROOT).as_posix()
            for top in ("daemon", "telephony", "accounting")
            for init in (ROOT / top).rglob("__init__.py")
        )
        assert "daemon/alerts" in packages
        for package in packages:
            modules = {p.name for p in (ROOT / package).glob("*.py")}
            assert {f"{package}/{name}" for name in modules} <= names, package
        assert (
            archive.read("accounting/sql/queries.sql") == (ROOT / "accounting/sql/queries.sql").read_bytes()
        )
        for inside, outside in SHIPPED.items():
            carried = {n.rpartition("/")[2] for n in names if n.rpartition("/")[0] == inside}
            assert carried, inside
            for name in carried:
                assert archive.read(f"{inside}/{name}") == (outside / name).read_bytes(), name
        for name, path in RESOURCES.items():
            assert archive.read(f"daemon/resources/{name}") == path.read_bytes(), name
        assert {n.rpartition("/")[2] for n in names if n.startswith("accounting/migrations/")} == {
            p.name for p in (ROOT / "migrations").glob("*.sql")
        }
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    assert "talkmeter = daemon.cli:main" in entry_points
    assert "Requires-Dist: prometheus_client" in metadata
