"""Where a function's cache lives in the tree.

``<project root>/<module path>/<function>/[<groupby value>/...]``, where the module path is the
function's source file relative to the project folder, without ``.py`` (the seed's layout:
``pipeline/train.py`` gives ``pipeline/train``). Functions whose source is elsewhere still get a
stable, documented place instead of an error:

* a module imported from outside the project folder: ``_modules/<dotted.module.path>``;
* a script run from outside the project folder: ``_scripts/<file name>``;
* a REPL, a notebook cell, ``python -c`` or ``exec`` (no source file): ``_interactive``.
"""

import inspect
import os
from typing import Callable, List, Sequence

from .errors import ConfigError

OUTSIDE_PROJECT_MODULES = "_modules"
OUTSIDE_PROJECT_SCRIPTS = "_scripts"
INTERACTIVE = "_interactive"
MAX_FOLDER_NAME_BYTES = 255


def _source_file(func: Callable) -> str:
    """The file that defines ``func`` itself, looking through wrapper decorators
    (``functools.wraps`` sets ``__wrapped__``): otherwise every function wrapped by one helper
    decorator would land in that helper's folder and share its store."""
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    filename = code.co_filename if code is not None else ""
    if filename and filename.endswith(".py") and os.path.isfile(filename):
        return os.path.abspath(filename)
    return ""


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


def module_parts(func: Callable, project_path: str) -> List[str]:
    """Folder names between the project root and the function's folder."""
    source = _source_file(func)
    if not source:
        return [INTERACTIVE]
    for path, folder in ((source, project_path),
                         (os.path.realpath(source), os.path.realpath(project_path))):
        if _inside(path, folder):
            relative = os.path.relpath(os.path.splitext(path)[0], folder)
            return relative.split(os.sep)
    module = getattr(func, "__module__", None) or "__main__"
    if module != "__main__":
        return [OUTSIDE_PROJECT_MODULES, module]
    return [OUTSIDE_PROJECT_SCRIPTS, os.path.splitext(os.path.basename(source))[0]]


def function_folder_name(func: Callable) -> str:
    """``__qualname__`` (``Class.method`` for methods), made a plain folder name."""
    name = getattr(func, "__qualname__", None) or func.__name__
    return name.replace("<locals>", "locals").replace("<lambda>", "lambda").replace(os.sep, "_")


def check_folder_name(name: str, argument: str) -> str:
    """Reject groupby values that would not be a single, safe folder name."""
    problem = None
    if name in ("", ".", ".."):
        problem = "is empty, '.' or '..'"
    elif "/" in name or "\0" in name or (os.altsep and os.altsep in name):
        problem = "contains '/' or a NUL character"
    elif any("\ud800" <= c <= "\udfff" for c in name):
        # os.mkdir accepts some (surrogateescape) but LMDB encodes paths strictly: the folder
        # would be made, the result computed, and then the store could not be opened.
        problem = "contains a lone surrogate character (not text a file name can hold)"
    elif len(name.encode("utf-8")) > MAX_FOLDER_NAME_BYTES:
        problem = f"is longer than {MAX_FOLDER_NAME_BYTES} bytes"
    if problem:
        raise ConfigError(
            f"groupby argument {argument!r} has the value {name[:80]!r}, which {problem} and so "
            "cannot name a cache folder. Pass a value whose text is a plain folder name, or "
            "remove the argument from groupby."
        )
    return name


def leaf_folder(function_folder: str, groupby: Sequence, folder_names: Sequence[str]) -> str:
    for spec, name in zip(groupby, folder_names):
        check_folder_name(name, "$$".join(spec) if isinstance(spec, tuple) else spec)
    return os.path.join(function_folder, *folder_names)
