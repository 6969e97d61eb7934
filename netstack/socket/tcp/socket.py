"""The TCP socket (RFC 9293), sans-I/O: one connection, its buffers, timers and retransmission.

Theory of operation. `process(now, ...)` takes one received segment and updates the state
(`state.py` draws the machine); it never sends by itself, it only sets what is owed: an
immediate ACK (`_ack_now`), a delayed ACK deadline, a control reply (`_ctl_out`, for the
RSTs answering a bad ACK). `dispatch(now, emit)` first runs the timers (retransmission,
delayed ACK, persist, keep-alive, TIME-WAIT, user timeout), then emits, in order: a pending
RST or control reply, our SYN (or SYN-ACK), a fast retransmission, new data or data being
resent after a timeout (go-back-N from SND.UNA, skipping what the peer SACKed), a FIN, a
pure ACK, a probe. `poll_at(now)` tells when `dispatch` is next needed.

Sequence variables (all mod 2^32, compared with `seq.py`): SND.UNA `snd_una`, SND.NXT
`snd_nxt` (the next byte to (re)send; wound back to SND.UNA on a timeout), `snd_max` (one
past the highest byte ever sent; RFC 9293's SND.NXT in the ACK acceptability tests), SND.WND
`snd_wnd` (already scaled), RCV.NXT `rcv_nxt`, and `rcv_adv`, the right edge of the window
we advertised (we never move it left: no window shrinking).

The transmit buffer `_tx` holds every byte from SND.UNA's first data byte (`_tx_seq`) on,
unacknowledged and unsent alike; the FIN, once `close()` queued it, sits at
`_tx_seq + len(_tx)`. The receive buffer `_rx` holds in-order bytes the application has not
read; out-of-order bytes wait in an `Assembler` bounded to the receive buffer's size.

RFC 5961 is followed for blind attacks: a RST is taken only when its sequence number is
exactly RCV.NXT (otherwise, in window: challenge ACK); a SYN on a synchronized connection
gets a challenge ACK; an ACK outside [SND.UNA - MAX.SND.WND, SND.NXT] gets an ACK and is
dropped. Challenge ACKs are limited to `CHALLENGE_ACK_LIMIT` per second per socket.

`emit(dst_addr, protocol, payload_len, fill, src_addr, *, ttl, dont_frag)` is the
interface's (see `netstack.iface.interface.Interface.emit`); when `set_max_segment_size`
allowed segments larger than the MSS (device TSO), such segments also pass
`gso_size=<mss>`.

IPv6 and dual stack. Endpoints are of either family; the per-connection sizes follow the
connection's family once its endpoints are known: our MSS is the interface MTU less 40
(IPv4 + TCP headers) or 60 (IPv6 + TCP), a peer that sends no MSS option gets 536 (IPv4) or
1220 (IPv6, RFC 8200 §8.3), and a TSO segment carries at most 65535 - 80 (IPv4) or
65535 - 60 (IPv6, whose payload length excludes the fixed header). A socket listening on
`::` takes SYNs of both families unless `v6only` (see `netstack.socket.addr`); an
IPv4-mapped remote address is connected to over IPv4. `set_path_mtu` is the interface's
report of an ICMP Packet Too Big / Fragmentation Needed quoting this connection (RFC 8201).

The `TIME_WAIT` default is 60 s (2 × MSL with Linux's MSL of 30 s, as Linux's TIME-WAIT):
smoltcp's 10 s is shorter than any real MSL and lets a delayed duplicate reach a new
incarnation of the 4-tuple; the cost, one small socket per closed connection for a minute,
is bounded: an orphaned TIME-WAIT socket past the set's `Limits.max_tw_buckets` is closed,
oldest first, and the `TcpListener` reclaims its children when they close.

Orphans (`orphan`: closed and let go by the application) cannot be held by their peer:
FIN-WAIT-2 ends after `Limits.fin_timeout`, FIN-WAIT-1/CLOSING/LAST-ACK after
`Limits.orphan_retries` retransmissions or zero-window probes at the longest interval, and
past `Limits.max_orphans` the oldest is reset. Any socket whose peer stops answering
zero-window probes is given up after `data_retries`, as for retransmissions. A socket its
application still holds keeps waiting while the peer answers: the application's own
timeouts decide (`netstack.net` write timeouts).
"""

from __future__ import annotations

import random

from netstack.socket.addr import ANY4, ANY6, local_matches, overlaps, source_for, unmap
from netstack.socket.addr import endpoint as _ep
from netstack.socket.errors import AddrInUse, SocketError, Unaddressable
from netstack.socket.set import Socket, touches
from netstack.socket.tcp.assembler import NO_GAPS, Assembler
from netstack.socket.tcp.congestion import check_controller, make_controller
from netstack.socket.tcp.isn import generate_isn
from netstack.socket.tcp.rtt import RttEstimator
from netstack.socket.tcp.seq import seq_add, seq_ge, seq_gt, seq_le, seq_lt, seq_max, seq_sub
from netstack.socket.tcp.state import MAY_RECV, SYNCHRONIZED, State
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpPacket, TcpRepr

_TCP = 6
_MASK = 0xFFFFFFFF
DEFAULT_MSS = 536  # RFC 9293 §3.7.1: when the peer sends no MSS option (IPv4)
DEFAULT_MSS_V6 = 1220  # RFC 8200 §8.3: the IPv6 minimum MTU 1280 less 60
DEFAULT_MTU = 1500
IPV4_TCP_HEADERS = 40
IPV6_TCP_HEADERS = 60
TS_OPTION_LEN = 12  # NOP NOP kind len tsval tsecr
MAX_GSO_PAYLOAD = 65535 - 20 - 60  # one IPv4 datagram with a full TCP header
MAX_GSO_PAYLOAD_V6 = 65535 - 60  # one IPv6 datagram (payload length excludes the header)
SYN_RETRIES = 6
DATA_RETRIES = 15
KEEPALIVE_PROBES = 9
CHALLENGE_ACK_LIMIT = 10  # per second (RFC 5961 §7)
MAX_DUP_ACKS_OWED = 64  # duplicate ACKs sent for one poll's out-of-order segments
PERSIST_MAX = 60.0
FIN_WAIT_2_TIMEOUT = 60.0  # after close() and shutdown_read(), like Linux's tcp_fin_timeout
# An orphan (closed and let go by its application: see `orphan`) gives up after this many
# retransmissions or zero-window probes (Linux's tcp_orphan_retries, whose 0 means 8)
ORPHAN_RETRIES = 8
EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535

_rng = random.Random()


class InvalidState(SocketError):
    """The operation is not possible in the socket's current state."""


def _headers_len(addr) -> int:
    return IPV6_TCP_HEADERS if addr.version == 6 else IPV4_TCP_HEADERS


def _local_bind(ep, v6only: bool):
    """A local endpoint as given to listen/connect: an IPv4-mapped address means IPv4."""
    addr = ep[0]
    if addr.version == 6 and addr.ipv4_mapped is not None:
        if v6only:
            raise Unaddressable(f"a v6-only socket cannot use {addr}")
        return (addr.ipv4_mapped, ep[1])
    return ep


def rst_reply(ip_repr, tcp_repr: TcpRepr) -> TcpRepr | None:
    """The RST answering a segment no socket accepted (RFC 9293 §3.10.7.1), or None for a
    RST (never answered). Send it from `ip_repr.dst_addr` to `ip_repr.src_addr`."""
    flags = tcp_repr.flags
    if flags & RST:
        return None
    if tcp_repr.ack_number is not None:
        return TcpRepr(tcp_repr.dst_port, tcp_repr.src_port, tcp_repr.ack_number, None, RST, 0)
    return TcpRepr(tcp_repr.dst_port, tcp_repr.src_port, 0,
                   seq_add(tcp_repr.seq_number, tcp_repr.segment_len), RST | ACK, 0)


def _wscale_for(buffer_size: int) -> int:
    shift = 0
    while shift < 14 and buffer_size >> shift > 0xFFFF:
        shift += 1
    return shift


@touches("orphan", "set_mtu", "set_max_segment_size", "set_path_mtu", "set_nodelay",
         "set_keep_alive", "set_timeout", "set_time_wait", "listen", "connect", "send", "recv",
         "recv_into", "consume", "answer_syn", "close", "shutdown_read", "abort")
class TcpSocket(Socket):
    """One TCP connection. Not thread-safe by itself: the runtime's lock guards it.

    Endpoints are `(IPv4Address | IPv6Address, port)` tuples; strings are accepted.
    `v6only` (IPV6_V6ONLY): listening on `::`, take IPv6 connections only."""

    KIND = "tcp"
    __slots__ = (
        # configuration
        "rx_capacity", "tx_capacity", "_cc_name", "_ts_enabled", "_sack_enabled",
        "_ws_enabled", "nagle", "delayed_ack", "keep_alive", "timeout", "time_wait",
        "_mss_cfg", "_local_mss", "_tso_max", "ttl", "syn_retries", "data_retries",
        "isn_fn", "v6only", "_mtu", "_path_mss", "_tso_v6", "orphan_retries", "fin_timeout",
        # identity and state
        "state", "error", "_local", "_remote", "_passive", "_listen_ep", "handle",
        # send sequence space
        "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2",
        "max_snd_wnd", "_snd_shift", "_tx", "_tx_seq", "_fin_queued", "_peer_mss",
        # receive sequence space
        "irs", "rcv_nxt", "rcv_adv", "_rcv_shift", "_rx", "_asm", "_rx_fin_seq",
        "_read_closed", "_last_ack_sent",
        # options
        "_ts_ok", "_ts_recent", "_ts_offset", "_rto_ts", "_sack_ok", "_ws_ok",
        # loss recovery and congestion
        "_sacked", "_rtt", "_cc", "_rtt_seq", "_rtt_sent_at", "_dupacks", "_in_recovery",
        "_recover", "_rtx_pending", "_rtx_count", "_rtx_hi", "_sws_override",
        # timers and owed segments
        "_rto_at", "_ack_now", "_dup_owed", "_ack_at", "_unacked_bytes", "_persist_at", "_persist_backoff",
        "_ka_at", "_ka_probes", "_probe_now", "_tw_at", "_waiting_since", "_last_rx",
        "_fw2_at", "_chal_second", "_chal_count", "_ctl_out", "_rst_now",
        "_orphan", "_probes", "_probes_unanswered",
        # counters
        "stats",
    )

    def __init__(self, rx_buffer_size: int = 256 * 1024, tx_buffer_size: int = 256 * 1024, *,
                 congestion: str = "cubic", timestamps: bool = True, sack: bool = True,
                 window_scaling: bool = True, nagle: bool = True, delayed_ack: float | None = 0.04,
                 keep_alive: float | None = None, timeout: float | None = None,
                 time_wait: float = 60.0, mss: int | None = None) -> None:
        super().__init__()
        if rx_buffer_size <= 0 or tx_buffer_size <= 0:
            raise ValueError("TCP buffers need a positive size")
        self.rx_capacity = rx_buffer_size
        self.tx_capacity = tx_buffer_size
        self._cc_name = congestion
        check_controller(congestion)  # fail early on an unknown name
        self._ts_enabled = timestamps
        self._sack_enabled = sack
        self._ws_enabled = window_scaling
        self.nagle = nagle
        self.delayed_ack = delayed_ack
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.time_wait = time_wait
        self._mss_cfg = mss
        self._mtu = DEFAULT_MTU
        self._local_mss = min(mss, DEFAULT_MTU - IPV4_TCP_HEADERS) if mss else \
            DEFAULT_MTU - IPV4_TCP_HEADERS
        self._tso_max: int | None = None
        self._tso_v6 = True
        self.v6only = False
        self.ttl = 64
        self.syn_retries = SYN_RETRIES
        self.data_retries = DATA_RETRIES
        self.orphan_retries = ORPHAN_RETRIES
        self.fin_timeout = FIN_WAIT_2_TIMEOUT
        self._orphan = False
        self.isn_fn = generate_isn
        self.handle: int | None = None  # set by a TcpListener that added us to its set
        self.stats: dict[str, int] = {}
        self._local = (ANY4, 0)
        self._remote = None
        self._passive = False
        self._listen_ep = None
        self._reset_connection(State.CLOSED)
        self.error: str | None = None

    # -- connection state ---------------------------------------------------------------
    def _reset_connection(self, state: State) -> None:
        """Forget everything about the connection (not the configuration)."""
        was = getattr(self, "state", None)
        self.state = state
        s = self._set
        if s is not None and was is not state:
            s.tcp_index(self)
            if state is State.CLOSED:
                s.socket_closed(self)
        self.iss = self.snd_una = self.snd_nxt = self.snd_max = 0
        self.snd_wnd = self.snd_wl1 = self.snd_wl2 = self.max_snd_wnd = 0
        self._snd_shift = 0
        self._tx = bytearray()
        self._tx_seq = 0
        self._fin_queued = False
        self._peer_mss = DEFAULT_MSS
        self._path_mss: int | None = None  # lowered by set_path_mtu
        self.irs = self.rcv_nxt = self.rcv_adv = 0
        self._rcv_shift = 0
        self._rx = bytearray()
        self._asm = None
        self._rx_fin_seq = None
        self._read_closed = False
        self._last_ack_sent = 0
        self._ts_ok = self._sack_ok = self._ws_ok = False
        self._ts_recent = 0
        self._ts_offset = 0
        self._rto_ts = None  # our TSval when the retransmission timer last fired
        self._sacked: list[list[int]] | tuple = ()  # (a list once a block comes)
        self._rtt = RttEstimator()
        self._cc = None
        self._rtt_seq = None
        self._rtt_sent_at = 0.0
        self._dupacks = 0
        self._in_recovery = False
        self._recover = 0
        self._rtx_hi = 0
        self._sws_override = False
        self._rtx_pending = None
        self._rtx_count = 0
        self._rto_at = None
        self._ack_now = False
        self._dup_owed = 0
        self._ack_at = None
        self._unacked_bytes = 0
        self._persist_at = None
        self._persist_backoff = 0
        self._probes = 0  # zero-window probes at the longest interval since it closed
        self._probes_unanswered = 0  # probes since the peer last acknowledged anything
        self._ka_at = None
        self._ka_probes = 0
        self._probe_now = False
        self._tw_at = None
        self._waiting_since = None
        self._last_rx = 0.0
        self._fw2_at = None
        self._chal_second = -1
        self._chal_count = 0
        self._ctl_out = None
        self._rst_now = False

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _closed(self, error: str | None) -> None:
        """Enter CLOSED (or LISTEN again for a `listen` socket reset in SYN-RECEIVED)."""
        if error is not None and self.error is None:
            self.error = error
        ctl = self._ctl_out
        back_to_listen = self._passive and self.state is State.SYN_RECEIVED and error == "reset"
        self._reset_connection(State.CLOSED)
        self._ctl_out = ctl
        if back_to_listen:
            self.state = State.LISTEN
            self._set_endpoints(self._listen_ep, None)
            self.error = None
        self._wake()

    # -- configuration ------------------------------------------------------------------
    def set_mtu(self, mtu: int) -> None:
        """The interface's IP MTU: our MSS becomes `mtu - 40` over IPv4, `mtu - 60` over
        IPv6 (or the `mss` given, if smaller)."""
        self.set_link(mtu, self._tso_max, self._tso_v6)

    def _v6(self) -> bool:
        ep = self._remote if self._remote is not None else self._local
        return ep[0].version == 6

    def _update_local_mss(self) -> None:
        mss = max(self._mtu - (IPV6_TCP_HEADERS if self._v6() else IPV4_TCP_HEADERS), 64)
        self._local_mss = min(self._mss_cfg, mss) if self._mss_cfg else mss
        if self._cc is not None:
            self._cc.set_mss(self._eff_mss())

    def _set_endpoints(self, local, remote) -> None:
        """Record the endpoints; the MSS limits follow their family."""
        self._local = local
        self._remote = remote
        if remote is not None:  # a new connection: until its SYN says otherwise
            self._peer_mss = DEFAULT_MSS_V6 if remote[0].version == 6 else DEFAULT_MSS
        self._update_local_mss()
        if self._set is not None:
            self._set.tcp_index(self)

    def tcp_key(self):
        """How the set indexes us: None (closed or unbound), (port, None) listening,
        (port, (remote address, remote port)) for a connection."""
        if self.state is State.CLOSED or not self._local[1]:
            return None
        return self._local[1], self._remote

    def set_max_segment_size(self, max_bytes: int | None, ipv6: bool = True) -> None:
        """Device TSO: allow segments carrying up to `max_bytes` of payload (<= 64 KiB
        less the headers of the connection's family); `emit` then gets `gso_size=<mss>`
        for them. None: segments of one MSS. `ipv6` False: the device segments IPv4 only
        (an IPv6 connection keeps to one MSS, never IP fragments)."""
        self.set_link(self._mtu, max_bytes, ipv6)

    def set_link(self, mtu: int, tso_max: int | None, tso_v6: bool) -> None:
        """`set_mtu` and `set_max_segment_size` at once, without marking the socket dirty:
        the interface's call for a socket it dispatches anyway (a new one, or all of
        them after a change), once per new socket, so it must cost little."""
        if mtu != self._mtu:  # (the MSS follows the endpoints too)
            self._mtu = mtu
            self._update_local_mss()
        self._tso_max = min(tso_max, MAX_GSO_PAYLOAD_V6) if tso_max else None
        self._tso_v6 = tso_v6

    def set_path_mtu(self, mtu: int) -> None:
        """The path MTU toward the peer dropped to `mtu` (an ICMPv6 Packet Too Big or ICMPv4
        Fragmentation Needed quoting one of our segments): segments shrink to fit, never
        below 1220 bytes over IPv6 (the 1280 minimum MTU) or 536 over IPv4, and what is in
        flight is sent again at the new size at once (RFC 8201 §4: the too-big segment was
        dropped; this is not congestion, so the window is left alone)."""
        if self._remote is None:
            return
        v6 = self._remote[0].version == 6
        floor = DEFAULT_MSS_V6 if v6 else DEFAULT_MSS
        mss = max(mtu - (IPV6_TCP_HEADERS if v6 else IPV4_TCP_HEADERS), floor)
        current = min(self._peer_mss, self._local_mss, self._path_mss or 1 << 30)
        if mss >= current:
            return
        self._path_mss = mss
        self._count("path_mtu_lowered")
        if self._cc is not None:
            self._cc.set_mss(self._eff_mss())
        if self.state in SYNCHRONIZED and self.snd_una != self.snd_max:
            self.snd_nxt = self.snd_una  # resend from the oldest unacknowledged byte
            self._rtt_seq = None  # Karn: no RTT sample from what is resent
            self._dupacks = 0

    def set_nodelay(self, nodelay: bool) -> None:
        self.nagle = not nodelay

    def set_keep_alive(self, interval: float | None) -> None:
        self.keep_alive = interval
        self._ka_at = None

    def set_timeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def set_time_wait(self, seconds: float) -> None:
        self.time_wait = seconds

    # -- opening ------------------------------------------------------------------------
    @property
    def local_endpoint(self):
        return self._local if self._local[1] else None

    @property
    def remote_endpoint(self):
        return self._remote

    def _clashes(self, local, remote) -> bool:
        if self._set is None:
            return False
        for other in tuple(self._set.tcp_ports.get(local[1], ())):  # same port only
            olocal = getattr(other, "_local", None)
            if other is self or olocal is None or olocal[1] != local[1] or not other.is_open:
                continue
            if not overlaps(olocal[0], getattr(other, "v6only", False), local[0], self.v6only):
                continue
            oremote = getattr(other, "_remote", None)
            if remote is None or oremote is None or oremote == remote:
                return True
        return False

    def listen(self, endpoint, *, v6only: bool | None = None) -> None:
        """Passive open for one connection (smoltcp style). `endpoint` is `port` or
        `(addr, port)`; addr 0.0.0.0 takes connections to any of our IPv4 addresses, `::`
        to any of our addresses of both families (only IPv6 ones if `v6only`)."""
        if self.state is not State.CLOSED:
            raise InvalidState(f"listen in {self.state}")
        if v6only is not None:
            self.v6only = v6only
        ep = _ep((None, endpoint)) if isinstance(endpoint, int) else _ep(endpoint)
        ep = _local_bind(ep, self.v6only)
        if ep[1] == 0:
            raise Unaddressable("listen needs a port")
        if self._clashes(ep, None):
            raise AddrInUse(f"TCP port {ep[1]} is in use")
        self._reset_connection(State.LISTEN)
        self.error = None
        self._passive = True
        self._listen_ep = ep
        self._set_endpoints(ep, None)

    def connect(self, now: float, local_endpoint, remote_endpoint) -> None:
        """Active open: send a SYN from `local_endpoint` (port 0: an ephemeral port; address
        0.0.0.0 or `::`: the interface picks the source) to `remote_endpoint` (an
        IPv4-mapped address: over IPv4)."""
        if self.state is not State.CLOSED:
            raise InvalidState(f"connect in {self.state}")
        local = _ep(local_endpoint) if not isinstance(local_endpoint, int) else \
            _ep((None, local_endpoint))
        local = _local_bind(local, self.v6only)
        remote = _ep(remote_endpoint)
        remote = (unmap(remote[0]), remote[1])
        if remote[1] == 0 or remote[0].is_unspecified:
            raise Unaddressable(f"cannot connect to {remote[0]}:{remote[1]}")
        if source_for(local[0], self.v6only, remote[0]) is None:
            local = (ANY4 if remote[0].version == 4 else ANY6, local[1])
        if local[1] == 0:
            span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
            start = _rng.randrange(span)
            for i in range(span):
                port = EPHEMERAL_FIRST + (start + i) % span
                if not self._clashes((local[0], port), remote):
                    local = (local[0], port)
                    break
            else:
                raise AddrInUse("no free ephemeral TCP port")
        elif self._clashes(local, remote):
            raise AddrInUse(f"TCP {local[1]} → {remote} is in use")
        self._reset_connection(State.SYN_SENT)
        self.error = None
        self._passive = False
        self._set_endpoints(local, remote)
        self._init_send(now, self.isn_fn(now, local, remote))
        self._last_rx = now

    def _init_send(self, now: float, iss: int) -> None:
        self.iss = self.snd_una = self.snd_nxt = self.snd_max = iss
        self._recover = iss
        self._tx_seq = seq_add(iss, 1)
        self._rcv_shift = _wscale_for(self.rx_capacity) if self._ws_enabled else 0
        self._ts_offset = _rng.getrandbits(32)
        self._asm = NO_GAPS  # an Assembler once data comes out of order

    def _syn_received(self, now: float, local, remote, seg: TcpRepr, iss: int) -> None:
        """Take a SYN: record the peer's options and owe it our SYN-ACK."""
        self.state = State.SYN_RECEIVED
        self._set_endpoints(local, remote)
        self._init_send(now, iss)
        self._take_syn_options(seg)
        self.irs = seg.seq_number
        self.rcv_nxt = seq_add(seg.seq_number, 1)
        self.rcv_adv = self.rcv_nxt
        self._last_ack_sent = self.rcv_nxt
        self.snd_wnd = seg.window_len  # never scaled in a SYN
        self.max_snd_wnd = self.snd_wnd
        self.snd_wl1 = seg.seq_number
        self.snd_wl2 = iss
        self._last_rx = now

    def _cookie_established(self, now: float, local, remote, iss: int, irs: int,
                            peer_mss: int, seg: TcpRepr, our_window: int) -> None:
        """Open straight into ESTABLISHED from a valid SYN cookie (`TcpListener`): the
        SYN-ACK carried only an MSS option, so no window scaling, SACK or timestamps."""
        self._set_endpoints(local, remote)
        self._init_send(now, iss)
        self._ws_ok = self._sack_ok = self._ts_ok = False
        self._rcv_shift = self._snd_shift = 0
        self._peer_mss = peer_mss
        self.irs = irs
        self.rcv_nxt = self._last_ack_sent = seq_add(irs, 1)
        self.rcv_adv = seq_add(self.rcv_nxt, our_window)
        self.snd_una = self.snd_nxt = self.snd_max = seq_add(iss, 1)
        self.snd_wnd = self.max_snd_wnd = seg.window_len
        self.snd_wl1 = seg.seq_number
        self.snd_wl2 = self.snd_una
        self._last_rx = now
        self._become_established(now)

    def _take_syn_options(self, seg: TcpRepr) -> None:
        if seg.max_seg_size:
            self._peer_mss = seg.max_seg_size
        if self._ws_enabled and seg.window_scale is not None:
            self._ws_ok = True
            self._snd_shift = seg.window_scale
        else:
            self._ws_ok = False
            self._snd_shift = 0
            self._rcv_shift = 0
        self._sack_ok = self._sack_enabled and seg.sack_permitted
        if self._ts_enabled and seg.timestamp is not None:
            self._ts_ok = True
            self._ts_recent = seg.timestamp[0]
        else:
            self._ts_ok = False

    def _eff_mss(self) -> int:
        """Payload bytes per segment: both MSS limits less the timestamp option."""
        mss = min(self._peer_mss, self._local_mss)
        if self._path_mss is not None and self._path_mss < mss:
            mss = self._path_mss
        if self._ts_ok:
            mss -= TS_OPTION_LEN
        return max(mss, 32)

    def _become_established(self, now: float) -> None:
        self.state = State.ESTABLISHED
        self._cc = make_controller(self._cc_name, self._eff_mss())
        if self._fin_queued:
            self.state = State.FIN_WAIT_1
        self._wake()

    # -- application side ---------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.state is not State.CLOSED

    @property
    def is_listening(self) -> bool:
        return self.state is State.LISTEN

    @property
    def is_active(self) -> bool:
        return self.state not in (State.CLOSED, State.LISTEN, State.TIME_WAIT)

    @property
    def may_send(self) -> bool:
        return self.state in (State.ESTABLISHED, State.CLOSE_WAIT) and not self._fin_queued

    @property
    def may_recv(self) -> bool:
        return (self.state in MAY_RECV or self.state is State.SYN_RECEIVED) \
            and not self._read_closed or bool(self._rx)

    def can_send(self) -> bool:
        return self.may_send and len(self._tx) < self.tx_capacity

    def can_recv(self) -> bool:
        return bool(self._rx)

    @property
    def recv_queue(self) -> int:
        return len(self._rx)

    @property
    def send_queue(self) -> int:
        return len(self._tx)

    @property
    def send_capacity(self) -> int:
        return self.tx_capacity

    def send(self, data) -> int:
        """Queue as much of `data` as fits; return how many bytes were queued (0: full)."""
        state = self.state
        if self._fin_queued or state not in (State.ESTABLISHED, State.CLOSE_WAIT,
                                             State.SYN_SENT, State.SYN_RECEIVED):
            raise InvalidState(f"send in {state}")
        room = self.tx_capacity - len(self._tx)
        n = min(room, len(data))
        if n > 0:
            self._tx += data[:n] if n < len(data) else data
        return n

    send_slice = send

    def recv(self, max_n: int = 1 << 30) -> bytes:
        """Up to `max_n` received bytes (b"": none now; at EOF `may_recv` is False)."""
        rx = self._rx
        if not rx:
            return b""
        n = min(max_n, len(rx))
        out = bytes(rx[:n])
        del rx[:n]
        self._after_read()
        return out

    def consume(self, n: int) -> None:
        """Drop the first `n` received bytes (after a `peek` whose bytes went elsewhere:
        the gateway peeks, writes to the host socket, consumes what it took)."""
        rx = self._rx
        if n > 0 and rx:
            del rx[:n]
            self._after_read()

    def answer_syn(self, now: float, local, remote, seg: TcpRepr) -> None:
        """Take a SYN that no listener took, as a listener's child would: SYN-RECEIVED,
        our SYN-ACK owed (the gateway answers a guest's SYN once its host socket is
        connected, from the address the guest asked for)."""
        if self.state is not State.CLOSED:
            raise InvalidState(f"answer_syn in {self.state}")
        local, remote = _ep(local), _ep(remote)
        self._syn_received(now, local, remote, seg, self.isn_fn(now, local, remote))

    def recv_into(self, buf) -> int:
        mv = memoryview(buf).cast("B")
        rx = self._rx
        n = min(len(mv), len(rx))
        if n:
            mv[:n] = rx[:n]
            del rx[:n]
            self._after_read()
        return n

    def peek(self, max_n: int = 1 << 30) -> bytes:
        return bytes(self._rx[:max_n])

    def _after_read(self) -> None:
        if self._asm is not None and not self._asm.is_empty:
            self._pull_assembler()
        # a window update when the window opened enough (RFC 1122 §4.2.3.3)
        if self.state in MAY_RECV:
            threshold = min(self.rx_capacity // 2, self._local_mss)
            edge = seq_add(self.rcv_nxt, self.rx_capacity - len(self._rx))
            if seq_sub(edge, self.rcv_adv) >= threshold and \
                    seq_sub(self.rcv_adv, self.rcv_nxt) < self.rx_capacity // 2:
                self._ack_now = True

    def close(self) -> None:
        """Close our direction: a FIN follows the queued data. Receiving goes on until the
        peer's FIN (`shutdown_read` stops it)."""
        state = self.state
        if state in (State.CLOSED, State.LISTEN, State.SYN_SENT):
            self._closed(None)
            self._passive = False
            self.state = State.CLOSED
            return
        if self._fin_queued:
            return
        if state is State.SYN_RECEIVED:
            self._fin_queued = True
        elif state is State.ESTABLISHED:
            self._fin_queued = True
            self.state = State.FIN_WAIT_1
        elif state is State.CLOSE_WAIT:
            self._fin_queued = True
            self.state = State.LAST_ACK

    def shutdown_read(self) -> None:
        """Discard unread data and whatever arrives from now on (it is still acknowledged)."""
        self._read_closed = True
        self._rx.clear()

    def abort(self) -> None:
        """Drop the connection; a RST goes out on the next dispatch when synchronized."""
        if self.state in SYNCHRONIZED or self.state is State.SYN_RECEIVED:
            if self.state is not State.TIME_WAIT:
                self._ctl_out = (self._remote[0], self._local[0] if not
                                 self._local[0].is_unspecified else None,
                                 TcpRepr(self._local[1], self._remote[1], self.snd_max,
                                         None, RST, 0))
        self._passive = False
        self._closed(None)

    def orphan(self, now: float) -> None:
        """Its application has let go of the socket (it closed it and will not read or
        write again): what arrives is discarded, and the connection may no longer wait
        forever on the peer — FIN-WAIT-2 ends after `fin_timeout`, and FIN-WAIT-1,
        CLOSING and LAST-ACK after `orphan_retries` retransmissions or zero-window
        probes (Linux's tcp_fin_timeout and tcp_orphan_retries). A socket closed without
        `orphan` keeps the classic timers: its application may still read."""
        self._orphan = True
        self.shutdown_read()
        if self._set is not None:
            lim = self._set.limits
            self.fin_timeout, self.orphan_retries = lim.fin_timeout, lim.orphan_retries
        if self.state is State.FIN_WAIT_2 and self._fw2_at is None:
            self._fw2_at = now + self.fin_timeout
        if self._set is not None and self.state is State.TIME_WAIT:
            self._set.tw_enter(self)  # (TIME-WAIT sockets are counted once orphaned)
        elif self._set is not None and self.state is not State.CLOSED:
            self._set.orphan_enter(self)  # past max_orphans, the oldest is reset

    @property
    def is_orphan(self) -> bool:
        return self._orphan

    # -- receiving ----------------------------------------------------------------------
    def accepts(self, ip_repr, seg: TcpRepr) -> bool:
        if self.state is State.CLOSED:
            return False
        local = self._local
        if seg.dst_port != local[1]:
            return False
        if not local_matches(local[0], self.v6only, ip_repr.dst_addr):
            return False
        remote = self._remote
        if remote is None:  # LISTEN: only a SYN, so another connection's segments to this
            # port are never taken by a listening socket that happens to come first
            return seg.flags & (SYN | ACK | RST) == SYN
        return seg.src_port == remote[1] and ip_repr.src_addr == remote[0]

    def process(self, now: float, ip_repr, seg: TcpRepr, payload, src_hw=None) -> None:
        state = self.state
        if state is State.LISTEN:
            self._process_listen(now, ip_repr, seg)
        elif state is State.SYN_SENT:
            self._process_syn_sent(now, ip_repr, seg)
        elif state is not State.CLOSED:
            self._process_synced(now, seg, payload)

    def _reply_rst(self, ip_repr, seg: TcpRepr) -> None:
        reply = rst_reply(ip_repr, seg)
        if reply is not None:
            self._ctl_out = (ip_repr.src_addr, ip_repr.dst_addr, reply)

    def _process_listen(self, now: float, ip_repr, seg: TcpRepr) -> None:
        flags = seg.flags
        if flags & RST:
            return
        if flags & ACK:
            self._reply_rst(ip_repr, seg)
            return
        if not flags & SYN:
            return
        local = (ip_repr.dst_addr, self._local[1])
        remote = (ip_repr.src_addr, seg.src_port)
        self._syn_received(now, local, remote, seg, self.isn_fn(now, local, remote))
        self._wake()

    def _process_syn_sent(self, now: float, ip_repr, seg: TcpRepr) -> None:
        flags = seg.flags
        ack = seg.ack_number
        if ack is not None and not (seq_lt(self.iss, ack) and seq_le(ack, self.snd_max)):
            if not flags & RST:
                self._reply_rst(ip_repr, seg)
            return
        if flags & RST:
            if ack is not None:
                self._closed("refused")
            return
        if not flags & SYN:
            return
        self._take_syn_options(seg)
        self.irs = seg.seq_number
        self.rcv_nxt = self.rcv_adv = self._last_ack_sent = seq_add(seg.seq_number, 1)
        self._last_rx = now
        if ack is not None:
            self.snd_una = ack
            if self.snd_nxt != ack:
                self.snd_nxt = ack
            self.snd_wnd = seg.window_len  # never scaled in a SYN
            self.max_snd_wnd = self.snd_wnd
            self.snd_wl1 = seg.seq_number
            self.snd_wl2 = ack
            self._ack_sample(now, seg, ack)
            self._rto_at = None
            self._rtx_count = 0
            self._waiting_since = None
            self._ack_now = True
            self._become_established(now)
        else:  # simultaneous open: our SYN again, now with an ACK
            self.state = State.SYN_RECEIVED
            self.snd_nxt = self.iss
            self.snd_wnd = seg.window_len
            self.max_snd_wnd = self.snd_wnd
            self.snd_wl1 = seg.seq_number
            self.snd_wl2 = self.iss
            self._rto_at = None

    def _challenge_ack(self, now: float) -> None:
        second = int(now)
        if second != self._chal_second:
            self._chal_second = second
            self._chal_count = 0
        if self._chal_count < CHALLENGE_ACK_LIMIT:
            self._chal_count += 1
            self._ack_now = True
            self._count("challenge_ack")
        else:
            self._count("challenge_ack_limited")

    def _ts_now(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & _MASK

    def _process_synced(self, now: float, seg: TcpRepr, payload) -> None:
        state = self.state
        flags = seg.flags
        seq = seg.seq_number
        n = len(payload)
        rcv_nxt = self.rcv_nxt

        # A retransmitted SYN in SYN-RECEIVED: our SYN-ACK was lost; send it again.
        if state is State.SYN_RECEIVED and flags & SYN and not flags & (ACK | RST) \
                and seq == self.irs:
            self.snd_nxt = self.iss
            return

        # PAWS (RFC 7323 §5)
        ts = seg.timestamp
        if self._ts_ok and ts is not None and not flags & RST \
                and seq_lt(ts[0], self._ts_recent):
            self._count("paws_drop")
            self._ack_now = True
            return

        # Acceptability (RFC 9293 §3.10.7.4)
        seg_len = n + (1 if flags & SYN else 0) + (flags & FIN)
        wnd = seq_sub(self.rcv_adv, rcv_nxt)
        if wnd < 0:
            wnd = 0
        off = seq_sub(seq, rcv_nxt)
        if seg_len == 0:
            ok = off == 0 if wnd == 0 else 0 <= off < wnd
        elif wnd == 0:
            ok = False
        else:
            last = off + seg_len - 1
            ok = 0 <= off < wnd or 0 <= last < wnd
        if not ok:
            if not flags & RST:
                if state is State.TIME_WAIT and flags & FIN:
                    self._tw_at = now + self.time_wait
                self._ack_now = True
                self._count("unacceptable")
            return

        # RST (RFC 5961 §3)
        if flags & RST:
            if off == 0:
                if state in (State.CLOSING, State.LAST_ACK, State.TIME_WAIT):
                    self._closed(None)
                else:
                    self._closed("reset")
            else:
                self._challenge_ack(now)
            return

        # SYN on a synchronized connection (RFC 5961 §4)
        if flags & SYN:
            self._challenge_ack(now)
            return

        ack = seg.ack_number
        if ack is None:
            return
        self._last_rx = now
        self._ka_probes = 0
        if self.keep_alive:
            self._ka_at = None

        if state is State.SYN_RECEIVED:
            if not (seq_lt(self.snd_una, ack) and seq_le(ack, self.snd_max)):
                self._ctl_out = (self._remote[0], self._local[0],
                                 TcpRepr(self._local[1], self._remote[1], ack, None, RST, 0))
                return
            self.snd_una = ack
            if seq_lt(self.snd_nxt, ack):
                self.snd_nxt = ack
            self._ack_sample(now, seg, ack)
            self._rto_at = None
            self._rtx_count = 0
            self._waiting_since = None
            self.snd_wnd = seg.window_len << self._snd_shift
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            self._become_established(now)
            state = self.state
        elif not self._process_ack(now, seg, ack, n):
            return
        state = self.state
        if state is State.CLOSED:
            return

        # timestamps: TS.Recent (RFC 7323 §4.3)
        if self._ts_ok and ts is not None and seq_le(seq, self._last_ack_sent):
            self._ts_recent = ts[0]

        # data
        if n and state in MAY_RECV:
            self._take_data(now, seq, payload, flags)
        elif n:
            self._ack_now = True  # data after the peer's FIN: just acknowledge

        # FIN
        if flags & FIN:
            fin_seq = seq_add(seq, n)
            if self._rx_fin_seq is None and seq_ge(fin_seq, self.rcv_nxt) \
                    and seq_sub(fin_seq, self.rcv_nxt) <= self.rx_capacity:
                self._rx_fin_seq = fin_seq
            self._ack_now = True
        if self._rx_fin_seq is not None and self._rx_fin_seq == self.rcv_nxt:
            self._take_fin(now)
        elif self.state is State.TIME_WAIT and flags & FIN:
            self._tw_at = now + self.time_wait

    def _ack_sample(self, now: float, seg: TcpRepr, ack: int) -> float | None:
        """Take an RTT sample for an ACK that advanced SND.UNA (timestamps or Karn)."""
        rtt = None
        ts = seg.timestamp
        if self._ts_ok and ts is not None and ts[1]:
            d = (self._ts_now(now) - ts[1]) & _MASK
            # An echo from before our last timeout retransmission acknowledges the
            # original (its ACK was lost): timer wait, not round trip (Karn).
            stale = self._rto_ts is not None and seq_lt(ts[1], self._rto_ts)
            if d < 0x7FFFFFFF and not stale:
                rtt = max(d / 1000.0, 0.0)
                self._rto_ts = None
        elif self._rtt_seq is not None and seq_ge(ack, self._rtt_seq):
            rtt = now - self._rtt_sent_at
        if self._rtt_seq is not None and seq_ge(ack, self._rtt_seq):
            self._rtt_seq = None
        if rtt is not None:
            self._rtt.sample(rtt)
        return rtt

    def _process_ack(self, now: float, seg: TcpRepr, ack: int, n: int) -> bool:
        """ACK processing in a synchronized state; False: drop the rest of the segment."""
        snd_una = self.snd_una
        if seq_gt(ack, self.snd_max):
            self._challenge_ack(now)  # RFC 5961 §5.2, RFC 9293 "ACK of something not sent"
            return False
        if seq_lt(ack, seq_add(snd_una, -max(self.max_snd_wnd, 1))):
            self._challenge_ack(now)
            return False
        window = seg.window_len << self._snd_shift
        seq = seg.seq_number
        if self._sack_ok and seg.sack_ranges:
            self._take_sacks(seg.sack_ranges, ack)
        self._probes_unanswered = 0  # the peer is there: it acknowledges
        if seq_gt(ack, snd_una):
            acked = seq_sub(ack, snd_una)
            d = seq_sub(ack, self._tx_seq)
            if d > 0:
                d = min(d, len(self._tx))
                del self._tx[:d]
                self._tx_seq = seq_add(self._tx_seq, d)
            self.snd_una = ack
            if seq_lt(self.snd_nxt, ack):
                self.snd_nxt = ack
            rtt = self._ack_sample(now, seg, ack)
            self._rtt.reset_backoff()
            self._rtx_count = 0
            self._persist_backoff = 0
            if ack == self.snd_max:
                self._rto_at = None
                self._waiting_since = None
            else:
                self._rto_at = now + self._rtt.rto
                self._waiting_since = now
            if self._sacked:
                self._prune_sacks()
            flight = seq_sub(self.snd_max, snd_una)
            cc = self._cc
            if self._in_recovery:
                if seq_ge(ack, self._recover):
                    self._in_recovery = False  # full ACK (RFC 6582 §3.2 step 3)
                else:
                    self._rtx_pending = ack  # partial ACK: the next hole, at once
            elif cc is not None:
                cc.on_ack(now, acked, rtt if rtt is not None else self._rtt.srtt, flight)
            self._dupacks = 0
            self._wake()
            if self._fin_queued and seq_gt(ack, self._fin_seq()):
                self._our_fin_acked(now)
        elif ack == snd_una and n == 0 and not seg.flags & (SYN | FIN) \
                and window == self.snd_wnd and self.snd_max != snd_una:
            self._dupacks += 1
            self._count("dup_ack")
            if not self._in_recovery:
                if self._dupacks == 3 and seq_gt(snd_una, self._recover):
                    self._in_recovery = True
                    self._recover = self.snd_max
                    self._rtx_hi = snd_una
                    if self._cc is not None:
                        self._cc.on_loss(now)
                    self._rtx_pending = snd_una
                    self._count("fast_retransmit")
            elif self._sack_ok and self._sacked:
                hole = self._next_hole(seq_max(self._rtx_hi, snd_una))
                if hole is not None:
                    self._rtx_pending = hole
        # window update (RFC 9293 §3.10.7.4, SND.WL1/SND.WL2)
        if seq_lt(self.snd_wl1, seq) or (self.snd_wl1 == seq and seq_le(self.snd_wl2, ack)):
            old = self.snd_wnd
            self.snd_wnd = window
            if window > self.max_snd_wnd:
                self.max_snd_wnd = window
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if window and not old:
                self._persist_at = None
                self._persist_backoff = 0
                self._probes = 0
                self._wake()
        return True

    def _fin_seq(self) -> int:
        return seq_add(self._tx_seq, len(self._tx))

    def _our_fin_acked(self, now: float) -> None:
        state = self.state
        if state is State.FIN_WAIT_1:
            self.state = State.FIN_WAIT_2
            if self._read_closed or self._orphan:
                self._fw2_at = now + self.fin_timeout
        elif state is State.CLOSING:
            self._enter_time_wait(now)
        elif state is State.LAST_ACK:
            self._closed(None)

    def _enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self._tw_at = now + self.time_wait
        self._rto_at = self._persist_at = self._ka_at = self._fw2_at = None
        self._tx = bytearray()
        self._asm = None  # (unread in-order data in _rx stays for the application)
        self._wake()
        if self._set is not None and self._orphan:
            self._set.tw_enter(self)  # past max_tw_buckets, the oldest is closed

    def evict_time_wait(self) -> None:
        """Too many TIME-WAIT sockets (Limits.max_tw_buckets): close now, not in 60 s."""
        if self.state is State.TIME_WAIT:
            self._count("time_wait_evicted")
            self._closed(None)

    def _take_fin(self, now: float) -> None:
        self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        self._rx_fin_seq = None
        self._ack_now = True
        state = self.state
        if state in (State.SYN_RECEIVED, State.ESTABLISHED):
            self.state = State.CLOSE_WAIT
        elif state is State.FIN_WAIT_1:
            if self._fin_queued and seq_gt(self.snd_una, self._fin_seq()):
                self._enter_time_wait(now)
            else:
                self.state = State.CLOSING
        elif state is State.FIN_WAIT_2:
            self._enter_time_wait(now)
        self._wake()

    def _take_data(self, now: float, seq: int, payload, flags: int) -> None:
        rcv_nxt = self.rcv_nxt
        off = seq_sub(seq, rcv_nxt)
        n = len(payload)
        if self._read_closed:
            # discard, but acknowledge as if read (Linux answers with RST; we stay quiet)
            if off <= 0 < off + n:
                self.rcv_nxt = seq_add(rcv_nxt, off + n)
                if seq_gt(self.rcv_nxt, self.rcv_adv):  # never left: no window shrinking
                    self.rcv_adv = self.rcv_nxt
                self._ack_now = True
            return
        asm = self._asm
        free = self.rx_capacity - len(self._rx)
        if off == 0 and asm.is_empty and n <= free:
            self._rx += payload
            self.rcv_nxt = seq_add(rcv_nxt, n)
            self._unacked_bytes += n
            if self._unacked_bytes >= 2 * self._local_mss or not self.delayed_ack \
                    or flags & FIN:
                self._ack_now = True
            elif self._ack_at is None:
                self._ack_at = now + self.delayed_ack
            self._wake()
            return
        if asm is NO_GAPS:
            asm = self._asm = Assembler(self.rx_capacity)
        had_gap = not asm.is_empty
        if not asm.add(off, payload):
            self._count("ooo_dropped")
        self._ack_now = True  # out of order, or filling a gap: ACK at once (RFC 5681 §4.2)
        if off <= 0 or had_gap:
            self._pull_assembler()
            if self.rcv_nxt != rcv_nxt:
                self._dup_owed = 0  # a new cumulative ACK replaces the duplicates owed
        if off > 0:
            self._count("ooo_segment")
            # one duplicate ACK per out-of-order segment, even when several arrive in one
            # poll: a sender without SACK counts them to fast-retransmit (RFC 5681 §3.2)
            self._dup_owed = min(self._dup_owed + 1, MAX_DUP_ACKS_OWED)

    def _pull_assembler(self) -> None:
        free = self.rx_capacity - len(self._rx)
        data = self._asm.pop_contiguous(free)
        if data:
            self._rx += data
            self.rcv_nxt = seq_add(self.rcv_nxt, len(data))
            self._ack_now = True
            self._wake()
            if self._rx_fin_seq is not None and self._rx_fin_seq == self.rcv_nxt \
                    and self.state in MAY_RECV:
                self._take_fin(self._last_rx)

    # -- SACK scoreboard ----------------------------------------------------------------
    def _take_sacks(self, ranges, ack: int) -> None:
        snd_max = self.snd_max
        sacked = self._sacked
        for left, right in ranges:
            if not seq_lt(left, right) or seq_le(right, ack) or seq_gt(right, snd_max) \
                    or seq_lt(left, ack):
                continue  # D-SACK, stale or bogus
            merged = [left, right]
            keep = []
            for block in sacked:
                if seq_lt(block[1], merged[0]) or seq_gt(block[0], merged[1]):
                    keep.append(block)
                else:
                    if seq_lt(block[0], merged[0]):
                        merged[0] = block[0]
                    if seq_gt(block[1], merged[1]):
                        merged[1] = block[1]
            keep.append(merged)
            keep.sort(key=lambda b: seq_sub(b[0], ack))
            if len(keep) > 32:
                del keep[32:]
            sacked = keep
        self._sacked = sacked

    def _prune_sacks(self) -> None:
        una = self.snd_una
        keep = []
        for block in self._sacked:
            if seq_le(block[1], una):
                continue
            if seq_lt(block[0], una):
                block[0] = una
            keep.append(block)
        self._sacked = keep

    def _sacked_block_at(self, seq: int):
        for block in self._sacked:
            if seq_le(block[0], seq) and seq_lt(seq, block[1]):
                return block
        return None

    def _next_hole(self, after: int) -> int | None:
        """The first un-SACKed sequence number at or after `after` below the highest SACK
        (one segment past the last retransmitted one)."""
        if not self._sacked:
            return None
        highest = self._sacked[-1][1]
        seq = after
        for _ in range(len(self._sacked) + 1):
            block = self._sacked_block_at(seq)
            if block is None:
                break
            seq = block[1]
        if seq_lt(seq, self._sacked[-1][0]) and seq_lt(seq, highest) \
                and seq_lt(seq, self.snd_max):
            return seq
        return None

    def _sacked_bytes(self, upto: int) -> int:
        total = 0
        for left, right in self._sacked:
            if seq_ge(left, upto):
                break
            total += seq_sub(right if seq_le(right, upto) else upto, left)
        return total

    # -- sending ------------------------------------------------------------------------
    def _window_field(self) -> tuple[int, int]:
        """(raw window field, right edge it advertises), never moving the edge left and
        avoiding silly windows (RFC 1122 §4.2.3.3)."""
        free = self.rx_capacity - len(self._rx)
        if self._read_closed:
            free = self.rx_capacity
        shift = self._rcv_shift
        rcv_nxt = self.rcv_nxt
        current = seq_sub(self.rcv_adv, rcv_nxt)
        if current < 0:
            current = 0
        if free - current < min(self.rx_capacity // 2, self._local_mss):
            win = max(current, 0)
        else:
            win = free
        field = win >> shift
        if field > 0xFFFF:
            field = 0xFFFF
        if (field << shift) < current:  # rounding must not shrink it
            field = min((current + (1 << shift) - 1) >> shift, 0xFFFF)
        return field, seq_add(rcv_nxt, field << shift)

    def _repr(self, now: float, seq: int, flags: int, payload=b"", sacks=()) -> tuple:
        field, edge = self._window_field()
        ts = (self._ts_now(now), self._ts_recent) if self._ts_ok else None
        repr_ = TcpRepr(self._local[1], self._remote[1], seq, self.rcv_nxt, flags | ACK,
                        field, timestamp=ts, sack_ranges=sacks, payload=payload)
        return repr_, edge

    def _sack_list(self) -> tuple:
        asm = self._asm
        if not self._sack_ok or asm is None or asm.is_empty:
            return ()
        base = self.rcv_nxt
        return tuple((seq_add(base, s), seq_add(base, e))
                     for s, e in asm.sack_blocks(3 if self._ts_ok else 4))

    def _send(self, emit, repr_: TcpRepr, **kw) -> bool:
        dst = self._remote[0]
        src = self._local[0]
        if not src._ip:  # unspecified (`is_unspecified` costs two Python calls)
            src = None

        def fill(buf, src_addr, csum):
            if src is None and not self._local[0]._ip:
                self._local = (src_addr, self._local[1])
            repr_.emit(TcpPacket(buf), src_addr, dst, csum)

        return emit(dst, _TCP, repr_.buffer_len(), fill, src, ttl=self.ttl, dont_frag=True,
                    **kw)

    def _sent_ack(self, edge: int) -> None:
        self.rcv_adv = edge if seq_gt(edge, self.rcv_adv) else self.rcv_adv
        self._last_ack_sent = self.rcv_nxt
        self._ack_now = False
        self._dup_owed = 0
        self._ack_at = None
        self._unacked_bytes = 0

    def _syn_repr(self, now: float) -> TcpRepr:
        synack = self.state is State.SYN_RECEIVED
        if synack:
            ts = (self._ts_now(now), self._ts_recent) if self._ts_ok else None
            wscale = self._rcv_shift if self._ws_ok else None
            sack = self._sack_ok
            ack = self.rcv_nxt
        else:
            ts = (self._ts_now(now), 0) if self._ts_enabled else None
            wscale = self._rcv_shift if self._ws_enabled else None
            sack = self._sack_enabled
            ack = None
        window = min(self.rx_capacity - len(self._rx), 0xFFFF)
        return TcpRepr(self._local[1], self._remote[1], self.iss, ack,
                       SYN | (ACK if synack else 0), window, max_seg_size=self._local_mss,
                       window_scale=wscale, sack_permitted=sack, timestamp=ts)

    def _data_plan(self) -> tuple[int, int, int] | None:
        """What the next data/FIN segment would be: (seq, payload length, flags), or None.
        No side effects: poll_at uses it too."""
        if not self._tx and not self._fin_queued:
            return None  # (the common idle case, asked on every poll_at)
        state = self.state
        if state not in (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1,
                         State.CLOSING, State.LAST_ACK):
            return None
        nxt = self.snd_nxt
        retransmit = seq_lt(nxt, self.snd_max)
        if retransmit and self._sacked:
            block = self._sacked_block_at(nxt)
            while block is not None:
                nxt = block[1]
                block = self._sacked_block_at(nxt)
            retransmit = seq_lt(nxt, self.snd_max)
        data_end = seq_add(self._tx_seq, len(self._tx))
        avail = seq_sub(data_end, nxt)
        if avail < 0:
            return None  # our FIN is out already
        fin_ready = self._fin_queued
        una = self.snd_una
        usable = self.snd_wnd - seq_sub(nxt, una)
        cc = self._cc
        if cc is not None:
            flight = seq_sub(nxt, una) - (self._sacked_bytes(nxt) if self._sacked else 0)
            usable = min(usable, cc.cwnd - flight)
        mss = self._eff_mss()
        if retransmit and nxt == una and usable < mss:
            usable = mss  # a timeout resends the first segment whatever the window says
        max_seg = mss
        if self._tso_max and self._tso_max > mss and (
                self._tso_v6 or self._remote[0].version == 4):
            tso = self._tso_max
            if self._remote[0].version == 4 and tso > MAX_GSO_PAYLOAD:
                tso = MAX_GSO_PAYLOAD
            max_seg = tso // mss * mss
        n = min(avail, max(usable, 0), max_seg)
        if retransmit:
            for left, _right in self._sacked:
                if seq_gt(left, nxt):
                    n = min(n, seq_sub(left, nxt))
                    break
        if n > 0 and not retransmit and n < mss and not self._sws_override:
            if n < avail:
                # window-limited: sender-side silly window avoidance
                if n < self.max_snd_wnd // 2:
                    return None
            elif self.nagle and nxt != una and not fin_ready:
                return None  # Nagle: a small segment waits for the outstanding ACK
        flags = 0
        if n > 0 and seq_add(nxt, n) == data_end:
            flags |= PSH
        if fin_ready and seq_add(nxt, n) == data_end:
            flags |= FIN
        if n <= 0 and not flags & FIN:
            return None
        return nxt, n, flags

    def _needs_persist(self) -> bool:
        return bool(self._tx) and self.snd_una == self.snd_max \
            and self.state in (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1,
                               State.CLOSING, State.LAST_ACK) \
            and self._data_plan() is None

    def dispatch(self, now: float, emit) -> None:
        if self.state is not State.CLOSED and self.state is not State.LISTEN:
            self._timers(now)
        ctl = self._ctl_out
        if ctl is not None:
            dst, src, repr_ = ctl

            def fill(buf, src_addr, csum, repr_=repr_, dst=dst):
                repr_.emit(TcpPacket(buf), src_addr, dst, csum)

            src_arg = None if src is None or src.is_unspecified else src
            if not emit(dst, _TCP, repr_.buffer_len(), fill, src_arg, ttl=self.ttl,
                        dont_frag=True):
                return
            self._ctl_out = None
        state = self.state
        if state is State.CLOSED or state is State.LISTEN:
            return
        # our SYN / SYN-ACK
        if state is State.SYN_SENT or state is State.SYN_RECEIVED:
            if self.snd_nxt == self.iss:
                if not self._send(emit, self._syn_repr(now)):
                    return
                self.snd_nxt = seq_add(self.iss, 1)
                self.snd_max = self.snd_nxt
                if self._rto_at is None:
                    self._rto_at = now + self._rtt.rto
                if self._waiting_since is None:
                    self._waiting_since = now
                if state is State.SYN_RECEIVED:
                    self._sent_ack(seq_add(self.rcv_nxt, min(self.rx_capacity, 0xFFFF)))
                return
            if state is State.SYN_SENT:
                return
        sent_any = False
        # fast retransmission
        pending = self._rtx_pending
        if pending is not None and state in SYNCHRONIZED:
            if seq_lt(pending, self.snd_una) or not seq_lt(pending, self.snd_max):
                self._rtx_pending = None
            else:
                data_end = seq_add(self._tx_seq, len(self._tx))
                n = min(self._eff_mss(), max(seq_sub(data_end, pending), 0),
                        seq_sub(self.snd_max, pending))
                flags = PSH if seq_add(pending, n) == data_end else 0
                if self._fin_queued and seq_add(pending, n) == data_end and \
                        seq_gt(self.snd_max, data_end):
                    flags |= FIN
                if n > 0 or flags & FIN:
                    if not self._emit_data(now, emit, pending, n, flags, retransmit=True,
                                           fast=True):
                        return
                    sent_any = True
                self._rtx_pending = None
        # new data, FIN, or go-back-N after a timeout
        while True:
            plan = self._data_plan()
            if plan is None:
                break
            seq, n, flags = plan
            if not self._emit_data(now, emit, seq, n, flags,
                                   retransmit=seq_lt(seq, self.snd_max)):
                return
            self._sws_override = False
            sent_any = True
        # persist: data waiting, nothing in flight, and the window keeps it back
        if self._persist_at is None and self._needs_persist():
            backoff = min(self._rtt.rto * (1 << self._persist_backoff), PERSIST_MAX)
            self._persist_at = now + backoff
            if self._waiting_since is None:
                self._waiting_since = now
        # pure ACK
        if not sent_any and (self._ack_now or (self._ack_at is not None
                                               and now >= self._ack_at)):
            for _ in range(max(self._dup_owed, 1)):
                repr_, edge = self._repr(now, self.snd_nxt, 0, sacks=self._sack_list())
                if not self._send(emit, repr_):
                    return
                self._sent_ack(edge)
        elif sent_any:
            self._ack_now = False
            self._ack_at = None
        # probes (persist or keep-alive): an old sequence number elicits an ACK
        if self._probe_now:
            repr_, edge = self._repr(now, seq_add(self.snd_una, -1), 0)
            if not self._send(emit, repr_):
                return
            self._probe_now = False
            self._sent_ack(edge)

    def _emit_data(self, now: float, emit, seq: int, n: int, flags: int, retransmit: bool,
                   fast: bool = False) -> bool:
        sacks = self._sack_list()
        if sacks and n:
            room = self._eff_mss() - (4 + 8 * len(sacks))
            if n > room:
                n = max(room, 1)
                flags &= ~(FIN | PSH)
        start = seq_sub(seq, self._tx_seq)
        view = None
        payload = b""
        if n:
            view = memoryview(self._tx)
            payload = view[start:start + n]
        try:
            repr_, edge = self._repr(now, seq, flags, payload, sacks)
            kw = {"gso_size": self._eff_mss()} if n > self._eff_mss() else {}
            ok = self._send(emit, repr_, **kw)
        finally:
            if view is not None:
                payload.release()
                view.release()
        if not ok:
            return False
        self._sent_ack(edge)
        end = seq_add(seq, n + (1 if flags & FIN else 0))
        if not retransmit and self._rtt_seq is None and not self._ts_ok:
            self._rtt_seq = end
            self._rtt_sent_at = now
        if retransmit and self._rtt_seq is not None and seq_lt(seq, self._rtt_seq):
            self._rtt_seq = None  # Karn: no sample from retransmitted data
        if not fast:
            self.snd_nxt = end
        else:
            if seq_gt(end, self._rtx_hi):
                self._rtx_hi = end
            if seq_le(seq, self.snd_nxt) and seq_gt(end, self.snd_nxt):
                self.snd_nxt = end
        if seq_gt(end, self.snd_max):
            self.snd_max = end
        if self._rto_at is None:
            self._rto_at = now + self._rtt.rto
        if self._waiting_since is None:
            self._waiting_since = now
        if retransmit:
            self._count("retransmitted_segments")
        return True

    # -- timers -------------------------------------------------------------------------
    def _timers(self, now: float) -> None:
        state = self.state
        if state is State.TIME_WAIT:
            if self._tw_at is not None and now >= self._tw_at:
                self._closed(None)
            return
        if self.timeout is not None and self._waiting_since is not None \
                and now - self._waiting_since >= self.timeout:
            self._time_out()
            return
        if self._fw2_at is not None and now >= self._fw2_at and state is State.FIN_WAIT_2:
            self._closed(None)
            return
        if self._rto_at is not None and now >= self._rto_at:
            self._on_rto(now)
            if self.state is State.CLOSED:
                return
        if self._persist_at is not None and now >= self._persist_at:
            self._persist_at = None
            if self._needs_persist():
                self._persist_backoff = min(self._persist_backoff + 1, 10)
                if self.snd_wnd == 0:
                    if min(self._rtt.rto * (1 << self._persist_backoff), PERSIST_MAX) \
                            >= PERSIST_MAX:
                        self._probes += 1  # at the longest interval: the window stays shut
                    self._probes_unanswered += 1
                    # a peer that stops answering is given up as for retransmissions;
                    # one that answers with window 0 forever keeps only a live socket
                    # (an orphan: `orphan_retries` probes at the longest interval, as
                    # Linux gives up an orphan once its probe backoff is at the maximum)
                    if self._probes_unanswered > self.data_retries or (
                            self._orphan and self._probes > self.orphan_retries):
                        self._count("window_probes_gave_up")
                        self._time_out()
                        return
                    self._probe_now = True
                    self._count("window_probe")
                else:
                    self._sws_override = True
        if self.keep_alive and state in SYNCHRONIZED:
            if self._ka_at is None:
                self._ka_at = self._last_rx + self.keep_alive
            if now >= self._ka_at:
                if self.snd_una == self.snd_max:
                    if self._ka_probes >= KEEPALIVE_PROBES:
                        self._time_out()
                        return
                    self._ka_probes += 1
                    self._probe_now = True
                    self._count("keep_alive_probe")
                self._ka_at = now + self.keep_alive

    def _time_out(self) -> None:
        if self.state in SYNCHRONIZED or self.state is State.SYN_RECEIVED:
            self._ctl_out = (self._remote[0], None if self._local[0].is_unspecified
                             else self._local[0],
                             TcpRepr(self._local[1], self._remote[1], self.snd_max, None,
                                     RST, 0))
        self._closed("timed out")

    def _on_rto(self, now: float) -> None:
        self._rto_at = None
        self._rtx_count += 1
        self._count("rto")
        self._rto_ts = self._ts_now(now)
        state = self.state
        if state in (State.SYN_SENT, State.SYN_RECEIVED):
            if self._rtx_count > self.syn_retries:
                self._closed("timed out")
                return
            self._rtt.backoff()
            self.snd_nxt = self.iss
            return
        if self.snd_una == self.snd_max:
            return
        if self._rtx_count > (self.orphan_retries if self._orphan else self.data_retries):
            self._time_out()
            return
        self._rtt.backoff()
        if self._cc is not None:
            self._cc.on_timeout(now)
        self._recover = self.snd_max  # RFC 6582 §4: no fast retransmit for older data
        self._in_recovery = False
        self._dupacks = 0
        self._rtx_pending = None
        self._rtt_seq = None
        if self._rtx_count >= 2:
            self._sacked = ()  # the receiver may have reneged (RFC 2018 §8)
        self.snd_nxt = self.snd_una

    def poll_at(self, now: float) -> float | None:
        state = self.state
        if self._ctl_out is not None:
            return now
        if state is State.CLOSED or state is State.LISTEN:
            return None
        if state is State.TIME_WAIT:
            return self._tw_at
        if (state is State.SYN_SENT or state is State.SYN_RECEIVED) and self.snd_nxt == self.iss:
            return now
        if self._ack_now or self._probe_now or self._rtx_pending is not None:
            return now
        if self._data_plan() is not None:
            return now
        at = self._ack_at
        for t in (self._rto_at, self._persist_at, self._fw2_at):
            if t is not None and (at is None or t < at):
                at = t
        if self._persist_at is None and self._needs_persist():
            return now  # dispatch arms the persist timer
        if self.keep_alive and state in SYNCHRONIZED:
            ka = self._ka_at if self._ka_at is not None else self._last_rx + self.keep_alive
            if at is None or ka < at:
                at = ka
        if self.timeout is not None and self._waiting_since is not None:
            t = self._waiting_since + self.timeout
            if at is None or t < at:
                at = t
        return at

    def __repr__(self) -> str:
        return (f"<TcpSocket {self.state} {self._local} -> {self._remote} "
                f"una={self.snd_una} nxt={self.snd_nxt} rcv={self.rcv_nxt}>")
