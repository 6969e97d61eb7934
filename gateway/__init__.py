"""The gateway: what lets a guest on `vhostnet serve` reach the host and the world, as
QEMU's `-netdev user` and passt do.

- `core.Gateway`: NAT flows for one stack, their thread and the seam to the interface;
- `tcp.TcpFlow`, `udp.UdpFlow`: one guest flow and its host socket;
- `outbox.Outbox`: what the gateway sends to the guest outside a TCP connection;
- `policy`: the options (`GatewayConfig`) and the destination check.
"""

from gateway.core import Gateway
from gateway.policy import GatewayConfig

__all__ = ["Gateway", "GatewayConfig"]
