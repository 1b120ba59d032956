"""``project_to_pids.txt``: the auto id of each project folder, as in persist-to-disk 0.0.7.

Each line is ``<absolute project path>||<id>``; a new project gets the next free id (the number of
known projects + 1). The file is read and appended under a lock, so concurrent first runs of two
jobs agree on one id.
"""

import os
from typing import Dict

from .engine import make_private_dirs, scope_lock

PIDS_FILE = "project_to_pids.txt"
SEPARATOR = "||"


def read_project_ids(settings_folder: str) -> Dict[str, str]:
    path = os.path.join(settings_folder, PIDS_FILE)
    ids: Dict[str, str] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                project, sep, pid = line.rstrip("\n").rpartition(SEPARATOR)
                if sep and project:
                    ids.setdefault(project, pid)
    return ids


def project_id(settings_folder: str, project_path: str) -> str:
    """The id of ``project_path``, allocating one if the project is new."""
    project_path = os.path.normpath(project_path)
    if SEPARATOR in project_path:
        raise ValueError(f"project path {project_path!r} may not contain {SEPARATOR!r}")
    ids = read_project_ids(settings_folder)
    if project_path in ids:
        return ids[project_path]
    make_private_dirs(settings_folder)
    path = os.path.join(settings_folder, PIDS_FILE)
    with scope_lock(path + ".lock"):
        ids = read_project_ids(settings_folder)
        if project_path in ids:
            return ids[project_path]
        taken = set(ids.values())
        number = len(ids) + 1
        while str(number) in taken:
            number += 1
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{project_path}{SEPARATOR}{number}\n")
            handle.flush()
            os.fsync(handle.fileno())
        return str(number)
