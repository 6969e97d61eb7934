#!/bin/sh
# What libFuzzer re-runs for -merge (its children execute argv[0]): the same target.
exec "${VHN_FUZZ_PYTHON:-python3}" -m tests.fuzz.run "$@"
