"""CI: the wheel, installed in a fresh virtual environment outside the clone, works as a product.

Run with that environment's Python, from a directory outside the clone:
    VENV/bin/python CLONE/.ci/wheel_smoke.py CLONE
It checks `talkmeter --version`, `talkmeter demo`, `talkmeter migrate` on a database of its own
(created and dropped on TALKMETER_TEST_DATABASE_URL's server), then a short `talkmeter run` against
`talkmeter simulate`: the conversation reaches PostgreSQL, /healthz answers 200 and /metrics counts
it, and SIGTERM stops the service cleanly. Every wait is bounded; any failure exits non-zero.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

CLONE = Path(sys.argv[1]).resolve()
BIN = Path(sys.executable).parent
TALKMETER = str(BIN / "talkmeter")
ADMIN_DSN = os.environ.get("TALKMETER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
LIMIT = 60.0


def step(text: str) -> None:
    print(f"wheel smoke: {text}", flush=True)


def talkmeter(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [TALKMETER, *args], capture_output=True, text=True, env=env, timeout=LIMIT, check=False
    )
    if result.returncode != 0:
        sys.exit(
            f"talkmeter {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def wait_for(what: str, condition: object) -> None:
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    sys.exit(f"wheel smoke: gave up waiting for {what}")


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def count_conversations(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM talkmeter.conversations"))
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except OSError as error:
        return getattr(error, "code", 0), str(error)


def main() -> None:
    installed = subprocess.run(
        [sys.executable, "-c", "import daemon, accounting; print(daemon.__file__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if Path(installed).is_relative_to(CLONE):
        sys.exit(f"wheel smoke: talkmeter is imported from the clone ({installed}), not from the wheel")
    step(f"talkmeter imported from {installed}")
    step(talkmeter("--version").strip())
    demo = talkmeter("demo")
    if "\nall                        21        21" not in demo:
        sys.exit(f"wheel smoke: demo did not measure the 21 conversations:\n{demo}")
    step("demo measured 21 conversations")

    database = f"tm_wheel_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dsn = urlunsplit(urlsplit(ADMIN_DSN)._replace(path="/" + database))
    asyncio.run(admin(f'CREATE DATABASE "{database}"'))
    try:
        with tempfile.TemporaryDirectory() as work:
            run_service(Path(work), dsn)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    step("all good")


def run_service(work: Path, dsn: str) -> None:
    env = {**os.environ, "TALKMETER_DATABASE_URL": dsn, "TALKMETER_AMI_SECRET": "wheel-smoke"}
    env.pop("TALKMETER_CONFIG", None)
    step(talkmeter("migrate", env=env).strip().replace("\n", "; "))
    trace = str(CLONE / "tests" / "traces" / "inbound_answered.ami")
    simulator = subprocess.Popen(
        [TALKMETER, "simulate", trace, "--port", "0", "--speed", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert simulator.stdout is not None
        port = simulator.stdout.readline().split(":")[1].split(",")[0]
        metrics_port = free_port()
        config = work / "smoke.toml"
        config.write_text(
            f'ami_port = {port}\nspool_dir = "{work / "spool"}"\nmetrics_port = {metrics_port}\n'
            "ami_reconnect_min = 0.1\nami_reconnect_max = 1.0\n"
        )
        step(talkmeter("check-config", "--config", str(config), env=env).splitlines()[-1])
        service = subprocess.Popen(
            [TALKMETER, "run", "--config", str(config)], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for("the conversation in PostgreSQL", lambda: asyncio.run(count_conversations(dsn)) == 1)
            base = f"http://127.0.0.1:{metrics_port}"
            wait_for("/healthz to answer 200", lambda: get(base + "/healthz")[0] == 200)
            status, metrics = get(base + "/metrics")
            if status != 200 or "talkmeter_conversations_recorded_total 1.0" not in metrics:
                sys.exit(f"wheel smoke: /metrics does not count the recorded conversation ({status})")
            step("run recorded the conversation; /healthz 200; /metrics counts it")
        finally:
            service.send_signal(signal.SIGTERM)
            _, errors = service.communicate(timeout=LIMIT)
        if service.returncode != 0:
            sys.exit(f"wheel smoke: run exited {service.returncode}:\n{errors}")
        stopped = [json.loads(line) for line in errors.splitlines() if '"service.stopped"' in line]
        step(f"run stopped cleanly: {stopped[-1] if stopped else 'no service.stopped line'}")
    finally:
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(timeout=LIMIT)


if __name__ == "__main__":
    main()
