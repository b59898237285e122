"""Summaries of one variant: per-fold rows, mean +- std over folds, pooled WA/UA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sergraph.io import atomic_write_json, atomic_write_text
from sergraph.metrics import pooled_scores


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(root: str | Path, classes: list[str] | None = None) -> dict:
    """Collect ``metrics.json``/``predictions.csv`` of a model's folds; write summary.json/.md.

    Returns a dict with per-fold rows, the mean +- std over folds of WA and UA (sample std over
    all seed x fold cells) and WA/UA pooled over every test prediction of each seed (averaged
    over seeds when there are several).
    """
    root = Path(root)
    cells = sorted(root.glob("seed-*/fold-*/metrics.json"))
    if not cells:
        raise FileNotFoundError(f"no finished folds (metrics.json) under {root}")
    rows, pooled, overlapping = [], [], False
    for path in cells:
        metrics = json.loads(path.read_text())
        overlapping |= metrics.get("speaker_independent", True) is False
        classes = classes or metrics["classes"]
        rows.append(
            {
                "seed": metrics["seed"],
                "fold": metrics["fold"],
                "test_speakers": ",".join(metrics["test_speakers"]),
                "n": metrics["n_test"],
                "wa": metrics["wa"],
                "ua": metrics["ua"],
            }
        )
    folds = pd.DataFrame(rows)
    for seed, group in folds.groupby("seed"):
        predictions = pd.concat(
            pd.read_csv(root / f"seed-{seed}" / f"fold-{fold:02d}" / "predictions.csv")
            for fold in group["fold"]
        )
        pooled.append(
            pooled_scores(predictions, classes) | {"seed": int(seed), "n": len(predictions)}
        )
    wa_mean, wa_std = mean_std(folds["wa"])
    ua_mean, ua_std = mean_std(folds["ua"])
    summary = {
        "model": root.name,
        "classes": classes,
        "folds": folds.to_dict(orient="records"),
        "fold_mean": {"wa": wa_mean, "ua": ua_mean},
        "fold_std": {"wa": wa_std, "ua": ua_std},
        "pooled": {
            "wa": float(np.mean([p["wa"] for p in pooled])),
            "ua": float(np.mean([p["ua"] for p in pooled])),
            "per_seed": pooled,
        },
    }
    if overlapping:  # predefined folds with folds.allow_speaker_overlap=true
        summary["speaker_independent"] = False
    atomic_write_json(root / "summary.json", summary)
    atomic_write_text(root / "summary.md", format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """A Markdown table: one row per fold, then mean +- std over folds and pooled."""
    lines = [
        f"## {summary['model']}: speaker-held-out results (%)",
        "",
        "| seed | fold | test speakers | n | WA | UA |",
        "| ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in summary["folds"]:
        lines.append(
            f"| {row['seed']} | {row['fold']} | {row['test_speakers']} | {row['n']} | "
            f"{100 * row['wa']:.2f} | {100 * row['ua']:.2f} |"
        )
    mean, std = summary["fold_mean"], summary["fold_std"]
    n_pooled = sum(p["n"] for p in summary["pooled"]["per_seed"])
    lines += [
        f"| | mean ± std over folds | | | {100 * mean['wa']:.2f} ± {100 * std['wa']:.2f} | "
        f"{100 * mean['ua']:.2f} ± {100 * std['ua']:.2f} |",
        f"| | pooled over all test predictions | | {n_pooled} | {100 * summary['pooled']['wa']:.2f} | "
        f"{100 * summary['pooled']['ua']:.2f} |",
        "",
        "WA = accuracy over utterances; UA = mean recall over classes present in the targets.",
        "",
    ]
    if summary.get("speaker_independent", True) is False:
        lines += [
            "NOT speaker-independent: these folds let test speakers appear in training "
            "(folds.allow_speaker_overlap=true).",
            "",
        ]
    return "\n".join(lines)
