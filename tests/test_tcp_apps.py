"""The TCP apps: first the sans-I/O HTTP pieces of `apps.servers.http` fed bytes, then every app
served by one stack and used from another over an in-memory link (a Runtime each)."""

from __future__ import annotations

import doctest
import hashlib
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import apps.servers.http
from apps.servers.http import (
    MAX_BYTES,
    NEED_DATA,
    ConnectionClosed,
    Data,
    EndOfMessage,
    HttpError,
    Reader,
    Request,
    ResponseHead,
    http_get,
    http_open,
    parse_url,
    pattern_chunks,
    request_head,
    response_head,
    route,
)
from apps.servers.tcpapps import (
    chargen_lines,
    serve_chargen,
    serve_discard,
    serve_echo,
    serve_echoserver,
)
from netstack.net import TcpStream
from tests.test_net_udp import A_IP, B_IP, link, stack

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
    assert doctest.testmod(apps.servers.http).failed == 0


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


# -- the apps between two stacks --------------------------------------------------------------

APPS = [(serve_echo, 7), (serve_discard, 9), (serve_chargen, 19), (serve_echoserver, 5555),
        (apps.servers.http.serve_http, 80)]


@pytest.fixture(scope="module")
def served():
    """Stack B (10.9.0.2) runs every app, as `Stack.start_apps` does; stack A is the
    client. Yields (client runtime, server runtime)."""
    da, db = link()
    ra, rb = stack(1, A_IP, da), stack(2, B_IP, db)
    ra.start()
    rb.start()
    stop = threading.Event()
    threads = [threading.Thread(target=serve, args=(rb, stop, port), daemon=True)
               for serve, port in APPS]
    for t in threads:
        t.start()
    yield ra, rb
    stop.set()
    for t in threads:
        t.join(2.0)
        assert not t.is_alive()
    for rt in (ra, rb):
        rt.stop()
    da.close()
    db.close()


def connect(rt, port: int) -> TcpStream:
    """Connect to the app on `port`, retrying while its listener is not up yet."""
    deadline = time.monotonic() + 5
    while True:
        try:
            s = TcpStream.connect(rt, (B_IP, port), timeout=5)
            s.set_read_timeout(10)
            return s
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def sha256_of_stream(chunks) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    return n, h.hexdigest()


def test_echo_returns_every_byte(served):
    ra, _ = served
    data = bytes(range(256)) * 4096  # 1 MiB
    with connect(ra, 7) as s:
        writer = threading.Thread(target=lambda: (s.write_all(data), s.shutdown("write")))
        writer.start()
        got = s.read_to_end()
        writer.join()
    assert got == data


def test_discard_reads_everything_then_closes(served):
    ra, _ = served
    with connect(ra, 9) as s:
        s.write_all(b"x" * 500_000)
        s.shutdown("write")
        assert s.read() == b""  # nothing ever comes back; EOF after ours


def test_chargen_pattern_and_it_stops_when_we_close(served):
    ra, rb = served
    with connect(ra, 19) as s:
        got = s.read_exact(3 * 7030)
    assert got == chargen_lines() * 3
    lines = got.split(b"\r\n")
    assert lines[0] == bytes(range(32, 104)) and lines[1] == bytes(range(33, 105))
    assert all(len(line) == 72 for line in lines[:-1])
    # we closed with unread data (a RST): the server's writes fail and its thread ends
    deadline = time.monotonic() + 5
    while any(t.name.startswith("chargen ") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "chargen still writing to a closed peer"
        time.sleep(0.02)


def test_chargen_keeps_going_after_our_half_close(served):
    ra, _ = served
    with connect(ra, 19) as s:
        s.shutdown("write")
        assert len(s.read_exact(100_000)) == 100_000


def test_echoserver_reverses_lines(served):
    ra, _ = served
    with connect(ra, 5555) as s:
        s.write_all(b"hello\nvhost")  # the second line is answered once complete
        assert s.read_exact(6) == b"olleh\n"
        s.write_all(b"net\r\nab")
        assert s.read_exact(10) == b"tentsohv\r\n"
        s.shutdown("write")
        assert s.read_to_end() == b"ba"  # a last line without newline, at our EOF


def test_http_index(served):
    ra, _ = served
    status, headers, body = http_get(ra, f"http://{B_IP}/", timeout=10)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"netstack" in body and int(headers["content-length"]) == len(body)


def test_http_bytes_one_million_by_hash(served):
    ra, _ = served
    with http_open(ra, f"http://{B_IP}/bytes/1000000", timeout=10) as resp:
        assert resp.status == 200
        got = sha256_of_stream(resp.iter_body())
    assert got == (1_000_000, hashlib.sha256(bytes(i % 256 for i in range(1_000_000))).hexdigest())


def test_http_post_sink_5_mib(served):
    ra, _ = served
    body = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)
    head = (f"POST /sink HTTP/1.1\r\nHost: {B_IP}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with connect(ra, 80) as s:
        s.write_all(head)
        s.write_all(body)
        answer = s.read_to_end()
    head, _, text = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in head
    assert text == f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()


def test_http_keep_alive_pipelined_and_errors(served):
    ra, _ = served
    with connect(ra, 80) as s:
        s.write_all(b"GET /bytes/5 HTTP/1.1\r\n\r\n"
                    b"POST /nope HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        reader = Reader("client")
        got = []
        while len([e for e in got if isinstance(e, EndOfMessage)]) < 2:
            got += events(reader, s.read())
        assert [(e.status if isinstance(e, ResponseHead) else e) for e in joined(got)] == [
            200, Data(b"\x00\x01\x02\x03\x04"), EndOfMessage(), 404,
            Data(b"no such page: /nope\n"), EndOfMessage()]
        s.write_all(b"POST /sink HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        interim = s.read_exact(len(b"HTTP/1.1 100 Continue\r\nServer: vhostnet\r\n\r\n"))
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        s.write_all(b"hi")
        assert b"\r\n\r\n2 " + hashlib.sha256(b"hi").hexdigest().encode() in s.read(4096)
        s.write_all(b"POST /sink HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        answer = s.read_to_end()  # we asked for what is not supported: 501, closed
    assert answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n") and b"Connection: close" in answer


def test_http_client_errors(served):
    ra, _ = served
    with pytest.raises(ConnectionRefusedError):
        http_get(ra, f"http://{B_IP}:81/", timeout=5)
    with pytest.raises(ValueError, match="must be an IP address"):
        http_get(ra, "http://example.com/", timeout=5)
    with pytest.raises(ValueError, match="http://"):
        http_get(ra, f"https://{B_IP}/", timeout=5)


def test_many_concurrent_http_clients(served):
    ra, _ = served
    results = []

    def fetch() -> None:
        status, _, body = http_get(ra, f"http://{B_IP}/bytes/20000", timeout=20)
        results.append((status, body == bytes(i % 256 for i in range(20000))))

    threads = [threading.Thread(target=fetch) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [(200, True)] * 50


def test_parse_url_takes_ipv6_literals():
    assert parse_url("http://[fd00:10:0:2::15]:8080/x?y=1") == \
        (("fd00:10:0:2::15", 8080), "/x?y=1", "[fd00:10:0:2::15]:8080")
    assert parse_url("http://[fe80::1%25eth0]/")[0] == ("fe80::1", 80)
    with pytest.raises(ValueError, match="IP address"):
        parse_url("http://example.com/")


def test_http_and_echo_over_ipv6_link_local(served):
    """The apps listen on :: — the same servers answer over IPv6 (B's link-local address,
    derived from its MAC)."""
    ra, rb = served
    b6 = rb.iface.link_local6
    with http_open(ra, f"http://[{b6}]/bytes/300000", timeout=10) as resp:
        assert resp.status == 200
        got = sha256_of_stream(resp.iter_body())
    assert got == (300_000, hashlib.sha256(bytes(i % 256 for i in range(300_000))).hexdigest())
    with TcpStream.connect(ra, (str(b6), 7), timeout=5) as s:  # TCP echo, same listener
        s.set_read_timeout(10)
        s.write_all(b"ping6")
        assert s.read_exact(5) == b"ping6"
        assert s.peer_addr()[0] == str(b6)
