"""Packet capture for debugging: what `vhostnet capture`, `serve --pcap` and Wireshark see.

- `bpf`: pcap-filter expressions compiled by libpcap and run per frame (or per batch, in
  C, before any Python work), for `capture --filter`, `serve --pcap-filter` and
  `faults --match`;
- `hooks`: the device's one raw-frame hook shared by its consumers (the pcap file,
  each live capture), each with its filter;
- `decode`: the tcpdump-style lines of the live capture;
- extcap (issue 19, still to come): each running backend as a Wireshark interface.

The live capture itself is a request of the control socket (apps/control).
"""
