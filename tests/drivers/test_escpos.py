"""ESC/POS status driver: decoding on real replies, protocol on the recording transport, fuzz."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.escpos import (
    ALL_STATUS_QUERIES,
    Late,
    PortAbsent,
    PortIOError,
    PortOpenFailed,
    PrinterLinkState,
    RecordingTransport,
    SerialTransport,
    Silence,
    UsbLpTransport,
    decode_status_byte,
    dle_eot,
    is_valid_status_byte,
    open_transport,
    poll_printer,
    query_status,
    split_host_port,
    status_from_raw,
    validate_reply,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "escpos"


def _epson_tm_exchange() -> tuple[bytes, bytes]:
    lines = (FIX / "dle_eot_1_handshake_request_and_reply_epson_tm.txt").read_text().splitlines()
    request, reply = (ast.literal_eval(line) for line in lines)
    assert isinstance(request, bytes) and isinstance(reply, bytes)
    return request, reply


def _node_console_reply() -> bytes:
    buffer_line, hex_line = (
        (FIX / "dle_eot_1_reply_epson_serial_node_console.txt").read_text().splitlines()
    )
    data = re.search(r"data: \[([^\]]*)\]", buffer_line)
    assert data is not None
    from_buffer = bytes(int(x) for x in data.group(1).split(","))
    assert from_buffer == bytes.fromhex(hex_line.strip())
    return from_buffer


def test_epson_tm_request_ends_with_dle_eot_1() -> None:
    """The real POS client handshake (ESC @, ESC = 1, DLE EOT 1) ends with our DLE EOT 1 bytes."""
    request, _ = _epson_tm_exchange()
    assert request.endswith(dle_eot(1))
    assert RecordingTransport().queries == []


def test_epson_reply_0x16_is_valid_online_drawer_pin_high() -> None:
    """Both real Epson replies 0x16 are valid DLE EOT 1 bytes: online, drawer pin 3 high."""
    _, tm_reply = _epson_tm_exchange()
    for reply in (tm_reply, _node_console_reply()):
        assert reply == b"\x16"
        value = validate_reply(reply)
        assert value == 0x16
        assert decode_status_byte(1, value) == {"drawer_high": True, "online": True}


def test_paper_removed_reply_114_is_paper_end() -> None:
    """The real paper-sensor reply 114 (0x72) with the roll removed decodes as paper end, not near end."""
    value = int((FIX / "paper_status_reply_paper_removed_decimal.txt").read_text().strip())
    assert value == 0x72
    assert is_valid_status_byte(value)
    assert decode_status_byte(4, value) == {"paper_near_end": False, "paper_end": True}


def test_epson_reply_through_recording_transport() -> None:
    """A poll answered with the real 0x16 for DLE EOT 1 reports ok and online."""
    link = RecordingTransport(script=[b"\x16"])
    status = query_status(link, ns=(1,), timeout_s=0.2)
    assert status.state is PrinterLinkState.OK
    assert status.online is True and status.drawer_high is True
    assert status.paper_end is None  # not queried, not guessed
    assert link.written == [b"\x10\x04\x01"]


@pytest.mark.parametrize(
    ("n", "value", "expected"),
    [
        (1, 0x1A, {"online": False, "drawer_high": False}),
        (2, 0x16, {"cover_open": True}),
        (2, 0x1A, {"feed_button": True}),
        (2, 0x32, {"paper_end_stop": True}),
        (2, 0x52, {"error": True}),
        (3, 0x1A, {"cutter_error": True}),
        (3, 0x32, {"unrecoverable": True}),
        (3, 0x52, {"auto_recoverable": True}),
        (4, 0x1E, {"paper_near_end": True, "paper_end": False}),
        (4, 0x16, {"paper_near_end": True}),
        (4, 0x7E, {"paper_near_end": True, "paper_end": True}),
        (4, 0x32, {"paper_end": True}),
    ],
)
def test_decode_each_bit(n: int, value: int, expected: dict[str, bool]) -> None:
    """Each documented bit of DLE EOT 1..4 sets its flag and nothing else."""
    flags = decode_status_byte(n, value)
    for name, flag in flags.items():
        if name in expected:
            assert flag is expected[name], name
        elif name == "online":
            assert flag is True
        else:
            assert flag is False, name


@pytest.mark.parametrize(
    "reply", [b"", b"\x12\x12", b"\x00", b"\x13", b"\x92", b"\x02", b"\x10", b"\xff"]
)
def test_invalid_replies(reply: bytes) -> None:
    """Empty, multi-byte, and bytes breaking the fixed bits are not status replies."""
    assert validate_reply(reply) is None


def test_decode_rejects_invalid_byte_and_bad_n() -> None:
    """Decoding refuses a byte that is not a status byte and n outside 1..4."""
    with pytest.raises(ValueError):
        decode_status_byte(1, 0x00)
    with pytest.raises(ValueError):
        decode_status_byte(5, 0x12)
    with pytest.raises(ValueError):
        dle_eot(0)


def test_full_poll_writes_dle_eot_1_to_4_and_decodes() -> None:
    """A full poll sends DLE EOT 1, 2, 3, 4 in order and decodes a cover-open, paper-end printer."""
    link = RecordingTransport(answers={1: 0x1E, 2: 0x36, 3: 0x12, 4: 0x72})
    status = query_status(link, timeout_s=0.2)
    assert link.written == [dle_eot(n) for n in ALL_STATUS_QUERIES]
    assert status.state is PrinterLinkState.OK
    assert status.raw == {1: 0x1E, 2: 0x36, 3: 0x12, 4: 0x72}
    assert status.online is False and status.cover_open is True and status.paper_end is True
    assert status.conditions() == ["offline", "cover_open", "paper_end_stop", "paper_end"]
    assert set(status.reply_latency_s) == {1, 2, 3, 4}
    assert status.as_dict()["raw"] == {"1": "1e", "2": "36", "3": "12", "4": "72"}


def test_silence_is_no_reply_never_paper_end() -> None:
    """No answer gives no_reply with every flag unknown, and the poll stops at the silent query."""
    link = RecordingTransport(script=[b"\x12", Silence()])
    status = query_status(link, timeout_s=0.2)
    assert status.state is PrinterLinkState.NO_REPLY
    assert status.failed_n == 2
    assert status.paper_end is None and status.paper_near_end is None
    assert status.conditions() == []
    assert link.queries == [1, 2]


def test_garbage_is_invalid_reply_with_bytes_kept() -> None:
    """A multi-byte reply is invalid_reply and the received bytes are kept for diagnostics."""
    link = RecordingTransport(script=[b"\x12\x12\x55"])
    status = query_status(link, timeout_s=0.2)
    assert status.state is PrinterLinkState.INVALID_REPLY
    assert status.reply == b"\x12\x12\x55"
    assert status.failed_n == 1 and link.queries == [1]


def test_late_reply_is_drained_within_the_poll() -> None:
    """A reply that comes after the timeout is swallowed and reported as late, not used."""
    link = RecordingTransport(script=[Late(b"\x72")])
    status = query_status(link, timeout_s=0.2)
    assert status.state is PrinterLinkState.NO_REPLY
    assert status.late_bytes == b"\x72"
    assert status.paper_end is None
    assert not link.pending


def test_late_reply_not_taken_as_next_answer_when_not_drained() -> None:
    """With the late drain off, the next poll flushes the stale byte before its query."""
    link = RecordingTransport(script=[Late(b"\x72"), b"\x12", b"\x12", b"\x12", b"\x12"])
    first = query_status(link, timeout_s=0.2, late_drain_s=0)
    assert first.state is PrinterLinkState.NO_REPLY and first.late_bytes == b""
    assert link.pending == bytearray(b"\x72")
    second = query_status(link, timeout_s=0.2, late_drain_s=0)
    assert second.state is PrinterLinkState.OK
    assert second.stale_bytes == b"\x72"
    assert second.paper_end is False


def test_stale_input_is_flushed_before_the_query() -> None:
    """Bytes waiting before the first query (print echo, ASB) are discarded and reported."""
    link = RecordingTransport(answers={1: 0x12}, stale=b"\x14\x00\x00\x0f")
    status = query_status(link, ns=(1,), timeout_s=0.2)
    assert status.state is PrinterLinkState.OK and status.raw == {1: 0x12}
    assert status.stale_bytes == b"\x14\x00\x00\x0f"


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (PortAbsent("read: hangup"), PrinterLinkState.ABSENT),
        (PortOpenFailed("busy"), PrinterLinkState.OPEN_FAILED),
        (PortIOError("weird"), PrinterLinkState.IO_ERROR),
    ],
)
def test_transport_errors_become_states(error: Exception, state: PrinterLinkState) -> None:
    """A transport error during the poll is a state with its text, not an exception."""
    link = RecordingTransport(script=[b"\x12", error])  # type: ignore[list-item]
    status = query_status(link, timeout_s=0.2)
    assert status.state is state
    assert status.failed_n == 2 and status.raw == {1: 0x12}
    assert str(error) in status.error_text


def test_missing_device_is_absent_for_serial_and_usblp(tmp_path: Path) -> None:
    """A device path that does not exist is 'absent' (not no_reply) for both file transports."""
    for kind in ("serial", "usblp"):
        status = poll_printer(kind, str(tmp_path / "ttyS9"), timeout_s=0.2)
        assert status.state is PrinterLinkState.ABSENT, kind
        assert "No such file" in status.error_text


def test_non_tty_file_is_open_failed(tmp_path: Path) -> None:
    """A path that exists but is not a serial port fails to open (open_failed), it is not absent."""
    regular = tmp_path / "not_a_tty"
    regular.write_bytes(b"")
    with pytest.raises(PortOpenFailed):
        SerialTransport(regular)
    assert poll_printer("serial", str(regular), timeout_s=0.2).state is PrinterLinkState.OPEN_FAILED


def test_usblp_transport_opens_a_fifo_stand_in(tmp_path: Path) -> None:
    """UsbLpTransport opens a node O_RDWR|O_NONBLOCK and a read times out empty on silence."""
    import os

    fifo = tmp_path / "lp0"
    os.mkfifo(fifo)
    link = UsbLpTransport(fifo)
    try:
        assert link.read(1, 0.05) == b""
        link.write(b"\x10\x04\x01")
        assert link.read(3, 0.05) == b"\x10\x04\x01"  # a FIFO reads back what was written
    finally:
        link.close()
        link.close()


def test_roots_redirect_dev_paths(tmp_path: Path) -> None:
    """open_transport resolves /dev paths under roots.dev."""
    from drivers.roots import Roots

    roots = Roots(dev=tmp_path)
    with pytest.raises(PortAbsent) as info:
        open_transport("usblp", "/dev/usb/lp0", roots=roots)
    assert str(tmp_path / "usb" / "lp0") in str(info.value)
    with pytest.raises(ValueError):
        open_transport("parallel", "/dev/lp0")


def test_split_host_port() -> None:
    """Printer addresses take host:port, [v6]:port and a bare host (9100)."""
    assert split_host_port("10.0.0.5:9100") == ("10.0.0.5", 9100)
    assert split_host_port("printer.local") == ("printer.local", 9100)
    assert split_host_port("[::1]:9101") == ("::1", 9101)
    assert split_host_port("[fe80::1]") == ("fe80::1", 9100)


# --------------------------------------------------------------------------- fuzz

_items = st.one_of(
    st.binary(min_size=0, max_size=4),
    st.builds(Silence),
    st.builds(Late, st.binary(min_size=1, max_size=3)),
    st.builds(lambda: PortAbsent("gone")),
)


@given(st.integers(min_value=0, max_value=255))
def test_fuzz_validity_rule(value: int) -> None:
    """A byte is valid exactly when bits 0 and 7 are clear and bits 1 and 4 set."""
    expected = (
        not (value & 0x01) and not (value & 0x80) and bool(value & 0x02) and bool(value & 0x10)
    )
    assert is_valid_status_byte(value) is expected
    assert (validate_reply(bytes((value,))) is not None) is expected


@given(st.binary(max_size=8))
def test_fuzz_validate_reply(reply: bytes) -> None:
    """validate_reply never raises and accepts only single valid bytes."""
    value = validate_reply(reply)
    if value is not None:
        assert len(reply) == 1 and is_valid_status_byte(value)


_VALID_BYTES = [b for b in range(256) if is_valid_status_byte(b)]


@given(st.dictionaries(st.sampled_from(ALL_STATUS_QUERIES), st.sampled_from(_VALID_BYTES)))
def test_fuzz_decode_valid_bytes(raw: dict[int, int]) -> None:
    """Any valid bytes decode without error and unqueried flags stay None."""
    status = status_from_raw(raw)
    assert status.state is PrinterLinkState.OK
    if 4 not in raw:
        assert status.paper_end is None
    if 1 in raw:
        assert status.online is not bool(raw[1] & 0x08)


@settings(max_examples=300)
@given(st.lists(_items, max_size=6), st.binary(max_size=4))
def test_fuzz_query_status_never_raises(script: list[object], stale: bytes) -> None:
    """Whatever the printer does, a poll returns a status; ok only if every reply was valid."""
    link = RecordingTransport(script=script, stale=stale)  # type: ignore[arg-type]
    status = query_status(link, timeout_s=0.1, settle_s=0.0)
    answered = script[: len(link.queries)]
    if status.state is PrinterLinkState.OK:
        assert len(answered) == 4
        assert all(isinstance(i, bytes) and validate_reply(i) is not None for i in answered)
    else:
        assert status.failed_n == link.queries[-1]
        assert all(getattr(status, f) is None for f in ("paper_end", "cover_open", "cutter_error"))
