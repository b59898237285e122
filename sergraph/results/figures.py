"""Figures of a report: confusion matrices, UA per fold, WA/UA against graph.k.

Drawn on matplotlib's Agg canvas directly (no pyplot state, no GUI backend: safe on a cluster
node) and written atomically as PNG. :mod:`sergraph.results.report` decides what is drawn.
"""

from __future__ import annotations

import itertools
from io import BytesIO
from pathlib import Path

import numpy as np

from sergraph.io import atomic_write_bytes


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
    """Grouped bars: UA (%) per fold (averaged over seeds), one bar per label."""
    speakers: dict[int, str] = {}
    for item in collected:
        for fold, test_speakers in item["fold_ua"]:
            speakers.setdefault(fold, test_speakers)
    folds = sorted(speakers)
    width = 0.8 / len(collected)
    figure = new_figure(max(6.0, 0.35 * len(folds) * len(collected) + 2.0), 4.0)
    axes = figure.add_subplot()
    for index, item in enumerate(collected):
        by_fold = {fold: ua for (fold, _), ua in item["fold_ua"].items()}
        positions = [folds.index(f) + (index - (len(collected) - 1) / 2) * width for f in by_fold]
        axes.bar(
            positions,
            [100 * ua for ua in by_fold.values()],
            width=width,
            label=f"{item['label']} (mean {100 * np.mean(list(by_fold.values())):.1f})",
        )
    short = all(len(speakers[f]) <= 12 for f in folds)
    axes.set_xticks(range(len(folds)), [f"{f}\n{speakers[f]}" if short else str(f) for f in folds])
    axes.set_xlabel("fold (test speakers)" if short else "fold")
    axes.set_ylabel("UA (%)")
    axes.set_ylim(0, 100)
    axes.set_title("UA per speaker-held-out fold (averaged over seeds)", fontsize=10)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def plot_k(groups: list[dict], rows: dict[str, dict]):
    """Pooled WA and UA (%) against graph.k, one pair of lines per group of labels."""
    figure = new_figure(5.5, 4.0)
    axes = figure.add_subplot()
    for number, group in enumerate(groups):
        ks = sorted(set(group["k"]))
        prefix = f"{' / '.join(group['labels'])}: " if len(groups) > 1 else ""
        for metric, style in (("wa", "s--"), ("ua", "o-")):
            # Labels sharing a k have the same configuration; plot their mean.
            values = [
                100
                * np.mean(
                    [
                        rows[label][f"pooled_{metric}"]
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
                label=f"{prefix}{metric.upper()}",
                color=f"C{2 * number + (metric == 'ua')}",
            )
            for k, value in zip(ks, values, strict=True):
                axes.annotate(
                    f"{value:.2f}",
                    (k, value),
                    textcoords="offset points",
                    xytext=(0, 7 if metric == "ua" else -13),  # apart when WA ~ UA
                    ha="center",
                    fontsize=8,
                    color=line[0].get_color(),
                )
    axes.margins(x=0.1, y=0.2)  # room for the printed values
    axes.set_xticks(sorted({k for group in groups for k in group["k"]}))
    axes.set_xlabel("k (temporal neighbours per node)")
    axes.set_ylabel("pooled accuracy (%)")
    axes.set_title("WA and UA (pooled over folds) against k", fontsize=10)
    axes.legend(fontsize=8)
    return figure


def plot_sweep(key: str, points: list[tuple[float, dict, float]]):
    """UA (%) against the one numeric key of a grid: each fold's UA (seeds averaged) as a point,
    the pooled UA of each grid point as a line. ``points``: (value, fold -> UA, pooled UA)."""
    figure = new_figure(5.5, 4.0)
    axes = figure.add_subplot()
    points = sorted(points, key=lambda point: point[0])
    for value, fold_ua, _ in points:
        axes.scatter(
            [value] * len(fold_ua),
            [100 * ua for ua in fold_ua.values()],
            color="C0",
            alpha=0.5,
            s=14,
            label="a fold's UA (seeds averaged)" if value == points[0][0] else None,
        )
    axes.plot(
        [value for value, _, _ in points],
        [100 * pooled for _, _, pooled in points],
        "o-",
        color="C1",
        label="pooled UA",
    )
    axes.set_xticks([value for value, _, _ in points])
    axes.set_xlabel(key)
    axes.set_ylabel("UA (%)")
    axes.margins(x=0.1, y=0.1)
    axes.set_title(f"UA against {key} (one point per fold)", fontsize=10)
    axes.legend(fontsize=8)
    return figure
