"""``python -m persist_to_disk.cli``: the ``ptd`` command line."""

import sys

from . import main

sys.exit(main())
