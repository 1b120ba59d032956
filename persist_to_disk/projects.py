"""``project_to_pids.txt``: the auto id of each project folder, as in persist-to-disk 0.0.7, and
the trust check of the settings folder that holds it (and ``config.ini``).

Each line is ``<absolute project path>||<id>``; a new project gets the next free id (the number of
known projects + 1). The file is read and appended under a lock, so concurrent first runs of two
jobs agree on one id. An id is a number: anything else would become part of a folder name (the
project's ``<name>-<id>`` folder), so a line with another id is reported, never used.

**The settings folder is trusted code too.** ``config.ini`` decides where cached results are
loaded from (``persist_path``) and whether they are checked at all (``shared``), and this file
names the project folders below the persist path; cached results are pickles, so whoever can
write the settings can run code in every process that reads them. The settings folder,
``config.ini`` and ``project_to_pids.txt`` therefore pass the cache's rule (``engine/trust.py``)
before they are read. The sharing level of that check comes from outside the folder -- the
environment variable ``PERSIST_TO_DISK_SHARED`` (which ``config.set_shared`` also sets) --
never from ``config.ini`` itself: a file may not vouch for the folder it is written in, or
anyone able to plant one could declare ``shared = all``. Files are checked through ``fstat`` of
the descriptor that is read, so what is checked is what is read. As for the persist path, the
folders above the settings folder (a home folder, ``/tmp``) are not checked: choosing where it
is (``PERSIST_TO_DISK_HOME``) is the user's decision, and a folder replaced by another user
would be theirs, which the check of the folder itself refuses.
"""

import codecs
import os
import stat
from typing import Dict, Optional

from .engine import Sharing, UntrustedFolderError, make_private_dirs, scope_lock, trust
from .errors import ConfigError

PIDS_FILE = "project_to_pids.txt"
SEPARATOR = "||"
#: Characters a project path may not hold: the separator, and line ends (the file is read
#: line by line, in universal-newline mode).
FORBIDDEN_IN_PROJECT_PATH = (SEPARATOR, "\n", "\r")


def untrusted_settings(target: str, finding: str) -> UntrustedFolderError:
    """The error for a settings folder or file that fails the trust check (``finding`` is what
    ``trust.path_problem`` says about ``target``)."""
    return UntrustedFolderError(
        f"Not reading the persist_to_disk settings: {finding}. The settings (config.ini's "
        "persist_path and shared, project_to_pids.txt) decide which cache folders are loaded, "
        "and cached results are pickles that run code when loaded, so anyone who can write "
        "them could run code in this process. Make it yours and writable by you only (for "
        f"example `chmod go-w {target}`), or point the environment variable "
        "PERSIST_TO_DISK_HOME at a folder only you can write. If your group shares this "
        "settings folder on purpose, opt in from outside it: the environment variable "
        "PERSIST_TO_DISK_SHARED=group (or =all), or persist_to_disk.config.set_shared('group') "
        "before the first call; `shared` in config.ini cannot vouch for the folder it is "
        "written in.")


def check_settings_folder(folder: str, sharing, where: str) -> bool:
    """Raise unless the settings folder may be trusted under ``sharing``; False if it does not
    exist yet (it is created owner-only). ``where``: what set the folder, for the message."""
    try:
        info = os.stat(folder)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise ConfigError(f"The settings folder {folder} ({where}) cannot be read: {err}. Point "
                          "PERSIST_TO_DISK_HOME at a folder you can read and write (it is "
                          "created if missing).") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"The settings folder {folder} ({where}) is not a folder. Point "
                          "PERSIST_TO_DISK_HOME at a folder (it is created if missing), or "
                          "unset it to use ~/.persist_to_disk.")
    finding = trust.path_problem(folder, sharing, info)
    if finding is not None:
        raise untrusted_settings(folder, finding)
    return True


def read_settings_file(path: str, sharing) -> Optional[str]:
    """The text of the settings file ``path`` (``config.ini``, ``project_to_pids.txt``), or None
    if there is none; checked through the descriptor read (a symbolic link to a dotfiles
    repository is fine, its target is what is checked). A file that is not UTF-8 text or
    cannot be read is a :class:`ConfigError` naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_NONBLOCK", 0))  # never wait on a FIFO planted there
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"{path} cannot be read ({err}). Make it readable, or delete it "
                          "(it is written again when needed).") from None
    # The type is checked on the bare descriptor: os.fdopen itself refuses a directory
    # (IsADirectoryError), and the descriptor must be closed on every refusal.
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConfigError(f"{path} is {kind} ({stat.filemode(info.st_mode)}). Remove it "
                              "(or move it away); the settings are plain files, written again "
                              "when needed.")
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        finding = trust.path_problem(path, sharing, info)
        if finding is not None:
            raise untrusted_settings(path, finding)
        try:
            data = handle.read()
        except OSError as err:
            raise ConfigError(f"{path} cannot be read ({err}).") from None
    # A UTF-8 byte order mark (Notepad and other Windows editors write one) is dropped, as
    # "utf-8-sig" would: configparser would otherwise see it as text before the first section
    # header. Stripped here rather than by the codec so error offsets index ``data``.
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {data[err.start]:#04x} on line {line}). Save it "
            "as UTF-8, or delete it and run persist_to_disk.config.generate_config().") from None


def write_settings_file(path: str, text: str, durable: bool = True) -> None:
    """Replace the settings file ``path`` with ``text`` whole (readers see the old text or the
    new, never part of it): written to an owner-only temporary file beside it (a random name,
    created exclusively: a temporary left by a killed process blocks nobody) and renamed over
    it; with ``durable``, synced first. Raises ``OSError``; the temporary file never stays."""
    temporary = f"{path}.{os.urandom(6).hex()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _parse_ids(text: str, path: str) -> Dict[str, str]:
    ids: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        project, sep, pid = line.rpartition(SEPARATOR)
        if not (sep and project):
            continue
        if not (pid.isascii() and pid.isdigit()):
            raise ConfigError(
                f"{path}, line {number}: the id of {project!r} is {pid!r}, not a number. "
                "Each line is <absolute project path>||<number>; correct or delete that line "
                "(the project then gets a new id, and so a new cache folder).")
        ids.setdefault(project, pid)
    return ids


def read_project_ids(settings_folder: str, sharing=Sharing.NO) -> Dict[str, str]:
    path = os.path.join(settings_folder, PIDS_FILE)
    text = read_settings_file(path, sharing)
    return _parse_ids(text, path) if text is not None else {}


def check_project_path(project_path: str, where: str = "the project path") -> str:
    """``project_path``, or a :class:`ConfigError` if ``project_to_pids.txt`` cannot hold it."""
    for forbidden in FORBIDDEN_IN_PROJECT_PATH:
        if forbidden in project_path:
            raise ConfigError(
                f"{where} {project_path!r} contains {forbidden!r}, which project_to_pids.txt "
                f"cannot hold (its lines are <project path>{SEPARATOR}<id>, as in "
                "persist-to-disk 0.0.7). Rename the folder, or choose another project folder "
                "with persist_to_disk.config.set_project_path(...) (or the environment "
                "variable PERSIST_TO_DISK_PROJECT_PATH).")
    return project_path


def project_id(settings_folder: str, project_path: str, sharing=Sharing.NO,
               where: str = "the settings folder") -> str:
    """The id of ``project_path``, allocating one if the project is new.

    ``sharing``: the level the settings folder is checked at (from the environment or code,
    never from config.ini); ``where``: what set the settings folder, for messages.
    """
    project_path = check_project_path(os.path.normpath(project_path))
    check_settings_folder(settings_folder, sharing, where)
    ids = read_project_ids(settings_folder, sharing)
    if project_path in ids:
        return ids[project_path]
    path = os.path.join(settings_folder, PIDS_FILE)
    try:
        make_private_dirs(settings_folder)
        # made by us owner-only, or by someone else meanwhile: check what is there now
        check_settings_folder(settings_folder, sharing, where)
        with scope_lock(path + ".lock"):
            ids = read_project_ids(settings_folder, sharing)
            if project_path in ids:
                return ids[project_path]
            taken = set(ids.values())
            number = len(ids) + 1
            while str(number) in taken:
                number += 1
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(f"{project_path}{SEPARATOR}{number}\n")
                handle.flush()
                os.fsync(handle.fileno())
            return str(number)
    except (ConfigError, UntrustedFolderError):
        raise
    except (OSError, UnicodeEncodeError) as err:
        raise ConfigError(
            f"Cannot record the id of the project {project_path} in {path} ({err}). The "
            f"settings folder {settings_folder} ({where}) must be a folder you can write; "
            "point the environment variable PERSIST_TO_DISK_HOME at one (it is created if "
            "missing).") from None
