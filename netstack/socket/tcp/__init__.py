"""TCP (RFC 9293), split by concern.

- `seq`: sequence-number arithmetic mod 2^32.
- `assembler`: out-of-order reassembly of received data, SACK blocks (RFC 2018).
- `rtt`: the RTT estimator and retransmission timeout (RFC 6298).
- `congestion`: congestion controllers, Reno (RFC 5681) and CUBIC (RFC 9438).
"""

# The socket side (state, isn, socket, listener): re-exported for `netstack.socket.tcp.X`.
from netstack.socket.tcp.listener import TcpListener
from netstack.socket.tcp.socket import InvalidState, TcpSocket, rst_reply
from netstack.socket.tcp.state import State

__all__ = ["InvalidState", "State", "TcpListener", "TcpSocket", "rst_reply"]
