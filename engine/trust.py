"""Trusted folders: never load a cache that someone else could have written.

Cached results are pickles, and unpickling runs code. Whoever can write a cache folder (or
replace a folder above it) can therefore run code in every process that reads that cache. So
before a store's environment is opened, its folder, its ``data.mdb`` and ``lock.mdb``, and every
folder above it up to the persist root are checked against the sharing level:

==========  ==========================================  ====================================
sharing     accepted owner and write bits               created folders / files
==========  ==========================================  ====================================
``no``      owned by you (or root); no group or other   ``0700`` / ``0600``
            write bit (the default; group-write is
            fine in your user-private group, below)
``group``   owned by you (or root), or its group is     ``2770`` / ``0660`` (setgid: new
            one of yours; group-writable only by one    entries keep the folder's group)
            of your groups; never writable by others
``all``     anything (an explicit opt-in: anyone who     as ``group``
            can write there can run code in your
            processes)
==========  ==========================================  ====================================

The same rule, through :func:`path_problem` and :func:`check_tree`, guards what the API layer
reads besides stores: the settings folder and its files, and 0.0.7 bucket files.

Why "its group is one of yours" is enough for another owner in ``group`` mode: an ordinary user
can only give a file a group they belong to, so the owner is a member of that group too, and
members of your own group are who ``group`` says you share with.

**User-private groups.** Debian and Ubuntu give every user a group of their own (named after
the user, their primary group, with nobody else in it) and a umask of 002, so the folders such
a user makes are group-writable, yet nobody else can write them. Under ``no`` a group-write bit
is therefore accepted when the group is proven to be yours alone -- the rule Debian patches into
OpenSSH's ``StrictModes`` (``secure_permissions`` in misc.c, "Allow harmless group-writability",
Debian bug #314347), applied fail-closed (:func:`private_group`): the group is your primary
group and carries your user name, it lists no member but you, no other account has it as its
primary group, and users and groups come from local files only (``/etc/nsswitch.conf``), so
that the list of accounts checked is complete. Root never gets the exception (a root process
is the most valuable target, and the root group is commonly given to others); a group with any
other member is still refused unless ``shared = group``.

Parents are checked up to the persist root and no further (``/``, ``/home`` or ``/tmp`` are not
this library's business), and a parent with the sticky bit (like ``/tmp``) may be writable by
others: they cannot rename or delete what is in it, and what is in it is checked. A store's own
files must be regular files: a ``lock.mdb`` that is a symbolic link would make LMDB overwrite
whatever it points to. Folders found trustworthy are remembered per process, so a process pays
a few ``stat`` calls per store it opens, and nothing per call.
"""

import grp
import os
import pwd
import stat
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from . import settings as _settings
from .errors import UntrustedFolderError
from .sharing import Sharing  # noqa: F401  (re-exported; settings.py needs it without trust)

STORE_FILES = ("data.mdb", "lock.mdb")
_OTHERS_WRITE = stat.S_IWOTH
_GROUP_WRITE = stat.S_IWGRP


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
_private_groups: Dict[Tuple[int, int], bool] = {}  # (uid, gid) -> proven the user's own
_lock = threading.Lock()


def _reset_after_fork() -> None:
    """A forked child gets a new lock: the parent's may have been held by another thread."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def policy_of(settings: "_settings.EngineSettings") -> TrustPolicy:
    """The trust policy the settings describe: their sharing level, and their trust roots
    made absolute and normalised."""
    roots = tuple(sorted({os.path.normpath(os.path.abspath(root))
                          for root in settings.trust_roots if root}))
    return TrustPolicy(Sharing.parse(settings.sharing), roots)


def _apply(settings: "_settings.EngineSettings") -> None:
    global _policy
    _policy = policy_of(settings)


_settings.on_install(_apply)


def set_policy(sharing, roots: Iterable[str] = ()) -> TrustPolicy:
    """Make ``sharing`` and ``roots`` the policy of every store opened from now on: installs
    the current engine settings with them (see ``settings.py``)."""
    _settings.install(_settings.current().replace(sharing=Sharing.parse(sharing),
                                                  trust_roots=tuple(roots)))
    return _policy


def current_policy() -> TrustPolicy:
    """The policy of the installed engine settings."""
    return _policy


def forget_checked() -> None:
    """Check every parent folder again on the next open (after a ``chmod``, in tests)."""
    with _lock:
        _trusted_parents.clear()
        _private_groups.clear()


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
    words = _settings.wording()
    raise UntrustedFolderError(
        f"Not loading the cache in {store}: {target} is {problem} ({_describe(info)}). Cached "
        "results are pickles and loading one runs code, so anyone who can write there could "
        "run code in this process. If that is not intended, make it yours and owner-only (for "
        f"example `chmod go-w {target}`) or use another {words.persist_path}. If you share "
        f"this cache on purpose, opt in with the setting {words.share_setting}: 'group' "
        "(members of your groups may write it) or 'all' (anyone who can write it), "
        f"{words.share_option('group')}.")


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
        if mode & _GROUP_WRITE and not sticky and not private_group(you.uid, info.st_gid):
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


def private_group(uid: int, gid: int) -> bool:
    """Whether the group ``gid`` is proven to be the user-private group of ``uid``, so that its
    write bit lets nobody but ``uid`` write (see the module docstring). Fails closed: any
    condition that cannot be proven is False. Remembered per process until
    :func:`forget_checked` (it reads every account, and is asked only about group-writable
    paths)."""
    key = (uid, gid)
    known = _private_groups.get(key)
    if known is None:
        known = _prove_private_group(uid, gid)
        with _lock:
            _private_groups[key] = known
    return known


def _prove_private_group(uid: int, gid: int) -> bool:
    if uid == 0 or not _local_accounts():
        return False
    try:
        user = pwd.getpwuid(uid)
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    if user.pw_gid != gid or group.gr_name != user.pw_name:
        return False  # not the user's own primary group, named after them
    if any(member != user.pw_name for member in group.gr_mem):
        return False  # another supplementary member
    return all(account.pw_uid == uid for account in pwd.getpwall() if account.pw_gid == gid)


_NSSWITCH = "/etc/nsswitch.conf"
_LOCAL_SOURCES = {"files", "systemd", "compat"}


def _local_accounts() -> bool:
    """Whether users and groups come only from local sources that list every account
    (``files``, ``systemd``, or ``compat`` without NIS ``+``/``-`` entries): with LDAP, SSSD or
    NIS an account sharing the group may exist that ``pwd.getpwall()`` does not list. A
    missing or unreadable ``nsswitch.conf`` proves nothing."""
    try:
        with open(_NSSWITCH, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return False
    sources: Dict[str, List[str]] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        database, colon, rest = line.partition(":")
        if colon and database.strip() in ("passwd", "group"):
            if database.strip() in sources:
                return False  # a duplicated line: which one glibc uses is not ours to guess
            sources[database.strip()] = rest.split()
    for database in ("passwd", "group"):
        names = sources.get(database)
        if not names or any(name not in _LOCAL_SOURCES for name in names):
            return False  # none, another source, or an [action] item
        if "compat" in names and not _no_nis_entries(f"/etc/{database}"):
            return False
    return True


def _no_nis_entries(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return not any(line.startswith(("+", "-")) for line in handle)
    except OSError:
        return False


def path_problem(target: str, sharing, info: Optional[os.stat_result] = None,
                 sticky_allowed: bool = False) -> Optional[str]:
    """``"<target> is <why> (<mode, owner, group>)"`` if the folder or file ``target`` may not be
    trusted under ``sharing`` by the rule of this module, else None (also when it does not
    exist). ``info``: its ``os.fstat`` when it is already open, so that what is checked is what
    is read. For callers outside the cache (the settings folder, 0.0.7 bucket files), which
    word their own error around it."""
    if info is None:
        try:
            info = os.stat(target)
        except FileNotFoundError:
            return None
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        return f"{target} is not a regular file or folder ({_describe(info)})"
    problem = _problem(info, Sharing.parse(sharing), _You(), sticky_allowed)
    return None if problem is None else f"{target} is {problem} ({_describe(info)})"


def check_tree(path: str, root: str, sharing, explain: Callable[[str, str], str]) -> None:
    """Raise :class:`UntrustedFolderError` with ``explain(<the path refused>, <what
    path_problem says about it>)`` unless ``path`` and every existing folder above it up to and
    including ``root`` may be trusted under ``sharing`` (folders above ``root`` are the
    caller's business; a sticky parent may be writable by others, as for the cache). Folders
    found trustworthy are remembered as for stores."""
    path = os.path.normpath(os.path.abspath(path))
    root = os.path.normpath(os.path.abspath(root))
    sharing = Sharing.parse(sharing)
    problem = path_problem(path, sharing)
    if problem is not None:
        raise UntrustedFolderError(explain(path, problem))
    if not (path == root or path.startswith(root.rstrip(os.sep) + os.sep)):
        return  # not below root: only the path itself is ours to check
    folder = path
    while folder != root:
        folder = os.path.dirname(folder)
        key = (folder, sharing)
        if key in _trusted_parents:
            continue
        problem = path_problem(folder, sharing, sticky_allowed=True)
        if problem is not None:
            raise UntrustedFolderError(explain(folder, problem))
        with _lock:
            _trusted_parents.add(key)


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
