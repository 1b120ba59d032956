"""Printing results: aligned tables for people, JSON for scripts."""

import json
import sys
from typing import Any, List, Sequence


def table(headers: Sequence[str], rows: List[Sequence[Any]], right: Sequence[str] = ()) -> str:
    """Columns padded to their widest cell; columns named in ``right`` (numbers) right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(width) if headers[i] in right else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def print_json(document: Any, stream=None) -> None:
    json.dump(document, stream or sys.stdout, indent=2, sort_keys=False, default=str)
    (stream or sys.stdout).write("\n")


def warn(message: str) -> None:
    """A line for the user about one item that went wrong (stderr, so stdout stays parseable)."""
    print(message, file=sys.stderr)


def paragraph(text: str, width: int = 79) -> str:
    """A help description wrapped to the terminal's usual width (the parsers keep their
    examples as written, so descriptions are wrapped here)."""
    import textwrap
    return textwrap.fill(" ".join(text.split()), width)


def counted(reasons: dict) -> str:
    """``{"reason": n}`` as ``"n reason, m other reason"`` (sorted by reason)."""
    return ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
