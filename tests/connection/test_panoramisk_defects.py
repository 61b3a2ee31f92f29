"""Each panoramisk 1.4 defect we wrap (listed in telephony/ami.py), shown on panoramisk and fixed in ours.

Where the fix is about the network, its test is in test_link.py against the simulator:
- unchecked ping / half-open link: test_half_open_link_is_detected_by_ping_and_reconnected
- wrong password retried every few seconds: test_wrong_password_is_reported_and_retried_slowly
- close() leaves a reconnect scheduled: test_close_cancels_a_pending_reconnect
- action futures without timeout: test_every_action_has_a_timeout
- values not CR/LF-escaped: test_cr_lf_in_action_values_is_stripped
- split multibyte over TCP: test_split_multibyte_caller_name_survives
The two below feed the protocol objects directly, to show panoramisk's own behaviour next to ours.
"""

from __future__ import annotations

import asyncio
from typing import Any

from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message as PanoramiskMessage

from telephony.ami import AmiLink, AmiProtocol, Received
from telephony.framing import Message

from .helpers import frame, link_config

NAME = "Иван Петров"
RAW = frame(Event="Newchannel", Channel="PJSIP/trunk-1", CallerIDName=NAME, Uniqueid="1.1")
CUT = RAW.index(NAME.encode()) + 1  # inside the two bytes of "И"


class _Transport(asyncio.Transport):
    def write(self, data: Any) -> None:
        pass


class _Dispatch:
    def __init__(self) -> None:
        self.events: list[PanoramiskMessage] = []

    def dispatch(self, message: PanoramiskMessage) -> None:
        self.events.append(message)


def test_panoramisk_loses_a_split_multibyte_character_and_we_do_not() -> None:
    theirs = AMIProtocol()
    theirs.connection_made(_Transport())
    theirs.factory = _Dispatch()
    theirs.data_received(RAW[:CUT])
    theirs.data_received(RAW[CUT:])
    assert theirs.factory.events[0]["CallerIDName"] != NAME  # the defect: "ван Петров"

    async def ours() -> list[Message]:
        link = AmiLink(link_config(1))
        protocol = AmiProtocol(link)
        protocol.connection_made(_Transport())
        protocol.data_received(RAW[:CUT])
        protocol.data_received(RAW[CUT:])
        return [item.message for item in _drain(link) if isinstance(item, Received)]

    (message,) = asyncio.run(ours())
    assert message.get("CallerIDName") == NAME


class _FailingOnce(AmiLink):
    """A link whose event callback blows up once, as a buggy handler would in panoramisk."""

    failed = False

    def _on_event(self, message: Message) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("handler bug")
        super()._on_event(message)


async def test_an_exception_in_the_event_path_neither_escapes_nor_drops_the_rest_of_the_chunk() -> None:
    link = _FailingOnce(link_config(1))
    protocol = AmiProtocol(link)
    protocol.connection_made(_Transport())
    chunk = RAW + frame(Event="Hangup", Uniqueid="1.1") + frame(Event="UserEvent", Seq="3")
    protocol.data_received(chunk)  # panoramisk would raise here and lose the two frames after it
    events = [item.message.event for item in _drain(link) if isinstance(item, Received)]
    assert link.failed
    assert events == ["Hangup", "UserEvent"]
    assert not protocol.closed


def _drain(link: AmiLink) -> list[Any]:
    items = []
    while not link.queue.empty():
        items.append(link.queue.get_nowait())
    return items
