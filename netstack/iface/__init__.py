"""The interface: ARP, IPv4, ICMP and routing; `poll(now, device, sockets)` drives it."""
