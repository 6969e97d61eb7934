"""Sockets driven by the interface: UDP, ICMP, raw, and the DHCP/DNS gateway engines."""
