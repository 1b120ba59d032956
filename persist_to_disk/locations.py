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
from typing import Callable, List, Optional, Sequence

from .errors import ConfigError
from .keying import _module_name
from .normalization import escape_folder_name

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


def _parts_inside_project(source: str, project_path: str) -> Optional[List[str]]:
    """The path of the source file relative to the project folder, without ``.py``, as folder
    names (``['pipeline', 'train']``); None if the file is not inside the project folder."""
    for path, folder in ((source, project_path),
                         (os.path.realpath(source), os.path.realpath(project_path))):
        if _inside(path, folder):
            relative = os.path.relpath(os.path.splitext(path)[0], folder)
            return relative.split(os.sep)
    return None


def function_name(func: Callable, project_path: str) -> str:
    """``<module>.<qualname>``, the name recorded with a function's stores (``ptd ls``,
    ``ptd stats NAME``).

    A script run as ``python pipeline/train.py`` is the module ``__main__`` to Python, and
    ``__main__`` says nothing about which script it was; when the script's file is inside the
    project folder it is named by its path there instead (``pipeline.train``), the module
    ``python -m pipeline.train`` or an import from the project folder gives, and the path its
    cache folder already has. A script outside the project keeps ``__main__``.
    """
    module = _module_name(getattr(func, "__module__", None) or "__main__")
    if module == "__main__":
        source = _source_file(func)
        parts = _parts_inside_project(source, project_path) if source else None
        if parts:
            module = ".".join(parts)
    return f"{module}.{func.__qualname__}"


def module_parts(func: Callable, project_path: str) -> List[str]:
    """Folder names between the project root and the function's folder."""
    source = _source_file(func)
    if not source:
        return [INTERACTIVE]
    parts = _parts_inside_project(source, project_path)
    if parts is not None:
        return parts
    module = _module_name(getattr(func, "__module__", None) or "__main__")
    if module not in ("__main__", "__mp_main__"):  # (a spawn worker imports the script as
        return [OUTSIDE_PROJECT_MODULES, module]   # __mp_main__: the same script's folder)
    return [OUTSIDE_PROJECT_SCRIPTS, os.path.splitext(os.path.basename(source))[0]]


def function_folder_name(func: Callable) -> str:
    """``__qualname__`` (``Class.method`` for methods), made a plain folder name."""
    name = getattr(func, "__qualname__", None) or func.__name__
    return name.replace("<locals>", "locals").replace("<lambda>", "lambda").replace(os.sep, "_")


def check_folder_name(name: str, argument: str) -> str:
    """The leaf folder name of the groupby text ``name`` (escaped off the store's own file
    names: :func:`~.normalization.escape_folder_name`); ``ConfigError`` for texts that would not
    be a single, safe folder name."""
    folder = escape_folder_name(name)
    problem = None
    if name in ("", ".", ".."):
        problem = "is empty, '.' or '..'"
    elif "/" in name or "\0" in name or (os.altsep and os.altsep in name):
        problem = "contains '/' or a NUL character"
    elif any("\ud800" <= c <= "\udfff" for c in name):
        # os.mkdir accepts some (surrogateescape) but LMDB encodes paths strictly: the folder
        # would be made, the result computed, and then the store could not be opened.
        problem = "contains a lone surrogate character (not text a file name can hold)"
    elif len(folder.encode("utf-8")) > MAX_FOLDER_NAME_BYTES:
        problem = (f"is longer than {MAX_FOLDER_NAME_BYTES} bytes" if folder == name else
                   f"is, as the folder name {folder[:80]!r}, longer than "
                   f"{MAX_FOLDER_NAME_BYTES} bytes")
    if problem:
        raise ConfigError(
            f"groupby argument {argument!r} has the value {name[:80]!r}, which {problem} and so "
            "cannot name a cache folder. Pass a value whose text is a plain folder name, or "
            "remove the argument from groupby."
        )
    return folder


def leaf_folder(function_folder: str, groupby: Sequence, folder_names: Sequence[str]) -> str:
    """The store folder of a call whose groupby values have the texts ``folder_names``."""
    return os.path.join(function_folder, *(
        check_folder_name(name, "$$".join(spec) if isinstance(spec, tuple) else spec)
        for spec, name in zip(groupby, folder_names)))
