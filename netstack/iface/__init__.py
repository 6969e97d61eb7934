"""The interface: ARP, IPv4, ICMP and routing; `poll(now, device, sockets)` drives it."""

from netstack.iface.interface import Interface, InterfaceConfig, NeighborCache, multicast_mac
from netstack.iface.reassembly import Ipv4Reassembler

__all__ = ["Interface", "InterfaceConfig", "Ipv4Reassembler", "NeighborCache", "multicast_mac"]
