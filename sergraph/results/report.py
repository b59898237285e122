"""Tables, paired tests and figures from the results files of one or more study variants.

``RUN_DIR`` is either one variant (it holds ``seed-<s>/fold-<XX>/metrics.json`` itself) or a
folder of variants (``RUN_DIR/<label>/seed-<s>/fold-<XX>/metrics.json``). :func:`write_report`
writes into ``RUN_DIR/report/`` (or ``out_dir``):

- ``report.md``     one row per label (protocol, mean +- std over fold x seed cells and pooled
                    scores of every metric of :data:`sergraph.metrics.METRICS`, provenance),
                    then paired comparisons of the primary metric (UA) over folds (Wilcoxon
                    signed-rank, bootstrap CI; :mod:`sergraph.results.compare`) against the
                    declared reference, within one protocol unless asked
- ``results.csv``   that table, machine-readable (fractions in [0, 1], not %)
- ``folds.csv``     every cell: label, seed, fold, test_speakers, n and every metric
                    (fractions; empty where a cell does not record a metric)
- ``confusion_<label>.png``  row-normalised confusion matrix of the pooled predictions
- ``folds.png``     UA per fold and label (averaged over seeds)
- ``wa_ua_vs_k.png``  every metric, pooled, against graph.k, only when some labels differ in
                    nothing but graph.k (read from each label's ``config.yaml``)
- ``ua_vs_<key>.png``  for a grid of one numeric key: each fold's UA as a point and the
                    pooled UA as a line, against the key

Figures are drawn by :mod:`sergraph.results.figures`. Per-label numbers come from
:func:`sergraph.results.summary.summarize` (which also refreshes each label's
``summary.json``/``summary.md``, as a finished study does); all metric arithmetic is
:mod:`sergraph.metrics`'. Collecting the labels, grouping graph.k studies and writing the
Markdown stay together in this module, as one reader of the result files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from sergraph.io import atomic_write_csv, atomic_write_text
from sergraph.metrics import METRICS, PRIMARY
from sergraph.results.comparable import corpus_evaluation, flatten
from sergraph.results.compare import comparisons, declared_controls, declared_reference
from sergraph.results.figures import plot_confusion, plot_folds, plot_k, plot_sweep, save_png
from sergraph.results.layout import (
    METRICS_FILE,
    CellPaths,
    ResultFileError,
    cell_dirs,
    finished_cells,
    unfinished_cells,
    variant_dirs,
)
from sergraph.results.markdown import format_report
from sergraph.results.provenance import changed_sources, row_provenance
from sergraph.results.summary import mean_std, summarize

#: Every metric, pooled, against graph.k (the name it has had since it showed WA and UA only).
K_FIGURE = "wa_ua_vs_k.png"
#: The primary metric against the one numeric key of a grid, a point per fold:
#: ``ua_vs_<key>.png``.
SWEEP_FIGURE = f"{PRIMARY}_vs_"


def result_columns() -> list[str]:
    """The columns of ``results.csv``: per metric its mean and std over cells, then its pooled
    value and std over seeds."""
    return [
        "label",
        "model",
        "folds",
        "seeds",
        "cells",
        "complete",
        *[f"{name}_{what}" for name in METRICS for what in ("mean", "std")],
        *[f"pooled_{name}{what}" for name in METRICS for what in ("", "_std")],
        "predictions",
        "missing",
        "protocol",
        "evaluation",
        "provenance",
    ]


def fold_columns() -> list[str]:
    """The columns of ``folds.csv``."""
    return ["label", "seed", "fold", "test_speakers", "n", *METRICS]


# ---------------------------------------------------------------------------------------------
# collecting


def find_labels(run_dir: str | Path) -> dict[str, Path]:
    """Label -> folder holding ``seed-*/fold-*/metrics.json``, in natural label order.

    A label is the folder's path relative to ``run_dir`` (``run_dir``'s own name when the cells
    lie directly in it).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist or is not a folder")
    roots = [root for root in variant_dirs(run_dir) if finished_cells(root)]
    if not roots:
        raise FileNotFoundError(
            f"no finished cells under {run_dir}: expected {run_dir}/<label>/seed-<s>/fold-<XX>/"
            f"{METRICS_FILE} or {run_dir}/seed-<s>/fold-<XX>/{METRICS_FILE} ({METRICS_FILE} is written when a "
            "fold finishes)"
        )
    labels = {}
    for root in roots:
        relative = root.relative_to(run_dir).as_posix()
        labels[run_dir.resolve().name if relative == "." else relative] = root
    return dict(sorted(labels.items(), key=lambda item: _natural_key(item[0])))


def unfinished_labels(run_dir: Path, labels: dict[str, Path]) -> list[str]:
    """Folders holding ``seed-*/`` but no finished cell yet (left out of the report, but named)."""
    finished = set(labels.values())
    roots = {root for root in variant_dirs(run_dir) if cell_dirs(root)} - finished
    names = [
        run_dir.resolve().name if root == run_dir else root.relative_to(run_dir).as_posix()
        for root in roots
    ]
    return sorted(names, key=_natural_key)


def _natural_key(text: str) -> list:
    """k2 < k4 < k10 (plain sorting puts k10 first)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def collect(label: str, root: Path, folds: list[int] | None = None) -> dict:
    """Summary, table row, per-fold primary metric (UA) and pooled confusion of one label
    (``folds``: only these fold indices)."""
    summary = summarize(root, folds=folds, write=folds is None)
    cells = finished_cells(root)  # verified: a damaged file stops here, naming it
    if folds is not None:
        cells = [(cell, record) for cell, record in cells if int(record["fold"]) in folds]
    records = [record for _, record in cells]
    first_cell, first = cells[0]
    origin = row_provenance(records)
    cross_corpus, evaluation = corpus_evaluation(records)
    # Cell folders without metrics.json: still running, interrupted or their results deleted.
    missing = [cell.relative_to(root).as_posix() for cell in unfinished_cells(root)]
    folds = pd.DataFrame(summary["folds"])
    per_seed = summary["pooled"]["per_seed"]
    n_folds, n_seeds = folds["fold"].nunique(), folds["seed"].nunique()
    row = {
        "label": label,
        "model": first.get("model", ""),
        "folds": int(n_folds),
        "seeds": int(n_seeds),
        "cells": len(folds),
        "complete": bool(len(folds) == n_folds * n_seeds and not missing),
    }
    for name in METRICS:
        row[f"{name}_mean"] = summary["fold_mean"][name]
        row[f"{name}_std"] = summary["fold_std"][name]
    for name in METRICS:
        pooled, pooled_std = mean_std([p[name] for p in per_seed])
        # one seed: there is no spread over seeds to report
        row[f"pooled_{name}"] = pooled
        row[f"pooled_{name}_std"] = pooled_std if len(per_seed) > 1 else math.nan
    row |= {
        "predictions": int(sum(p["n"] for p in per_seed)),
        "missing": " ".join(missing),
        "protocol": summary["protocol"]["name"],
        "evaluation": evaluation,
        "provenance": origin["text"],
    }
    # A fold is identified by its number and its test speakers: the same number with other
    # speakers (another fold scheme) is not the same fold and must not be paired.
    fold_primary = folds.groupby(["fold", "test_speakers"])[PRIMARY].mean()
    # the data of each fold (check_pooled made sure its seeds share it); None: not recorded
    fold_data = {
        (int(record["fold"]), ",".join(record["test_speakers"])): record.get("data")
        for record in records
    }
    return {
        "label": label,
        "root": root,
        "row": row,
        "folds": folds,
        # the primary metric per fold, seeds averaged: what paired tests and fold figures use
        "fold_scores": {
            (int(fold), speakers): float(score) for (fold, speakers), score in fold_primary.items()
        },
        "fold_data": fold_data,
        "classes": list(summary["classes"]),
        "confusion": np.sum([np.asarray(p["confusion"]) for p in per_seed], axis=0),
        "config": _load_config(CellPaths(first_cell).config),
        "protocol": summary["protocol"],
        "cross_corpus": cross_corpus,
        "provenance": origin,
        "changed_sources": changed_sources(records),
    }


def _has_folds(root: Path, folds: list[int]) -> bool:
    return any(int(record["fold"]) in folds for _, record in finished_cells(root))


def _load_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as error:  # noqa: BLE001 - yaml and omegaconf raise many kinds
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ResultFileError(path, f"not a readable YAML configuration ({reason})") from None
    if not isinstance(config, dict):
        raise ResultFileError(path, "not a YAML mapping of configuration keys")
    return config


# ---------------------------------------------------------------------------------------------
# graph.k studies


def k_groups(collected: list[dict]) -> list[dict]:
    """Groups of labels whose configurations differ in graph.k and nothing else.

    Keys that never change a result (:data:`sergraph.config.RUNTIME_KEYS`), ``run.label``,
    ``logger`` and ``variants`` are ignored. Labels without a readable ``config.yaml`` or
    ``graph.k`` are left out. Returns ``[{"labels": [...], "k": [...]}]``, each sorted by k.
    """
    from sergraph.config import RUNTIME_KEYS

    ignored = set(RUNTIME_KEYS) | {"run.label", "graph.k"}
    groups: dict[str, list[tuple[int, str]]] = {}
    for item in collected:
        flat = flatten(item["config"] or {})
        if "graph.k" not in flat:
            continue
        rest = {
            key: value
            for key, value in flat.items()
            if key not in ignored
            and not key.startswith(
                ("logger.", "variants.", "grid.", "run.sources.", "slurm.", "controls.")
            )
            and key != "reference"
        }
        signature = json.dumps(rest, sort_keys=True, default=str)
        groups.setdefault(signature, []).append((int(flat["graph.k"]), item["label"]))
    out = []
    for members in groups.values():
        if len({k for k, _ in members}) < 2:
            continue
        members.sort(key=lambda m: (m[0], _natural_key(m[1])))
        out.append({"labels": [label for _, label in members], "k": [k for k, _ in members]})
    return out


def sweep_points(collected: list[dict]) -> tuple[str, list[tuple[float, dict, float]]] | None:
    """The one numeric key of a grid and, per grid point here, (its value, fold -> primary
    metric, pooled primary metric); ``None`` unless the labels come from one grid (``grid:`` or
    ``-m``) of exactly one key, every value a number, with at least two points here."""
    grids = {
        json.dumps((item["config"] or {}).get("grid") or {}, sort_keys=True) for item in collected
    }
    points_of = [item for item in collected if (item["config"] or {}).get("grid")]
    if len(grids - {"{}"}) != 1 or len(points_of) < 2:
        return None
    grid = points_of[0]["config"]["grid"]
    if len(grid) != 1:
        return None
    (key,) = grid
    points = []
    for item in points_of:
        value = flatten(item["config"]).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        by_fold = {fold: score for (fold, _), score in item["fold_scores"].items()}
        points.append((float(value), by_fold, item["row"][f"pooled_{PRIMARY}"]))
    return key, points


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "label"


# ---------------------------------------------------------------------------------------------
# entry point


def write_report(
    run_dir: str | Path | list,
    out_dir: str | Path | None = None,
    reference: str | None = None,
    cross_protocol: bool = False,
    folds: list[int] | None = None,
    cross_data: bool = False,
) -> dict:
    """Tables, paired tests and figures for every label under ``run_dir``.

    Args:
        run_dir: one label's folder (holding ``seed-*/``) or a folder of label folders; or a
            list of such folders, to compare studies: each label is then prefixed with its
            folder's name (``emodb/svm``, ``best/gin``) and ``out_dir`` is required.
        out_dir: where to write; default ``run_dir/report``.
        reference: the label every other label is paired with (an ablation's full recipe);
            default: the one the experiment file declares (key ``reference``), else none (never
            a label chosen by a test score). Labels with a control declared in their experiment
            file (key ``controls``) are also paired with it ("vs control").
        cross_protocol: also pair labels evaluated under different protocols (labelled
            CROSS-PROTOCOL); refused by default.
        folds: only these fold indices (e.g. the folds never looked at while shaping a
            recipe); the report says so, and the labels' own summary files are left alone.
        cross_data: also pair labels whose cells scored other utterances or come from other
            data (a deliberate cross-corpus comparison; labelled CROSS-DATA); refused by
            default, naming what differs.

    Returns:
        ``rows`` (the table, one dict per label, fractions), ``reference`` (the label paired with
        all others, or ``None``), ``comparisons`` (see :func:`paired_test`; plus ``first``,
        ``second``, ``kind``, ``undeclared``: config keys the pair differs in that its variants
        do not declare), ``refused`` (pairs not tested: different protocols), ``refused_data``
        (pairs not tested: ``(first, second, [what differs])``), ``refused_corpus`` (pairs
        never tested, whatever the flags: one label cross-corpus, the other within-corpus),
        ``changed_sources`` (label -> config files changed since its cells ran),
        ``k_groups`` (see :func:`k_groups`), ``unfinished`` (label folders without a finished
        cell) and ``paths`` (``report``, ``results``, ``folds``,
        ``figures``: strings).

    Raises:
        FileNotFoundError: naming ``run_dir`` when it holds no finished cell.
    """
    if isinstance(run_dir, (list, tuple)) and len(run_dir) == 1:
        run_dir = run_dir[0]
    if isinstance(run_dir, (list, tuple)):
        if out_dir is None:
            raise ValueError("a report over several run folders needs an output folder (--out)")
        dirs = [Path(d) for d in run_dir]
        names = [d.resolve().name for d in dirs]
        if len(set(names)) != len(names):
            raise ValueError(f"run folders must have different names to prefix labels: {names}")
        labels, unfinished = {}, []
        for directory, prefix in zip(dirs, names, strict=True):
            found = find_labels(directory)
            labels |= {f"{prefix}/{label}": root for label, root in found.items()}
            unfinished += [f"{prefix}/{label}" for label in unfinished_labels(directory, found)]
        name = " + ".join(names)
        run_dir = dirs[0]
    else:
        run_dir = Path(run_dir)
        labels = find_labels(run_dir)
        unfinished = unfinished_labels(run_dir, labels)
        name = run_dir.resolve().name
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    if folds is not None:
        found = {label: root for label, root in labels.items() if _has_folds(root, folds)}
        unfinished += [label for label in labels if label not in found]
        labels = found
        if not labels:
            raise FileNotFoundError(f"no label under {run_dir} finished any of folds {folds}")
        name += f" (folds {','.join(map(str, sorted(folds)))} only)"
    collected = [collect(label, root, folds) for label, root in labels.items()]
    rows = [item["row"] for item in collected]
    if reference is not None and reference not in labels:
        raise ValueError(f"--reference {reference!r} is not a label here; labels: {list(labels)}")
    reference = reference or declared_reference(collected)
    tests, refused, refused_data, refused_corpus = comparisons(
        collected,
        reference,
        cross_protocol,
        controls=declared_controls(collected),
        cross_data=cross_data,
    )
    groups = k_groups(collected)

    figures: list[Path] = []
    for item in collected:
        title = f"{item['label']}: pooled predictions, row-normalised"
        figure = plot_confusion(item["confusion"], item["classes"], title)
        figures.append(save_png(figure, out_dir / f"confusion_{_slug(item['label'])}.png"))
    figures.append(save_png(plot_folds(collected), out_dir / "folds.png"))
    if groups:
        figures.append(
            save_png(plot_k(groups, {row["label"]: row for row in rows}), out_dir / K_FIGURE)
        )
    else:  # a figure left from an earlier report would describe labels no longer compared
        (out_dir / K_FIGURE).unlink(missing_ok=True)
    for old in out_dir.glob(f"{SWEEP_FIGURE}*.png"):  # of an earlier report; drawn again below
        old.unlink()
    sweep = sweep_points(collected)
    if sweep is not None:
        key, points = sweep
        name = f"{SWEEP_FIGURE}{_slug(key.rsplit('.', 1)[-1])}.png"
        figures.append(save_png(plot_sweep(key, points), out_dir / name))

    fold_rows = pd.concat(
        [item["folds"].assign(label=item["label"]) for item in collected], ignore_index=True
    )[fold_columns()]
    paths = {
        "report": out_dir / "report.md",
        "results": out_dir / "results.csv",
        "folds": out_dir / "folds.csv",
    }
    atomic_write_csv(paths["results"], pd.DataFrame(rows, columns=result_columns()))
    atomic_write_csv(paths["folds"], fold_rows)
    same_folds = len({frozenset(item["fold_scores"]) for item in collected}) == 1
    text = format_report(
        name,
        collected,
        reference,
        tests,
        [f.name for f in figures],
        same_folds,
        unfinished,
        refused,
        refused_data,
        refused_corpus,
    )
    atomic_write_text(paths["report"], text)
    return {
        "run_dir": str(run_dir),
        "out_dir": str(out_dir),
        "rows": rows,
        "reference": reference,
        "comparisons": tests,
        "refused": refused,
        "refused_data": refused_data,
        "refused_corpus": refused_corpus,
        "changed_sources": {
            i["label"]: i["changed_sources"] for i in collected if i["changed_sources"]
        },
        "k_groups": groups,
        "unfinished": unfinished,
        "paths": {key: str(path) for key, path in paths.items()}
        | {"figures": [str(path) for path in figures]},
    }
