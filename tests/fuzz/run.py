"""One target under atheris: `python -m tests.fuzz.run TARGET [libFuzzer args...]`
(what `python -m tests.fuzz` starts, once per target)."""

from __future__ import annotations

import logging
import os
import sys

import atheris

from tests.fuzz import sanitize

sanitize.activate()  # (started by `python -m tests.fuzz --sanitize`: the ASan/UBSan build)
with atheris.instrument_imports(include=["vhostuser", "netstack", "apps", "gateway",
                                         "tests.fuzz"]):
    import apps.stack  # noqa: F401  (instrumented for the stack target)
    import tests.fuzz.targets_wire  # noqa: F401  (wire formats and the TCP socket)
    import vhostuser.backend  # noqa: F401
    import vhostuser.packed  # noqa: F401
    from tests.fuzz import targets


def main() -> None:
    logging.disable(logging.CRITICAL)  # hostile input logs a warning per message
    name = os.environ.get("VHN_FUZZ_TARGET") or sys.argv.pop(1)
    fn = targets.TARGETS[name]
    # libFuzzer's -merge re-runs argv[0]: a script that starts this target again
    os.environ["VHN_FUZZ_TARGET"] = name
    os.environ["VHN_FUZZ_PYTHON"] = sys.executable
    sys.argv[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "target.sh")
    atheris.Setup(sys.argv, fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
