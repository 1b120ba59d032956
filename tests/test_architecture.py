"""The layering the code promises (README "Layout"), checked on the source itself.

- ``engine/`` is the storage engine: it never imports the API layer (``persist_to_disk``
  above it), so a second storage tier can stand behind the same interface and the engine can
  be read, tested and replaced on its own.
- Nothing above the engine imports ``lmdb``: the API layer and the command line reach storage
  only through the engine's interface (``engine/interface.py``), and see only its errors.
- The engine's messages name no tool or setting of the layer above (``ptd verify``,
  ``config.ini``, ``set_shared``): those words reach it through ``EngineSettings.wording``.
- ``engine/`` is packaged as ``persist_to_disk.engine`` without a symbolic link (which Windows
  checkouts and some packaging tools break on): a wheel built from the tree holds it there.
- ``remote/`` is the second tier (S3-compatible storage behind the local one), packaged as
  ``persist_to_disk.remote`` the same way: it may stand on the engine (its interface, records
  and errors) but never imports the API layer, and imports boto3 and redis only when a remote
  is used, so the core install and a process that only hits locally never load them.
"""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
ENGINE = REPOSITORY / "engine"
REMOTE = REPOSITORY / "remote"
API = REPOSITORY / "persist_to_disk"
#: Words of the API layer and its command line that engine messages must not spell.
API_WORDS = ("ptd ", "config.ini", "set_shared", "set_persist_path", "PERSIST_TO_DISK_",
             "import-pkl", "persist_path")


def python_files(folder: Path) -> List[Path]:
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


def imports_of(path: Path) -> Iterator[Tuple[int, str, int]]:
    """``(line, imported module, relative level)`` of every import in a file, nested ones
    (inside functions) included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or "", node.level


def message_strings(path: Path) -> Iterator[Tuple[int, str]]:
    """String literals of a file that are not docstrings: the text of its messages."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings):
            yield node.lineno, node.value


def test_the_engine_never_imports_the_api_layer():
    offenders = []
    for path in python_files(ENGINE):
        depth = len(path.relative_to(ENGINE).parts) - 1  # levels of packages inside engine/
        for line, module, level in imports_of(path):
            escapes = level > depth + 1  # `from .. import x` in engine/*.py leaves the engine
            absolute_api = level == 0 and (module == "persist_to_disk" or (
                module.startswith("persist_to_disk.")
                and not module.startswith("persist_to_disk.engine")))
            if escapes or absolute_api:
                offenders.append(f"{path.relative_to(REPOSITORY)}:{line} imports "
                                 f"{'.' * level}{module}")
    assert offenders == []


def test_the_shared_tier_stands_on_the_engine_and_never_imports_the_api_layer():
    offenders = []
    for path in python_files(REMOTE):
        depth = len(path.relative_to(REMOTE).parts) - 1
        for line, module, level in imports_of(path):
            # `from ..engine.x import y` is the one way out of remote/
            outside = level == depth + 2 and not (module == "engine"
                                                  or module.startswith("engine."))
            absolute_api = level == 0 and (module == "persist_to_disk" or (
                module.startswith("persist_to_disk.") and not module.startswith(
                    ("persist_to_disk.engine", "persist_to_disk.remote"))))
            if level > depth + 2 or outside or absolute_api:
                offenders.append(f"{path.relative_to(REPOSITORY)}:{line} imports "
                                 f"{'.' * level}{module}")
    assert offenders == []


def test_boto3_and_redis_are_imported_only_inside_the_functions_that_use_them():
    offenders = []
    for folder in (API, ENGINE, REMOTE):
        for path in python_files(folder):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in tree.body:  # module level only
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    if name.split(".")[0] in ("boto3", "botocore", "redis"):
                        offenders.append(f"{path.relative_to(REPOSITORY)}:{node.lineno}")
    assert offenders == []


def test_using_the_package_without_a_remote_loads_neither_boto3_nor_the_shared_tier(tmp_path):
    code = ("import sys, persist_to_disk as ptd\n"
            "ptd.config.set_persist_path(sys.argv[1])\n"
            "@ptd.persistf()\n"
            "def f(x):\n    return x\n"
            "f(1); f(1)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', "
            "'redis') or m.startswith('persist_to_disk.remote.')))\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")],
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "PERSIST_TO_DISK_HOME":
                                 str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_nothing_above_the_engine_imports_lmdb():
    offenders = []
    for folder in (API, REPOSITORY / "tools", REPOSITORY / "examples"):
        if not folder.exists():
            continue
        for path in python_files(folder):
            for line, module, level in imports_of(path):
                if level == 0 and (module == "lmdb" or module.startswith("lmdb.")):
                    offenders.append(f"{path.relative_to(REPOSITORY)}:{line}")
    assert offenders == []


def test_engine_messages_name_no_tool_or_setting_of_the_api_layer():
    offenders = []
    for path in python_files(ENGINE):
        if path.name == "settings.py":  # the neutral defaults of the wording live there
            continue
        for line, text in message_strings(path):
            for word in API_WORDS:
                if word in text:
                    offenders.append(f"{path.relative_to(REPOSITORY)}:{line} says {word!r}")
    assert offenders == []


def test_the_package_folders_hold_no_symbolic_links():
    links = [str(path.relative_to(REPOSITORY)) for folder in (API, ENGINE, REMOTE)
             for path in folder.rglob("*") if path.is_symlink()]
    assert links == []


def test_the_engine_imports_as_persist_to_disk_engine_from_any_folder(tmp_path):
    code = ("import persist_to_disk.engine as engine, persist_to_disk.engine.store as store; "
            "print(engine.Store is store.Store)")
    result = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.slow
def test_a_wheel_built_from_the_tree_holds_the_engine_inside_the_package(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source / name)
    for folder in ("persist_to_disk", "engine", "remote"):
        shutil.copytree(REPOSITORY / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("persist_to_disk-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "persist_to_disk/engine/__init__.py" in names
    assert "persist_to_disk/engine/store.py" in names
    assert "persist_to_disk/remote/tiered.py" in names
    assert not [name for name in names if name.startswith(("engine/", "remote/"))]
