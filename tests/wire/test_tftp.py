"""TFTP: byte vectors checked against scapy both ways, the parse rules (case, duplicates,
padding, missing terminators), emit into pre-filled buffers, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.tftp import (
    TFTP,
    TFTP_ACK,
    TFTP_DATA,
    TFTP_ERROR,
    TFTP_OACK,
    TFTP_RRQ,
    TFTP_WRQ,
    TFTP_Option,
    TFTP_Options,
)
from scapy.packet import raw

from netstack.wire import Error
from netstack.wire.tftp import (
    AckRepr,
    DataRepr,
    ErrorCode,
    ErrorRepr,
    OackRepr,
    Opcode,
    RequestRepr,
    TftpPacket,
    parse,
)

# TFTP()/TFTP_RRQ(filename="pxelinux.0", mode="octet")/TFTP_Options(blksize=1468, tsize=0)
RRQ = b"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00tsize\x000\x00"
# TFTP()/TFTP_WRQ(filename="up.bin", mode="netascii")
WRQ = b"\x00\x02up.bin\x00netascii\x00"
# TFTP()/TFTP_DATA(block=0x1234)/b"hello"
DATA = b"\x00\x03\x12\x34hello"
# TFTP()/TFTP_ACK(block=65535)
ACK = b"\x00\x04\xff\xff"
# TFTP()/TFTP_ERROR(errorcode=1, errormsg="File not found")
ERROR = b"\x00\x05\x00\x01File not found\x00"
# TFTP()/TFTP_OACK()/TFTP_Options(blksize=1024, windowsize=16)
OACK = b"\x00\x06blksize\x001024\x00windowsize\x0016\x00"


def opts(**kw) -> TFTP_Options:
    return TFTP_Options(options=[TFTP_Option(oname=k, value=str(v)) for k, v in kw.items()])


def test_vectors_are_what_scapy_builds():
    assert raw(TFTP() / TFTP_RRQ(filename="pxelinux.0", mode="octet")
               / opts(blksize=1468, tsize=0)) == RRQ
    assert raw(TFTP() / TFTP_WRQ(filename="up.bin", mode="netascii")) == WRQ
    assert raw(TFTP() / TFTP_DATA(block=0x1234) / b"hello") == DATA
    assert raw(TFTP() / TFTP_ACK(block=65535)) == ACK
    assert raw(TFTP() / TFTP_ERROR(errorcode=1, errormsg="File not found")) == ERROR
    assert raw(TFTP() / TFTP_OACK() / opts(blksize=1024, windowsize=16)) == OACK


def test_parse_vectors():
    assert parse(RRQ) == RequestRepr(Opcode.RRQ, "pxelinux.0", "octet",
                                     (("blksize", "1468"), ("tsize", "0")))
    assert parse(WRQ) == RequestRepr(Opcode.WRQ, "up.bin", "netascii")
    assert parse(DATA) == DataRepr(0x1234, b"hello")
    assert parse(ACK) == AckRepr(65535)
    assert parse(ERROR) == ErrorRepr(ErrorCode.FILE_NOT_FOUND, "File not found")
    assert parse(OACK) == OackRepr((("blksize", "1024"), ("windowsize", "16")))


def test_packet_view_fields():
    p = TftpPacket.new_checked(DATA)
    assert (p.opcode, p.block, bytes(p.payload)) == (3, 0x1234, b"hello")
    p = TftpPacket.new_checked(ERROR)
    assert (p.opcode, p.error_code) == (5, 1)
    p = TftpPacket.new_checked(RRQ)
    assert p.strings() == ["pxelinux.0", "octet", "blksize", "1468", "tsize", "0"]
    buf = bytearray(ACK)
    p = TftpPacket(buf)
    p.block = 7
    p.opcode = Opcode.ACK
    assert bytes(buf) == b"\x00\x04\x00\x07"


def test_emit_matches_vectors_and_scapy_reads_it():
    reprs = [parse(v) for v in (RRQ, WRQ, DATA, ACK, ERROR, OACK)]
    for r, vector in zip(reprs, (RRQ, WRQ, DATA, ACK, ERROR, OACK), strict=True):
        assert r.to_bytes() == vector
    rrq = TFTP(RRQ)
    assert rrq[TFTP_RRQ].filename == b"pxelinux.0" and rrq[TFTP_RRQ].mode == b"octet"
    assert [(o.oname, o.value) for o in rrq[TFTP_Options].options] == [
        (b"blksize", b"1468"), (b"tsize", b"0")]
    err = TFTP(ErrorRepr(ErrorCode.UNKNOWN_TID, "unknown transfer ID").to_bytes())
    assert err[TFTP_ERROR].errorcode == 5 and err[TFTP_ERROR].errormsg == b"unknown transfer ID"
    data = TFTP(DataRepr(0, b"\x00" * 512).to_bytes())
    assert data[TFTP_DATA].block == 0 and len(raw(data[TFTP_DATA].payload)) == 512


def test_emit_writes_every_byte_and_nothing_past():
    for r in (parse(RRQ), parse(DATA), AckRepr(1), parse(ERROR), parse(OACK)):
        outs = []
        for fill in (0xA5, 0x5A):
            buf = bytearray([fill]) * (r.buffer_len() + 3)
            r.emit(TftpPacket(buf))
            assert buf[-3:] == bytes([fill]) * 3
            outs.append(bytes(buf[:-3]))
        assert outs[0] == outs[1], f"{r} left bytes unwritten"
    with pytest.raises(ValueError):
        parse(RRQ).emit(TftpPacket(bytearray(10)))


def test_mode_and_option_names_are_case_insensitive_values_kept():
    r = parse(b"\x00\x01File.BIN\x00OcTeT\x00BlkSize\x00512\x00TSIZE\x00Zero\x00")
    assert r.filename == "File.BIN" and r.mode == "octet"
    assert r.options == (("blksize", "512"), ("tsize", "Zero"))
    assert r.option("BLKSIZE") == "512" and r.option("windowsize") is None


def test_duplicate_options_keep_the_first():
    r = parse(b"\x00\x01f\x00octet\x00blksize\x001024\x00BLKSIZE\x00512\x00")
    assert r.options == (("blksize", "1024"),)
    assert RequestRepr(Opcode.RRQ, "f", options=[("a", "1"), ("A", "2")]).options == (("a", "1"),)


def test_nul_padding_after_the_options_is_ignored():
    base = b"\x00\x01f\x00octet\x00tsize\x000\x00"
    assert parse(base + b"\x00" * 20) == parse(base)
    assert parse(b"\x00\x01f\x00octet\x00\x00\x00").options == ()
    with pytest.raises(Error):  # an empty name followed by more options
        parse(b"\x00\x01f\x00octet\x00\x00blksize\x00512\x00")


def test_option_with_empty_value_is_a_pair():
    assert parse(b"\x00\x01f\x00octet\x00tsize\x00\x00").options == (("tsize", ""),)


def test_latin1_file_names_round_trip():
    name = "b\xf6\xf6t/\xe9\xff".encode("latin-1")
    wire = b"\x00\x01" + name + b"\x00octet\x00"
    r = parse(wire)
    assert r.filename.encode("latin-1") == name
    assert r.to_bytes() == wire
    utf8 = "ü.efi".encode()
    assert parse(b"\x00\x01" + utf8 + b"\x00octet\x00").filename.encode("latin-1") == utf8


@pytest.mark.parametrize("bad", [
    b"",  # nothing
    b"\x00",  # half an opcode
    b"\x00\x00\x00\x00",  # opcode 0
    b"\x00\x07\x00\x01",  # opcode 7
    b"\xff\xff",
    b"\x00\x01",  # RRQ without strings
    b"\x00\x01file",  # file name without NUL
    b"\x00\x01file\x00",  # no mode
    b"\x00\x01file\x00octet",  # mode without NUL
    b"\x00\x01file\x00octet\x00blksize\x00",  # option without a value
    b"\x00\x01file\x00octet\x00blksize\x00512",  # value without NUL
    b"\x00\x02file\x00octet\x00a\x00",  # WRQ alike
    b"\x00\x03\x00",  # DATA without a whole block number
    b"\x00\x03",
    b"\x00\x04\x00",  # ACK alike
    b"\x00\x05\x00",  # ERROR without a whole code
    b"\x00\x06blksize\x00",  # OACK option without value
    b"\x00\x06blksize",
])
def test_malformed(bad):
    with pytest.raises(Error):
        parse(bad)


def test_lenient_cases():
    assert parse(b"\x00\x03\x00\x01") == DataRepr(1, b"")  # an empty block
    assert parse(b"\x00\x04\x00\x02trailing") == AckRepr(2)
    assert parse(b"\x00\x05\x00\x02no terminator") == ErrorRepr(2, "no terminator")
    assert parse(b"\x00\x05\x00\x00msg\x00junk") == ErrorRepr(0, "msg")
    assert parse(b"\x00\x05\x00\x63\x00").code == 99  # unknown codes kept as ints
    assert parse(b"\x00\x06") == OackRepr()
    assert parse(b"\x00\x01\x00\x00") == RequestRepr(Opcode.RRQ, "", "")


def test_reprs_refuse_what_cannot_be_emitted():
    with pytest.raises(ValueError):
        RequestRepr(Opcode.DATA, "f")
    with pytest.raises(ValueError):
        RequestRepr(Opcode.RRQ, "a\0b").to_bytes()
    with pytest.raises(ValueError):
        OackRepr({"blksize": "5\x0012"}).to_bytes()
    with pytest.raises(ValueError):
        ErrorRepr(0, "\u20ac").to_bytes()  # not latin-1


def test_docstring_examples():
    import doctest

    import netstack.wire.tftp as mod

    result = doctest.testmod(mod)
    assert result.attempted == 3 and result.failed == 0


def test_class_parse_checks_the_opcode():
    with pytest.raises(Error):
        AckRepr.parse(TftpPacket(DATA))
    with pytest.raises(Error):
        RequestRepr.parse(TftpPacket(OACK))
    with pytest.raises(Error):
        DataRepr.parse(TftpPacket(ACK))


_text = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=20)
_reprs = st.one_of(
    st.builds(RequestRepr, st.sampled_from([Opcode.RRQ, Opcode.WRQ]), _text, _text,
              st.lists(st.tuples(_text.filter(bool), _text), max_size=5)),
    st.builds(DataRepr, st.integers(0, 0xFFFF), st.binary(max_size=600)),
    st.builds(AckRepr, st.integers(0, 0xFFFF)),
    st.builds(ErrorRepr, st.integers(0, 0xFFFF), _text),
    st.builds(OackRepr, st.lists(st.tuples(_text.filter(bool), _text), max_size=5)),
)


@given(_reprs)
def test_emit_parse_round_trip(r):
    wire = r.to_bytes()
    assert len(wire) == r.buffer_len()
    assert parse(wire) == r
    assert parse(wire).to_bytes() == wire


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_error(data):
    try:
        parse(data)
    except Error:
        pass


@given(st.sampled_from([RRQ, WRQ, DATA, ACK, ERROR, OACK]), st.integers(0, 60),
       st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), max_size=4))
def test_mutated_vectors_parse_or_error(base, cut, flips):
    buf = bytearray(base[:cut] if cut < len(base) else base)
    for i, v in flips:
        if i < len(buf):
            buf[i] = v
    try:
        r = parse(bytes(buf))
    except Error:
        return
    assert parse(r.to_bytes()) == r  # whatever parses, emits to something that parses alike
