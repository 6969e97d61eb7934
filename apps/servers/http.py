"""HTTP/1.1 on the stack: a server the guest fetches from and uploads to, and a client that
fetches from servers inside the guest.

Two halves, as h11 does it:

- The protocol, without I/O. `Reader` turns the bytes of one direction of a connection into
  events: a `Request` (or a `ResponseHead`), then `Data` chunks, then `EndOfMessage`; it
  answers `NEED_DATA` when it wants more bytes and `ConnectionClosed` after a clean end.
  `response_head` and `request_head` render heads. `route` maps a request to a `Response`
  whose body is an iterable of chunks: streamed, never built whole in memory.
- The I/O, thin (below the line "I/O"): `serve_http` accepts connections on a
  `netstack.net.TcpListener`, a thread each, and pumps bytes between a `TcpStream` and the
  protocol; `http_open` / `http_get` do the same for one request as a client.

The server's routes:

    GET  /          a small HTML page naming the stack
    GET  /bytes/N   N bytes, byte i being i mod 256 (N at most 1 GiB)
    POST /sink      reads the body as it comes and answers "<length> <sha256 hex>\\n"

What the reader accepts (RFC 9112): a request line `METHOD SP target SP HTTP/1.x`, header
fields `name: value` (no obs-fold), CRLF or bare LF line ends, a head of at most 16 KiB in
at most 100 fields. Request bodies need Content-Length: a Transfer-Encoding gets 501 (we do
not decode chunked requests), a POST without a length 411. Responses may be framed by
Content-Length, chunked, or the end of the connection. Any breach raises `HttpError`, whose
`status` is what a server answers before closing.

>>> r = Reader("server")
>>> r.receive_data(b"GET /bytes/3 HTTP/1.1\\r\\nHost: 10.0.2.2\\r\\n\\r\\n")
>>> req = r.next_event()
>>> req.method, req.path, req.keep_alive, r.next_event()
('GET', '/bytes/3', True, EndOfMessage())
>>> resp = route(req, iter(()))
>>> response_head(resp.status, resp.headers, content_length=resp.length, keep_alive=False)
b'HTTP/1.1 200 OK\\r\\nServer: vhostnet\\r\\nContent-Type: application/octet-stream\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\n'
>>> b"".join(resp.body)
b'\\x00\\x01\\x02'
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus
from ipaddress import ip_address
from urllib.parse import urlsplit

from apps.servers.boot import FileSource, file_size, read_chunks
from netstack.net import TcpStream
from netstack.runtime import Runtime

MAX_HEAD = 16 * 1024
MAX_FIELDS = 100
MAX_BYTES = 1 << 40  # the largest /bytes/N (streamed: a long download costs no memory)
CHUNK = 64 * 1024  # body chunks written and read at a time

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (\S+) HTTP/(\d)\.(\d)")
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: (.*))?")
_FIELD_NAME = re.compile(_TOKEN)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;.*)?")


class HttpError(Exception):
    """The peer broke HTTP/1.1 (or asked for what we do not do). `status` is the answer a
    server gives before it closes the connection: 400, 411, 431, 501 or 505."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- events -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Request:
    """A request head. Header names are lower-case; repeated fields are joined by ", "."""

    method: str
    target: str
    version: str  # "1.1" or "1.0"
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int = 0

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless `Connection: close`; 1.0 only on
        `Connection: keep-alive` (RFC 9112 section 9.3)."""
        return _keep_alive(self.version, self.headers)

    @property
    def expects_continue(self) -> bool:
        return self.headers.get("expect", "").lower() == "100-continue"


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A response's status line and header fields (names lower-case)."""

    status: int
    reason: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def keep_alive(self) -> bool:
        return _keep_alive(self.version, self.headers)


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    pass


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    pass


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")

Event = Request | ResponseHead | Data | EndOfMessage | ConnectionClosed


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if "close" in tokens:
        return False
    return version != "1.0" or "keep-alive" in tokens


# -- the reader ---------------------------------------------------------------------------

class _Body(Enum):
    NONE = "no message yet"  # waiting for a head
    LENGTH = "Content-Length"
    CHUNK_SIZE = "chunked: at a size line"
    CHUNK_DATA = "chunked: in chunk data"
    CHUNK_END = "chunked: at the CRLF after chunk data"
    TRAILER = "chunked: in the trailer fields"
    UNTIL_CLOSE = "until the connection closes"


class Reader:
    """Sans-I/O reader of one direction of an HTTP/1.1 connection: requests for a server
    (`Reader("server")`), responses for a client (`Reader("client")`).

    Legal order: `receive_data(bytes)` whenever bytes arrive (b"" when the peer closed its
    side), and `next_event()` until it returns `NEED_DATA`. Per message the events are one
    head, any number of `Data`, one `EndOfMessage`; then the next head (pipelining), or
    `ConnectionClosed` once the peer closed between messages. A client skips interim (1xx)
    heads itself. Raises `HttpError` on malformed input; after that the reader is done.
    """

    def __init__(self, role: str, *, max_head: int = MAX_HEAD) -> None:
        if role not in ("server", "client"):
            raise ValueError("role is 'server' (reads requests) or 'client' (reads responses)")
        self.role = role
        self.max_head = max_head
        self._buf = bytearray()
        self._eof = False
        self._body = _Body.NONE
        self._remaining = 0

    def receive_data(self, data: bytes) -> None:
        if self._eof and data:
            raise RuntimeError("receive_data after the end of the stream")
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def in_body(self) -> bool:
        return self._body is not _Body.NONE

    def next_event(self) -> Event | _Sentinel:
        body = self._body
        if body is _Body.NONE:
            return self._next_head()
        if body is _Body.LENGTH:
            return self._next_length_data()
        if body is _Body.UNTIL_CLOSE:
            if self._buf:
                data = bytes(self._buf)
                self._buf.clear()
                return Data(data)
            if self._eof:
                self._body = _Body.NONE
                return EndOfMessage()
            return NEED_DATA
        return self._next_chunked()

    # heads
    def _next_head(self):
        buf = self._buf
        while buf[:2] == b"\r\n" or buf[:1] == b"\n":  # RFC 9112 2.2: empty lines before a
            del buf[:1 if buf[:1] == b"\n" else 2]     # request line are ignored
        m = _HEAD_END.search(buf)
        if m is None:
            if len(buf) > self.max_head:
                raise HttpError(431, f"the head is longer than {self.max_head} bytes")
            if self._eof:
                if buf:
                    raise HttpError(400, "the connection closed in the middle of a head")
                return ConnectionClosed()
            return NEED_DATA
        if m.end() > self.max_head:
            raise HttpError(431, f"the head is longer than {self.max_head} bytes")
        lines = bytes(buf[:m.start()]).split(b"\n")
        del buf[:m.end()]
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
        headers = _parse_fields(lines[1:])
        if self.role == "server":
            return self._request(lines[0], headers)
        head = self._response(lines[0], headers)
        if 100 <= head.status < 200:
            return self._next_head()  # an interim response: the real one follows
        return head

    def _request(self, line: bytes, headers: dict[str, str]) -> Request:
        m = _REQUEST_LINE.fullmatch(line)
        if m is None:
            raise HttpError(400, f"not a request line: {line[:100]!r}")
        method, target, major, minor = m.groups()
        if major != b"1":
            raise HttpError(505, f"HTTP/{major.decode()}.{minor.decode()} is not supported")
        version = "1.0" if minor == b"0" else "1.1"
        method = method.decode()
        if "transfer-encoding" in headers:
            raise HttpError(501, "Transfer-Encoding request bodies (chunked) are not "
                                 "supported: send a Content-Length")
        length = _content_length(headers)
        if length is None:
            if method in ("POST", "PUT", "PATCH"):
                raise HttpError(411, f"a {method} needs a Content-Length")
            length = 0
        self._start_length(length)
        return Request(method, target.decode("latin-1"), version, headers, length)

    def _response(self, line: bytes, headers: dict[str, str]) -> ResponseHead:
        m = _STATUS_LINE.fullmatch(line)
        if m is None:
            raise HttpError(400, f"not a status line: {line[:100]!r}")
        major, minor, status, reason = m.groups()
        status = int(status)
        head = ResponseHead(status, (reason or b"").decode("latin-1").strip(),
                            f"{major.decode()}.{minor.decode()}", headers)
        # RFC 9112 6.3: no body for 1xx, 204, 304; else chunked, Content-Length, or close
        if 100 <= status < 200 or status in (204, 304):
            self._start_length(0)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._body = _Body.CHUNK_SIZE
        else:
            length = _content_length(headers)
            if length is None:
                self._body = _Body.UNTIL_CLOSE
            else:
                self._start_length(length)
        return head

    def _start_length(self, length: int) -> None:
        self._body = _Body.LENGTH
        self._remaining = length

    # bodies
    def _next_length_data(self):
        if self._remaining == 0:
            self._body = _Body.NONE
            return EndOfMessage()
        buf = self._buf
        if not buf:
            if self._eof:
                raise HttpError(400, f"the connection closed {self._remaining} bytes "
                                     "before the end of the body")
            return NEED_DATA
        n = min(len(buf), self._remaining)
        data = bytes(buf) if n == len(buf) else bytes(buf[:n])
        del buf[:n]
        self._remaining -= n
        return Data(data)

    def _next_chunked(self):
        buf = self._buf
        while True:
            body = self._body
            if body is _Body.CHUNK_DATA:
                if not buf:
                    return self._need(body)
                n = min(len(buf), self._remaining)
                data = bytes(buf[:n])
                del buf[:n]
                self._remaining -= n
                if self._remaining == 0:
                    self._body = _Body.CHUNK_END
                return Data(data)
            line = self._take_line()
            if line is None:
                return self._need(body)
            if body is _Body.CHUNK_END:
                if line:
                    raise HttpError(400, "chunk data longer than its size")
                self._body = _Body.CHUNK_SIZE
            elif body is _Body.CHUNK_SIZE:
                m = _CHUNK_SIZE.fullmatch(line)
                if m is None:
                    raise HttpError(400, f"not a chunk size line: {line[:40]!r}")
                self._remaining = int(m.group(1), 16)
                self._body = _Body.CHUNK_DATA if self._remaining else _Body.TRAILER
            elif not line:  # TRAILER: fields are read and dropped up to the empty line
                self._body = _Body.NONE
                return EndOfMessage()

    def _take_line(self) -> bytes | None:
        i = self._buf.find(b"\n")
        if i < 0:
            if len(self._buf) > self.max_head:
                raise HttpError(400, "a chunk size or trailer line is too long")
            return None
        line = bytes(self._buf[:i])
        del self._buf[:i + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _need(self, body: _Body):
        if self._eof:
            raise HttpError(400, f"the connection closed inside a chunked body ({body.value})")
        return NEED_DATA


def _parse_fields(lines: list[bytes]) -> dict[str, str]:
    if len(lines) > MAX_FIELDS:
        raise HttpError(431, f"more than {MAX_FIELDS} header fields")
    headers: dict[str, str] = {}
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding in a header field")
        name, colon, value = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            raise HttpError(400, f"not a header field: {line[:100]!r}")
        key = name.decode().lower()
        value = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _content_length(headers: dict[str, str]) -> int | None:
    """The Content-Length, or None. A list of equal values counts as one (RFC 9110 8.6)."""
    raw = headers.get("content-length")
    if raw is None:
        return None
    values = {v.strip() for v in raw.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise HttpError(400, f"bad Content-Length: {raw[:40]!r}")
    return int(values.pop())


# -- the writers --------------------------------------------------------------------------

def response_head(status: int, headers: Iterable[tuple[str, str]] = (), *,
                  content_length: int | None, keep_alive: bool) -> bytes:
    """The status line and header fields of a response; Server, Content-Length and
    Connection are added here (None: no Content-Length, for 1xx)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", "Server: vhostnet"]
    lines += [f"{name}: {value}" for name, value in headers]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def request_head(method: str, target: str, host: str,
                 headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A request head; Host and User-Agent are added here."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: vhostnet"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- the routes ---------------------------------------------------------------------------

@dataclass(slots=True)
class Response:
    """What a route answers: the body is an iterable of chunks, `length` bytes in all."""

    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes]
    length: int

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8",
             headers: Iterable[tuple[str, str]] = ()) -> Response:
        data = text.encode()
        return cls(status, [("Content-Type", content_type), *headers], (data,), len(data))


INDEX = """<!DOCTYPE html>
<html><head><title>vhostnet</title></head>
<body>
<h1>vhostnet</h1>
<p>Served by <b>netstack</b>, the Python TCP/IP stack of vhostnet, through a vhost-user
virtio-net backend: this page never touched the host kernel's network stack.</p>
<ul>
<li><a href="/bytes/1048576">GET /bytes/N</a>: N bytes, byte i is i mod 256</li>
<li>POST /sink: answers the body's length and SHA-256</li>
</ul>
<p>You asked for {target}.</p>
</body></html>
"""

_PATTERN = bytes(range(256)) * (CHUNK // 256)


def pattern_chunks(n: int) -> Iterator[bytes]:
    """The body of /bytes/N in CHUNK-sized pieces (every chunk starts at a multiple of 256,
    so each is a prefix of one constant block)."""
    while n > 0:
        k = min(n, CHUNK)
        yield _PATTERN if k == CHUNK else _PATTERN[:k]
        n -= k


def pattern_sha256(n: int) -> str:
    """The SHA-256 (hex) of /bytes/N: what a client checks a download against."""
    h = hashlib.sha256()
    for chunk in pattern_chunks(n):
        h.update(chunk)
    return h.hexdigest()


def sink(body: Iterable[bytes]) -> Response:
    h = hashlib.sha256()
    n = 0
    for chunk in body:
        h.update(chunk)
        n += len(chunk)
    return Response.text(200, f"{n} {h.hexdigest()}\n")


def route(request: Request, body: Iterator[bytes],
          files: Mapping[str, FileSource] | None = None) -> Response:
    """The server's answer to `request`; `body` yields the request body as it arrives (a
    route that does not read it leaves it to the caller to drain). `files` are served at
    /boot/NAME (network boot: apps/servers/boot.py)."""
    path, method = request.path, request.method
    get = method in ("GET", "HEAD")
    if files and path.startswith("/boot/"):
        source = files.get(path[len("/boot/"):])
        if source is None:
            return Response.text(404, f"no such boot file: {request.path}\n")
        if not get:
            return _not_allowed("GET, HEAD")
        try:
            size = file_size(source)
        except OSError as e:
            return Response.text(500, f"{request.path}: {e.strerror}\n")
        return Response(200, [("Content-Type", "application/octet-stream")],
                        read_chunks(source), size)
    if path == "/":
        if not get:
            return _not_allowed("GET, HEAD")
        page = INDEX.format(target=html.escape(request.target))
        return Response.text(200, page, "text/html; charset=utf-8")
    if path.startswith("/bytes/"):
        if not get:
            return _not_allowed("GET, HEAD")
        count = path[len("/bytes/"):]
        if not count.isdigit() or int(count) > MAX_BYTES:
            return Response.text(400, f"/bytes/N takes N from 0 to {MAX_BYTES}\n")
        n = int(count)
        return Response(200, [("Content-Type", "application/octet-stream")],
                        pattern_chunks(n), n)
    if path == "/sink":
        if method != "POST":
            return _not_allowed("POST")
        return sink(body)
    return Response.text(404, f"no such page: {request.path}\n")


def _not_allowed(allow: str) -> Response:
    return Response.text(405, f"allowed here: {allow}\n", headers=[("Allow", allow)])


def error_response(error: HttpError) -> Response:
    return Response.text(error.status, f"{error}\n")


# -- I/O: the server ----------------------------------------------------------------------

DRAIN_LIMIT = 1 << 20  # an unread request body up to this size is read and dropped (the
                       # connection is kept); a larger one closes the connection


def serve_http(runtime: Runtime, stop: threading.Event, port: int = 80, *,
               max_connections: int = 256,
               files: Mapping[str, FileSource] | None = None) -> None:
    """Serve the routes above on `port` until `stop` is set: a thread per connection, at
    most `max_connections` at a time (see `apps.servers.tcpapps.serve_tcp`); `files` at
    /boot/NAME."""
    from apps.servers.tcpapps import serve_tcp

    def http_connection(stream: TcpStream) -> None:
        handle_connection(stream, files)

    serve_tcp(runtime, stop, port, http_connection, max_connections=max_connections)


class RequestBody:
    """A request's body as an iterator of chunks, read from the stream as a route pulls
    them. The first pull sends `100 Continue` when the client waits for it."""

    def __init__(self, stream: TcpStream, request: Request, next_event) -> None:
        self._stream = stream
        self._request = request
        self._next_event = next_event
        self.started = False
        self.done = False
        self.remaining = request.content_length

    def __iter__(self) -> RequestBody:
        return self

    def __next__(self) -> bytes:
        if self.done:
            raise StopIteration
        if not self.started:
            self.started = True
            if self._request.expects_continue and self.remaining:
                self._stream.write_all(response_head(100, content_length=None, keep_alive=True))
        ev = self._next_event()
        if isinstance(ev, Data):
            self.remaining -= len(ev.data)
            return ev.data
        self.done = True  # EndOfMessage
        raise StopIteration


def handle_connection(stream: TcpStream,
                      files: Mapping[str, FileSource] | None = None) -> None:
    """Answer requests on one connection until the client closes it or asks us to."""
    reader = Reader("server")

    def next_event():
        while (ev := reader.next_event()) is NEED_DATA:
            reader.receive_data(stream.read(CHUNK))
        return ev

    while True:
        try:
            request = next_event()
            if isinstance(request, ConnectionClosed):
                return
            body = RequestBody(stream, request, next_event)
            response = route(request, body, files)
        except HttpError as e:  # a bad head, or the body broke off
            send_response(stream, error_response(e), keep_alive=False)
            return
        # a body the route left unread is drained when small, else the connection closes
        # (a client waiting for 100 Continue never sent it: closing is the clean way out)
        keep = request.keep_alive and (body.done or body.remaining <= DRAIN_LIMIT and (
            body.started or not request.expects_continue))
        send_response(stream, response, keep_alive=keep, head_only=request.method == "HEAD")
        if not keep:
            return
        try:
            for _ in body:
                pass
        except HttpError:
            return


def send_response(stream: TcpStream, response: Response, *, keep_alive: bool,
                  head_only: bool = False) -> None:
    head = response_head(response.status, response.headers, content_length=response.length,
                         keep_alive=keep_alive)
    if head_only:
        stream.write_all(head)
        return
    chunks = iter(response.body)
    first = next(chunks, b"")
    if len(first) <= 4096:  # a small body leaves in the head's segment
        stream.write_all(head + first)
    else:
        stream.write_all(head)
        stream.write_all(first)
    for chunk in chunks:
        stream.write_all(chunk)


# -- I/O: the client ----------------------------------------------------------------------

def parse_url(url: str) -> tuple[tuple[str, int], str, str]:
    """`http://HOST[:port]/path?query` as ((host, port), target, Host header). HOST is an
    IPv4 literal or a bracketed IPv6 one (`http://[fd00:10:0:2::15]:8080/`; a `%zone` is
    accepted and ignored): the stack has no DNS resolver."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, not {url!r}")
    try:
        name = (parts.hostname or "").partition("%")[0]
        host = str(ip_address(name))
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"the host of {url!r} must be an IP address and port (the stack has "
                         "no DNS resolver), e.g. http://10.0.2.15:8080/ or "
                         "http://[fd00:10:0:2::15]:8080/") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (host, port), target, parts.netloc.rpartition("@")[2]


class HttpResponse:
    """A response whose body is read from the connection as you iterate `iter_body()` (or
    call `read()`). `status`, `reason` and `headers` (lower-case names) are there at once.
    Close it when done (it is a context manager)."""

    def __init__(self, stream: TcpStream, reader: Reader, head: ResponseHead) -> None:
        self._stream = stream
        self._reader = reader
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers

    def iter_body(self) -> Iterator[bytes]:
        reader = self._reader
        while True:
            ev = reader.next_event()
            if ev is NEED_DATA:
                reader.receive_data(self._stream.read(CHUNK))
            elif isinstance(ev, Data):
                yield ev.data
            else:
                return

    def read(self) -> bytes:
        return b"".join(self.iter_body())

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> HttpResponse:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def http_open(runtime: Runtime, url: str, *, timeout: float | None = 30.0,
              headers: Iterable[tuple[str, str]] = ()) -> HttpResponse:
    """GET `url` over `runtime`'s stack and return once the response head is in; the body
    is read as you iterate it. `timeout` bounds the connect and each wait for data.
    Raises ConnectionRefusedError, TimeoutError, other OSErrors, or HttpError."""
    addr, target, host = parse_url(url)
    stream = TcpStream.connect(runtime, addr, timeout=timeout)
    try:
        stream.set_read_timeout(timeout)
        stream.write_all(request_head("GET", target, host, [("Connection", "close"), *headers]))
        reader = Reader("client")
        while (ev := reader.next_event()) is NEED_DATA:
            reader.receive_data(stream.read(CHUNK))
        if isinstance(ev, ConnectionClosed):
            raise HttpError(502, f"{host} closed the connection without a response")
        return HttpResponse(stream, reader, ev)
    except BaseException:
        stream.close()
        raise


def http_get(runtime: Runtime, url: str, timeout: float | None = 30.0,
             ) -> tuple[int, dict[str, str], bytes]:
    """GET `url`: (status, headers, body), the body whole in memory (for big ones iterate
    `http_open(...).iter_body()`)."""
    with http_open(runtime, url, timeout=timeout) as resp:
        return resp.status, resp.headers, resp.read()
