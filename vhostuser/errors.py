"""The vhostuser error hierarchy: what went wrong, and whose fault it was."""

from __future__ import annotations


class VhostUserError(Exception):
    """Base of every error raised by vhostuser."""


class ProtocolError(VhostUserError):
    """The front-end broke the vhost-user protocol (bad header, impossible size, wrong fd
    count for a message that must carry fds). The connection is closed; the process goes on."""


class InvalidRequest(VhostUserError):
    """A well-formed message asked for something we refuse (bad ring index, bad size,
    overlapping regions). Answered with a failure reply where one is expected; the
    connection stays up."""


class GuestMemoryError(VhostUserError):
    """A guest address or length falls outside the mapped regions."""


class RingError(VhostUserError):
    """The driver broke the virtqueue rules (bad head, looped chain, bad indirect table).
    The device is marked as needing reset or the queue is stopped."""
