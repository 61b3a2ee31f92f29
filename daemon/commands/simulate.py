"""`talkmeter simulate TRACE.ami`: an AMI server replaying a recorded trace (try talkmeter without a PBX).

It listens like Asterisk (banner, Login/Logoff, Ping, CoreShowChannels, BridgeList), starts the
replay when the first client logs in (or the first `--clients N`: two talkmeter instances following
one PBX), sends every logged-in client the same replay, and keeps serving until interrupted. The
secret clients must give is read from the environment variable named by `--secret-env` (never
from the command line); when that variable is unset, any secret is accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

import structlog

from daemon.live import stop_on_signals
from daemon.logging import configure_logging
from daemon.settings import ConfigError
from telephony.simulator import AmiSimulator, load_trace

log = structlog.get_logger("daemon.simulate")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("simulate", help="serve a recorded AMI trace as a fake Asterisk")
    parser.add_argument("trace", type=Path, help="raw AMI capture (.ami), e.g. tests/traces/hold.ami")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5038, help="TCP port (default 5038; 0 = any free port)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed; 0 = as fast as possible")
    parser.add_argument("--user", default="talkmeter", help="AMI user name clients must log in as")
    parser.add_argument(
        "--secret-env",
        default="TALKMETER_AMI_SECRET",
        help="env variable holding the secret (unset: any secret is accepted)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        metavar="N",
        help="start the replay once N clients are logged in (two talkmeter instances: 2; default 1)",
    )
    parser.add_argument("--exit-at-end", action="store_true", help="stop once the trace has been replayed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.trace.is_file():
        raise ConfigError(f"no such trace: {args.trace}")
    if args.speed < 0:
        raise ConfigError("--speed must be 0 (as fast as possible) or more")
    if args.clients < 1:
        raise ConfigError("--clients must be 1 or more")
    configure_logging("info")
    secret = os.environ.get(args.secret_env) or None
    simulator = AmiSimulator(
        load_trace(args.trace),
        host=args.host,
        port=args.port,
        user=args.user,
        secret=secret,
        speed=args.speed,
        start_clients=args.clients,
    )
    return asyncio.run(_serve(simulator, args.exit_at_end))


async def _serve(simulator: AmiSimulator, exit_at_end: bool) -> int:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        try:
            await simulator.start()
        except OSError as error:
            raise ConfigError(f"cannot listen on {simulator.host}:{simulator.port}: {error}") from error
        print(f"AMI simulator on {simulator.host}:{simulator.port}, user {simulator.user!r}", flush=True)
        waits = {asyncio.create_task(stop.wait())}
        if exit_at_end:
            waits.add(asyncio.create_task(simulator.finished.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        await simulator.stop()
    return 0
