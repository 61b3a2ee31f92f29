"""The byte framer: whole messages only, noise dropped undecoded, garbage reported not fatal."""

from __future__ import annotations

from telephony.framing import MAX_VALUE_CHARS, FrameReader, Malformed, Message


def test_banner_glued_to_the_login_response() -> None:
    (message,) = FrameReader().feed(
        b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nMessage: ok\r\n\r\n"
    )
    assert isinstance(message, Message)
    assert message.banner == "Asterisk Call Manager/11.0.0"
    assert message.response == "Success"


def test_unwanted_events_are_dropped_before_decoding() -> None:
    reader = FrameReader(wanted={"Hangup"})
    out = reader.feed(
        b"Event: VarSet\r\nValue: \xff\xfe\r\n\r\n"
        b"Event: Hangup\r\nUniqueid: 1.2\r\n\r\n"
        b"Response: Pong\r\n\r\n"
    )
    assert [m.event or m.response for m in out if isinstance(m, Message)] == ["Hangup", "Pong"]
    assert reader.dropped == 1


def test_split_multibyte_name_is_decoded_once_whole() -> None:
    frame = "Event: Newchannel\r\nCallerIDName: Мария Ивановна\r\n\r\n".encode()
    cut = frame.index("Мария".encode()) + 1  # inside the first Cyrillic letter
    reader = FrameReader()
    assert reader.feed(frame[:cut]) == []
    (message,) = reader.feed(frame[cut:])
    assert isinstance(message, Message)
    assert message.get("CallerIDName") == "Мария Ивановна"


def test_legacy_cp1251_names_are_not_lost() -> None:
    (message,) = FrameReader().feed(
        b"Event: Newchannel\r\nCallerIDName: " + "Пётр".encode("cp1251") + b"\r\n\r\n"
    )
    assert isinstance(message, Message)
    assert message.get("CallerIDName") == "Пётр"


def test_empty_values_repeated_headers_and_bad_timestamps() -> None:
    (message,) = FrameReader().feed(
        b"Event: Hold\r\nAccountCode:\r\nChanVariable: A=1\r\nChanVariable: B=2\r\nTimestamp: soon\r\n\r\n"
    )
    assert isinstance(message, Message)
    assert message.get("AccountCode") == ""
    assert message.get("ChanVariable") == "A=1"
    assert message.timestamp is None


def test_garbage_is_reported_and_the_stream_goes_on() -> None:
    reader = FrameReader()
    out = reader.feed(b"\x00\x01 garbage without colon\r\n\r\nEvent: Hangup\r\nUniqueid: 9\r\n\r\n")
    assert isinstance(out[0], Malformed)
    assert isinstance(out[1], Message) and out[1].event == "Hangup"


def test_truncated_last_frame_and_oversized_frames() -> None:
    reader = FrameReader()
    assert reader.feed(b"Event: Hangup\r\nUniq") == []
    (leftover,) = reader.flush()
    assert isinstance(leftover, Malformed)
    huge = FrameReader()
    (too_long,) = huge.feed(b"Event: X\r\nA: " + b"x" * (1 << 21))
    assert isinstance(too_long, Malformed) and "overlong lines skipped" in too_long.reason
    (rest,) = huge.feed(b"xxx\r\nUniqueid: 1.1\r\n\r\n")  # the frame goes on without its long line
    assert isinstance(rest, Message) and rest.headers == {"Event": "X", "Uniqueid": "1.1"}


def test_control_characters_are_stripped_from_values() -> None:
    (message,) = FrameReader().feed(
        b"Event: Newchannel\r\nCallerIDNum: +7495\x001234567\x1b[2J\r\nCallerIDName: A\tB\x7f\xc2\x85\r\n\r\n"
    )
    assert isinstance(message, Message)
    assert message.get("CallerIDNum") == "+74951234567[2J"
    assert message.get("CallerIDName") == "AB"


def test_values_are_bounded_in_length() -> None:
    (message,) = FrameReader().feed(b"Event: Newchannel\r\nCallerIDNum: " + b"7" * 500_000 + b"\r\n\r\n")
    assert isinstance(message, Message)
    assert len(message.get("CallerIDNum")) == MAX_VALUE_CHARS
