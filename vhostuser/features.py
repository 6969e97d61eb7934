"""virtio feature bits that a vhost-user net device meets (virtio 1.2 §5.1.3, §6)."""

from __future__ import annotations

from enum import IntEnum


class Feature(IntEnum):
    NET_F_CSUM = 0
    NET_F_GUEST_CSUM = 1
    NET_F_CTRL_GUEST_OFFLOADS = 2
    NET_F_MTU = 3
    NET_F_MAC = 5
    NET_F_GUEST_TSO4 = 7
    NET_F_GUEST_TSO6 = 8
    NET_F_GUEST_ECN = 9
    NET_F_GUEST_UFO = 10
    NET_F_HOST_TSO4 = 11
    NET_F_HOST_TSO6 = 12
    NET_F_HOST_ECN = 13
    NET_F_HOST_UFO = 14
    NET_F_MRG_RXBUF = 15
    NET_F_STATUS = 16
    NET_F_CTRL_VQ = 17
    NET_F_CTRL_RX = 18
    NET_F_CTRL_VLAN = 19
    NET_F_GUEST_ANNOUNCE = 21
    NET_F_MQ = 22
    NET_F_CTRL_MAC_ADDR = 23
    F_NOTIFY_ON_EMPTY = 24
    LOG_ALL = 26  # VHOST_F_LOG_ALL: log our writes to guest memory (live migration)
    F_ANY_LAYOUT = 27
    RING_F_INDIRECT_DESC = 28
    RING_F_EVENT_IDX = 29
    PROTOCOL_FEATURES = 30  # VHOST_USER_F_PROTOCOL_FEATURES (reserved in virtio)
    F_VERSION_1 = 32
    F_ACCESS_PLATFORM = 33
    F_RING_PACKED = 34
    F_IN_ORDER = 35
    F_ORDER_PLATFORM = 36
    F_SR_IOV = 37
    F_NOTIFICATION_DATA = 38
    F_RING_RESET = 40


def bit(f: Feature) -> int:
    return 1 << int(f)


def bits(*fs: Feature) -> int:
    out = 0
    for f in fs:
        out |= 1 << int(f)
    return out


def has(features: int, f: Feature) -> bool:
    return bool(features >> int(f) & 1)


# Device status bits (virtio 1.2 §2.1)
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 64
STATUS_FAILED = 128

# Descriptor flags (§2.7.5)
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# Ring flags (§2.7.6 / §2.7.8)
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

# virtio_net_hdr (§5.1.6)
NET_HDR_F_NEEDS_CSUM = 1
NET_HDR_F_DATA_VALID = 2
NET_HDR_GSO_NONE = 0
NET_HDR_GSO_TCPV4 = 1
NET_HDR_GSO_UDP = 3
NET_HDR_GSO_TCPV6 = 4
NET_HDR_GSO_ECN = 0x80
NET_HDR_LEN_LEGACY = 10  # without num_buffers
NET_HDR_LEN = 12  # VERSION_1 or MRG_RXBUF
