"""`python -m apps.bench ...`: the benchmarks' command line (and the ring benchmark's backend
process, `python -m apps.bench backend MODE PATH`)."""

import sys

from apps.bench import main

sys.exit(main())
