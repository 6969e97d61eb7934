"""The sans-I/O vhost-user back-end: one message in, at most one reply out.

`VhostUserBackend.handle(msg)` applies a front-end message to the device state and returns
the reply to send (or None). It owns the message's fds: those it keeps (memory, kick,
call, err) it closes when replaced or at `close()`; every other fd is closed at once. It
never touches a socket: the runtime (server.py) reads, calls `handle`, writes, and then
looks at `watch_fds()` to know which kick eventfds to wait on.

Errors: `ProtocolError` (raised) means close the connection; `InvalidRequest` is turned
into a failure reply (REPLY_ACK) and a log line, and the connection stays.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from vhostuser.dirtylog import DirtyLog
from vhostuser.errors import GuestMemoryError, InvalidRequest, ProtocolError, RingError
from vhostuser.features import (
    STATUS_DEVICE_NEEDS_RESET,
    Feature,
    bits,
    has,
)
from vhostuser.memory import MAX_SLOTS, GuestMemory
from vhostuser.net import VirtioNetDevice
from vhostuser.packed import PackedVirtqueue, use_layout
from vhostuser.protocol import (
    CONFIG_HEADER,
    MAX_CONFIG_SIZE,
    MEM_REGION,
    MEM_TABLE_HEADER,
    VERSION,
    VRING_ADDR,
    VRING_F_LOG,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    Message,
    ProtocolFeature,
    Request,
    VringAddr,
    reply_to,
    state_payload,
    u64_payload,
    unpack_mem_table,
    unpack_single_region,
)
from vhostuser.virtqueue import MAX_QUEUE_SIZE, Virtqueue

log = logging.getLogger(__name__)

R = Request

# Device features we offer (QEMU lets a vhost-user net back-end negotiate these; the
# control queue, MAC and STATUS stay in QEMU). Offloads come with the stack's support.
DEFAULT_FEATURES = bits(
    Feature.F_VERSION_1,
    Feature.NET_F_MRG_RXBUF,
    Feature.RING_F_EVENT_IDX,
    Feature.RING_F_INDIRECT_DESC,
    Feature.NET_F_MTU,
    Feature.NET_F_GUEST_ANNOUNCE,
    Feature.F_ANY_LAYOUT,
    Feature.PROTOCOL_FEATURES,
    # We use buffers in the order they were made available on every path (virtio 1.2
    # §2.7.9) and still write a used element for each, which IN_ORDER allows; drivers
    # that take it (DPDK's virtio-user) switch to their in-order paths.
    Feature.F_IN_ORDER,
    # The packed ring layout (vhostuser/packed.py): QEMU's `packed=on`, DPDK's packed_vq
    Feature.F_RING_PACKED,
    # Dirty-page logging (dirtylog.py): without it QEMU refuses to migrate the guest
    Feature.LOG_ALL,
)
# Checksum and TCP segmentation offloads (IPv4 and IPv6): the stack takes and gives 64 KiB
# TCP segments with the checksum left to whoever delivers them (see offload.py).
OFFLOAD_FEATURES = bits(
    Feature.NET_F_CSUM,
    Feature.NET_F_GUEST_CSUM,
    Feature.NET_F_HOST_TSO4,
    Feature.NET_F_HOST_TSO6,
    Feature.NET_F_GUEST_TSO4,
    Feature.NET_F_GUEST_TSO6,
)
DEFAULT_PROTOCOL_FEATURES = bits(
    ProtocolFeature.MQ,
    ProtocolFeature.REPLY_ACK,
    ProtocolFeature.CONFIG,
    ProtocolFeature.RESET_DEVICE,
    ProtocolFeature.STATUS,
    ProtocolFeature.CONFIGURE_MEM_SLOTS,
    ProtocolFeature.MTU,
    ProtocolFeature.RARP,
    ProtocolFeature.LOG_SHMFD,
)

# Payload sizes: fixed-size requests must match exactly (0 or 8 accepted where there is
# no payload: some front-ends send an unused u64).
_NO_PAYLOAD = (0, 8)
_SIZES: dict[int, tuple[int, ...]] = {
    R.GET_FEATURES: _NO_PAYLOAD,
    R.GET_PROTOCOL_FEATURES: _NO_PAYLOAD,
    R.SET_OWNER: _NO_PAYLOAD,
    R.RESET_OWNER: _NO_PAYLOAD,
    R.GET_QUEUE_NUM: _NO_PAYLOAD,
    R.RESET_DEVICE: _NO_PAYLOAD,
    R.GET_MAX_MEM_SLOTS: _NO_PAYLOAD,
    R.GET_STATUS: _NO_PAYLOAD,
    R.SET_BACKEND_REQ_FD: _NO_PAYLOAD,
    R.SET_LOG_FD: _NO_PAYLOAD,
    R.SET_FEATURES: (8,),
    R.SET_PROTOCOL_FEATURES: (8,),
    R.SET_VRING_KICK: (8,),
    R.SET_VRING_CALL: (8,),
    R.SET_VRING_ERR: (8,),
    R.SEND_RARP: (8,),
    R.NET_SET_MTU: (8,),
    R.SET_STATUS: (8,),
    R.SET_VRING_NUM: (8,),
    R.SET_VRING_BASE: (8,),
    R.GET_VRING_BASE: (8,),
    R.SET_VRING_ENABLE: (8,),
    R.SET_VRING_ENDIAN: (8,),
    R.VRING_KICK: (8,),
    R.SET_VRING_ADDR: (VRING_ADDR.size,),
    R.ADD_MEM_REG: (40,),
    R.REM_MEM_REG: (40,),
    R.SET_LOG_BASE: (16,),
}
# Requests whose answer is a payload of their own (the rest answer only with REPLY_ACK).
_HAS_REPLY = {
    R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_VRING_BASE, R.GET_QUEUE_NUM,
    R.GET_CONFIG, R.GET_MAX_MEM_SLOTS, R.GET_STATUS, R.SET_LOG_BASE,
}
_UNSUPPORTED = {
    R.IOTLB_MSG: "IOMMU (VIRTIO_F_ACCESS_PLATFORM) is not supported",
    R.CREATE_CRYPTO_SESSION: "not a crypto device",
    R.CLOSE_CRYPTO_SESSION: "not a crypto device",
    R.POSTCOPY_ADVISE: "postcopy migration is not supported",
    R.POSTCOPY_LISTEN: "postcopy migration is not supported",
    R.POSTCOPY_END: "postcopy migration is not supported",
    R.GET_INFLIGHT_FD: "inflight I/O tracking is not supported",
    R.SET_INFLIGHT_FD: "inflight I/O tracking is not supported",
    R.GPU_SET_SOCKET: "not a GPU device",
    R.SET_BACKEND_REQ_FD: "no back-end request channel (BACKEND_REQ not offered)",
}

VIRTIO_NET_S_LINK_UP = 1
VIRTIO_NET_S_ANNOUNCE = 2
NET_CONFIG = struct.Struct("<6sHHHIB")  # mac, status, max_virtqueue_pairs, mtu, speed, duplex


@dataclass
class BackendConfig:
    queue_pairs: int = 1
    mtu: int = 1500
    mac: bytes = bytes.fromhex("525400123456")
    features: int = DEFAULT_FEATURES | OFFLOAD_FEATURES
    protocol_features: int = DEFAULT_PROTOCOL_FEATURES


class VhostUserBackend:
    """State of one vhost-user net device, driven by `handle(msg)`."""

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()
        n = self.config.queue_pairs
        if not 1 <= n <= 127:
            raise ValueError("queue pairs must be 1..127")
        self.features_offered = self.config.features
        if n > 1:
            self.features_offered |= 1 << Feature.NET_F_MQ
        self.protocol_offered = self.config.protocol_features
        self.acked_features = 0
        self.acked_protocol = 0
        self.features_set = False
        self.owner = False
        self.status = 0
        self.mtu = self.config.mtu
        self.memory = GuestMemory()
        self.dirty_log: DirtyLog | None = None  # mapped by SET_LOG_BASE
        self.logging = False  # VHOST_F_LOG_ALL negotiated: the front-end is migrating
        self.queues = [Virtqueue(i) for i in range(2 * n)]
        self.net = VirtioNetDevice(self.memory, self.queues, mtu=self.mtu)
        self.net.on_error = self._queue_error
        self.counters: Counter[str] = Counter()
        self.on_started: Callable[[Virtqueue], None] | None = None
        # Called with a kick fd just before we close it: a runtime waiting on it must stop
        # (epoll keeps watching a closed fd's file while the front-end holds it, and the
        # number comes back for the next kick fd, often the same eventfd).
        self.on_kick_closing: Callable[[int], None] | None = None

    # -- helpers ---------------------------------------------------------------------
    def _proto(self, f: ProtocolFeature) -> bool:
        return bool(self.acked_protocol >> int(f) & 1)

    def _queue(self, index: int) -> Virtqueue:
        if not 0 <= index < len(self.queues):
            raise InvalidRequest(f"vring index {index} ≥ queue count {len(self.queues)}")
        return self.queues[index]

    def _queue_error(self, q: Virtqueue, why: str) -> None:
        self.counters["ring_errors"] += 1
        self.status |= STATUS_DEVICE_NEEDS_RESET
        if q.err_fd is not None:
            try:
                os.eventfd_write(q.err_fd, 1)
            except OSError:
                pass

    def _close_kick(self, q: Virtqueue) -> None:
        fd, q.kick_fd = q.kick_fd, None
        if fd is not None:
            if self.on_kick_closing is not None:
                self.on_kick_closing(fd)
            self._close(fd)

    @staticmethod
    def _close(fd: int | None) -> None:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _remap_queues(self) -> None:
        for q in self.queues:
            if q.configured:
                try:
                    q.map(self.memory)
                except (GuestMemoryError, RingError) as e:
                    log.warning("queue %d: ring not mapped: %s", q.index, e)
                    q.unmap()

    def watch_fds(self) -> dict[int, Virtqueue]:
        """Kick eventfds to wait on, and their queues."""
        return {q.kick_fd: q for q in self.queues if q.kick_fd is not None}

    def polled_queues(self) -> list[Virtqueue]:
        """Queues the front-end asked us to poll (SET_VRING_KICK without an fd)."""
        return [q for q in self.queues if q.polling and q.started]

    @property
    def suspended(self) -> bool:
        return not any(q.started for q in self.queues)

    # -- dispatch --------------------------------------------------------------------
    def handle(self, msg: Message) -> Message | None:
        """Apply one message; return the reply to send, if any."""
        self.counters["messages"] += 1
        try:
            req = Request(msg.request)
        except ValueError:
            msg.close_fds()
            self.counters["unknown_requests"] += 1
            log.warning("unknown vhost-user request %d (size %d) ignored", msg.request,
                        len(msg.payload))
            return self._ack(msg, ok=False)
        sizes = _SIZES.get(req)
        if sizes is not None and len(msg.payload) not in sizes:
            msg.close_fds()
            raise ProtocolError(f"{req.name}: payload of {len(msg.payload)} bytes, expected "
                                f"{' or '.join(map(str, sizes))}")
        if req in _UNSUPPORTED:
            msg.close_fds()
            self.counters["unsupported_requests"] += 1
            log.warning("%s refused: %s", req.name, _UNSUPPORTED[req])
            if req in _HAS_REPLY:
                return reply_to(msg, u64_payload(1))
            return self._ack(msg, ok=False)
        handler = getattr(self, "_h_" + req.name.lower(), None)
        if handler is None:
            msg.close_fds()
            log.warning("%s is not handled by a net back-end", req.name)
            return self._ack(msg, ok=False)
        try:
            reply = handler(msg)
        except ProtocolError:
            msg.close_fds()
            raise
        except InvalidRequest as e:
            msg.close_fds()
            self.counters["invalid_requests"] += 1
            log.warning("%s refused: %s", req.name, e)
            if req in _HAS_REPLY:
                return self._failed_reply(req, msg)
            return self._ack(msg, ok=False)
        msg.close_fds()  # whatever the handler did not take
        if reply is not None:
            return reply
        return self._ack(msg, ok=True)

    def _ack(self, msg: Message, ok: bool) -> Message | None:
        if msg.need_reply and self._proto(ProtocolFeature.REPLY_ACK):
            return reply_to(msg, u64_payload(0 if ok else 1))
        return None

    def _failed_reply(self, req: Request, msg: Message) -> Message:
        if req == R.GET_CONFIG:
            return reply_to(msg, b"")
        if req == R.GET_VRING_BASE:
            index = msg.vring_state()[0]
            return reply_to(msg, state_payload(index, 0))
        if req == R.SET_LOG_BASE:
            return reply_to(msg, u64_payload(1))
        return reply_to(msg, u64_payload(0))

    def _expect_fds(self, msg: Message, n: int) -> list[int]:
        if len(msg.fds) != n:
            self.counters["wrong_fd_count"] += 1
            raise InvalidRequest(f"{msg.name} carries {len(msg.fds)} fds, expected {n}")
        return msg.take_fds()

    def _no_fds(self, msg: Message) -> None:
        if msg.fds:
            self.counters["wrong_fd_count"] += 1
            log.warning("%s carried %d unexpected fds; closed", msg.name, len(msg.fds))
            msg.close_fds()

    # -- features --------------------------------------------------------------------
    def _h_get_features(self, msg: Message) -> Message:
        self._no_fds(msg)
        return reply_to(msg, u64_payload(self.features_offered))

    def _h_set_features(self, msg: Message) -> None:
        self._no_fds(msg)
        features = msg.u64()
        extra = features & ~self.features_offered
        if extra:
            raise InvalidRequest(f"features {extra:#x} were never offered")
        self.acked_features = features
        self.features_set = True
        self._set_logging(has(features, Feature.LOG_ALL))
        self.net.set_features(features)
        event_idx = has(features, Feature.RING_F_EVENT_IDX)
        indirect = has(features, Feature.RING_F_INDIRECT_DESC)
        packed = has(features, Feature.F_RING_PACKED)
        for q in self.queues:
            use_layout(q, packed)
            q.event_idx = event_idx
            q.indirect = indirect
        if not has(features, Feature.PROTOCOL_FEATURES):
            for q in self.queues:  # without protocol features rings start enabled
                q.enabled = True

    def _h_get_protocol_features(self, msg: Message) -> Message:
        self._no_fds(msg)
        return reply_to(msg, u64_payload(self.protocol_offered))

    def _h_set_protocol_features(self, msg: Message) -> None:
        self._no_fds(msg)
        value = msg.u64()
        extra = value & ~self.protocol_offered
        if extra:
            log.warning("front-end acked protocol features %#x we never offered; ignored",
                        extra)
        self.acked_protocol = value & self.protocol_offered

    def _h_set_owner(self, msg: Message) -> None:
        self._no_fds(msg)
        self.owner = True

    def _h_reset_owner(self, msg: Message) -> None:
        """Deprecated: we follow the spec's advice and only disable the rings."""
        self._no_fds(msg)
        for q in self.queues:
            q.enabled = False
            q.disabled = True

    def _h_get_queue_num(self, msg: Message) -> Message:
        self._no_fds(msg)
        return reply_to(msg, u64_payload(self.config.queue_pairs))

    def _h_get_max_mem_slots(self, msg: Message) -> Message:
        self._no_fds(msg)
        return reply_to(msg, u64_payload(MAX_SLOTS))

    # -- memory ----------------------------------------------------------------------
    def _h_set_mem_table(self, msg: Message) -> None:
        size = len(msg.payload)
        if size < MEM_TABLE_HEADER.size:
            raise ProtocolError("SET_MEM_TABLE shorter than its header")
        n = MEM_TABLE_HEADER.unpack_from(msg.payload)[0]
        if size != MEM_TABLE_HEADER.size + n * MEM_REGION.size:
            raise ProtocolError(f"SET_MEM_TABLE of {n} regions in {size} bytes")
        try:
            regions = unpack_mem_table(msg.payload)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        fds = self._expect_fds(msg, len(regions))
        self.net.flush()  # used entries pushed into the old mappings reach the guest
        try:
            for q in self.queues:
                q.unmap()
            try:
                self.memory.set_table(regions, fds)
            finally:
                self._remap_queues()
        finally:
            for fd in fds:
                self._close(fd)
        log.info("memory table: %s", ", ".join(
            f"gpa {r.guest_phys_addr:#x}+{r.size:#x}" for r in self.memory.regions))

    def _h_add_mem_reg(self, msg: Message) -> None:
        region = unpack_single_region(msg.payload)
        (fd,) = self._expect_fds(msg, 1)
        try:
            self.memory.add_region(region, fd)
        finally:
            self._close(fd)
        for q in self.queues:
            if q.configured and not q.mapped:
                self._remap_queues()
                break

    def _h_rem_mem_reg(self, msg: Message) -> None:
        msg.close_fds()  # allowed for compatibility, never used
        region = unpack_single_region(msg.payload)
        held = [r for r in self.memory.regions
                if r.guest_phys_addr == region.guest_phys_addr and r.refs > 1]
        if held:  # another queue pair's device still holds it: nothing moves
            self.memory.remove_region(region)
            return
        self.net.flush()  # as for SET_MEM_TABLE
        for q in self.queues:
            q.unmap()
        try:
            self.memory.remove_region(region)
        finally:
            self._remap_queues()

    # -- live migration --------------------------------------------------------------
    def _h_set_log_base(self, msg: Message) -> Message:
        """Map the dirty-page log (LOG_SHMFD: an fd, its size and offset); the front-end
        waits for our reply before it relies on the log."""
        if not self._proto(ProtocolFeature.LOG_SHMFD):
            raise InvalidRequest("a log base address without LOG_SHMFD (kernel vhost's "
                                 "form) cannot be mapped by a process")
        size, offset = struct.unpack_from("<QQ", msg.payload)
        (fd,) = self._expect_fds(msg, 1)
        try:
            new = DirtyLog(fd, size, offset)
        finally:
            self._close(fd)
        old, self.dirty_log = self.dirty_log, new
        self._set_logging(self.logging)
        if old is not None:
            old.close()
        log.info("dirty-page log mapped: %d bytes for %d MiB of guest memory", size,
                 new.pages >> 8)
        return reply_to(msg, u64_payload(0))

    def _h_set_log_fd(self, msg: Message) -> None:
        """An eventfd to signal log updates with: only for logs we cannot share, and ours
        is shared memory the front-end reads itself; closed."""
        msg.close_fds()

    def _set_logging(self, on: bool) -> None:
        if on != self.logging:
            log.info("dirty-page logging %s", "on: the guest is being migrated" if on
                     else "off")
            self.counters["log_starts" if on else "log_stops"] += 1
        self.logging = on
        if on and self.dirty_log is None:
            log.warning("VHOST_F_LOG_ALL negotiated before a log was given (SET_LOG_BASE)")
        self.memory.log = self.dirty_log if on else None

    # -- rings -----------------------------------------------------------------------
    def _h_set_vring_num(self, msg: Message) -> None:
        self._no_fds(msg)
        index, num = msg.vring_state()
        q = self._queue(index)
        if num == 0 or num > MAX_QUEUE_SIZE or num & (num - 1):
            raise InvalidRequest(f"queue {index}: size {num} is not a power of two ≤ "
                                 f"{MAX_QUEUE_SIZE}")
        q.unmap()
        q.size = num

    def _h_set_vring_addr(self, msg: Message) -> None:
        self._no_fds(msg)
        addr = VringAddr.unpack(msg.payload)
        q = self._queue(addr.index)
        if addr.flags & ~VRING_F_LOG:
            raise InvalidRequest(f"queue {addr.index}: unknown ring address flags "
                                 f"{addr.flags:#x}")
        # (VRING_F_LOG: log the used ring's writes. We log every ring area we write by
        # its guest-physical address, which is what log_guest_addr names.)
        q.addr = addr
        if not q.size:
            raise InvalidRequest(f"queue {addr.index}: addresses before SET_VRING_NUM")
        try:
            q.map(self.memory)
        except (GuestMemoryError, RingError) as e:
            q.unmap()
            raise InvalidRequest(f"queue {addr.index}: {e}") from None

    def _h_set_vring_base(self, msg: Message) -> None:
        self._no_fds(msg)
        index, num = msg.vring_state()
        q = self._queue(index)
        if num > 0xFFFF and not isinstance(q, PackedVirtqueue):  # (packed: two halves)
            raise InvalidRequest(f"queue {index}: base {num} does not fit 16 bits")
        q.set_base(num)

    def _h_get_vring_base(self, msg: Message) -> Message:
        """Stop the ring and tell where the front-end should resume."""
        self._no_fds(msg)
        index, _ = msg.vring_state()
        q = self._queue(index)
        self.net.flush()
        base = q.stop()
        self._close_kick(q)
        q.polling = False
        log.debug("queue %d stopped at avail index %d", index, base)
        return reply_to(msg, state_payload(index, base))

    def _vring_fd(self, msg: Message) -> tuple[Virtqueue, int | None]:
        value = msg.u64()
        index = value & VRING_IDX_MASK
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise InvalidRequest(f"{msg.name}: reserved bits set in {value:#x}")
        q = self._queue(index)
        if value & VRING_NOFD_MASK:
            self._no_fds(msg)
            return q, None
        (fd,) = self._expect_fds(msg, 1)
        return q, fd

    def _h_set_vring_kick(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        self._close_kick(q)
        q.kick_fd = fd
        q.polling = fd is None
        # A kick sent before we (re)connected is lost: treat the new fd as a kick and look
        # at the avail ring at once (a guest that kicked RX once at boot must not stall).
        self._start(q)

    def _start(self, q: Virtqueue) -> None:
        if q.configured and not q.started:
            if not q.mapped or q.is_stale(self.memory):
                try:
                    q.map(self.memory)
                except (GuestMemoryError, RingError) as e:
                    log.warning("queue %d cannot start: %s", q.index, e)
                    return
            q.start()
            if self.on_started is not None:
                self.on_started(q)

    def kicked(self, q: Virtqueue) -> None:
        """The runtime read the queue's kick eventfd."""
        q.stats.kicks += 1
        if not q.started:
            self._start(q)

    def _h_set_vring_call(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        self._close(q.call_fd)
        q.call_fd = fd

    def _h_set_vring_err(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        self._close(q.err_fd)
        q.err_fd = fd

    def _h_set_vring_enable(self, msg: Message) -> None:
        self._no_fds(msg)
        index, num = msg.vring_state()
        q = self._queue(index)
        if num not in (0, 1):
            raise InvalidRequest(f"queue {index}: enable value {num}")
        q.enabled = bool(num)
        q.disabled = not num
        if q.enabled and q.started and self.on_started is not None:
            self.on_started(q)

    def _h_set_vring_endian(self, msg: Message) -> None:
        self._no_fds(msg)
        index, num = msg.vring_state()
        self._queue(index)
        if num != 0:
            raise InvalidRequest("only little-endian rings are supported")

    def _h_vring_kick(self, msg: Message) -> None:
        self._no_fds(msg)
        index, _ = msg.vring_state()
        self.kicked(self._queue(index))

    # -- device ----------------------------------------------------------------------
    def _h_send_rarp(self, msg: Message) -> None:
        self._no_fds(msg)
        mac = msg.payload[:6]
        # RARP request "who is mac", broadcast, as if the guest had sent it: switches
        # (our stack) learn where the migrated guest now lives.
        frame = (b"\xff" * 6 + mac + b"\x80\x35" + bytes.fromhex("0001080006040003")
                 + mac + bytes(4) + mac + bytes(4))
        self.net.inject_from_guest(frame.ljust(60, b"\x00"))
        self.counters["rarp"] += 1

    def _h_net_set_mtu(self, msg: Message) -> None:
        self._no_fds(msg)
        mtu = msg.u64()
        if not 68 <= mtu <= 65535:
            raise InvalidRequest(f"MTU {mtu} out of range 68..65535")
        self.mtu = mtu
        self.net.mtu = mtu

    def config_space(self) -> bytes:
        status = VIRTIO_NET_S_LINK_UP
        return NET_CONFIG.pack(self.config.mac, status, self.config.queue_pairs, self.mtu,
                               0xFFFFFFFF, 0xFF)

    def _h_get_config(self, msg: Message) -> Message:
        self._no_fds(msg)
        if len(msg.payload) < CONFIG_HEADER.size:
            raise ProtocolError("GET_CONFIG shorter than its header")
        offset, size, _flags = CONFIG_HEADER.unpack_from(msg.payload)
        if size > MAX_CONFIG_SIZE or len(msg.payload) != CONFIG_HEADER.size + size:
            raise ProtocolError(f"GET_CONFIG of {size} bytes in a {len(msg.payload)}-byte "
                                "payload")
        space = self.config_space()
        if offset + size > len(space):
            raise InvalidRequest(f"config read {offset}+{size} past {len(space)} bytes")
        return reply_to(msg, CONFIG_HEADER.pack(offset, size, _flags)
                        + space[offset:offset + size])

    def _h_set_config(self, msg: Message) -> None:
        self._no_fds(msg)
        if len(msg.payload) < CONFIG_HEADER.size:
            raise ProtocolError("SET_CONFIG shorter than its header")
        raise InvalidRequest("the net config space is read-only")

    def _h_reset_device(self, msg: Message) -> None:
        self._no_fds(msg)
        self.reset_device()

    def _h_set_status(self, msg: Message) -> None:
        self._no_fds(msg)
        status = msg.u64()
        if status > 0xFF:
            raise InvalidRequest(f"status {status:#x} does not fit 8 bits")
        # Status 0 resets the status, not the rings: QEMU 7.2 sends it when it stops the
        # device *before* it asks each ring's base (GET_VRING_BASE; QEMU 8 and later ask
        # first). Forgetting the rings here answered base 0, which QEMU saves with a
        # migrating guest: the destination then found every ring "inconsistent" and
        # stopped the NIC. The rings stop at GET_VRING_BASE and are set up afresh by the
        # front-end's next SET_VRING_* (a new base mends a broken ring); RESET_DEVICE
        # resets everything.
        self.status = status | (self.status & STATUS_DEVICE_NEEDS_RESET if status else 0)

    def _h_get_status(self, msg: Message) -> Message:
        self._no_fds(msg)
        return reply_to(msg, u64_payload(self.status))

    # -- lifecycle -------------------------------------------------------------------
    def reset_device(self) -> None:
        """Disable and forget every ring (RESET_DEVICE, status 0); keep the memory table
        and the negotiated features, as libvhost-user does."""
        for q in self.queues:
            self._close_kick(q)
            for fd in (q.call_fd, q.err_fd):
                self._close(fd)
            q.kick_fd = q.call_fd = q.err_fd = None
            q.reset()
            q.event_idx = has(self.acked_features, Feature.RING_F_EVENT_IDX)
            q.indirect = has(self.acked_features, Feature.RING_F_INDIRECT_DESC)
        self.net.reset()
        self.status = 0

    def close(self) -> None:
        """Disconnect: release every fd and mapping."""
        self.reset_device()
        self.memory.clear()
        self.memory.log = None
        self.logging = False
        if self.dirty_log is not None:
            self.dirty_log.close()
            self.dirty_log = None


__all__ = ["BackendConfig", "VhostUserBackend", "DEFAULT_FEATURES", "DEFAULT_PROTOCOL_FEATURES",
           "VERSION"]
