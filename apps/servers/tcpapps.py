"""The classic TCP services on the stack, each a short program on the blocking API
(`netstack.net.TcpListener` / `TcpStream`): read them as examples.

- echo (RFC 862) on port 7: every byte goes back.
- discard (RFC 863) on port 9: every byte is read and dropped.
- chargen (RFC 864) on port 19: the rotating 72-character lines until the peer closes.
- echoserver on port 5555, as ArceOS's example app: each line comes back reversed.

`serve_tcp` is their common accept loop: a thread per connection, at most `max_connections`
at a time (more wait in the listener's backlog). A read or a write that waits
`idle_timeout` resets the connection (a client that sends and never reads held 2 MiB and
a slot forever). When `stop` is set it stops accepting and closes every open connection,
which ends their threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from netstack.net import TcpListener, TcpStream
from netstack.runtime import Runtime

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
POLL = 0.5  # how often a waiting accept loop looks at `stop`
IDLE_TIMEOUT = 300.0  # a read or write that waits this long resets the connection
MAX_LINE = 64 * 1024  # the echoserver reverses longer lines in pieces of this size
# Socket buffers of the apps' connections. The TCG guest acknowledges slowly, so the bytes
# in flight, not our CPU, bound a download: 1 MiB took `bench vm` from ~3.4 to ~4.5 Gbit/s
# down against 256 KiB (2 and 4 MiB were no better). Buffers grow only as they fill.
APP_BUFFER = 1 << 20


def serve_tcp(runtime: Runtime, stop: threading.Event, port: int,
              handle: Callable[[TcpStream], None], *, max_connections: int = 256,
              idle_timeout: float | None = IDLE_TIMEOUT) -> None:
    """Accept on `port` until `stop` is set; `handle(stream)` runs in a thread of its own for
    each connection, which is closed when it returns. OSErrors (reset, timeout, closed at
    stop) end a connection quietly."""
    slots = threading.BoundedSemaphore(max_connections)
    streams: set[TcpStream] = set()
    lock = threading.Lock()

    def run(stream: TcpStream) -> None:
        try:
            with stream:
                try:
                    handle(stream)
                except TimeoutError:
                    # idle: a read or a write waited `idle_timeout` (a peer that stops
                    # reading holds our buffers, and a slot, until then): reset it
                    stream.set_linger_abort(True)
                    raise
        except OSError as e:
            log.debug("%s on port %d: %s", handle.__name__, port, e)
        finally:
            with lock:
                streams.discard(stream)
            slots.release()

    with TcpListener.bind(runtime, ("::", port), rx_buffer_size=APP_BUFFER,
                          tx_buffer_size=APP_BUFFER) as listener:  # both families
        listener.set_timeout(POLL)
        while not stop.is_set():
            if not slots.acquire(timeout=POLL):
                continue
            try:
                stream, peer = listener.accept()
            except TimeoutError:
                slots.release()
                continue
            stream.set_read_timeout(idle_timeout)
            stream.set_write_timeout(idle_timeout)  # a peer that stops reading, too
            with lock:
                streams.add(stream)
            threading.Thread(target=run, args=(stream,), daemon=True,
                             name=f"{handle.__name__} {peer[0]}:{peer[1]}").start()
    with lock:
        for stream in list(streams):
            stream.close()


def echo(stream: TcpStream) -> None:
    while data := stream.read(CHUNK):
        stream.write_all(data)


def discard(stream: TcpStream) -> None:
    while stream.read(CHUNK):
        pass


def chargen_lines() -> bytes:
    """One period of RFC 864's pattern: 95 lines of 72 characters and CRLF, line k starting
    at the k-th of the 95 printable ASCII characters."""
    printable = bytes(range(32, 127)) * 2
    return b"".join(printable[k:k + 72] + b"\r\n" for k in range(95))


def chargen(stream: TcpStream) -> None:
    """Send the pattern until the peer closes (our writes then fail: reset, broken pipe).
    What the peer sends is never read, and a peer that only shuts down its sending side
    still gets characters, as RFC 864 says."""
    period = chargen_lines()
    while True:
        stream.write_all(period)


def reverse_lines(stream: TcpStream) -> None:
    """ArceOS's echoserver: each line back reversed (its newline stays at the end). A line
    is answered once complete; a last line without newline at the end of the stream."""
    pending = bytearray()
    while data := stream.read(CHUNK):
        pending += data
        end = pending.rfind(b"\n") + 1
        if end == 0 and len(pending) >= MAX_LINE:
            end = len(pending)
        if end:
            stream.write_all(_reversed_lines(pending[:end]))
            del pending[:end]
    if pending:
        stream.write_all(_reversed_lines(pending))


def _reversed_lines(block: bytes | bytearray) -> bytes:
    return b"\n".join(_reversed(line) for line in bytes(block).split(b"\n"))


def _reversed(line: bytes) -> bytes:
    """The line reversed; a CR before the newline stays where it was."""
    return line[-2::-1] + b"\r" if line.endswith(b"\r") else line[::-1]


def serve_echo(runtime: Runtime, stop: threading.Event, port: int = 7) -> None:
    serve_tcp(runtime, stop, port, echo)


def serve_discard(runtime: Runtime, stop: threading.Event, port: int = 9) -> None:
    serve_tcp(runtime, stop, port, discard)


def serve_chargen(runtime: Runtime, stop: threading.Event, port: int = 19) -> None:
    serve_tcp(runtime, stop, port, chargen)


def serve_echoserver(runtime: Runtime, stop: threading.Event, port: int = 5555) -> None:
    serve_tcp(runtime, stop, port, reverse_lines)
