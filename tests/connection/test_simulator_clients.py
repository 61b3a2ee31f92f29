"""One simulated PBX, several AMI clients: what two talkmeter instances following one PBX need.

Every client that is logged in receives the same replay at the same moments; the replay can wait
until a given number of clients is there (so that all of them see the trace from its first event),
and once it runs, a client that dies (killed: its connection reset) or freezes (stops reading) never
holds it up for the others, as with Asterisk, which drops a client that does not read within
`writetimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from telephony.simulator import AmiSimulator, Trace, events_trace

from .helpers import GUARD, SECRET, frame

END = b"\r\n\r\n"


def numbered_trace(count: int, *, step: float = 0.0, padding: int = 0) -> Trace:
    """`count` UserEvents numbered 1.. (`padding` bytes of filler each), `step` seconds apart."""
    filler = "x" * padding
    frames = [
        frame(Event="UserEvent", UserEvent="Tick", Number=str(n), Filler=filler) for n in range(1, count + 1)
    ]
    return events_trace(frames, step=step)


class Session:
    """A bare AMI client (no talkmeter code): logs in, asks one question, collects event numbers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.numbers: list[int] = []

    @classmethod
    async def open(cls, sim: AmiSimulator, *, ask: bool = True) -> Session:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        session = cls(reader, writer)
        await reader.readline()  # banner
        writer.write(frame(Action="Login", ActionID="l", Username="talkmeter", Secret=SECRET))
        await session.frame_with("Event", "FullyBooted")
        if ask:
            writer.write(frame(Action="Ping", ActionID="p"))  # what a client asks first
            await session.frame_with("Response", "Success")
        return session

    async def frame_with(self, key: str, value: str) -> dict[str, str]:
        async with asyncio.timeout(GUARD):
            while True:
                headers = _headers(await self.reader.readuntil(END))
                if headers.get("Event") == "UserEvent":
                    self.numbers.append(int(headers["Number"]))
                if headers.get(key) == value:
                    return headers

    async def read_through(self, number: int) -> list[int]:
        """Every event number received up to and including `number`."""
        if number not in self.numbers:
            await self.frame_with("Number", str(number))
        return self.numbers

    def kill(self) -> None:
        """What the kernel does for a process killed with -9 that had unread data: a reset."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def _headers(raw: bytes) -> dict[str, str]:
    lines = raw.decode().strip("\r\n").split("\r\n")
    return dict(line.split(": ", 1) for line in lines if ": " in line)


async def test_the_replay_waits_for_every_expected_client_and_sends_them_the_same_events() -> None:
    trace = numbered_trace(50)
    async with AmiSimulator(trace, secret=SECRET, speed=0, start_clients=2) as sim:
        first = await Session.open(sim)
        assert sim.sent_events == 0  # one client logged in and asked: not enough
        second = await Session.open(sim)
        assert await first.read_through(50) == list(range(1, 51))
        assert await second.read_through(50) == list(range(1, 51))
        await first.close()
        await second.close()


async def test_a_killed_client_neither_pauses_the_replay_nor_misses_it_after_its_new_login() -> None:
    trace = numbered_trace(60, step=0.02)
    async with AmiSimulator(trace, secret=SECRET, speed=1, start_clients=2) as sim:
        survivor, victim = await Session.open(sim), await Session.open(sim)
        await victim.read_through(10)
        victim.kill()
        await survivor.read_through(20)
        back = await Session.open(sim)  # the restarted instance logs in again mid-replay
        assert sim.waits_for_clients == 0  # the replay never stopped to wait for anyone
        assert await survivor.read_through(60) == list(range(1, 61))
        got = await back.read_through(60)
        assert got and got == list(range(got[0], 61)) and got[0] > 20  # the present on, in order
        async with asyncio.timeout(GUARD):
            await sim.finished.wait()
        await survivor.close()
        await back.close()


async def test_a_client_that_stops_reading_is_dropped_and_the_others_get_everything() -> None:
    # ~6 MB of events as fast as possible: far more than the socket buffers of a frozen reader.
    trace = numbered_trace(3000, padding=2000)
    async with AmiSimulator(trace, secret=SECRET, speed=0, start_clients=2, write_timeout=0.2) as sim:
        frozen = await Session.open(sim)  # it will never read again (a stopped process)
        reader = await Session.open(sim)
        assert await reader.read_through(3000) == list(range(1, 3001))
        async with asyncio.timeout(GUARD):
            await sim.finished.wait()
        assert sim.dropped_slow == 1 and sim.clients == 1
        frozen.kill()
        await reader.close()
