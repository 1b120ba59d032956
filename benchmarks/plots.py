"""PNG plots of the growth scenario: cost per call against entries stored, log axes, one line
per library (a library skipped from some size on ends its line there, and says so)."""

import os
from typing import Dict, List

from .adapters import adapter_class
from .measurements import Results, Skip
from .scenarios.growth import NAME as GROWTH, size_label
from .settings import Settings

PLOTS = {"hit_us": "growth: hit cost per call", "miss_us": "growth: miss cost per call"}


def growth_plots(results: Results, settings: Settings, libraries: List[str],
                 out: str) -> Dict[str, str]:
    """Write one PNG per metric into ``out``; return ``{title: path}``."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    sizes = sorted(settings.growth_sizes)
    written = {}
    for metric, title in PLOTS.items():
        figure, axes = pyplot.subplots(figsize=(8, 5.5))
        for library in libraries:
            points = [(s, results.median(GROWTH, library, metric, {"size": s})) for s in sizes]
            points = [(s, v) for s, v in points if v is not None]
            if not points:
                continue
            adapter = adapter_class(library)
            name = adapter.label
            missing = [s for s in sizes if s > points[-1][0]]
            if missing and isinstance(results.outcome(GROWTH, library, metric,
                                                      {"size": missing[0]}), Skip):
                name += f" (skipped from {size_label(missing[0])})"
            axes.plot(*zip(*points), marker="o", label=name,
                      linewidth=2.6 if adapter.subject else 1.5,
                      linestyle="--" if adapter.floor else "-")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(sizes, [size_label(s) for s in sizes])
        axes.set_xlabel("entries stored")
        axes.set_ylabel("µs per call (median)")
        axes.set_title(title.split(": ", 1)[1].capitalize() + " against entries stored")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        path = os.path.join(out, f"growth_{metric.split('_')[0]}.png")
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
        written[title] = path
    return written
