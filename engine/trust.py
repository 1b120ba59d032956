"""Trusted folders: never load a cache that someone else could have written.

Cached results are pickles, and unpickling runs code. Whoever can write a cache folder (or
replace a folder above it) can therefore run code in every process that reads that cache. So
before a store's environment is opened, its folder, its ``data.mdb`` and ``lock.mdb``, and every
folder above it up to the persist root are checked against the sharing level:

==========  ==========================================  ====================================
sharing     accepted owner and write bits               created folders / files
==========  ==========================================  ====================================
``no``      owned by you (or root); no group or other   ``0700`` / ``0600``
            write bit (the default)
``group``   owned by you (or root), or its group is     ``2770`` / ``0660`` (setgid: new
            one of yours; group-writable only by one    entries keep the folder's group)
            of your groups; never writable by others
``all``     anything (an explicit opt-in: anyone who     as ``group``
            can write there can run code in your
            processes)
==========  ==========================================  ====================================

Why "its group is one of yours" is enough for another owner in ``group`` mode: an ordinary user
can only give a file a group they belong to, so the owner is a member of that group too, and
members of your own group are who ``group`` says you share with.

Parents are checked up to the persist root and no further (``/``, ``/home`` or ``/tmp`` are not
this library's business), and a parent with the sticky bit (like ``/tmp``) may be writable by
others: they cannot rename or delete what is in it, and what is in it is checked. A store's own
files must be regular files: a ``lock.mdb`` that is a symbolic link would make LMDB overwrite
whatever it points to. Folders found trustworthy are remembered per process, so a process pays
a few ``stat`` calls per store it opens, and nothing per call.
"""

import enum
import grp
import os
import pwd
import stat
import threading
from dataclasses import dataclass
from typing import Iterable, List, Optional, Set, Tuple

from .errors import UntrustedFolderError

STORE_FILES = ("data.mdb", "lock.mdb")
_OTHERS_WRITE = stat.S_IWOTH
_GROUP_WRITE = stat.S_IWGRP


class Sharing(str, enum.Enum):
    """Who besides you may write a cache: nobody (``no``), your groups (``group``) or anyone
    (``all``). It decides both what is accepted and how new folders and files are created."""

    NO = "no"
    GROUP = "group"
    ALL = "all"

    @property
    def folder_mode(self) -> int:
        return 0o700 if self is Sharing.NO else 0o2770

    @property
    def file_mode(self) -> int:
        return 0o600 if self is Sharing.NO else 0o660

    @classmethod
    def parse(cls, value) -> "Sharing":
        if isinstance(value, cls):
            return value
        if isinstance(value, bool):
            return cls.GROUP if value else cls.NO
        text = str(value).strip().lower()
        aliases = {"false": cls.NO, "off": cls.NO, "0": cls.NO, "private": cls.NO,
                   "true": cls.GROUP, "yes": cls.GROUP, "on": cls.GROUP, "1": cls.GROUP}
        if text in aliases:
            return aliases[text]
        try:
            return cls(text)
        except ValueError:
            raise ValueError(
                f"shared must be 'no', 'group' or 'all' (or true/false), got {value!r}"
            ) from None


@dataclass(frozen=True)
class TrustPolicy:
    """What :func:`check_trusted` accepts: the sharing level, and the persist roots where the
    check of a store's parent folders stops (absolute, normalised paths)."""

    sharing: Sharing = Sharing.NO
    roots: Tuple[str, ...] = ()

    def root_of(self, path: str) -> Optional[str]:
        """The innermost root that contains ``path`` (or is it), or None."""
        found = None
        for root in self.roots:
            if (path == root or path.startswith(root.rstrip(os.sep) + os.sep)) and (
                    found is None or len(root) > len(found)):
                found = root
        return found


_policy = TrustPolicy()
_trusted_parents: Set[Tuple[str, Sharing]] = set()
_lock = threading.Lock()


def set_policy(sharing, roots: Iterable[str] = ()) -> TrustPolicy:
    """Make ``sharing`` and ``roots`` the policy of every store opened from now on.

    The API layer calls this whenever its settings load or change; the engine never reads
    settings itself.
    """
    global _policy
    policy = TrustPolicy(Sharing.parse(sharing),
                         tuple(sorted({os.path.normpath(os.path.abspath(r)) for r in roots if r})))
    _policy = policy
    return policy


def current_policy() -> TrustPolicy:
    return _policy


def forget_checked() -> None:
    """Check every parent folder again on the next open (after a ``chmod``, in tests)."""
    with _lock:
        _trusted_parents.clear()


def check_trusted(path: str, policy: Optional[TrustPolicy] = None) -> None:
    """Raise :class:`UntrustedFolderError` unless the store folder ``path`` may be loaded.

    Checked: ``path`` itself and its ``data.mdb`` and ``lock.mdb`` (every time: a handful of
    ``stat`` calls per environment opened), then each existing parent up to and including the
    persist root that contains ``path`` (remembered once found trustworthy). A path under no
    persist root (the engine used on its own) has only itself and its files checked. Missing
    folders and files are skipped: they will be created with the policy's modes.
    """
    policy = policy or _policy
    path = os.path.normpath(os.path.abspath(path))
    you = _You()
    _check(path, path, policy.sharing, you, kind="store")
    for name in STORE_FILES:
        _check(os.path.join(path, name), path, policy.sharing, you, kind="file")
    root = policy.root_of(path)
    if root is None or path == root:
        return
    folder = path
    while folder != root:
        folder = os.path.dirname(folder)
        key = (folder, policy.sharing)
        if key in _trusted_parents:
            continue
        if _check(folder, path, policy.sharing, you, kind="parent"):
            with _lock:
                _trusted_parents.add(key)


def untrusted_reason(path: str, policy: Optional[TrustPolicy] = None) -> Optional[str]:
    """The message :func:`check_trusted` would raise for ``path``, or None (for tools)."""
    try:
        check_trusted(path, policy)
    except UntrustedFolderError as err:
        return str(err)
    return None


class _You:
    """The user and groups this process acts as (read once per check)."""

    __slots__ = ("uid", "groups")

    def __init__(self) -> None:
        self.uid = os.geteuid()
        self.groups = set(os.getgroups()) | {os.getegid()}


def _check(target: str, store: str, sharing: Sharing, you: _You, kind: str) -> bool:
    """Check one folder or file; False if it does not exist, True if it is acceptable."""
    try:
        info = os.lstat(target) if kind == "file" else os.stat(target)
    except FileNotFoundError:
        return False
    if kind == "file" and not stat.S_ISREG(info.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise UntrustedFolderError(
            f"Not opening the cache store in {store}: {target} is {what}. LMDB writes to that "
            "file, so a link would make it overwrite whatever the link points to, and nothing "
            "this library creates is one. Remove it (the store recreates lock.mdb by itself), "
            "and check who could write to that folder.")
    problem = _problem(info, sharing, you, sticky_allowed=(kind == "parent"))
    if problem is None:
        return True
    raise UntrustedFolderError(
        f"Not loading the cache in {store}: {target} is {problem} ({_describe(info)}). Cached "
        "results are pickles and loading one runs code, so anyone who can write there could "
        "run code in this process. If that is not intended, make it yours and owner-only (for "
        f"example `chmod go-w {target}`) or use another persist_path. If you share this cache "
        "on purpose, opt in with the setting shared: 'group' (members of your groups may write "
        "it) or 'all' (anyone who can write it), through `shared = group` in config.ini, the "
        "environment variable PERSIST_TO_DISK_SHARED=group, or "
        "persist_to_disk.config.set_shared('group').")


def _problem(info: os.stat_result, sharing: Sharing, you: _You,
             sticky_allowed: bool) -> Optional[str]:
    """Why ``info`` may not be trusted under ``sharing``, or None."""
    if sharing is Sharing.ALL:
        return None
    mode = info.st_mode
    sticky = sticky_allowed and stat.S_ISDIR(mode) and bool(mode & stat.S_ISVTX)
    owned = info.st_uid in (you.uid, 0)
    your_group = info.st_gid in you.groups
    if mode & _OTHERS_WRITE and not sticky:
        return "writable by every user"
    if sharing is Sharing.NO:
        if not owned:
            return "owned by another user"
        if mode & _GROUP_WRITE and not sticky:
            return "writable by its group"
        return None
    if not owned and not your_group:
        return "owned by another user, in a group you are not a member of"
    if mode & _GROUP_WRITE and not your_group and not sticky:
        return "writable by a group you are not a member of"
    return None


def _describe(info: os.stat_result) -> str:
    return (f"mode {stat.filemode(info.st_mode)}, owner {_user_name(info.st_uid)}, "
            f"group {_group_name(info.st_gid)}")


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def share_store_files(path: str, policy: Optional[TrustPolicy] = None) -> List[str]:
    """Give the store files in ``path`` that this user owns the policy's file mode; return the
    files changed.

    LMDB creates ``data.mdb`` and ``lock.mdb`` with its ``mode`` argument minus the umask (022
    usually), which would leave teammates of a ``group`` cache unable to write. Called after
    the environment is opened; in the default ``no`` mode nothing needs changing (the umask can
    only remove bits from 0600).
    """
    policy = policy or _policy
    wanted = policy.sharing.file_mode
    changed = []
    if wanted == 0o600:
        return changed
    for name in STORE_FILES:
        target = os.path.join(path, name)
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            continue
        if (stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
                and stat.S_IMODE(info.st_mode) != wanted):
            os.chmod(target, wanted)
            changed.append(target)
    return changed
