"""The far end of the gateway tests, run with the kernel's own sockets (in a namespace the
test made, or on the host's loopback): an HTTP server and a UDP echo server on both
families.

    python -m tests.gateway.peer HTTP_PORT UDP_PORT [BIND4 [BIND6]]

HTTP: `GET /bytes/N` sends N bytes of a fixed pattern (`pattern(N)`), `POST /sink`
answers the SHA-256 of the body, `GET /peer` answers the client's address and port (the
address the server saw). UDP: every datagram is echoed to its sender. Prints "ready" once
every socket is bound.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 256  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


def pattern_sha256(n: int) -> str:
    return hashlib.sha256(pattern(n)).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/bytes/"):
            body = pattern(int(self.path.split("/")[2]))
        elif self.path == "/peer":
            body = f"{self.client_address[0]} {self.client_address[1]}\n".encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        while n:
            chunk = self.rfile.read(min(n, 1 << 16))
            if not chunk:
                break
            h.update(chunk)
            n -= len(chunk)
        body = (h.hexdigest() + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


class Server4(ThreadingHTTPServer):
    daemon_threads = True


def udp_echo(family: int, addr: str, port: int) -> None:
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))

    def loop() -> None:
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(data, peer)

    threading.Thread(target=loop, daemon=True).start()


def main() -> None:
    http_port, udp_port = int(sys.argv[1]), int(sys.argv[2])
    bind4 = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"
    bind6 = sys.argv[4] if len(sys.argv) > 4 else "::"
    Server6.allow_reuse_address = Server4.allow_reuse_address = True
    servers = [Server4((bind4, http_port), Handler)]
    if bind6 != "-":
        class V6Only(Server6):
            def server_bind(self) -> None:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                super().server_bind()

        servers.append(V6Only((bind6, http_port), Handler))
    udp_echo(socket.AF_INET, bind4, udp_port)
    if bind6 != "-":
        udp_echo(socket.AF_INET6, bind6, udp_port)
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
