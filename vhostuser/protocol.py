"""The vhost-user wire protocol: message types, payload layouts and a sans-I/O decoder.

Every number is little-endian ("machine native" on the x86/arm hosts QEMU runs on). A message
is a 12-byte header (request, flags, size) and `size` payload bytes; file descriptors travel
beside it as SCM_RIGHTS ancillary data. See QEMU docs/interop/vhost-user.rst.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from vhostuser.errors import ProtocolError

HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size
VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
# The largest payload any request we know carries is a memory table (8 + 8 * 32) or a
# config space access (12 + 256); anything much larger is a broken or hostile peer.
MAX_PAYLOAD = 4096
MAX_FDS = 8
MAX_MEM_REGIONS = 8  # VHOST_MEMORY_BASELINE_NREGIONS for SET_MEM_TABLE
MAX_CONFIG_SIZE = 256

VHOST_USER_F_PROTOCOL_FEATURES = 30
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 1 << 8


class Request(IntEnum):
    """Front-end → back-end message types."""

    NONE = 0
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(IntEnum):
    """Bits of GET/SET_PROTOCOL_FEATURES."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


def feature_names(bits: int, enum: type[IntEnum]) -> list[str]:
    """Names of the set bits, for logs and `vhostnet status`."""
    names = []
    for b in range(64):
        if bits >> b & 1:
            try:
                names.append(enum(b).name)
            except ValueError:
                names.append(f"bit{b}")
    return names


# ---------------------------------------------------------------------------------------
# Payload layouts
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")  # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log
MEM_REGION = struct.Struct("<QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
MEM_TABLE_HEADER = struct.Struct("<II")  # nregions, padding
SINGLE_REGION = struct.Struct("<QQQQQ")  # padding, region
LOG = struct.Struct("<QQ")  # mmap_size, mmap_offset
CONFIG_HEADER = struct.Struct("<III")  # offset, size, flags
VRING_F_LOG = 1


@dataclass(frozen=True, slots=True)
class VringAddr:
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int

    @classmethod
    def unpack(cls, payload: bytes) -> VringAddr:
        return cls(*VRING_ADDR.unpack_from(payload))

    def pack(self) -> bytes:
        return VRING_ADDR.pack(self.index, self.flags, self.desc, self.used, self.avail, self.log)


@dataclass(frozen=True, slots=True)
class MemRegion:
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int

    def pack(self) -> bytes:
        return MEM_REGION.pack(
            self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset
        )


def pack_mem_table(regions: list[MemRegion]) -> bytes:
    return MEM_TABLE_HEADER.pack(len(regions), 0) + b"".join(r.pack() for r in regions)


def unpack_mem_table(payload: bytes) -> list[MemRegion]:
    if len(payload) < MEM_TABLE_HEADER.size:
        raise ValueError("memory table shorter than its header")
    n, _ = MEM_TABLE_HEADER.unpack_from(payload)
    if n > MAX_MEM_REGIONS:
        raise ValueError(f"memory table has {n} regions, at most {MAX_MEM_REGIONS} allowed")
    if len(payload) < MEM_TABLE_HEADER.size + n * MEM_REGION.size:
        raise ValueError(f"memory table claims {n} regions but carries {len(payload)} bytes")
    return [
        MemRegion(*MEM_REGION.unpack_from(payload, MEM_TABLE_HEADER.size + i * MEM_REGION.size))
        for i in range(n)
    ]


def pack_single_region(region: MemRegion) -> bytes:
    return U64.pack(0) + region.pack()


def unpack_single_region(payload: bytes) -> MemRegion:
    if len(payload) < SINGLE_REGION.size:
        raise ValueError("single memory region payload too short")
    return MemRegion(*SINGLE_REGION.unpack_from(payload)[1:])


# ---------------------------------------------------------------------------------------
# Messages


@dataclass(slots=True)
class Message:
    """One vhost-user message. `fds` are owned by whoever holds the message: close them
    (`close_fds`) unless kept."""

    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    @property
    def name(self) -> str:
        try:
            return Request(self.request).name
        except ValueError:
            return f"UNKNOWN({self.request})"

    def u64(self) -> int:
        if len(self.payload) < 8:
            raise ValueError(f"{self.name}: payload of {len(self.payload)} bytes, need 8")
        return U64.unpack_from(self.payload)[0]

    def vring_state(self) -> tuple[int, int]:
        if len(self.payload) < VRING_STATE.size:
            raise ValueError(f"{self.name}: payload of {len(self.payload)} bytes, need 8")
        return VRING_STATE.unpack_from(self.payload)

    def encode(self) -> bytes:
        return HEADER.pack(self.request, self.flags, len(self.payload)) + self.payload

    def take_fds(self) -> list[int]:
        fds, self.fds = self.fds, []
        return fds

    def close_fds(self) -> None:
        for fd in self.take_fds():
            try:
                os.close(fd)
            except OSError:
                pass


def reply_to(msg: Message, payload: bytes = b"") -> Message:
    return Message(msg.request, VERSION | FLAG_REPLY, payload)


def u64_payload(value: int) -> bytes:
    return U64.pack(value & 0xFFFFFFFFFFFFFFFF)


def state_payload(index: int, num: int) -> bytes:
    return VRING_STATE.pack(index, num)


class MessageDecoder:
    """Sans-I/O decoder of a vhost-user byte stream.

    `feed(data, fds)` takes bytes as they came off the socket (any split, one byte at a
    time included) and the fds that arrived with them; fds belong to the message whose
    bytes were being received (senders attach them to a message's first byte). Yields
    complete messages. Raises ProtocolError (and closes every fd it holds) on a header no
    honest front-end sends; the caller closes the connection then.
    """

    __slots__ = ("_buf", "_fds", "_need")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: list[int] = []
        self._need = HEADER_SIZE

    @property
    def pending(self) -> int:
        """Bytes still needed to complete the message in progress (for exact reads)."""
        return self._need - len(self._buf)

    @property
    def mid_message(self) -> bool:
        return bool(self._buf) or bool(self._fds)

    def feed(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> Iterator[Message]:
        self._fds.extend(fds)
        if len(self._fds) > MAX_FDS * 4:
            self.close()
            raise ProtocolError(f"{len(fds)} fds arrived with one message")
        view = memoryview(data)
        while True:
            take = self._need - len(self._buf)
            if take > 0:
                if not view:
                    return
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < self._need:
                    return
            if self._need == HEADER_SIZE:
                request, flags, size = HEADER.unpack_from(self._buf)
                if flags & FLAG_VERSION_MASK != VERSION:
                    self.close()
                    raise ProtocolError(f"bad version in flags {flags:#x} (request {request})")
                if size > MAX_PAYLOAD:
                    self.close()
                    raise ProtocolError(f"payload size {size} of request {request} is too large")
                self._need = HEADER_SIZE + size
                if size:
                    continue
            request, flags, size = HEADER.unpack_from(self._buf)
            msg = Message(request, flags, bytes(self._buf[HEADER_SIZE:]), self._fds)
            self._buf = bytearray()
            self._fds = []
            self._need = HEADER_SIZE
            yield msg
            if not view:
                return

    def close(self) -> None:
        """Drop a half-received message and close its fds (connection closing)."""
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        self._buf = bytearray()
        self._need = HEADER_SIZE
