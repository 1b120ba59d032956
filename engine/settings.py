"""The engine's settings: one explicit object, passed in by the layer above.

The engine reads no configuration file and no environment variable of its own. Everything
it may be told (who besides the user may write a cache, where its trust check stops, how big
a new map starts, how many environments and lock files a process keeps open, how often
handles and lock files are checked again) is a field of :class:`EngineSettings`, which the
API layer builds from its settings and hands to :class:`~.local.LocalStorage`. The
process-wide singletons (the environment pool, the lock-file registry, the trust policy) are
built from the settings object installed last (:func:`install`), and tests steer them by
installing another one (``install(replace(current(), ...))``), not by patching constants.

Messages that must name a user-facing tool or setting (the verify command, the option that
shares a cache with a group) take their wording from :class:`Wording`, which the API layer
fills in; the engine's own defaults name no tool it does not have.
"""

import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from .sharing import Sharing

#: A check the layer above runs on a folder that holds no store yet, before one is created
#: in it: a message that refuses the folder (it holds another program's files), or None.
ForeignFolderCheck = Callable[[str], Optional[str]]

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB of address space; grows by doubling when full
MIN_MAP_SIZE = 64 * 1024


@dataclass(frozen=True)
class Wording:
    """How engine messages name what the user can do. Each field is a fragment that the
    messages fit into a sentence of their own; ``{path}`` is replaced by the folder concerned,
    ``{level}`` by ``group`` or ``all`` (``{LEVEL}``: upper case). The defaults name the
    engine's own functions; the API layer replaces them with its tools and settings.

    - ``verify``: a verb phrase, how to inspect a damaged store (``run `ptd verify {path}```):
      "Nothing was deleted: {verify}, or move the folder aside".
    - ``compact``: a noun phrase, what writes a store's generation again: "the next {compact}
      writes it again".
    - ``list_stores``: a sentence without its full stop, how to list the stores.
    - ``persist_path``: the name of the setting of the cache folder, without an article:
      "choose another {persist_path}", "point {persist_path} elsewhere".
    - ``set_persist_path``: how to set it, appended to "Point {persist_path} at a local disk
      instead (for example node-local scratch or /tmp)" (empty, or starting with ", ").
    - ``share_setting``: the name of the setting of who may write a cache: "opt in with the
      setting {share_setting}: 'group' (...) or 'all' (...)".
    - ``share``: how to set it to ``{level}``, appended after that with ", " before it.
    """

    verify: str = "inspect it with persist_to_disk.engine.verification.verify_store({path!r})"
    compact: str = "persist_to_disk.engine.compact({path!r})"
    list_stores: str = "persist_to_disk.engine.find_stores(folder) lists the stores"
    persist_path: str = "cache folder"
    set_persist_path: str = ""
    share_setting: str = "sharing"
    share: str = "with EngineSettings(sharing=Sharing.{LEVEL})"

    def verify_command(self, path: str) -> str:
        return self.verify.format(path=path)

    def compact_command(self, path: str) -> str:
        return self.compact.format(path=path)

    def share_option(self, level: str = "group") -> str:
        return self.share.format(level=level, LEVEL=level.upper())


def sentence(fragment: str) -> str:
    """``fragment`` with its first letter upper case, to start a sentence with it."""
    return fragment[:1].upper() + fragment[1:]


def wording() -> Wording:
    """The wording of the installed settings (read on error paths only)."""
    return _current.wording


@dataclass(frozen=True)
class EngineSettings:
    """Everything the engine may be told (see the module docstring); immutable, so a store
    opened with one keeps a consistent view of it.

    - ``sharing``, ``trust_roots``: who besides the user may write a cache folder, and the
      persist roots where the check of a store's parent folders stops (``engine/trust.py``).
    - ``initial_map_size``: bytes of address space a new environment maps first (it doubles
      when full); ``None`` is 1 GiB.
    - ``max_open_environments``, ``max_open_lock_files``: how many a process keeps open;
      ``None`` derives them from the descriptor limit (``RLIMIT_NOFILE``).
    - ``handle_recheck_seconds``: how often a reader checks that its store was not deleted or
      replaced; ``lock_recheck_seconds``: how often a kept lock file's path is looked up again.
    - ``foreign_folder``: the layer above's check for folders that hold another program's
      files (see :data:`ForeignFolderCheck`); ``wording``: see :class:`Wording`.
    """

    sharing: Sharing = Sharing.NO
    trust_roots: Tuple[str, ...] = ()
    initial_map_size: Optional[int] = None
    max_open_environments: Optional[int] = None
    max_open_lock_files: Optional[int] = None
    handle_recheck_seconds: float = 1.0
    lock_recheck_seconds: float = 1.0
    foreign_folder: Optional[ForeignFolderCheck] = None
    wording: Wording = Wording()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sharing", Sharing.parse(self.sharing))
        object.__setattr__(self, "trust_roots", tuple(self.trust_roots))
        size = self.initial_map_size
        if size is not None and not (isinstance(size, int) and size >= MIN_MAP_SIZE):
            raise ValueError(f"initial_map_size must be a number of bytes of at least "
                             f"{MIN_MAP_SIZE}, got {size!r}")
        for name in ("max_open_environments", "max_open_lock_files"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")

    def replace(self, **changes) -> "EngineSettings":
        return dataclasses.replace(self, **changes)

    @property
    def map_size(self) -> int:
        """The bytes a new environment maps first: ``initial_map_size`` rounded up to whole
        pages, or 1 GiB. (A store whose data is larger is mapped at its data size anyway.)"""
        if self.initial_map_size is None:
            return DEFAULT_MAP_SIZE
        return (self.initial_map_size + 4095) // 4096 * 4096


_current = EngineSettings()
_appliers = []  # the singletons' hooks, called with each newly installed settings object
_lock = threading.Lock()


def current() -> EngineSettings:
    """The settings object installed last (the engine's defaults until the API installs
    its own)."""
    return _current


def install(settings: EngineSettings) -> EngineSettings:
    """Make ``settings`` the process's: the singletons (pool, lock registry, trust policy)
    copy what they need of it into their own attributes, so that nothing on the hit path
    ever asks for :func:`current`. Installing the object already installed does nothing (a
    store opened per leaf installs its tier's settings: that costs one comparison)."""
    global _current
    if settings is _current:
        return settings
    if not isinstance(settings, EngineSettings):
        raise TypeError(f"install() takes an EngineSettings, got {type(settings).__name__}")
    with _lock:
        _current = settings
        for apply in _appliers:  # under the lock: two installs never interleave their hooks
            apply(settings)
    return settings


def on_install(apply: Callable[[EngineSettings], None]) -> None:
    """Register a singleton's hook; it is called at once with the current settings, and with
    every settings object installed later."""
    with _lock:
        _appliers.append(apply)
        apply(_current)


def _reset_after_fork() -> None:
    """A forked child gets a new lock: another thread of the parent may have held it."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
