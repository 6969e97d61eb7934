"""The fuzz corpus as regression tests (every input each target's fuzzing kept, and every
crash it found, replayed in CI), and a few seconds of fuzzing per target so the harness
itself never rots. `make fuzz` runs the campaign."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest

from tests.fuzz import targets

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def _inputs() -> list[tuple[str, str]]:
    out = []
    for name in targets.TARGETS:
        d = os.path.join(CORPUS, name)
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            out.append((name, os.path.join(d, f)))
    return out


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_every_target_has_a_corpus(name):
    assert len(os.listdir(os.path.join(CORPUS, name))) >= 5


def test_the_corpus_replays_without_a_finding():
    logging.disable(logging.CRITICAL)
    try:
        for name, path in _inputs():
            with open(path, "rb") as f:
                data = f.read()
            try:
                if name == "stack":
                    targets.stack(data, fresh=True)
                else:
                    targets.TARGETS[name](data)
            except Exception as e:
                raise AssertionError(f"{name} {os.path.basename(path)}: {e!r}") from e
    finally:
        logging.disable(logging.NOTSET)


def test_fuzzing_smoke(tmp_path):
    """Each target under atheris for 2 s with a fixed seed, over a copy of the corpus."""
    pytest.importorskip("atheris")
    shutil.copytree(CORPUS, tmp_path / "corpus")
    p = subprocess.run([sys.executable, "-m", "tests.fuzz", "--seconds", "2", "--seed", "1",
                        "--corpus", str(tmp_path / "corpus")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    lines = p.stdout.splitlines()[1:]
    assert [ln.split()[0] for ln in lines] == list(targets.TARGETS)
    assert all(int(ln.split()[1]) > 0 for ln in lines), p.stdout


def test_sanitized_smoke(tmp_path):
    """The targets that reach C code, 2 s each on the ASan+UBSan build of the helpers
    (a memory error or undefined behaviour there aborts the target: a crash)."""
    pytest.importorskip("atheris")
    from tests.fuzz import sanitize

    try:
        sanitize.runtime()
    except RuntimeError as e:
        pytest.skip(str(e))
    shutil.copytree(CORPUS, tmp_path / "corpus")
    p = subprocess.run([sys.executable, "-m", "tests.fuzz", "--sanitize", "--seconds", "2",
                        "--seed", "1", "--corpus", str(tmp_path / "corpus")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    lines = p.stdout.splitlines()[2:]
    assert [ln.split()[0] for ln in lines] == list(sanitize.TARGETS)
    assert all(int(ln.split()[1]) > 0 for ln in lines), p.stdout  # each ran inputs
