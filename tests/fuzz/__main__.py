"""`python -m tests.fuzz [TARGET ...] [--seconds N]` (`make fuzz`): each target under
atheris for N seconds over its corpus (tests/fuzz/corpus/TARGET, where new inputs that
reach new code are added), then a table: executions, coverage (libFuzzer's cov), corpus
entries before and after. A crash leaves its input in tests/fuzz/crashes/ and the exit
status is 1; make it a regression test by adding the input to the target's corpus.
`--sanitize` runs the targets that reach C code on an ASan/UBSan build of it."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

from tests.fuzz.targets import TARGETS

HERE = os.path.dirname(os.path.abspath(__file__))


def run(target: str, seconds: float, seed: int | None, corpus_root: str,
        env: dict | None = None) -> dict:
    corpus = os.path.join(corpus_root, target)
    crashes = os.path.join(HERE, "crashes")
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(crashes, exist_ok=True)
    before = len(os.listdir(corpus))
    cmd = [sys.executable, "-m", "tests.fuzz.run", target, corpus,
           f"-max_total_time={max(1, int(seconds))}", "-print_final_stats=1",
           f"-artifact_prefix={crashes}/{target}-", "-max_len=4096", "-timeout=10",
           "-rss_limit_mb=4096"]
    if seed is not None:
        cmd.append(f"-seed={seed}")
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(HERE)))
    execs = re.findall(r"stat::number_of_executed_units: (\d+)", p.stderr)
    cov = re.findall(r" cov: (\d+)", p.stderr)
    return {"target": target, "ok": p.returncode == 0,
            "executions": int(execs[-1]) if execs else 0,
            "coverage": int(cov[-1]) if cov else 0,
            "corpus_before": before, "corpus_after": len(os.listdir(corpus)),
            "seconds": round(time.monotonic() - t0, 1),
            "tail": "" if p.returncode == 0 else p.stderr[-3000:]}


def minimise(target: str, corpus_root: str) -> str:
    import shutil
    import tempfile

    corpus = os.path.join(corpus_root, target)
    with tempfile.TemporaryDirectory() as out:
        p = subprocess.run([sys.executable, "-m", "tests.fuzz.run", target, "-merge=1", out,
                            corpus], capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.dirname(HERE)))
        kept = os.listdir(out)
        if p.returncode != 0 or not kept:
            return f"not minimised (libFuzzer: {p.stderr.strip().splitlines()[-1:]})"
        before = len(os.listdir(corpus))
        shutil.rmtree(corpus)
        shutil.copytree(out, corpus)
    return f"{before} -> {len(kept)} inputs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    ap.add_argument("targets", nargs="*", metavar="TARGET",
                    help=f"of {', '.join(TARGETS)} (default all)")
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("FUZZ_SECONDS", 60)),
                    help="per target (default $FUZZ_SECONDS or 60)")
    ap.add_argument("--seed", type=int, help="libFuzzer's seed (fixed: a repeatable run)")
    ap.add_argument("--minimise", action="store_true",
                    help="instead of fuzzing, shrink each corpus to the inputs that keep "
                         "its coverage (libFuzzer -merge)")
    ap.add_argument("--sanitize", action="store_true",
                    help="build the C helpers with ASan and UBSan (into build/sanitize/) "
                         "and run the targets that reach them (default: "
                         "split_ring, packed_ring, checksum) on that build")
    ap.add_argument("--corpus", metavar="DIR", default=os.path.join(HERE, "corpus"),
                    help="where each target's corpus is (DIR/TARGET; default the repo's)")
    args = ap.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target {unknown[0]!r}: give {', '.join(TARGETS)}")
    env = None
    if args.sanitize:
        from tests.fuzz import sanitize

        print("building the C helpers with ASan and UBSan ...", flush=True)
        sanitize.build()
        env = sanitize.env()
    names = args.targets or (list(sanitize.TARGETS) if args.sanitize else list(TARGETS))
    if args.minimise:
        for name in names:
            print(f"{name}: {minimise(name, args.corpus)}", flush=True)
        return 0
    print(f"{'target':<12} {'executions':>11} {'exec/s':>7} {'cov':>6} {'corpus':>13}",
          flush=True)
    failed = 0
    for name in names:
        r = run(name, args.seconds, args.seed, args.corpus, env)
        rate = r["executions"] / max(r["seconds"], 0.1)
        print(f"{name:<12} {r['executions']:>11} {rate:>7.0f} {r['coverage']:>6} "
              f"{r['corpus_before']:>6} -> {r['corpus_after']:<4}"
              + ("" if r["ok"] else "  CRASH (input in tests/fuzz/crashes/)"), flush=True)
        if not r["ok"]:
            failed += 1
            print(r["tail"], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
