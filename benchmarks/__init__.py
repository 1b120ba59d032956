"""The benchmark suite of persist_to_disk against the original and its peers (issue 4).

    python -m benchmarks --help

Layout: ``adapters/`` (one module per library), ``scenarios/`` (one module per scenario),
``runner.py`` (fresh folders and processes), ``worker.py`` (one phase in one process),
``report.py``, ``plots.py``, ``targets.py`` and ``machine.py`` (the results page).
"""
