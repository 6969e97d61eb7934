# The two commands of the README: `make demo` and `make test`. Each installs what it needs
# (ci/install.sh is idempotent and quick once done).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

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

clean:
	rm -rf build *.egg-info netstack/_fast.* vhostuser/_fast.* .pytest_cache
