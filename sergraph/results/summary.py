"""Summaries of one variant: per-fold rows, mean +- std over folds and pooled scores of every
metric of :data:`sergraph.metrics.METRICS`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sergraph.io import atomic_write_json, atomic_write_text
from sergraph.metrics import METRICS, definitions, percent, pooled_scores
from sergraph.results.comparable import check_pooled
from sergraph.results.layout import CellPaths, finished_cells, read_predictions, summary_paths


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def fold_scores(metrics: dict) -> dict[str, float | None]:
    """Every registered metric of one cell's ``metrics.json``; ``None`` for one it does not
    record (a cell written before sergraph computed that metric)."""
    return {name: metrics.get(name) for name in METRICS}


def fold_statistics(rows: list[dict]) -> tuple[dict, dict]:
    """``(mean, sample std)`` over cells of every registered metric (rows: one dict per cell,
    :func:`fold_scores`). A metric some cell does not record is ``None`` in both: a mean over
    the other cells would describe other folds than the row says."""
    means, stds = {}, {}
    for name in METRICS:
        values = [row.get(name) for row in rows]
        if any(value is None for value in values):
            means[name] = stds[name] = None
        else:
            means[name], stds[name] = mean_std(values)
    return means, stds


def pooled_means(per_seed: list[dict]) -> dict[str, float]:
    """Every registered metric of the pooled predictions, averaged over seeds."""
    return {name: float(np.mean([p[name] for p in per_seed])) for name in METRICS}


def summarize(
    root: str | Path,
    classes: list[str] | None = None,
    folds: list[int] | None = None,
    write: bool = True,
) -> dict:
    """Collect ``metrics.json``/``predictions.csv`` of a model's folds; write summary.json/.md.

    Returns a dict with per-fold rows, the mean +- std over folds of every registered metric
    (sample std over all seed x fold cells; ``None`` for a metric that some cell's
    metrics.json does not record) and every metric pooled over every test prediction of each
    seed (averaged over seeds when there are several; computed from the predictions files, so
    also for cells written before a metric existed). ``folds``: only these fold indices (a
    subset report; then pass ``write=False`` to leave the variant's summary files alone).
    """
    root = Path(root)
    cells = finished_cells(root)  # verified: a damaged file stops here, naming it
    if not cells:
        raise FileNotFoundError(f"no finished folds (metrics.json) under {root}")
    check_pooled(root, [c for c in cells if folds is None or int(c[1]["fold"]) in folds])
    rows, pooled, folders, protocols, overlapping = [], [], {}, {}, False
    for directory, metrics in cells:
        if folds is not None and int(metrics["fold"]) not in folds:
            continue
        overlapping |= metrics.get("speaker_independent", True) is False
        classes = classes or metrics["classes"]
        folders[(metrics["seed"], metrics["fold"])] = directory
        protocol = metrics.get("protocol") or saved_protocol(CellPaths(directory).config)
        protocols[json.dumps(protocol, sort_keys=True)] = protocol
        rows.append(
            {
                "seed": metrics["seed"],
                "fold": metrics["fold"],
                "test_speakers": ",".join(metrics["test_speakers"]),
                "n": metrics["n_test"],
                **fold_scores(metrics),
            }
        )
    if not rows:
        raise FileNotFoundError(f"no finished cell of folds {folds} under {root}")
    folds = pd.DataFrame(rows)
    for seed, group in folds.groupby("seed"):
        predictions = pd.concat(read_predictions(folders[(seed, fold)]) for fold in group["fold"])
        pooled.append(
            pooled_scores(predictions, classes) | {"seed": int(seed), "n": len(predictions)}
        )
    fold_mean, fold_std = fold_statistics(rows)
    summary = {
        "model": root.name,
        "classes": classes,
        "protocol": protocols.popitem()[1] if len(protocols) == 1 else mixed_protocol(protocols),
        "folds": rows,  # as recorded: a metric a cell does not record stays None (null)
        "fold_mean": fold_mean,
        "fold_std": fold_std,
        "pooled": {**pooled_means(pooled), "per_seed": pooled},
    }
    if overlapping:  # predefined folds with folds.allow_speaker_overlap=true
        summary["speaker_independent"] = False
    if write:
        summary_json, summary_md = summary_paths(root)
        atomic_write_json(summary_json, summary)
        atomic_write_text(summary_md, format_summary(summary))
    return summary


def saved_protocol(config_path: Path) -> dict:
    """The protocol of a cell made before cells recorded it, from its saved config.yaml."""
    from omegaconf import OmegaConf

    from sergraph.config import protocol_of
    from sergraph.data.protocol import protocol_record

    try:
        cfg = OmegaConf.load(config_path)
        name = protocol_of(cfg)
        enrollment = OmegaConf.select(cfg, "eval.enrollment", default=None)
        seed = OmegaConf.select(cfg, "eval.enrollment_seed", default=0)
    except Exception:  # noqa: BLE001 - no or an unreadable config: say so
        return {"name": "unknown", "note": "protocol not recorded"}
    return protocol_record(name, enrollment, seed)


def mixed_protocol(protocols: dict) -> dict:
    names = sorted({p["name"] for p in protocols.values()})
    return {"name": "mixed", "note": f"MIXED protocols across cells ({', '.join(names)})"}


#: The note under a table with a "–": a metric some cells do not record.
NOT_RECORDED = (
    "–: not recorded in the metrics.json of some cells (written before sergraph computed that "
    "metric); pooled scores are computed from the predictions files and cover every metric."
)


def format_summary(summary: dict) -> str:
    """A Markdown table: one row per fold, then mean +- std over folds and pooled."""
    names = list(METRICS)
    lines = [
        f"## {summary['model']}: speaker-held-out results (%)",
        "",
        f"Protocol: {summary['protocol']['note']}.",
        "",
        "| seed | fold | test speakers | n | "
        + " | ".join(m.display for m in METRICS.values())
        + " |",
        "| ---: | ---: | --- | ---: |" + " ---: |" * len(names),
    ]
    for row in summary["folds"]:
        lines.append(
            f"| {row['seed']} | {row['fold']} | {row['test_speakers']} | {row['n']} | "
            + " | ".join(percent(row.get(name)) for name in names)
            + " |"
        )
    mean, std = summary["fold_mean"], summary["fold_std"]
    n_pooled = sum(p["n"] for p in summary["pooled"]["per_seed"])
    lines += [
        "| | mean ± std over folds | | | "
        + " | ".join(percent(mean.get(name), std.get(name)) for name in names)
        + " |",
        f"| | pooled over all test predictions | | {n_pooled} | "
        + " | ".join(percent(summary["pooled"].get(name)) for name in names)
        + " |",
        "",
        f"{definitions()}.",
        "",
    ]
    if any(row.get(name) is None for row in summary["folds"] for name in names):
        lines += [NOT_RECORDED, ""]
    if summary.get("speaker_independent", True) is False:
        lines += [
            "NOT speaker-independent: these folds let test speakers appear in training "
            "(folds.allow_speaker_overlap=true).",
            "",
        ]
    return "\n".join(lines)
