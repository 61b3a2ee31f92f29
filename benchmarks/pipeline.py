"""How fast talkmeter reads AMI: events/s and peak memory on the recorded traces.

Usage: .venv/bin/python benchmarks/pipeline.py [--copies N] [--trace PATH] [--no-tcp]

The stream is the real `concurrent_20` capture (20 concurrent queue calls, noise included: VarSet,
CEL, RTCP, Newexten...), concatenated N times; each copy gets its own Uniqueids/Linkedids and its
timestamps shifted past the previous copy, so the call model sees N x 20 distinct, correct calls.
Figures (all counted over every event in the stream, noise included):

1. panoramisk 1.4's own parser (`AMIProtocol.data_received`, dispatching every event), the baseline;
2. `FrameReader` with the call model's event filter (framing only);
3. `FrameReader` + `CallTracker.feed`: the in-process pipeline, whose target is >= 100,000 events/s;
4. end to end over loopback TCP: the simulator (same process) -> AmiLink -> consumer -> CallTracker,
   without and with the service's metrics (daemon.metrics) reporting.

Peak memory of (3) is measured separately with tracemalloc (which slows Python down while on).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from panoramisk.ami_protocol import AMIProtocol  # noqa: E402

from daemon.live import Pipeline  # noqa: E402
from daemon.metrics import Metrics  # noqa: E402
from daemon.settings import load_settings  # noqa: E402
from telephony.ami import LIST_EVENTS  # noqa: E402
from telephony.calls import WANTED_EVENTS, CallTracker  # noqa: E402
from telephony.effects import ConversationEnded  # noqa: E402
from telephony.framing import FrameReader, Message  # noqa: E402
from telephony.simulator import AmiSimulator, parse_trace  # noqa: E402

CHUNK = 65536
_IDS = re.compile(rb"^(\w*(?:Uniqueid|Linkedid)): ([^\r]+)", re.MULTILINE)
_STAMP = re.compile(rb"^Timestamp: (\d+\.\d+)", re.MULTILINE)


def build_stream(trace: Path, copies: int) -> tuple[bytes, int]:
    """The trace's events (banner, responses removed) `copies` times; returns (bytes, event count)."""
    events = b"".join(item.raw for item in parse_trace(trace.read_bytes()).events)
    stamps = [float(match.group(1)) for match in _STAMP.finditer(events)]
    span = max(stamps) - min(stamps) + 10.0
    parts = []
    for copy in range(copies):
        prefix, shift = b"c%d-" % copy, copy * span

        def rename(match: re.Match[bytes], prefix: bytes = prefix) -> bytes:
            return match.group(1) + b": " + prefix + match.group(2)

        def later(match: re.Match[bytes], shift: float = shift) -> bytes:
            return b"Timestamp: %.6f" % (float(match.group(1)) + shift)

        parts.append(_STAMP.sub(later, _IDS.sub(rename, events)))
    stream = b"".join(parts)
    return stream, stream.count(b"\r\n\r\n")


def chunks(stream: bytes) -> list[bytes]:
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def panoramisk_parse(pieces: list[bytes]) -> int:
    class Factory:
        count = 0

        def dispatch(self, message: Any) -> None:
            self.count += 1

    class Transport:
        def write(self, data: bytes) -> None:
            pass

    protocol = AMIProtocol()
    protocol.connection_made(Transport())
    protocol.factory = Factory()
    protocol.encoding = "utf-8"
    for piece in pieces:
        protocol.data_received(piece)
    return int(protocol.factory.count)


def framing_only(pieces: list[bytes]) -> int:
    reader = FrameReader(WANTED_EVENTS | LIST_EVENTS)
    return sum(len(reader.feed(piece)) for piece in pieces)


def framing_and_model(pieces: list[bytes]) -> int:
    reader = FrameReader(WANTED_EVENTS | LIST_EVENTS)
    tracker = CallTracker()
    ended = 0
    for piece in pieces:
        for message in reader.feed(piece):
            if isinstance(message, Message):
                ended += sum(isinstance(e, ConversationEnded) for e in tracker.feed(message, 0.0))
    return ended


async def over_tcp(stream: bytes, metrics: Metrics | None = None) -> tuple[float, int]:
    trace = parse_trace(stream)
    ended = 0

    async def count(conversation: dict[str, Any]) -> None:
        nonlocal ended
        ended += 1

    async with AmiSimulator(trace, secret="bench", speed=0) as simulator:
        settings = load_settings(None, ami_port=simulator.port, ami_secret="bench", ami_user="talkmeter")
        pipeline = Pipeline(settings, count, metrics=metrics)
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        started = time.perf_counter()
        await simulator.finished.wait()
        await pipeline.settle()
        elapsed = time.perf_counter() - started
        stop.set()
        await task
    return elapsed, ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=ROOT / "tests" / "traces" / "concurrent_20.ami")
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--no-tcp", action="store_true", help="skip the end-to-end TCP figure")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    stream, events = build_stream(args.trace, args.copies)
    pieces = chunks(stream)
    print(f"stream: {args.trace.name} x {args.copies} = {events:,} events, {len(stream) / 1e6:.1f} MB")
    rows = [
        ("panoramisk 1.4 parser (baseline)", panoramisk_parse),
        ("FrameReader (filter + decode)", framing_only),
        ("FrameReader + CallTracker", framing_and_model),
    ]
    for label, run in rows:
        best = min(timed(partial(run, pieces))[0] for _ in range(3))
        print(f"{label:<42} {events / best:>12,.0f} events/s  ({best:.3f} s)")
    print(f"{'  conversations measured':<42} {framing_and_model(pieces):>12,}")
    tracemalloc.start()
    framing_and_model(pieces)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{'peak memory, FrameReader + CallTracker':<42} {peak / 1e6:>12.1f} MB (tracemalloc)")
    if not args.no_tcp:
        for label, metrics in (("end to end over TCP (simulator in-process)", None),
                               ("  the same, metrics on", Metrics())):  # fmt: skip
            elapsed, ended = asyncio.run(over_tcp(stream, metrics))
            print(f"{label:<42} {events / elapsed:>12,.0f} events/s  "
                  f"({elapsed:.3f} s, {ended} conversations)")  # fmt: skip


if __name__ == "__main__":
    main()
