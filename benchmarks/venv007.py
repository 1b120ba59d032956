"""The virtual environment that runs persist-to-disk 0.0.7 (it has our import name).

Made once, in a cache folder, with ``pip install six persist-to-disk==0.0.7 numpy`` (six is a
dependency 0.0.7 does not declare; numpy is what the scenarios' values are made of). It is built
in a temporary folder and renamed into place, so an interrupted build is never taken for a
finished one.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional, Tuple

PACKAGES = ["six", "persist-to-disk==0.0.7", "numpy"]


def default_folder() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return os.path.join(cache, "persist_to_disk_benchmarks", f"venv-ptd-0.0.7-{tag}")


def _python(folder: str) -> str:
    return os.path.join(folder, "Scripts" if os.name == "nt" else "bin", "python")


def ensure(folder: Optional[str] = None, log=print) -> Tuple[Optional[str], Optional[str]]:
    """``(python of the venv, None)``, or ``(None, reason)`` if it cannot be made."""
    folder = os.path.abspath(folder or default_folder())
    python = _python(folder)
    if os.path.exists(os.path.join(folder, "ready")):
        return python, None
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    building = tempfile.mkdtemp(prefix="building-", dir=parent)
    try:
        log(f"creating the persist-to-disk 0.0.7 environment in {folder} (once)")
        subprocess.run([sys.executable, "-m", "venv", building], check=True,
                       capture_output=True, text=True, timeout=300)
        subprocess.run([_python(building), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", *PACKAGES],
                       check=True, capture_output=True, text=True, timeout=900)
        # the folder may be renamed: its python finds its packages from its own location
        # (only the scripts' shebangs keep the old path, and pip runs as python -m pip)
        open(os.path.join(building, "ready"), "w").close()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        shutil.rmtree(building, ignore_errors=True)
        output = (getattr(err, "stderr", None) or str(err)).strip().splitlines()
        return None, ("could not install persist-to-disk 0.0.7 in a virtual environment: "
                      + (output[-1] if output else type(err).__name__))
    if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, "ready")):
        shutil.rmtree(folder, ignore_errors=True)  # left by an interrupted older build
    try:
        os.rename(building, folder)
    except OSError:  # another run finished first
        shutil.rmtree(building, ignore_errors=True)
    return python, None
