"""Figures of a report: confusion matrices, the primary metric (UA) per fold, every metric
against graph.k.

Drawn on matplotlib's Agg canvas directly (no pyplot state, no GUI backend: safe on a cluster
node) and written atomically as PNG. :mod:`sergraph.results.report` decides what is drawn.
"""

from __future__ import annotations

import itertools
from io import BytesIO
from pathlib import Path

import numpy as np

from sergraph.io import atomic_write_bytes
from sergraph.metrics import METRICS, primary


def new_figure(width: float, height: float):
    # Figure + the Agg canvas directly: no pyplot state, no GUI backend, safe on a cluster node.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path: Path) -> Path:
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=150)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_confusion(confusion, classes: list[str], title: str):
    """Row-normalised confusion matrix (rows = true) with the value printed in each cell."""
    counts = np.asarray(confusion, dtype=float)
    support = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(support > 0, counts / support, np.nan)
    size = 1.5 + 0.9 * len(classes)
    figure = new_figure(size + 1.8, size)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(
        range(len(classes)),
        [f"{c} ({int(n)})" for c, n in zip(classes, support[:, 0], strict=True)],
    )
    axes.set_xlabel("predicted")
    axes.set_ylabel("true (utterances)")
    axes.set_title(title, fontsize=10)
    for i, j in itertools.product(range(len(classes)), repeat=2):
        value = rates[i, j]
        axes.text(
            j,
            i,
            "–" if np.isnan(value) else f"{value:.2f}",
            ha="center",
            va="center",
            color="white" if value > 0.5 else "black",
        )
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    return figure


def plot_folds(collected: list[dict]):
    """Grouped bars: the primary metric (UA, %) per fold (averaged over seeds), one bar per
    label."""
    shown = primary().display
    speakers: dict[int, str] = {}
    for item in collected:
        for fold, test_speakers in item["fold_scores"]:
            speakers.setdefault(fold, test_speakers)
    folds = sorted(speakers)
    width = 0.8 / len(collected)
    figure = new_figure(max(6.0, 0.35 * len(folds) * len(collected) + 2.0), 4.0)
    axes = figure.add_subplot()
    for index, item in enumerate(collected):
        by_fold = {fold: score for (fold, _), score in item["fold_scores"].items()}
        positions = [folds.index(f) + (index - (len(collected) - 1) / 2) * width for f in by_fold]
        axes.bar(
            positions,
            [100 * score for score in by_fold.values()],
            width=width,
            label=f"{item['label']} (mean {100 * np.mean(list(by_fold.values())):.1f})",
        )
    short = all(len(speakers[f]) <= 12 for f in folds)
    axes.set_xticks(range(len(folds)), [f"{f}\n{speakers[f]}" if short else str(f) for f in folds])
    axes.set_xlabel("fold (test speakers)" if short else "fold")
    axes.set_ylabel(f"{shown} (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"{shown} per speaker-held-out fold (averaged over seeds)", fontsize=10)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


#: Line styles of the metrics in :func:`plot_k`, in registry order (cycled).
K_STYLES = ("s--", "o-", "^:", "d-.")


def plot_k(groups: list[dict], rows: dict[str, dict]):
    """Every metric, pooled (%), against graph.k: one line per metric and group of labels."""
    figure = new_figure(5.5, 4.0)
    axes = figure.add_subplot()
    metrics = list(METRICS.values())
    for number, group in enumerate(groups):
        ks = sorted(set(group["k"]))
        prefix = f"{' / '.join(group['labels'])}: " if len(groups) > 1 else ""
        for position, metric in enumerate(metrics):
            style = K_STYLES[position % len(K_STYLES)]
            # Labels sharing a k have the same configuration; plot their mean.
            values = [
                100
                * np.mean(
                    [
                        rows[label][f"pooled_{metric.name}"]
                        for label, k in zip(group["labels"], group["k"], strict=True)
                        if k == key
                    ]
                )
                for key in ks
            ]
            line = axes.plot(
                ks,
                values,
                style,
                label=f"{prefix}{metric.display}",
                color=f"C{(len(metrics) * number + position) % 10}",
            )
            for k, value in zip(ks, values, strict=True):
                axes.annotate(
                    f"{value:.2f}",
                    (k, value),
                    textcoords="offset points",
                    # alternately above and below the point: apart when two metrics are close
                    xytext=(0, 7 if position % 2 else -13),
                    ha="center",
                    fontsize=8,
                    color=line[0].get_color(),
                )
    axes.margins(x=0.1, y=0.2)  # room for the printed values
    axes.set_xticks(sorted({k for group in groups for k in group["k"]}))
    axes.set_xlabel("k (temporal neighbours per node)")
    names = ", ".join(metric.display for metric in metrics)
    axes.set_ylabel("pooled score (%)")
    axes.set_title(f"{names} (pooled over folds) against k", fontsize=10)
    axes.legend(fontsize=8)
    return figure


def plot_sweep(key: str, points: list[tuple[float, dict, float]]):
    """The primary metric (UA, %) against the one numeric key of a grid: each fold's score
    (seeds averaged) as a point, the pooled score of each grid point as a line. ``points``:
    (value, fold -> score, pooled score)."""
    shown = primary().display
    figure = new_figure(5.5, 4.0)
    axes = figure.add_subplot()
    points = sorted(points, key=lambda point: point[0])
    for value, by_fold, _ in points:
        axes.scatter(
            [value] * len(by_fold),
            [100 * score for score in by_fold.values()],
            color="C0",
            alpha=0.5,
            s=14,
            label=f"a fold's {shown} (seeds averaged)" if value == points[0][0] else None,
        )
    axes.plot(
        [value for value, _, _ in points],
        [100 * pooled for _, _, pooled in points],
        "o-",
        color="C1",
        label=f"pooled {shown}",
    )
    axes.set_xticks([value for value, _, _ in points])
    axes.set_xlabel(key)
    axes.set_ylabel(f"{shown} (%)")
    axes.margins(x=0.1, y=0.1)
    axes.set_title(f"{shown} against {key} (one point per fold)", fontsize=10)
    axes.legend(fontsize=8)
    return figure
