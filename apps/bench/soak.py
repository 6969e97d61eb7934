"""`make soak`: one backend, a real guest, a long time: proof that nothing is lost or leaked.

The bundled Linux guest (busybox, TCG) runs N transfer loops at once on the NIC `vhostnet
serve` gives it. Each loop fetches or posts one object again and again under `timeout` and
checks every transfer that completes by SHA-256: most download /bytes/N from our HTTP app,
a share download the same pattern from an HTTP server this process runs on the host's
loopback (reached through the gateway's NAT, 10.0.2.2 on that server's port), and a share
post a file to /sink on either (the answer is the length and the SHA-256). Each loop appends
`ok`, `fail` (a timeout or reset: expected around kills and under loss) or `bad` (completed
with the wrong bytes: never allowed) to its own file. Meanwhile `vhostnet faults` injects
loss, reordering and duplication (again after each restart: faults live in the backend),
the backend is killed with SIGKILL and restarted K times over the first quarter (QEMU
reconnects), and a thread polls the control socket every second and samples the backend's
RSS and fd count.

The verdict (exit status 1, one line per broken check, then `soak: FAIL`):
- exact: no transfer completed with a wrong byte;
- none stuck: every loop completed a transfer in the second half; once told to stop every
  loop ends, and the backend's TCP sockets (TIME-WAIT aside) and NAT flows drain;
- flat: over the second half (kill-free; the last 5 minutes of the default 10) the slope of
  the final backend's own RSS is under --max-rss-slope MiB/min, and once drained its fd
  count is no more than a fresh backend's. Its own: VmRSS less RssShmem, the guest's RAM
  it maps (QEMU's shared memfd), whose touched pages count in VmRSS and grow as the guest
  puts buffers in new pages (up to the guest's size); both slopes are printed;
- the control socket answered every poll outside the restart windows; the guest's kernel
  logged no transmit timeout; no queue is broken and the backend logged no traceback.

    python -m apps.bench.soak                                   # 10 min, 200 transfers, 5 kills
    python -m apps.bench.soak --minutes 1 --transfers 20 --kills 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

from apps.bench.vm import HostPeers
from apps.harness.backend import (
    POLL_TIMEOUT,
    Watch,
    control_status,
    has_device,
    kill_serve,
    spawn_serve,
    wait_for,
)
from apps.harness.vm import GuestError, QemuVM, vhost_user_nic_args
from apps.servers.http import pattern_sha256

GUEST_MEMORY_MB = 512  # downloads land in the guest's tmpfs before they are hashed
RESTART_TIMEOUT = 60.0  # from a kill to the guest's rings set up on the new backend
DRAIN_TIMEOUT = 90.0  # from the loops' end to the backend's sockets and flows gone
CONSOLE_TIMEOUT = 180.0  # a console command in a guest busy with hundreds of loops
# The kills are spread over this share of the run. A new backend's own RSS climbs for its
# first minutes, to the high-water mark of its sockets (~2,000 in TIME-WAIT at 200 loops)
# and of the allocators, then stays flat: the last backend needs that head start before
# the last half is measured.
KILL_SPAN = 0.25
MIN_KILL_GAP = 4.0  # seconds between kills at the least (a restart takes about one)
# the mix of transfers, repeated every ten loops (the first five already hold each kind)
MIX = ("down", "nat-down", "up", "down", "nat-up", "down", "down", "nat-down", "down", "down")
UPLOADS = (4 << 10, 48 << 10, 160 << 10)  # bytes of the guest's files posted to /sink
DIR = "/tmp/soak"
# one loop: INDEX URL EXPECTED [POST-FILE]; a line per transfer in r.INDEX, e.INDEX at its end
LOOP_FN = r"""soak_loop() {
  local d=/tmp/soak/d.$1 post= got
  [ -n "$4" ] && post="--post-file=$4"
  while [ ! -e /tmp/soak/stop ]; do
    if timeout TIMEOUT wget -q -O $d $post "$2"; then
      if [ -n "$4" ]; then got=$(cat $d); else got=$(sha256sum < $d); got=${got%% *}; fi
      if [ "$got" = "$3" ]; then echo ok; else echo "bad $got"; fi
    else
      echo "fail $?"
    fi >> /tmp/soak/r.$1
  done
  rm -f $d; touch /tmp/soak/e.$1
}"""
TOTALS = (f"cat {DIR}/r.* 2>/dev/null | awk '{{n[$1]++}} END "
          "{print n[\"ok\"]+0, n[\"fail\"]+0, n[\"bad\"]+0}'; cut -d' ' -f1 /proc/loadavg")
PER_LOOP = (f"cd {DIR} && awk '{{n[substr(FILENAME, 3) \" \" $1]++}} END "
            "{for (k in n) print k, n[k]}' r.* 2>/dev/null; cd /")


class SoakFailure(Exception):
    """The soak could not go on (a restart that never came back, a dead console)."""


@dataclass
class Options:
    minutes: float = 10.0
    transfers: int = 200
    kills: int = 5
    loss: float = 0.01
    reorder: float = 0.01
    duplicate: float = 0.01
    seed: int = 1
    timeout: float = 20.0  # per transfer, in the guest
    every: float = 30.0  # seconds between progress lines
    max_rss_slope: float = 1.0  # MiB/min


@dataclass
class Loop:
    index: int
    kind: str
    url: str
    expect: str
    post: str = ""


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x).

    >>> round(slope([(0, 1), (1, 3), (2, 5)]), 6)
    2.0
    """
    n = len(points)
    mx, my = sum(x for x, _ in points) / max(n, 1), sum(y for _, y in points) / max(n, 1)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class Soak:
    """One run: `run()` returns the list of broken checks (empty: it held)."""

    def __init__(self, opts: Options, workdir: str, log=print) -> None:
        self.o = opts
        self.log = log
        self.sock = os.path.join(workdir, "vhost.sock")
        self.ctl = os.path.join(workdir, "ctl.sock")
        self.serve_log_path = os.path.join(workdir, "serve.log")
        self.serve_log = open(self.serve_log_path, "a")  # closed by run()
        self.watch = Watch(self.ctl)
        self.proc: subprocess.Popen | None = None
        self.vm: QemuVM | None = None
        self.peers: HostPeers | None = None
        self.loops: list[Loop] = []
        self.problems: list[str] = []
        self.restarts: list[float] = []  # seconds from each kill to the device back
        self.t0 = 0.0

    # -- the backend ------------------------------------------------------------------
    def _faults(self, seed: int) -> None:
        """`vhostnet faults` on the live backend, as a user would type it."""
        o = self.o
        res = subprocess.run([sys.executable, "-m", "apps.cli", "faults", "--control", self.ctl,
                              "--loss", str(o.loss), "--reorder", str(o.reorder),
                              "--duplicate", str(o.duplicate), "--seed", str(seed)],
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise SoakFailure(f"vhostnet faults failed: {res.stderr.strip()}")

    def _spawn(self) -> None:
        self.proc = spawn_serve(["--socket-path", self.sock], self.ctl, self.serve_log)
        self.watch.proc = self.proc
        if wait_for(lambda: control_status(self.ctl) is not None, RESTART_TIMEOUT) is None:
            raise SoakFailure("the backend's control socket did not come up")

    def _restart(self, k: int) -> None:
        assert self.proc is not None
        window = [time.monotonic(), float("inf")]
        self.watch.windows.append(window)
        kill_serve(self.proc)
        self._spawn()
        self._faults(self.o.seed + k)
        if wait_for(lambda: has_device(control_status(self.ctl)), RESTART_TIMEOUT) is None:
            raise SoakFailure(f"kill {k}: QEMU did not set the rings up again in "
                              f"{RESTART_TIMEOUT:.0f} s")
        window[1] = time.monotonic()
        self.restarts.append(window[1] - window[0])

    # -- the guest --------------------------------------------------------------------
    def _run(self, cmd: str, timeout: float = CONSOLE_TIMEOUT) -> str:
        assert self.vm is not None
        try:
            return self.vm.run_ok(cmd, timeout=timeout)
        except GuestError as e:
            raise SoakFailure(f"the guest's console: {str(e).splitlines()[0]}") from None

    def _plan(self, port: int) -> list[Loop]:
        """The loops: the mix, distinct download sizes (8 to 192 KiB), the upload files."""
        ups = {}
        for k, n in enumerate(UPLOADS):
            f = f"{DIR}/up.{k}"
            ups[f] = self._run(f"head -c {2 * n} /dev/urandom | tr -d '\\000' | head -c {n} "
                               f"> {f}; h=$(sha256sum < {f}); echo $(stat -c %s {f}) "
                               "${h%% *}").strip()
        loops = []
        for i in range(self.o.transfers):
            kind = MIX[i % len(MIX)]
            host = "10.0.2.2" if kind in ("down", "up") else f"10.0.2.2:{port}"
            if kind.endswith("down"):
                n = (8 << 10) + (i * 40009) % (184 << 10)
                loops.append(Loop(i, kind, f"http://{host}/bytes/{n}", pattern_sha256(n)))
            else:
                f = f"{DIR}/up.{(i // len(MIX)) % len(UPLOADS)}"
                loops.append(Loop(i, kind, f"http://{host}/sink", ups[f], f))
        return loops

    def _totals(self) -> tuple[Counter, str]:
        ok, fail, bad, load = self._run(TOTALS).split()
        return Counter(ok=int(ok), fail=int(fail), bad=int(bad)), load

    def _per_loop(self) -> dict[int, Counter]:
        out: dict[int, Counter] = {lp.index: Counter() for lp in self.loops}
        for line in self._run(PER_LOOP).splitlines():
            i, what, n = line.split()
            out[int(i)][what] = int(n)
        return out

    # -- the run ----------------------------------------------------------------------
    def run(self) -> list[str]:
        try:
            return self._soak()
        except SoakFailure as e:
            self.problems.append(str(e))
            return self.problems
        finally:
            self.watch.stop()
            if self.vm is not None:
                self.vm.kill()
            if self.proc is not None:
                kill_serve(self.proc)
            if self.peers is not None:
                self.peers.close()
            self.serve_log.close()

    def _soak(self) -> list[str]:
        o = self.o
        duration, half = o.minutes * 60, o.minutes * 30
        self.peers = HostPeers()
        self._spawn()
        self._faults(o.seed)
        self.vm = QemuVM(nic_args=vhost_user_nic_args(self.sock), memory_mb=GUEST_MEMORY_MB)
        self.vm.start()
        self.vm.wait_ready(timeout=120)
        self._run("ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2 >/dev/null 2>&1 && "
                  f"rm -rf {DIR} && mkdir -p {DIR}", timeout=60)
        self.loops = self._plan(self.peers.http_port)
        if wait_for(lambda: has_device(control_status(self.ctl)), 30) is None:
            raise SoakFailure("the guest's NIC never came up on the backend")
        fresh = self.watch.sample()
        if fresh is None:
            raise SoakFailure("the backend died before the soak began")
        kinds = Counter(lp.kind for lp in self.loops)
        self.log(f"soak: {_mmss(duration)}, {o.transfers} transfers ("
                 + ", ".join(f"{n} {k}" for k, n in kinds.items())
                 + f"), {o.kills} kills in the first quarter, faults loss {o.loss} reorder "
                 f"{o.reorder} duplicate {o.duplicate}; fresh backend {fresh.own / 1024:.1f} "
                 f"MiB RSS of its own, {fresh.fds} fds")
        # (in a subshell each: not the console shell's jobs, whose notices would end up in
        # the output of later commands)
        starts = "\n".join(f"(soak_loop {lp.index} {lp.url} '{lp.expect}' {lp.post} "
                           ">/dev/null 2>&1 &)" for lp in self.loops)
        self._run(LOOP_FN.replace("TIMEOUT", f"{o.timeout:g}") + "\n" + starts)
        # the loops keep the guest's one CPU busy: the console shell (and what it runs for
        # us from now on) goes first, or a progress line would take minutes
        self._run("renice -n -20 -p $$ >/dev/null")
        self.watch.start()
        self.t0 = time.monotonic()
        span = duration * KILL_SPAN
        kills = [span * (k + 1) / (o.kills + 1) for k in range(o.kills)]
        at_half: dict[int, Counter] | None = None
        next_line = o.every
        while (now := time.monotonic() - self.t0) < duration:
            if self.proc is not None and self.proc.poll() is not None:
                raise SoakFailure(f"the backend exited by itself ({self.proc.returncode}) at "
                                  f"{_mmss(now)}")
            if kills and now >= kills[0]:
                kills.pop(0)
                self._restart(o.kills - len(kills))
            elif at_half is None and now >= half:
                at_half = self._per_loop()
            elif now >= next_line:
                next_line += o.every
                self._progress(now)
            time.sleep(0.2)
        if at_half is None:
            raise SoakFailure("the run was too short to reach its second half")
        self._progress(time.monotonic() - self.t0)
        at_end = self._per_loop()
        self._stop_loops()
        fresh_fds = fresh.fds
        drained = self._drain(fresh_fds)
        self._judge(at_half, at_end, fresh_fds, drained, half)
        return self.problems

    def _progress(self, now: float) -> None:
        totals, load = self._totals()
        polls = self.watch.polls
        s = self.watch.samples[-1] if self.watch.samples else None
        st = self.watch.last or {}
        tcp = Counter(x["state"] for x in st.get("sockets", ()) if x["kind"] == "tcp")
        nat = (st.get("gateway") or {}).get("tcp_flows", 0)
        self.log(f"soak {_mmss(now):>6}  transfers ok {totals['ok']} fail {totals['fail']} bad "
                 f"{totals['bad']} | kills {len(self.restarts)}/{self.o.kills} | polls "
                 f"{sum(ok for _, _, ok in polls)}/{len(polls)} | "
                 + (f"RSS {s.own / 1024:.1f} MiB own + {s.shmem / 1024:.1f} guest, {s.fds} fds"
                    if s else "backend down")
                 + f" | TCP {sum(tcp.values()) - tcp['LISTEN'] - tcp['TIME_WAIT']} open, "
                 f"{tcp['TIME_WAIT']} TIME-WAIT, {nat} NAT | guest load {load}")

    def _stop_loops(self) -> None:
        self._run(f"touch {DIR}/stop")
        n = len(self.loops)
        deadline = time.monotonic() + self.o.timeout + 60
        ended = 0
        while time.monotonic() < deadline:
            ended = int(self._run(f"ls {DIR} 2>/dev/null | grep -c '^e\\.' || true"))
            if ended == n:
                return
            time.sleep(2)
        self.problems.append(f"stuck: {n - ended} of {n} loops did not end within "
                             f"{self.o.timeout + 60:.0f} s of being told to stop")

    def _drain(self, fresh_fds: int) -> dict:
        """Wait for the backend to hold no busy TCP socket, no NAT flow and no more fds than
        fresh; what it held at the end."""
        left: dict = {}
        t0 = time.monotonic()

        def drained() -> bool:
            st = control_status(self.ctl, timeout=POLL_TIMEOUT)
            s = self.watch.sample()
            if st is None or s is None:
                return False
            busy = Counter(x["state"] for x in st["sockets"] if x["kind"] == "tcp"
                           and x["state"] not in ("LISTEN", "CLOSED", "TIME_WAIT"))
            left.update(busy=busy, flows=(st.get("gateway") or {}).get("tcp_flows", 0),
                        fds=s.fds, status=st)
            return not busy and not left["flows"] and s.fds <= fresh_fds

        left["ok"] = wait_for(drained, DRAIN_TIMEOUT, poll=1.0) is not None
        left["seconds"] = time.monotonic() - t0
        return left

    def _judge(self, at_half: dict[int, Counter], at_end: dict[int, Counter],
               fresh_fds: int, drained: dict, half: float) -> None:
        o, p = self.o, self.problems
        total = sum((c for c in at_end.values()), Counter())
        first = sum((c for c in at_half.values()), Counter())
        second = total - first
        by_kind: dict[str, Counter] = {}
        for lp in self.loops:
            by_kind.setdefault(lp.kind, Counter()).update(at_end[lp.index])
        stuck = [i for i in at_end if at_end[i]["ok"] <= at_half[i]["ok"]]
        # the final backend over the second half
        pid = self.proc.pid if self.proc else 0
        t_half = self.t0 + half
        win = [x for x in self.watch.samples
               if x.pid == pid and t_half <= x.t <= self.t0 + 2 * half]

        def per_min(value) -> float:
            return slope([((x.t - t_half) / 60, value(x)) for x in win])

        own_slope, rss_slope = per_min(lambda x: x.own / 1024), per_min(lambda x: x.rss / 1024)
        fd_slope = per_min(lambda x: x.fds)
        polls = self.watch.polls
        answered = sum(ok for _, _, ok in polls)
        unexcused = self.watch.unexcused()
        slowest = max((e - s for s, e, ok in polls if ok), default=0.0)
        fails = Counter(self._run(f"cat {DIR}/r.* | awk '$1 == \"fail\" {{print $2}}'").split())
        kernel = self._run("dmesg")
        st = drained.get("status") or {}
        queues = (st.get("device") or {}).get("queues", [])
        with open(self.serve_log_path) as f:
            backend_log = f.read()

        w = self.log
        w("")
        w(f"{'':<18}{'first half':>12}{'second half':>13}{'total':>9}")
        for what in ("ok", "fail", "bad"):
            w(f"{'transfers ' + what:<18}{first[what]:>12}{second[what]:>13}{total[what]:>9}")
        w("by kind: " + "; ".join(f"{k} {c['ok']} ok {c['fail']} fail {c['bad']} bad"
                                  for k, c in by_kind.items()))
        w("fail exit codes: " + (", ".join(f"{rc} ×{n}" for rc, n in fails.most_common())
                                 or "none") + " (143: the transfer's timeout)")
        w(f"kills {len(self.restarts)}: device back in "
          + (", ".join(f"{r:.1f}" for r in self.restarts) or "-") + " s")
        w(f"control polls answered {answered}/{len(polls)} ({len(polls) - answered - len(unexcused)} "
          f"unanswered in restart windows, {len(unexcused)} outside), slowest {slowest:.2f} s")
        if win:
            a, b = win[0], win[-1]
            w(f"final backend over the last {_mmss(half)} ({len(win)} samples): RSS of its own "
              f"{a.own / 1024:.1f} -> {b.own / 1024:.1f} MiB, slope {own_slope:+.3f} MiB/min "
              f"(limit {o.max_rss_slope:g}); VmRSS {a.rss / 1024:.1f} -> {b.rss / 1024:.1f} "
              f"MiB, slope {rss_slope:+.3f} MiB/min (the rest: guest RAM it touched); fds "
              f"{a.fds} -> {b.fds}, slope {fd_slope:+.2f}/min")
        w(f"after the stop: {'drained' if drained['ok'] else 'NOT drained'} in "
          f"{drained['seconds']:.1f} s: {sum(drained.get('busy', Counter()).values())} busy TCP "
          f"sockets, {drained.get('flows', '?')} NAT flows, {drained.get('fds', '?')} fds "
          f"(fresh {fresh_fds})")

        if total["bad"]:
            bad = self._run(f"cd {DIR} && grep ^bad r.* | head -5; cd /")
            p.append(f"{total['bad']} transfers completed with wrong bytes: "
                     + " | ".join(bad.splitlines()))
        if stuck:
            p.append(f"stuck: {len(stuck)} of {len(at_end)} loops completed nothing in the "
                     f"second half (loops {', '.join(map(str, stuck[:10]))})")
        for kind, c in by_kind.items():
            if not c["ok"]:
                p.append(f"no {kind} transfer ever completed")
        if not drained["ok"]:
            busy = ", ".join(f"{s} ×{n}" for s, n in drained.get("busy", Counter()).items())
            p.append(f"not drained after {DRAIN_TIMEOUT:.0f} s: busy TCP sockets "
                     f"[{busy}], {drained.get('flows')} NAT flows, {drained.get('fds')} fds "
                     f"(a fresh backend has {fresh_fds})")
        if len(win) < 2:
            p.append("too few RSS samples of the final backend in the second half")
        elif own_slope >= o.max_rss_slope:
            p.append(f"the backend's own RSS grew {own_slope:.2f} MiB/min over the second half "
                     f"(limit {o.max_rss_slope:g})")
        if unexcused:
            p.append(f"the control socket left {len(unexcused)} polls unanswered outside "
                     f"restart windows (first at {_mmss(unexcused[0] - self.t0)})")
        for needle in ("NETDEV WATCHDOG", "timed out"):
            hit = [ln for ln in kernel.splitlines() if needle in ln]
            if hit:
                p.append(f"the guest's kernel logged: {hit[0].strip()}")
        broken = [q["index"] for q in queues if q["broken"] or q["errors"]]
        if broken:
            p.append(f"queues {broken} broken or with errors")
        if "Traceback" in backend_log:
            line = next(ln for ln in backend_log.splitlines() if "Traceback" in ln)
            p.append(f"the backend logged {backend_log.count('Traceback')} traceback(s): "
                     f"{line.strip()} (see its log)")


def main(argv: list[str] | None = None) -> int:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m apps.bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=d.minutes, help="default 10")
    p.add_argument("--transfers", type=int, default=d.transfers,
                   help="transfer loops at once in the guest (default 200)")
    p.add_argument("--kills", type=int, default=d.kills,
                   help="SIGKILLs of the backend, spread over the first quarter (default 5)")
    for name in ("loss", "reorder", "duplicate"):
        p.add_argument(f"--{name}", type=float, default=getattr(d, name), metavar="P",
                       help=f"`vhostnet faults --{name}` (default 0.01)")
    p.add_argument("--seed", type=int, default=d.seed, help="the faults' seed (default 1)")
    p.add_argument("--timeout", type=float, default=d.timeout, metavar="SECONDS",
                   help="the guest gives up a transfer after this long (default 20)")
    p.add_argument("--every", type=float, default=d.every, metavar="SECONDS",
                   help="seconds between progress lines (default 30)")
    p.add_argument("--max-rss-slope", type=float, default=d.max_rss_slope, metavar="MIB",
                   help="the growth of the backend's own RSS allowed over the second half, "
                        "MiB/min (default 1)")
    args = p.parse_args(argv)
    o = Options(**vars(args))
    half = o.minutes * 30
    bad = None
    if not o.minutes > 0:
        bad = "--minutes must be > 0"
    elif o.transfers < 1:
        bad = "--transfers must be at least 1"
    elif o.kills < 0:
        bad = "--kills must be >= 0"
    elif not all(0 <= getattr(o, k) <= 1 for k in ("loss", "reorder", "duplicate")):
        bad = "--loss, --reorder and --duplicate are probabilities in [0, 1]"
    elif not 0 < o.timeout <= half / 2:
        bad = f"--timeout must be > 0 and at most a quarter of the run ({half / 2:g} s)"
    elif o.minutes * 60 * KILL_SPAN / (o.kills + 1) < MIN_KILL_GAP:
        bad = (f"--kills {o.kills} do not fit in the first quarter ({o.minutes * 15:g} s): "
               f"{MIN_KILL_GAP:g} s per kill")
    elif o.every <= 0 or o.max_rss_slope <= 0:
        bad = "--every and --max-rss-slope must be > 0"
    if bad is not None:
        print(f"soak: {bad}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vhostnet-soak-") as work:
        soak = Soak(o, work, log=lambda s: print(s, flush=True))
        problems = soak.run()
        if problems:
            with open(soak.serve_log_path) as f:
                tail = f.read().splitlines()[-15:]
            if tail:
                print("the backend's log, last lines:\n  " + "\n  ".join(tail), file=sys.stderr)
    for line in problems:
        print(f"FAILED: {line}", file=sys.stderr)
    print(f"soak: {'FAIL' if problems else 'PASS'} ({_mmss(time.monotonic() - t0)})",
          flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
