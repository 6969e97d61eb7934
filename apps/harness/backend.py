"""`vhostnet serve` as a process of its own, for the tests and the soak that kill it with
SIGKILL and start it again (QEMU's `reconnect=1` brings the guest's NIC back), and what its
control socket says meanwhile.

Each backend gets its own session, so killing its process group takes nothing else with it.
A `Watch` polls the control socket every second and samples the backend's memory and fds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, NamedTuple

from apps.control import ControlClient, ControlError

POLL_TIMEOUT = 5.0  # a status poll not answered in this long counts as unanswered


def spawn_serve(args: list[str], control: str, log: IO | int | None) -> subprocess.Popen:
    """`python -m apps.cli serve ARGS --control CONTROL`, logging warnings and worse to `log`."""
    return subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", *args, "--control",
                             control, "--log-level", "warning"], stdout=subprocess.DEVNULL,
                            stderr=log, start_new_session=True)


def kill_serve(proc: subprocess.Popen) -> None:
    """SIGKILL the backend's process group (no goodbye to QEMU) and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def control_status(control: str, timeout: float = 2.0) -> dict | None:
    """The backend's `status`, or None when its control socket does not answer."""
    try:
        with ControlClient(control, timeout=timeout) as c:
            return c.request({"cmd": "status"})["status"]
    except (ControlError, OSError, ValueError):
        return None


def has_device(st: dict | None) -> bool:
    """The front-end has set every ring up (after a restart: QEMU reconnected)."""
    dev = st and st.get("device")
    return bool(dev) and all(q["started"] for q in dev["queues"])


def wait_for(pred: Callable[[], object], timeout: float, poll: float = 0.02) -> float | None:
    """Poll `pred` until it is true: the monotonic time it was, or None after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic()
        time.sleep(poll)
    return None


class Sample(NamedTuple):
    """The backend at one moment. `rss` is VmRSS; `shmem` the part of it that is the
    guest's RAM (the shared memfd QEMU hands us), which grows as the guest puts its
    buffers in pages we had not touched yet and is no memory of ours: `own` is the rest."""

    t: float
    pid: int
    rss: int  # KiB
    shmem: int  # KiB
    fds: int

    @property
    def own(self) -> int:
        return self.rss - self.shmem


def sample(pid: int) -> Sample:
    """RSS (VmRSS, RssShmem) and the fd count of a live process (OSError once it is gone)."""
    with open(f"/proc/{pid}/status") as f:
        kib = {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in f)
               if k in ("VmRSS", "RssShmem")}
    return Sample(time.monotonic(), pid, kib["VmRSS"], kib.get("RssShmem", 0),
                  len(os.listdir(f"/proc/{pid}/fd")))


@dataclass
class Watch:
    """The control socket polled every second and the backend's RSS and fds sampled, on a
    thread. Point `proc` at each new backend; a [start, end] in `windows` (a restart)
    excuses the unanswered polls that overlap it."""

    control: str
    proc: subprocess.Popen | None = None
    polls: list[tuple[float, float, bool]] = field(default_factory=list)  # start, end, ok
    samples: list[Sample] = field(default_factory=list)
    windows: list[list[float]] = field(default_factory=list)
    last: dict | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="backend-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(POLL_TIMEOUT + 2)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + 1.0, time.monotonic())
            t0 = time.monotonic()
            st = control_status(self.control, timeout=POLL_TIMEOUT)
            self.polls.append((t0, time.monotonic(), st is not None))
            if st is not None:
                self.last = st
            self.sample()

    def sample(self) -> Sample | None:
        """The live backend, recorded; None between a kill and the restart."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        try:
            s = sample(proc.pid)
        except (OSError, KeyError):
            return None
        self.samples.append(s)
        return s

    def unexcused(self) -> list[float]:
        """Start times of the unanswered polls that overlap no restart window."""
        return [s for s, e, ok in self.polls
                if not ok and not any(w0 <= e and s <= w1 for w0, w1 in self.windows)]
