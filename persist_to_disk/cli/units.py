"""Human sizes and durations, in and out: ``500MB``, ``2GiB``, ``30d``, ``12h``.

Sizes: ``B``, decimal ``kB``/``KB``/``MB``/``GB``/``TB`` (powers of 1000), binary
``KiB``/``MiB``/``GiB``/``TiB`` (powers of 1024), and bare ``K``/``M``/``G``/``T`` as ``du``
and ``ls -h`` read them (1024). Durations: ``s``, ``m`` (minutes), ``h``, ``d``, ``w``, combined
(``1d12h``); a bare number is bytes or seconds.
"""

import argparse
import datetime
import math
import re

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
    "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4,
    "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4,
}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*\Z")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``500MB``, ``2GiB``, ``1.5G``, ``4096``)."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; write a number with an optional unit, for example 500MB, "
            "2GiB or 1.5G (units: B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB and "
            "K, M, G, T = powers of 1024)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``30d``, ``12h``, ``1d12h``, ``90m``, ``3600``)."""
    text = str(text).strip()
    total, position = 0.0, 0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        unit = match.group(2).lower() if match else None
        if unit == "" and match and match.end() == len(text):
            unit = "s"
        if unit not in _DURATION_UNITS:
            total = None
            break
        total += float(match.group(1)) * _DURATION_UNITS[unit]
        position = match.end()
    if not text or total is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write for example 30d, 12h, 1d12h, 90m or 45s "
            "(units: s, m = minutes, h, d, w)")
    return total


def format_bytes(count: float) -> str:
    """``1.5 MiB``: binary units, as the sizes of files are usually shown."""
    count = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{int(count)} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_seconds(seconds: float) -> str:
    """``3.2 s``, ``4 min 10 s``, ``2 h 5 min``, ``3 d 4 h``."""
    if not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_time(timestamp) -> str:
    """Local date and time to the second, or ``-`` for none."""
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(timestamp):
    """ISO 8601 with the UTC offset, for ``--json`` (None stays None)."""
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")
