"""netstack: a smoltcp-style TCP/IP stack in Python.

Layers, each a subpackage with one job, none doing I/O except the runtime:

- `netstack.wire`   packet views and reprs for every wire format (parse/emit, no state)
- `netstack.phy`    the Device protocol (rx/tx tokens) and devices: loopback, TAP, pcap, faults
- `netstack.iface`  the Interface: ARP, IPv4, ICMP, routing; `poll(now, device, sockets)`
- `netstack.socket` sockets (UDP, ICMP, raw, DHCP) driven by the interface
- `netstack.runtime` the one thread that owns fds, timers and calls `poll`

netstack never imports vhostuser: the virtio-net backend satisfies `netstack.phy.Device`
by shape, and the two meet in `apps/`.
"""
