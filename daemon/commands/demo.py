"""`talkmeter demo`: talkmeter measuring calls live, with no PBX (what `make demo` runs).

It starts the AMI simulator in-process on a free loopback port, replaying recorded Asterisk 22
traces shipped inside the package (an attended transfer, then 20 concurrent queue calls; copies of
`tests/traces/` files, so an installed talkmeter needs no clone), connects the same pipeline
`watch` uses, prints a line per conversation as it ends and a summary table at the end (`--json`:
the conversation records only), and exits 0 when every trace has been played and applied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import structlog

from daemon.live import OnConversation, Pipeline, stop_on_signals
from daemon.logging import configure_logging
from daemon.output import Summary, conversation_line, json_line, write_line
from daemon.settings import ConfigError, built_in_settings, load_settings
from telephony.simulator import AmiSimulator, load_trace

log = structlog.get_logger("daemon.demo")
DEFAULT_TRACES = ("attended_transfer.ami", "concurrent_20.ami")


def shipped_trace(name: str) -> Traversable:
    """A trace shipped with talkmeter (daemon/resources/demo)."""
    return files("daemon") / "resources" / "demo" / name


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="see talkmeter measure recorded real calls (no PBX, no database)",
        description="Replays real Asterisk 22 recordings through talkmeter's own AMI simulator on a "
        "free loopback port, measures them live exactly as `watch` would on a PBX, and prints each "
        "conversation and a summary.",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        action="append",
        help="a recorded .ami capture to replay (repeatable; default: the two shipped ones, "
        "attended_transfer and concurrent_20, played with the built-in settings; your own are "
        "played with your configuration: TALKMETER_CONFIG and the TALKMETER_* variables)",
    )
    parser.add_argument(
        "--speed", type=float, default=20.0, help="replay speed (default 20; 0 = as fast as possible)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the conversation records as JSON lines only"
    )
    parser.add_argument("--log-level", default="warning", help="stderr log level (default warning)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for trace in args.trace or []:
        if not trace.is_file():
            raise ConfigError(f"no such trace: {trace}")
    configure_logging(args.log_level)
    summary = Summary()

    async def show(conversation: dict[str, Any]) -> None:
        if args.json:
            write_line(json_line(conversation))
        else:
            summary.add(conversation)
            write_line(conversation_line(conversation))

    with contextlib.ExitStack() as stack:
        traces = args.trace or [stack.enter_context(as_file(shipped_trace(name))) for name in DEFAULT_TRACES]
        code = asyncio.run(demo(traces, args.speed, show, configured=bool(args.trace)))
    if not args.json:
        write_line("\n" + summary.table().rstrip("\n"))
    return code


async def demo(
    traces: list[Path], speed: float, on_conversation: OnConversation, configured: bool = False
) -> int:
    """Play `traces` one after the other. `configured`: with the user's settings (their own
    recordings, named as their PBX names channels), else with the built-in ones only, which the
    shipped recordings were made with: the demo must not depend on the machine's set-up."""
    stop = asyncio.Event()
    with stop_on_signals(stop):
        for trace in traces:
            if stop.is_set():
                return 130
            await play(trace, speed, on_conversation, stop, configured)
    return 0


async def play(
    trace: Path, speed: float, on_conversation: OnConversation, interrupted: asyncio.Event, configured: bool
) -> None:
    """Replay one trace through the simulator and the live pipeline until it is fully measured."""
    secret = secrets.token_urlsafe(16)  # a throwaway: the simulator and the pipeline share it in memory
    async with AmiSimulator(load_trace(trace), user="demo", secret=secret, speed=speed) as simulator:
        link = {
            "ami_host": simulator.host,
            "ami_port": simulator.port,
            "ami_user": "demo",
            "ami_secret": secret,
            "ami_reconnect_min": 0.05,
            "ami_reconnect_max": 0.5,
        }
        settings = load_settings(None, **link) if configured else built_in_settings(**link)
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
