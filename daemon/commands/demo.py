"""`talkmeter demo`: talkmeter measuring calls live, with no PBX (what `make demo` runs).

It starts the AMI simulator in-process on a free loopback port, replaying recorded traces from
`tests/traces/` (an attended transfer, then 20 concurrent queue calls), connects the same pipeline
`watch` uses, prints each conversation as it ends, and exits 0 when every trace has been played
and applied.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from pathlib import Path
from typing import Any

import structlog

from daemon.commands.watch import print_conversation
from daemon.live import Pipeline, stop_on_signals
from daemon.logging import configure_logging
from daemon.settings import ConfigError, load_settings
from telephony.simulator import AmiSimulator, load_trace

log = structlog.get_logger("daemon.demo")
TRACES = Path(__file__).resolve().parents[2] / "tests" / "traces"
DEFAULT_TRACES = (TRACES / "attended_transfer.ami", TRACES / "concurrent_20.ami")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="measure recorded calls replayed by the built-in simulator")
    parser.add_argument(
        "--trace",
        type=Path,
        action="append",
        help="trace to replay (repeatable; default: attended_transfer, concurrent_20)",
    )
    parser.add_argument("--speed", type=float, default=20.0, help="replay speed (0 = as fast as possible)")
    parser.add_argument("--log-level", default="warning", help="stderr log level (default warning)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    traces = args.trace or list(DEFAULT_TRACES)
    for trace in traces:
        if not trace.is_file():
            raise ConfigError(f"no such trace: {trace}")
    configure_logging(args.log_level)
    return asyncio.run(demo(traces, args.speed))


async def demo(traces: list[Path], speed: float, on_conversation: Any = print_conversation) -> int:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        for trace in traces:
            if stop.is_set():
                return 130
            await play(trace, speed, on_conversation, stop)
    return 0


async def play(trace: Path, speed: float, on_conversation: Any, interrupted: asyncio.Event) -> None:
    """Replay one trace through the simulator and the live pipeline until it is fully measured."""
    secret = secrets.token_urlsafe(16)  # a throwaway: the simulator and the pipeline share it in memory
    async with AmiSimulator(load_trace(trace), user="demo", secret=secret, speed=speed) as simulator:
        settings = load_settings(
            None,
            ami_host=simulator.host,
            ami_port=simulator.port,
            ami_user="demo",
            ami_secret=secret,
            ami_reconnect_min=0.05,
            ami_reconnect_max=0.5,
        )
        pipeline = Pipeline(settings, on_conversation)
        stop = asyncio.Event()
        running = asyncio.create_task(pipeline.run(stop), name="demo-pipeline")
        finished = asyncio.create_task(simulator.finished.wait())
        cancelled = asyncio.create_task(interrupted.wait())
        await asyncio.wait({running, finished, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        if finished.done() and not running.done():
            await pipeline.settle()
        stop.set()
        for task in (finished, cancelled):
            task.cancel()
        await running
    log.info("demo.trace_done", trace=trace.name)
