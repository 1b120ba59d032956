"""What the figures were measured on: CPU, cores, memory, OS, Python, filesystem of the
temporary folders, load at the start and end, the commit of this project, and the date."""

import datetime
import os
import platform
import subprocess
import sys
from typing import Dict, Optional

from .worker import REPOSITORY_ROOT


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _command(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return (_command("sysctl", "-n", "machdep.cpu.brand_string") or platform.processor()
            or platform.machine())


def memory() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / (1 << 20):.0f} GiB"
    size = _command("sysctl", "-n", "hw.memsize")
    return f"{int(size) / (1 << 30):.0f} GiB" if size.isdigit() else "unknown"


def filesystem(path: str) -> str:
    """The filesystem type and mount point holding ``path`` (Linux: /proc/mounts)."""
    path, best = os.path.realpath(path), None
    for line in _read("/proc/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mount = fields[1]
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                if best is None or len(mount) > len(best[0]):
                    best = (mount, fields[2])
    if best:
        return f"{best[1]} (mounted at {best[0]})"
    return _command("stat", "-f", "-c", "%T", path) or "unknown"


def commit() -> str:
    sha = _command("git", "-C", REPOSITORY_ROOT, "rev-parse", "--short", "HEAD")
    if not sha:
        return "unknown"
    dirty = _command("git", "-C", REPOSITORY_ROOT, "status", "--porcelain", "--untracked-files=no")
    return sha + (" with uncommitted changes" if dirty else "")


def load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def describe(tmp: str, versions: Dict[str, str], load_at_start: Optional[str] = None) -> dict:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory": memory(),
        "os": platform.platform(),
        "python": sys.version.split()[0] + f" ({platform.python_implementation()})",
        "filesystem": f"{filesystem(tmp)}, temporary folders in {tmp}",
        "load average (1, 5, 15 min)": f"start {load_at_start or '?'}, end {load()}",
        "persist_to_disk commit": commit(),
        "versions": dict(versions),
    }
