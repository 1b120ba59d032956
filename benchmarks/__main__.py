"""``python -m benchmarks``: run the suite (see ``run.py`` or ``--help``)."""

import sys

from .run import main

sys.exit(main())
