"""Progress bars for long operations: tqdm on a terminal, nothing in a pipe or a log file.

tqdm is optional (``pip install "persist_to_disk[tools]"``); without it commands run silently
until they print their result.
"""

import contextlib
import sys
from typing import Callable, Iterator, Optional


def _wanted(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "records", total: Optional[int] = None,
                 stream=None) -> Iterator[Callable[[int], None]]:
    """Yield ``update(count)``, which advances a bar on ``stream`` (stderr) if it is a terminal
    and tqdm can be imported, and does nothing otherwise."""
    stream = stream if stream is not None else sys.stderr
    bar = None
    if _wanted(stream):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(desc=description, unit=unit, total=total, file=stream, leave=False,
                       dynamic_ncols=True)
    try:
        yield bar.update if bar is not None else _ignore
    finally:
        if bar is not None:
            bar.close()


def _ignore(count: int) -> None:
    pass
