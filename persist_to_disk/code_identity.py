"""What a decorated function's code adds to its calls' identity: ``version=`` and the policy
``code_changes`` for edits of its code.

A call is named by its function's module and name and by its arguments (``keying.py``). Two
more things can tell results apart, both chosen per function:

* ``persistf(version=...)``, any value that can be keyed: part of every call's identity.
  Bumping it computes anew, setting it back finds the old results again; nothing is deleted.
* The *code fingerprint* (``fingerprint.py``): the function's code and its project helpers',
  normalised so that comments, docstrings and formatting do not count. What it does depends on
  the policy ``code_changes`` (:data:`POLICIES`):

  - ``warn`` (the default): results are found as before, but the first hit in a process on a
    result stored by other code warns once per function.
  - ``recompute``: the fingerprint is part of the identity: changed code computes anew, and
    code changed back finds its old results.
  - ``ignore``: no fingerprint is computed at all.

Identity is mixed into the call digest as the key of the blake2b every digest starts from
(:func:`~.keying.salted_hasher`): it costs nothing per call, the stored key tuple (what
``ptd ls`` shows and exports to 0.0.7 write) stays the arguments alone, and a function with no
``version`` under ``warn`` or ``ignore`` keeps the digests of every earlier release, so caches
written before code versions existed keep hitting.

Every record written carries a *code tag* (``fingerprint|version``, ``fingerprint.code_tag``)
for ``ptd stats``, ``ptd compact --drop-old-code`` and the warning. Records without one (written
before code versions existed, under ``ignore``, or imported from 0.0.7) are of unknown code:
never warned about, never dropped as old code.
"""

import threading
from typing import Any, Callable, Optional

# Imported here, not at the first call that needs it: a thread importing a module while
# another thread forks leaves that module's import lock held for ever in the child, whose first
# call of a cached function then hung (tests/test_closures_and_leaves.py, fork while resolving).
# It costs ~0.9 ms of the package's import.
from .fingerprint import code_fingerprint, code_tag, version_label
from .keying import UnkeyableValue, _blake2b, encode_value

WARN = "warn"
RECOMPUTE = "recompute"
IGNORE = "ignore"
POLICIES = (WARN, RECOMPUTE, IGNORE)
DEFAULT_POLICY = WARN


def parse_code_changes(value: Any, where: str = "code_changes") -> str:
    """One of :data:`POLICIES` (case and surrounding blanks ignored), else a ValueError
    naming ``where`` and the choices."""
    policy = value.strip().lower() if isinstance(value, str) else None
    if policy not in POLICIES:
        raise ValueError(f"{where} must be one of {', '.join(POLICIES)}; got {value!r}")
    return policy


def check_version(value: Any, where: str = "version") -> Any:
    """``value`` if it can be keyed (it becomes part of every call's identity), else a
    ValueError that says what can be."""
    try:
        encode_value(value)
    except (UnkeyableValue, RecursionError) as err:
        raise ValueError(f"{where} must be a value that can be keyed, such as a number, a "
                         f"string or a tuple of them ({err}); got {value!r:.100}") from None
    return value


class CodeIdentity:
    """A function's ``version``, its policy for code changes, and its fingerprint, computed
    once per process and only when first needed (never at import or decoration: a module of
    many decorated functions must import as fast as one without code versions).

    ``project_root()`` says which files are the project's (their code counts); it is asked
    when the fingerprint is computed. Thread-safe: two threads that need the fingerprint at
    once compute it once.
    """

    def __init__(self, func: Callable, version: Any, policy: str,
                 project_root: Callable[[], str]) -> None:
        self.func = func
        self.version = version
        self.policy = policy
        self._project_root = project_root
        self._fingerprint: Optional[str] = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """The code fingerprint (32 hex digits), computed on first use."""
        fingerprint = self._fingerprint
        if fingerprint is None:
            with self._lock:
                if self._fingerprint is None:
                    self._fingerprint = code_fingerprint(self.func, self._project_root())
                fingerprint = self._fingerprint
        return fingerprint

    def salt(self) -> bytes:
        """What is mixed into every call digest: empty (the digests of earlier releases) when
        neither ``version`` nor, under ``recompute``, the fingerprint is part of the identity."""
        if self.version is None and self.policy != RECOMPUTE:
            return b""
        parts = [b"ptd-code-identity-1", encode_value(self.version)]
        if self.policy == RECOMPUTE:
            parts.append(self.fingerprint.encode("ascii"))
        return _blake2b(b"\0".join(parts), digest_size=32).digest()

    def tag(self) -> str:
        """The code tag written into each record: ``fingerprint|version`` (no fingerprint under
        ``ignore``, no ``|version`` without one)."""
        if self.policy == IGNORE and self.version is None:
            return ""
        fingerprint = "" if self.policy == IGNORE else self.fingerprint
        return code_tag(fingerprint,
                        None if self.version is None else version_label(self.version))
