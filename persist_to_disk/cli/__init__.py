"""``ptd``: see, shrink and move a persist_to_disk cache from a shell, while jobs use it.

One module per command (``ls``, ``stats``, ``verify``, ``clear``, ``compact``, ``export-pkl``,
``import-pkl``, ``remote``), each with ``add_parser`` and ``run(args, storage) -> exit code``,
where ``storage`` is the configured local tier (``config.storage(remote=False)``: the trust
policy, the wording of messages and the check for 0.0.7 folders come with it) through which
commands reach stores. A command whose arguments set ``remote`` (``ptd remote ...``, ``ptd ls
--remote``) is given the shared tier instead (``config.storage()``); every other one works on
this machine's cache alone, so that a shared cache that is down or misconfigured never stops
local maintenance.
``tools/compact`` and ``tools/export_pkl`` call :func:`main` too, so every way of running a
command runs this code.
"""

import argparse
import sys
from typing import List, Optional

from ..errors import ConfigError, PersistError
from . import clear, compact, export_pkl, import_pkl, ls, remote, stats, verify
from .exit_codes import DESCRIPTION as EXIT_CODES
from .exit_codes import FAILURE, INTERRUPTED, OK, USAGE
from .targets import CommandError

COMMANDS = (ls, stats, verify, compact, clear, export_pkl, import_pkl, remote)

EPILOG = f"""\
examples:
  ptd ls                               what is cached, where, how big
  ptd stats train_a_model              one function: entries, versions, compute time stored
  ptd compact --older-than 30d         shrink every store, dropping results older than 30 days
  ptd verify || echo damaged           exit status 1 if anything cannot be read
  ptd clear train_a_model              delete a function's results (asks first)
  ptd export-pkl SRC DEST              to persist-to-disk 0.0.7 .pkl bucket files
  ptd import-pkl SRC DEST              from persist-to-disk 0.0.7 .pkl bucket files
  ptd remote status                    the shared cache: reachable? objects, bytes, pending
  ptd remote push                      upload this project's results the shared cache lacks
  ptd remote pull pipeline.train.fit   prefetch a function's shared results to this machine
  ptd ls --remote                      what the shared cache holds for this project
  ptd COMMAND --help                   options and examples of one command

The persist path is the configured one (persist_to_disk.config; PERSIST_TO_DISK_PERSIST_PATH or
~/.persist_to_disk/config.ini). Every command is safe while jobs read and write the cache.
Progress bars (tqdm) show on a terminal only.

{EXIT_CODES}
"""


class _Commands:
    """The subparsers action; with ``prog`` set, the one command registered is named after the
    executable that runs it (``tools/compact``) instead of ``ptd compact``."""

    def __init__(self, action, prog: Optional[str]) -> None:
        self.action, self.prog = action, prog

    def add_parser(self, name: str, **kwargs):
        if self.prog:
            kwargs["prog"] = self.prog
        return self.action.add_parser(name, **kwargs)


def build_parser(command: Optional[str] = None, prog: Optional[str] = None
                 ) -> argparse.ArgumentParser:
    """The ``ptd`` parser, or with ``command`` one named ``prog`` that parses that command."""
    parser = argparse.ArgumentParser(
        prog="ptd", description="Inspect, shrink, check and migrate persist_to_disk caches.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = _Commands(action, prog if command else None)
    for module in COMMANDS:
        if command is None or module.__name__.rsplit(".", 1)[-1] == command.replace("-", "_"):
            module.add_parser(commands)
    return parser


def main(argv: Optional[List[str]] = None, *, command: Optional[str] = None,
         prog: Optional[str] = None) -> int:
    """Run one ``ptd`` command; return its exit code (never raises for expected failures).

    ``command`` (with ``prog``, the executable's name) runs that command only, with ``argv``
    as its arguments: how ``tools/compact`` and ``tools/export_pkl`` call it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command, prog)
    try:
        args = parser.parse_args([command, *argv] if command else argv)
    except SystemExit as stop:  # --help (0) or a usage error (2): argparse has printed it
        return stop.code if isinstance(stop.code, int) else USAGE
    name = prog if command and prog else f"{parser.prog} {args.command}"
    try:
        # The settings are loaded even where a command is given a folder: the tier built
        # from them knows which folders to trust (`shared`), without which a team's cache is
        # refused.
        from .. import config
        return args.run(args, config.storage(remote=bool(getattr(args, "remote", False))))
    except CommandError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return err.code
    except ConfigError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return USAGE
    except BrokenPipeError:  # `ptd ls | head`: the reader has what it wanted
        _silence_stdout()
        return OK
    except (PersistError, OSError) as err:  # an untrusted folder, a damaged store, ...
        print(f"{name}: {type(err).__name__}: {err}", file=sys.stderr)
        return FAILURE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit does not fail again."""
    import os
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


__all__ = ["main", "build_parser", "OK", "FAILURE", "USAGE"]
