"""`vhostnet bench table`: what a big socket table costs (100,000 sockets by default).

Our interface with a TCP listener on port 80 is driven sans-I/O (a fake device, no
threads): N clients open connections by real handshakes — SYNs and final ACKs built as
frames, the SYN-ACKs read back from the device — and the connections are accepted into
the socket table, a third of them then closed by us and orphaned into TIME-WAIT. Then,
with the table full, and again with 10 sockets for comparison:

- a segment for an unknown 4-tuple (answered with a RST), µs;
- a segment for a live connection (an ACK it takes), µs;
- a poll with nothing due, µs;
- memory per connection (tracemalloc, while building), bytes;
- the time to build the table, seconds.
"""

from __future__ import annotations

import gc
import struct
import time
import tracemalloc
from collections import deque
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address

from netstack.iface import Interface, InterfaceConfig
from netstack.phy import ChecksumCapabilities, DeviceCapabilities
from netstack.socket.limits import Limits
from netstack.socket.set import SocketSet
from netstack.socket.tcp.listener import TcpListener
from netstack.socket.tcp.state import State
from netstack.wire.ethernet import EthernetAddress
from netstack.wire.ipv4 import Ipv4Cidr
from netstack.wire.tcp import ACK, SYN, TcpPacket, TcpRepr

OUR_MAC = EthernetAddress.parse("02:00:00:00:00:01")
PEER_MAC = b"\x02\x00\x00\x00\x00\x02"
OUR_IP = IPv4Address("10.0.0.1")
PORT = 80


class _Rx:
    __slots__ = ("frame",)

    def __init__(self, frame: bytes) -> None:
        self.frame = frame

    def consume(self, fn):
        return fn(memoryview(self.frame))  # (read-only: the stack never writes a frame)


class _Tx:
    __slots__ = ("dev",)

    def __init__(self, dev: FakeDevice) -> None:
        self.dev = dev

    def consume(self, length: int, fn):
        buf = bytearray(length)
        r = fn(memoryview(buf))
        self.dev.tx.append(buf)
        return r


class FakeDevice:
    """Frames to receive in `rx`; what the interface sends lands in `tx`. Checksums are
    left to the "device" both ways (the benchmark measures the table, not checksums)."""

    def __init__(self) -> None:
        self.rx: deque[bytes] = deque()
        self.tx: list[bytearray] = []
        self._tx_token = _Tx(self)  # (one will do: it keeps nothing between frames)
        self.caps = DeviceCapabilities(mtu=1500, checksum=ChecksumCapabilities(
            ipv4=True, udp=True, tcp=True, icmp=True))

    def capabilities(self) -> DeviceCapabilities:
        return self.caps

    def receive(self, now):
        if not self.rx:
            return None
        return _Rx(self.rx.popleft()), self._tx_token

    def transmit(self, now):
        return self._tx_token


def _frame(src: IPv4Address, sport: int, seq: int, ack: int, flags: int) -> bytes:
    """Ethernet + IPv4 + a 20-byte TCP header from `src`:`sport` to us, port 80."""
    tcp = TcpRepr(sport, PORT, seq, ack if flags & ACK else None, flags, 65535)
    seg = bytearray(tcp.buffer_len())
    tcp.emit(TcpPacket(seg), src, OUR_IP, False)  # (checksum left to the device)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, 6, 0,
                     src.packed, OUR_IP.packed)
    return bytes(OUR_MAC) + PEER_MAC + b"\x08\x00" + ip + bytes(seg)


def _tcp_of(frame: bytes) -> TcpRepr | None:
    """The TCP header of an IPv4 frame we sent (others: None)."""
    if frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    ihl = (frame[14] & 15) * 4
    return TcpRepr.parse(TcpPacket(frame[14 + ihl:]), OUR_IP, OUR_IP, False)


def _client(i: int) -> tuple[IPv4Address, int]:
    return IPv4Address("10.0.0.2") + i // 60000, 1024 + i % 60000


@dataclass
class TableResult:
    sockets: int
    established: int
    time_wait: int
    build_seconds: float
    bytes_per_connection: float
    unknown_segment_us: float
    live_segment_us: float
    idle_poll_us: float
    insert_seconds: float  # the table alone: n sockets added and indexed, no handshakes


def _build(n: int, measure_memory: bool):
    """An interface with a listener and `n` connections opened by handshakes; a third
    closed by us and orphaned (TIME-WAIT once the peer's FIN comes)."""
    sockets = SocketSet(Limits(max_sockets=n + 16, max_tw_buckets=n, max_orphans=n))
    cidrs = [Ipv4Cidr(OUR_IP, 8)]
    iface = Interface(InterfaceConfig(OUR_MAC, cidrs, ipv6=False))
    dev = FakeDevice()
    listener = TcpListener(1024, max_half_open=4096, syn_cookies=False)
    listener.listen((OUR_IP, PORT))
    sockets.add(listener)
    now = 0.0
    iface.poll(now, dev, sockets)
    # the peers' MACs, so our replies need no ARP
    for k in range(n // 60000 + 1):
        iface.neighbors.fill(IPv4Address("10.0.0.2") + k, EthernetAddress(PEER_MAC), now)
    if measure_memory:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    build = 0.0  # the stack's time: the frames are made and read outside it
    clock = time.perf_counter
    conns = []
    batch = 256
    for start in range(0, n, batch):
        ids = range(start, min(n, start + batch))
        for i in ids:
            ip, port = _client(i)
            dev.rx.append(_frame(ip, port, 1000, 0, SYN))
        t0 = clock()
        _drain(iface, dev, sockets, now)
        build += clock() - t0
        isns = {}
        for f in dev.tx:  # our SYN-ACKs
            seg = _tcp_of(f)
            if seg is not None:
                isns[seg.dst_port] = seg.seq_number
        dev.tx.clear()
        for i in ids:
            ip, port = _client(i)
            dev.rx.append(_frame(ip, port, 1001, isns[port] + 1, ACK))
        t0 = clock()
        _drain(iface, dev, sockets, now)
        while (child := listener.accept()) is not None:
            conns.append(child)
        build += clock() - t0
        dev.tx.clear()
    per_conn = 0.0
    if measure_memory:
        gc.collect()
        per_conn = (tracemalloc.get_traced_memory()[0] - base) / max(n, 1)
        tracemalloc.stop()
    # a third closed by us, orphaned; the peer acknowledges and sends its FIN: TIME-WAIT
    for c in conns[: n // 3]:
        c.close()
        c.orphan(now)
    for _ in range(n // 3 // 32 + 2):  # (the interface sends a bounded number per poll)
        iface.poll(now, dev, sockets)
    fins = {}
    for f in dev.tx:
        seg = _tcp_of(f)
        if seg is not None:
            fins[(bytes(f[30:34]), seg.dst_port)] = seg.seq_number
    dev.tx.clear()
    for c in conns[: n // 3]:
        ip, port = c.remote_endpoint
        seq = fins.get((ip.packed, port))
        if seq is not None:
            dev.rx.append(_frame(ip, port, 1001, seq + 1, ACK | 1))  # ACK + FIN
    _drain(iface, dev, sockets, now)
    dev.tx.clear()
    return iface, dev, sockets, conns, build, per_conn


def _drain(iface, dev, sockets, now: float) -> None:
    """Poll until every frame is taken and what it owes is sent."""
    while True:
        iface.poll(now, dev, sockets)
        if not dev.rx and not (sockets.dirty or sockets.all_dirty):
            break


def _per_segment(iface, dev, sockets, frames: list[bytes], now: float) -> float:
    """µs per frame, the interface taking them `len(frames)` at a time (the best of
    three 0.1 s runs)."""
    best = float("inf")
    for _ in range(3):
        rounds = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.1:
            dev.rx.extend(frames)
            while dev.rx:
                iface.poll(now, dev, sockets)
            dev.tx.clear()
            rounds += 1
        best = min(best, (time.perf_counter() - t0) / (rounds * len(frames)) * 1e6)
    return best


def bench_table(n: int = 100_000, memory_sample: int = 10_000, rounds: int = 7) -> dict:
    """The figures with 10 sockets and with `n`; memory from a build of `memory_sample`
    connections under tracemalloc (which slows allocation too much to time a build).
    Both tables are measured in alternation, `rounds` times, medians: on this kind of
    machine two runs a minute apart differ by more than the effect measured."""
    import statistics

    per_conn = _build(memory_sample, True)[5]
    tables = {size: _build(size, False) for size in (10, n)}
    now = 1.0
    samples: dict[int, dict[str, list[float]]] = {size: {"u": [], "v": [], "i": []}
                                                  for size in tables}
    unknown = [_frame(IPv4Address("192.0.2.1") + k, 40000 + k, 5, 6, ACK) for k in range(64)]
    for _ in range(rounds):
        for size, (iface, dev, sockets, conns, _build_s, _) in tables.items():
            live = conns[-1]
            ip, port = live.remote_endpoint
            live_frames = [_frame(ip, port, 1001, live.snd_una, ACK)] * 64
            samples[size]["u"].append(_per_segment(iface, dev, sockets, unknown, now))
            samples[size]["v"].append(_per_segment(iface, dev, sockets, live_frames, now))
            iface.poll(now, dev, sockets)
            t0 = time.perf_counter()
            polls = 0
            while time.perf_counter() - t0 < 0.1:
                iface.poll(now, dev, sockets)
                polls += 1
            samples[size]["i"].append((time.perf_counter() - t0) / polls * 1e6)
    out = {}
    for size, (_iface, _dev, sockets, conns, build, _) in tables.items():
        med = {k: statistics.median(v) for k, v in samples[size].items()}
        states = [c.state for c in conns]
        out[size] = TableResult(len(sockets), states.count(State.ESTABLISHED),
                                states.count(State.TIME_WAIT), build, per_conn, med["u"],
                                med["v"], med["i"], _insert_seconds(size))
    return {"small": asdict(out[10]), "big": asdict(out[n])}


def _insert_seconds(n: int) -> float:
    """Adding `n` connected sockets to a table (the part that was quadratic)."""
    from netstack.socket.tcp.socket import TcpSocket

    socks = []
    for i in range(n):
        s = TcpSocket()
        s._local = (OUR_IP, PORT)
        s._remote = _client(i)
        s.state = State.ESTABLISHED
        socks.append(s)
    sockets = SocketSet(Limits(max_sockets=n + 1))
    t0 = time.perf_counter()
    for s in socks:
        sockets.add(s)
    return time.perf_counter() - t0


def print_table(out: dict) -> None:
    big, small = out["big"], out["small"]
    print(f"table of {big['sockets']} sockets ({big['established']} established, "
          f"{big['time_wait']} TIME-WAIT): built in {big['build_seconds']:.1f} s by "
          f"handshakes ({big['build_seconds'] / big['sockets'] * 1e6:.0f} µs each), "
          f"{big['insert_seconds']:.2f} s to add them alone; "
          f"{big['bytes_per_connection']:.0f} B per connection")
    print(f"{'':32} {'10 sockets':>12} {str(big['sockets']) + ' sockets':>16}")
    for key, label in (("unknown_segment_us", "segment, unknown 4-tuple (µs)"),
                       ("live_segment_us", "segment, live connection (µs)"),
                       ("idle_poll_us", "poll with nothing due (µs)")):
        print(f"{label:32} {small[key]:12.1f} {big[key]:16.1f}")
