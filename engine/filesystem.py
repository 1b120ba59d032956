"""Filesystem checks: refuse network filesystems, create folders owner-only.

LMDB coordinates processes through a lock file that it memory-maps; on a network filesystem that
map is not shared between clients (nor, reliably, between processes of one host), so concurrent
writers can lose data. We look up the filesystem type of a cache folder in the kernel's mount
table once per device and refuse the unsafe ones with a message that says what to do instead.
"""

import errno
import os
import stat
import threading
from typing import Dict, Optional, Tuple

from .errors import UnsafeFilesystemError
from .settings import wording

#: Filesystem types (as the kernel names them in /proc/self/mountinfo) where LMDB is unsafe.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "lustre", "gpfs", "beegfs",
    "ceph", "glusterfs", "ocfs2", "gfs2", "afs", "9p", "ncpfs", "davfs", "pvfs2", "orangefs",
    "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
    "fuse.juicefs", "fuse.davfs2", "fuse.lustre", "fuse.beegfs",
})

MOUNTINFO_PATH = "/proc/self/mountinfo"
_checked_devices: Dict[int, Tuple[str, str]] = {}
_checked_lock = threading.Lock()


def parse_mountinfo(text: str) -> Dict[int, Tuple[str, str]]:
    """Map device numbers to ``(filesystem type, mount point)`` from mountinfo text.

    Format (proc(5)): ``id parent major:minor root mount_point options [optional...] - fstype
    source super_options``; the fields after the ``-`` separator start with the type.
    """
    devices: Dict[int, Tuple[str, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 7:
            continue
        separator = fields.index("-")
        if separator + 1 >= len(fields):
            continue
        major, _, minor = fields[2].partition(":")
        try:
            device = os.makedev(int(major), int(minor))
        except ValueError:
            continue
        mount_point = fields[4].replace("\\040", " ")
        devices[device] = (fields[separator + 1], mount_point)
    return devices


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _device_line(text: str, device: int) -> str:
    """The lines of mountinfo ``text`` that may describe ``device`` (those whose text holds
    its ``major:minor`` between spaces): parsing only them is the first call's ~0.1 ms less
    than parsing the whole table (and much less on hosts with hundreds of mounts)."""
    needle = f" {os.major(device)}:{os.minor(device)} "
    if needle not in text:
        return ""
    return "\n".join(line for line in text.splitlines() if needle in line)


def _read_all(path: str) -> bytes:
    """The whole of a (proc) file, with bare descriptor reads (no buffered file object)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def filesystem_of(path: str, mountinfo_text: Optional[str] = None, *,
                  device: Optional[int] = None) -> Optional[Tuple[str, str]]:
    """``(filesystem type, mount point)`` of the folder holding ``path``, or None if unknown.
    ``device``: its ``st_dev`` when the caller has it (one ``stat`` less)."""
    if device is None:
        device = os.stat(_nearest_existing(path)).st_dev
    if mountinfo_text is None:
        try:
            mountinfo_text = _read_all(MOUNTINFO_PATH).decode("utf-8", "replace")
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE):
                raise  # out of descriptors for now: never remember the device as unknown
            return None  # not Linux, or /proc hidden: nothing to check against
    return parse_mountinfo(_device_line(mountinfo_text, device)).get(device)


def ensure_local_filesystem(path: str, mountinfo_text: Optional[str] = None) -> None:
    """Raise :class:`UnsafeFilesystemError` if ``path`` is on a network filesystem.

    The answer is cached per device, so the check costs one ``stat`` after the first time.
    """
    device = os.stat(_nearest_existing(path)).st_dev
    if mountinfo_text is None:
        with _checked_lock:
            known = _checked_devices.get(device)
        if known is None:
            known = filesystem_of(path, device=device) or ("unknown", "")
            with _checked_lock:
                _checked_devices[device] = known
    else:
        known = filesystem_of(path, mountinfo_text, device=device) or ("unknown", "")
    fstype, mount_point = known
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith(("nfs", "smb")):
        raise UnsafeFilesystemError(
            f"The cache folder {path} is on a network filesystem ({fstype}, mounted at "
            f"{mount_point}). LMDB, which stores this cache, keeps its lock in a shared memory "
            "map that network filesystems do not share between processes, so concurrent jobs "
            f"could lose or corrupt cached results. Point {wording().persist_path} at a local "
            "disk instead (for example node-local scratch or /tmp)"
            f"{wording().set_persist_path}."
        )


def make_private_dirs(path: str) -> None:
    """Create ``path`` and each of its missing parents owner-only (0700).

    Cached results are pickles and unpickling runs code, so a cache folder is trusted code:
    other users must not be able to plant files in it (nor list groupby values). Each level is
    made here because ``os.makedirs`` applies its mode to the last folder only.
    """
    make_dirs(path, stat.S_IRWXU)


def make_dirs(path: str, mode: int) -> None:
    """Create ``path`` and each of its missing parents with exactly ``mode``.

    ``mkdir`` applies the umask (022 usually) and ignores the setgid bit, so a mode that grants
    the group anything (the shared mode's 02770) is set again with ``chmod`` on each folder
    made here; folders that already existed are left as they are.
    """
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode & 0o777)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
            continue
        if mode & ~stat.S_IRWXU:
            os.chmod(folder, mode)
