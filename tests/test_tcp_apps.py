"""The TCP apps: first the sans-I/O HTTP pieces of `apps.http` fed bytes, then every app
served by one stack and used from another over an in-memory link (a Runtime each)."""

from __future__ import annotations

import doctest
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import apps.http
from apps.http import (
    MAX_BYTES,
    NEED_DATA,
    ConnectionClosed,
    Data,
    EndOfMessage,
    HttpError,
    Reader,
    Request,
    ResponseHead,
    pattern_chunks,
    request_head,
    response_head,
    route,
)

GET = b"GET /bytes/10 HTTP/1.1\r\nHost: 10.0.2.2\r\nUser-Agent: Wget\r\n\r\n"
POST = b"POST /sink HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"


def events(reader: Reader, data: bytes = b"", *, eof: bool = False) -> list:
    """Feed `data` (then the end of the stream) and collect events up to NEED_DATA."""
    if data:
        reader.receive_data(data)
    if eof:
        reader.receive_data(b"")
    out = []
    while True:
        ev = reader.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            return out


def joined(evs: list) -> list:
    """Events with adjacent Data merged (how a body is cut depends on the feeding)."""
    out: list = []
    for ev in evs:
        if isinstance(ev, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def bytewise(reader: Reader, data: bytes) -> list:
    evs = []
    for i in range(len(data)):
        evs += events(reader, data[i:i + 1])
    return joined(evs)


def test_module_doctest():
    assert doctest.testmod(apps.http).failed == 0


# -- requests -----------------------------------------------------------------------------

def test_get_request_whole_and_byte_at_a_time():
    expected = [Request("GET", "/bytes/10", "1.1", {"host": "10.0.2.2", "user-agent": "Wget"}),
                EndOfMessage()]
    assert events(Reader("server"), GET) == expected
    assert bytewise(Reader("server"), GET) == expected


def test_post_body_whole_and_byte_at_a_time():
    head = Request("POST", "/sink", "1.1", {"host": "h", "content-length": "5"}, 5)
    expected = [head, Data(b"hello"), EndOfMessage()]
    assert events(Reader("server"), POST) == expected
    assert bytewise(Reader("server"), POST) == expected


def test_pipelined_requests_then_close():
    r = Reader("server")
    evs = events(r, POST + GET + b"\r\n" + GET, eof=True)
    kinds = [type(e).__name__ for e in evs]
    assert kinds == ["Request", "Data", "EndOfMessage", "Request", "EndOfMessage",
                     "Request", "EndOfMessage", "ConnectionClosed"]


def test_bare_lf_line_ends_and_repeated_fields():
    r = Reader("server")
    [req, _] = events(r, b"GET / HTTP/1.1\nA: 1\nA: 2\nX-Empty:\n\n")
    assert req.headers == {"a": "1, 2", "x-empty": ""}


@pytest.mark.parametrize("version, connection, keep", [
    ("1.1", None, True), ("1.1", "close", False), ("1.1", "Keep-Alive, Close", False),
    ("1.0", None, False), ("1.0", "keep-alive", True),
])
def test_keep_alive_rules(version, connection, keep):
    head = f"GET / HTTP/{version}\r\n" + (f"Connection: {connection}\r\n" if connection else "")
    [req, _] = events(Reader("server"), head.encode() + b"\r\n")
    assert req.keep_alive is keep


def test_expect_100_continue_is_seen():
    [req] = events(Reader("server"),
                   b"POST /sink HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
    assert req.expects_continue


@pytest.mark.parametrize("data, status", [
    (b"POST /sink HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"POST /sink HTTP/1.1\r\nHost: h\r\n\r\n", 411),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad name: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 101 + b"\r\n", 431),
])
def test_bad_requests_get_their_status(data, status):
    with pytest.raises(HttpError) as e:
        events(Reader("server"), data)
    assert e.value.status == status


def test_equal_content_lengths_count_as_one():
    [req, data, _] = events(Reader("server"),
                            b"POST /sink HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nhi")
    assert req.content_length == 2 and data == Data(b"hi")


def test_head_limit_applies_before_the_end_is_seen():
    r = Reader("server", max_head=1024)
    r.receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 1000)
    assert r.next_event() is NEED_DATA
    r.receive_data(b"a" * 100)
    with pytest.raises(HttpError) as e:
        r.next_event()
    assert e.value.status == 431


def test_eof_inside_a_head_or_body_is_an_error():
    with pytest.raises(HttpError, match="middle of a head"):
        events(Reader("server"), b"GET / HTTP/1.1\r\n", eof=True)
    with pytest.raises(HttpError, match="2 bytes before the end"):
        events(Reader("server"), POST[:-2], eof=True)
    assert events(Reader("server"), b"", eof=True) == [ConnectionClosed()]


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_http_error(data):
    for role in ("server", "client"):
        try:
            events(Reader(role), data, eof=True)
        except HttpError:
            pass


# -- responses (the client's side) -----------------------------------------------------------

def test_response_with_content_length_then_keep_alive():
    r = Reader("client")
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: x\r\n\r\nabc"
    assert bytewise(r, data) == [
        ResponseHead(200, "OK", "1.1", {"content-length": "3", "content-type": "x"}),
        Data(b"abc"), EndOfMessage()]


def test_chunked_response_with_extensions_and_trailer():
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\nTrailer: t\r\n\r\n")
    for evs in (events(Reader("client"), data), bytewise(Reader("client"), data)):
        evs = joined(evs)
        assert evs[1:] == [Data(b"hello" + b"z" * 26), EndOfMessage()]


def test_chunked_response_errors():
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(HttpError, match="chunk size"):
        events(Reader("client"), bad + b"xyz\r\n")
    with pytest.raises(HttpError, match="longer than its size"):
        events(Reader("client"), bad + b"1\r\nab\r\n")
    with pytest.raises(HttpError, match="inside a chunked body"):
        events(Reader("client"), bad + b"5\r\nab", eof=True)


def test_response_until_close_and_interim_and_no_body_statuses():
    r = Reader("client")
    evs = events(r, b"HTTP/1.0 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nsome", eof=True)
    assert [type(e) for e in evs] == [ResponseHead, Data, EndOfMessage, ConnectionClosed]
    assert evs[0].status == 200 and not evs[0].keep_alive
    for status in (204, 304):
        evs = events(Reader("client"), b"HTTP/1.1 %d X\r\n\r\n" % status)
        assert [type(e) for e in evs] == [ResponseHead, EndOfMessage]


def test_status_line_without_reason():
    [head, _] = events(Reader("client"), b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n")
    assert (head.status, head.reason) == (404, "")


# -- writers and routes -------------------------------------------------------------------

def test_heads():
    assert response_head(404, [("Content-Type", "text/plain")], content_length=0,
                         keep_alive=True) == (b"HTTP/1.1 404 Not Found\r\nServer: vhostnet\r\n"
                                              b"Content-Type: text/plain\r\n"
                                              b"Content-Length: 0\r\n\r\n")
    assert response_head(100, content_length=None, keep_alive=True) == \
        b"HTTP/1.1 100 Continue\r\nServer: vhostnet\r\n\r\n"
    assert request_head("GET", "/x", "10.0.2.15:8080", [("Connection", "close")]) == (
        b"GET /x HTTP/1.1\r\nHost: 10.0.2.15:8080\r\nUser-Agent: vhostnet\r\n"
        b"Connection: close\r\n\r\n")


def request(method: str, target: str) -> Request:
    return Request(method, target, "1.1", {})


def body_of(resp) -> bytes:
    data = b"".join(resp.body)
    assert len(data) == resp.length
    return data


def test_index_names_the_stack_and_escapes_the_target():
    resp = route(request("GET", "/?<script>"), iter(()))
    page = body_of(resp).decode()
    assert resp.status == 200 and "netstack" in page and "vhostnet" in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert ("Content-Type", "text/html; charset=utf-8") in resp.headers


def test_bytes_route_streams_the_pattern():
    resp = route(request("GET", "/bytes/1000000"), iter(()))
    assert resp.status == 200 and resp.length == 1_000_000
    chunks = list(resp.body)
    assert max(map(len, chunks)) <= 64 * 1024
    data = b"".join(chunks)
    assert data == bytes(i % 256 for i in range(1_000_000))
    assert body_of(route(request("HEAD", "/bytes/0"), iter(()))) == b""


def test_bytes_route_is_lazy_and_capped():
    gen = pattern_chunks(MAX_BYTES)
    assert len(next(gen)) == 64 * 1024  # a generator: nothing built in memory
    assert route(request("GET", f"/bytes/{MAX_BYTES + 1}"), iter(())).status == 400
    assert route(request("GET", "/bytes/-1"), iter(())).status == 400
    assert route(request("GET", "/bytes/abc"), iter(())).status == 400


def test_sink_hashes_the_streamed_body():
    chunks = [b"a" * 1000, b"b" * 7, b""]
    resp = route(Request("POST", "/sink", "1.1", {}, 1007), iter(chunks))
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    assert (resp.status, body_of(resp)) == (200, f"1007 {digest}\n".encode())


def test_not_found_and_wrong_methods():
    assert route(request("GET", "/nope"), iter(())).status == 404
    resp = route(request("GET", "/sink"), iter(()))
    assert resp.status == 405 and ("Allow", "POST") in resp.headers
    assert route(request("POST", "/"), iter(())).status == 405
