# The two commands of the README: `make demo` and `make test`. Each installs what it needs
# (ci/install.sh is idempotent and quick once done).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test lint bench stress soak fuzz fuzz-sanitize clean

install:
	@bash ci/install.sh

demo: install
	$(VENV)/bin/vhostnet demo

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(VENV)/bin/vhostnet bench all --json bench-results.json

# The data path under full load (about 25 min): DPDK's testpmd against our rings 30 s
# per case, the two-process race, `bench ring` 50 times. STRESS_ARGS narrows it,
# e.g. STRESS_ARGS="race --seconds 300".
STRESS_ARGS ?=
stress: install
	$(PY) -m apps.bench.stress $(STRESS_ARGS)

# Nothing lost or leaked (about 11 min): the bundled guest runs 200 transfers at once for
# 10 min, each checked by SHA-256 (to our apps and through NAT), under 1 % loss,
# reordering and duplication (`vhostnet faults`), the backend killed with SIGKILL 5 times,
# the control socket polled every second; fails on a wrong byte, a stuck transfer, a leaked
# fd or RSS growing 1 MiB/min. SOAK_ARGS changes it, e.g. SOAK_ARGS="--minutes 30".
SOAK_ARGS ?=
soak: install
	$(PY) -m apps.bench.soak $(SOAK_ARGS)

# Coverage-guided fuzzing (atheris) of every attack surface, FUZZ_SECONDS per target
# (default 60): executions, coverage and corpus growth per target; new inputs join
# tests/fuzz/corpus, which `make test` replays. FUZZ_TARGETS narrows it.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: install
	$(PY) -m tests.fuzz --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# The targets that reach C code (rings, checksum) on an ASan+UBSan build of the helpers
# (build/sanitize/; the normal build is left as it is).
fuzz-sanitize: install
	$(PY) -m tests.fuzz --sanitize --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf build *.egg-info netstack/_fast.* vhostuser/_fast.* .pytest_cache
