"""The recall@N curves plot (``netvlad evaluate --plot``, ``netvlad plot``, the demo): one plotter, and
the curve of a saved ``evaluate --report``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from netvlad._atomic import atomic_write
from netvlad._outputs import png_text

#: tEXt entry of every plot `plot_recall_curves` writes: what lets a later run recognise and replace it.
PLOT_TAG = ("netvlad", "recall@N curves")

Curves = Mapping[str, Mapping[int, float]] | Sequence[tuple[str, Sequence[int], Sequence[float]]]


def _as_triples(curves: Curves) -> list[tuple[str, list[int], list[float]]]:
    if isinstance(curves, Mapping):
        return [(label, sorted(rec), [rec[n] for n in sorted(rec)]) for label, rec in curves.items()]
    return [(label, list(ns), list(vals)) for label, ns, vals in curves]


def plot_recall_curves(curves: Curves, out: str | Path, title: str = "recall@N") -> Path:
    """Write recall@N curves to a PNG (matplotlib's Agg backend; atomic; tagged with `PLOT_TAG`).

    Args:
        curves: {label: {N: recall fraction}}, or (label, Ns, fractions) triples; one line each.
        out: the PNG file.
        title: the plot's title.

    Returns:
        `out` as a Path.
    """
    import matplotlib  # imported when plotting only: it costs a noticeable part of a second

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for label, ns, vals in _as_triples(curves):
        ax.plot(ns, [100 * v for v in vals], marker="o", markersize=3, label=label)
    ax.set_xlabel("N (number of top retrieved database images)")
    ax.set_ylabel("recall@N (%)")
    ax.set_title(title)
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", metadata=dict([PLOT_TAG])),
                     suffix=".tmp.png")
    finally:
        plt.close(fig)
    return Path(out)


def is_recall_plot(path: str | Path) -> bool:
    """A PNG written by `plot_recall_curves` (its `PLOT_TAG`)."""
    return png_text(path).get(PLOT_TAG[0]) == PLOT_TAG[1]


def read_report_curve(path: str | Path) -> tuple[str, list[int], list[float]]:
    """The recall@N curve of a report written by ``netvlad evaluate --report`` (what ``netvlad plot`` draws).

    Args:
        path: the JSON report.

    Returns:
        (label: the report's, else the file's stem; Ns ascending; recall fractions), a triple
        `plot_recall_curves` takes.

    Raises:
        FileNotFoundError: no such file. ValueError: not an evaluate report (no 'recall' object).
    """
    path = Path(path)
    try:
        rep = json.loads(path.read_text())
        recall = rep["recall"]
        ns = sorted(int(n) for n in recall)
        return rep.get("label") or path.stem, ns, [float(recall[str(n)]) for n in ns]
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: report not found") from exc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not an evaluate report (needs a 'recall' object): {exc}") from exc
