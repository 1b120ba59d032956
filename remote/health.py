"""Whether the remote is worth asking now, and the one warning when it is not.

An unreachable or failing remote must never fail or hang a call: the call computes, stores
locally and returns. What it must not do either is pay a connection timeout on every call of a
long job while the server is down (3 s connect timeout x every miss), nor print a warning per
call. So the first failure marks the remote down for ``retry_after_seconds``: calls in that
window skip it (uploads are queued, see ``pending.py``), one warning says what happened, and
the first success after it says nothing and clears the mark. A process keeps one
:class:`RemoteHealth` per shared tier (so per endpoint and bucket).
"""

import threading
import time
from typing import Callable, Set


class RemoteHealth:
    """The down-for-a-while mark of one remote, and its warnings (each said once)."""

    def __init__(self, where: str, retry_after: float, push_hint: str,
                 warn: Callable[[str], None], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.where = where
        self.retry_after = retry_after
        self.push_hint = push_hint
        self._warn = warn
        self._clock = clock
        self._down_until = 0.0
        self._warned: Set[str] = set()
        self._lock = threading.Lock()

    def usable(self) -> bool:
        """Whether to ask the remote now (False for a while after a failure)."""
        return self._down_until == 0.0 or self._clock() >= self._down_until

    def failed(self, err: BaseException, doing: str) -> None:
        """The remote failed while ``doing`` (a gerund phrase): leave it alone for a while,
        and warn once per outage."""
        with self._lock:
            first = self._down_until == 0.0
            self._down_until = self._clock() + self.retry_after
        if first:
            self._warn(
                f"The shared cache {self.where} failed while {doing} ({_cause(err)}). Calls go "
                "on with the local cache only: they compute, store locally and return; results "
                f"not uploaded are kept and uploaded later ({self.push_hint}). The remote is "
                f"tried again in {self.retry_after:g} s.")

    def succeeded(self) -> None:
        if self._down_until:
            with self._lock:
                self._down_until = 0.0

    def warn_once(self, key: str, message: str) -> None:
        """Warn ``message`` the first time ``key`` is seen in this process."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        self._warn(message)


def _cause(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
