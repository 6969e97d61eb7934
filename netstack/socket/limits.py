"""The stack-wide limits that keep a hostile or broken peer from holding resources
forever, with Linux's names and (scaled) defaults. One `Limits` per `SocketSet`; the
sockets in the set read it when they need it.

- `fin_timeout` (net.ipv4.tcp_fin_timeout): an orphan in FIN-WAIT-2 — its application
  closed it, the peer acknowledged our FIN and never sends its own — is closed after
  this many seconds.
- `orphan_retries` (tcp_orphan_retries, whose 0 means 8): an orphan in FIN-WAIT-1,
  CLOSING or LAST-ACK gives up after this many retransmissions or zero-window probes
  (a peer that answers every probe with window 0 no longer keeps it alive).
- `max_orphans` (tcp_max_orphans): more orphans than this and the oldest is reset.
- `max_tw_buckets` (tcp_max_tw_buckets): more TIME-WAIT sockets than this and the oldest
  is closed at once (counted as `tw_evicted`).
- `max_sockets`: the socket table's size; adding one more raises `TableFull` (EMFILE)
  and counts `table_full` — an application sees an error, never a silently missing
  socket.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    fin_timeout: float = 60.0
    orphan_retries: int = 8
    max_orphans: int = 16384
    max_tw_buckets: int = 16384
    max_sockets: int | None = 131072

    def __post_init__(self) -> None:
        if self.fin_timeout <= 0:
            raise ValueError(f"fin_timeout must be positive, got {self.fin_timeout}")
        if self.orphan_retries < 0:
            raise ValueError(f"orphan_retries must be >= 0, got {self.orphan_retries}")
        if self.orphan_retries == 0:
            self.orphan_retries = 8  # as Linux: 0 means the default
        for name in ("max_orphans", "max_tw_buckets"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_sockets is not None and self.max_sockets <= 0:
            raise ValueError(f"max_sockets must be positive, got {self.max_sockets}")
