"""The TCP connection states (RFC 9293 §3.3.2) and the transitions between them.

Theory of operation (the socket in `socket.py` has one handler per group of states):

    CLOSED --connect--> SYN-SENT --SYN,ACK / ACK--> ESTABLISHED
    CLOSED --listen---> LISTEN --SYN / SYN,ACK--> SYN-RECEIVED --ACK--> ESTABLISHED
    SYN-SENT --SYN (simultaneous open) / SYN,ACK--> SYN-RECEIVED
    ESTABLISHED --close / FIN--> FIN-WAIT-1 --ACK of FIN--> FIN-WAIT-2 --FIN / ACK--> TIME-WAIT
    FIN-WAIT-1 --FIN (simultaneous close) / ACK--> CLOSING --ACK of FIN--> TIME-WAIT
    FIN-WAIT-1 --FIN + ACK of our FIN / ACK--> TIME-WAIT
    ESTABLISHED --FIN / ACK--> CLOSE-WAIT --close / FIN--> LAST-ACK --ACK of FIN--> CLOSED
    TIME-WAIT --2 MSL (the socket's `time_wait`)--> CLOSED
    any synchronized state --acceptable RST (exact sequence, RFC 5961)--> CLOSED ("reset")
    SYN-SENT --RST acknowledging our SYN--> CLOSED ("refused")
    any state --retransmissions exhausted / user timeout--> CLOSED ("timed out")
    any state --abort()--> CLOSED (RST sent when synchronized)

A passive SYN-RECEIVED that gets a RST returns to LISTEN (RFC 9293 §3.10.7.4) when the
socket was opened with `listen`; children of a `TcpListener` are just dropped.
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    def __str__(self) -> str:
        return self.value


#: States in which both sides' initial sequence numbers are known (RFC 9293 "synchronized").
SYNCHRONIZED = frozenset({
    State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT,
    State.CLOSING, State.LAST_ACK, State.TIME_WAIT,
})
#: States in which we may still send data (our FIN not queued yet).
MAY_SEND = frozenset({State.ESTABLISHED, State.CLOSE_WAIT})
#: States in which the peer may still send data (its FIN not received yet).
MAY_RECV = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
