"""Engine modules loaded when first used, and forks that never inherit one half-imported.

``compaction`` and ``verification`` are used by maintenance (``ptd compact``, ``ptd verify``,
``Store.compact``), never by a call, and compaction brings filelock (with hmac, secrets,
platform, decimal): ~17 ms of the package's ~65 ms import before issue 15
(``python -X importtime -c 'import persist_to_disk'``). So they load at first use, through
:func:`load` only.

A child forked while another thread is importing one of them would wait for that import's lock
for ever if it used the module (the importing thread does not exist in the child). So a fork
waits for an import in progress (:func:`load` holds :data:`_LOADING` while it imports, from
finding the module to running it), and no new one starts until the fork is done. A module that
nobody is importing costs the fork nothing: importing filelock in every process that forks
would cost what loading it lazily saves.
"""

import importlib
import os
import sys
import threading
from types import ModuleType

LAZY_MODULES = ("compaction", "verification")
_LOADING = threading.RLock()  # held while importing one of them, and across a fork


def load(module_name: str) -> ModuleType:
    """The engine's module ``module_name`` (one of :data:`LAZY_MODULES`), imported if needed."""
    full_name = f"{__package__}.{module_name}"
    module = sys.modules.get(full_name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing",
                                          False):
        return module
    with _LOADING:
        return importlib.import_module(full_name)


def _before_fork() -> None:
    _LOADING.acquire()  # waits for an import in progress in another thread


def _after_fork() -> None:
    _LOADING.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                        after_in_child=_after_fork)
