"""Tables, paired tests and figures from the results files of one or more study variants.

``RUN_DIR`` is either one variant (it holds ``seed-<s>/fold-<XX>/metrics.json`` itself) or a
folder of variants (``RUN_DIR/<label>/seed-<s>/fold-<XX>/metrics.json``). :func:`write_report`
writes into ``RUN_DIR/report/`` (or ``out_dir``):

- ``report.md``     one row per label (mean +- std over fold x seed cells, pooled WA/UA), then
                    paired comparisons over folds (Wilcoxon signed-rank, bootstrap CI)
- ``results.csv``   that table, machine-readable (fractions in [0, 1], not %)
- ``folds.csv``     every cell: label, seed, fold, test_speakers, n, wa, ua (fractions)
- ``confusion_<label>.png``  row-normalised confusion matrix of the pooled predictions
- ``folds.png``     UA per fold and label (averaged over seeds)
- ``wa_ua_vs_k.png``  pooled WA and UA against graph.k, only when some labels differ in
                    nothing but graph.k (read from each label's ``config.yaml``)

Per-label numbers come from :func:`sergraph.results.summary.summarize` (which also refreshes each label's
``summary.json``/``summary.md``, as the runner does); all WA/UA arithmetic is
:mod:`sergraph.metrics`'.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

from sergraph.io import atomic_write_bytes, atomic_write_csv, atomic_write_text
from sergraph.results.layout import (
    ResultFileError,
    cell_dirs,
    finished_cells,
    unfinished_cells,
    variant_dirs,
)
from sergraph.results.summary import mean_std, summarize

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
#: Above this many labels only the comparisons against the best label are tabulated.
MAX_LABELS_ALL_PAIRS = 8
K_FIGURE = "wa_ua_vs_k.png"

RESULT_COLUMNS = [
    "label",
    "model",
    "folds",
    "seeds",
    "cells",
    "complete",
    "wa_mean",
    "wa_std",
    "ua_mean",
    "ua_std",
    "pooled_wa",
    "pooled_wa_std",
    "pooled_ua",
    "pooled_ua_std",
    "predictions",
    "missing",
]
FOLD_COLUMNS = ["label", "seed", "fold", "test_speakers", "n", "wa", "ua"]


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
            f"metrics.json or {run_dir}/seed-<s>/fold-<XX>/metrics.json (metrics.json is written "
            "when a fold finishes)"
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


def collect(label: str, root: Path) -> dict:
    """Summary, table row, per-fold UA and pooled confusion of one label."""
    summary = summarize(root)
    (first_cell, first), *_ = finished_cells(root)
    # Cell folders without metrics.json: still running, interrupted or their results deleted.
    missing = [cell.relative_to(root).as_posix() for cell in unfinished_cells(root)]
    folds = pd.DataFrame(summary["folds"])
    per_seed = summary["pooled"]["per_seed"]
    pooled_wa, pooled_wa_std = mean_std([p["wa"] for p in per_seed])
    pooled_ua, pooled_ua_std = mean_std([p["ua"] for p in per_seed])
    if len(per_seed) < 2:  # one seed: there is no spread over seeds to report
        pooled_wa_std = pooled_ua_std = math.nan
    n_folds, n_seeds = folds["fold"].nunique(), folds["seed"].nunique()
    row = {
        "label": label,
        "model": first.get("model", ""),
        "folds": int(n_folds),
        "seeds": int(n_seeds),
        "cells": len(folds),
        "complete": bool(len(folds) == n_folds * n_seeds and not missing),
        "wa_mean": summary["fold_mean"]["wa"],
        "wa_std": summary["fold_std"]["wa"],
        "ua_mean": summary["fold_mean"]["ua"],
        "ua_std": summary["fold_std"]["ua"],
        "pooled_wa": pooled_wa,
        "pooled_wa_std": pooled_wa_std,
        "pooled_ua": pooled_ua,
        "pooled_ua_std": pooled_ua_std,
        "predictions": int(sum(p["n"] for p in per_seed)),
        "missing": " ".join(missing),
    }
    # A fold is identified by its number and its test speakers: the same number with other
    # speakers (another fold scheme) is not the same fold and must not be paired.
    fold_ua = folds.groupby(["fold", "test_speakers"])["ua"].mean()
    return {
        "label": label,
        "root": root,
        "row": row,
        "folds": folds,
        "fold_ua": {(int(fold), speakers): float(ua) for (fold, speakers), ua in fold_ua.items()},
        "classes": list(summary["classes"]),
        "confusion": np.sum([np.asarray(p["confusion"]) for p in per_seed], axis=0),
        "config": _load_config(first_cell / "config.yaml"),
    }


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
# paired comparisons


def paired_test(
    first: dict,
    second: dict,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Paired comparison of two labels' per-fold scores (``first - second``).

    Args:
        first, second: fold key -> score (UA averaged over seeds); only keys in both are paired.
        resamples: bootstrap resamples of the paired folds.
        seed: seed of the bootstrap.

    Returns:
        ``paired`` (number of folds in both), ``only_first``/``only_second`` (unpaired keys),
        ``differences``, ``mean_difference``, ``ci_low``/``ci_high`` (percentile bootstrap 95%
        interval of the mean difference), ``nonzero`` (differences that are not zero),
        ``p_value`` (two-sided Wilcoxon signed-rank, ``None`` when there is nothing to test) and
        ``note`` (why the test says little, or "").
    """
    from scipy.stats import wilcoxon

    shared = sorted(set(first) & set(second))
    differences = np.array([first[key] - second[key] for key in shared], dtype=float)
    # Seed-averaged scores reached by different summation orders can differ by an ulp; such a
    # difference is a tie, not evidence.
    differences[np.abs(differences) < 1e-12] = 0.0
    out = {
        "paired": len(shared),
        "only_first": sorted(set(first) - set(second)),
        "only_second": sorted(set(second) - set(first)),
        "differences": differences.tolist(),
        "mean_difference": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "nonzero": int(np.count_nonzero(differences)),
        "p_value": None,
        "note": "",
    }
    if not len(shared):
        out["note"] = "no fold in common: nothing to pair"
        return out
    out["mean_difference"] = float(differences.mean())
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(shared), size=(resamples, len(shared)))].mean(axis=1)
    out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    nonzero = out["nonzero"]
    if nonzero == 0:
        out["note"] = "all paired differences are zero: nothing to test"
        return out
    with warnings.catch_warnings():  # small-sample and tie warnings; the note says it plainly
        warnings.simplefilter("ignore")
        out["p_value"] = float(wilcoxon(differences, alternative="two-sided").pvalue)
    if nonzero < 6:
        # Zeros are dropped; with n nonzero differences of one sign the exact two-sided p is
        # 2 / 2**n, which is above 0.05 for n <= 5.
        out["note"] = (
            f"only {nonzero} nonzero difference(s): the signed-rank test cannot go below "
            f"p = {2.0 ** (1 - nonzero):.3g}, so it has no power at the 0.05 level"
        )
    return out


def comparisons(collected: list[dict], best: str) -> list[dict]:
    """Every label against the best; also every other pair when there are few labels."""
    by_label = {c["label"]: c for c in collected}
    pairs = [(best, c["label"], "vs best") for c in collected if c["label"] != best]
    if len(collected) <= MAX_LABELS_ALL_PAIRS:
        others = [c["label"] for c in collected if c["label"] != best]
        pairs += [(a, b, "pair") for a, b in itertools.combinations(others, 2)]
    out = []
    for a, b, kind in pairs:
        test = paired_test(by_label[a]["fold_ua"], by_label[b]["fold_ua"])
        out.append({"first": a, "second": b, "kind": kind, **test})
    return out


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
        flat = _flatten(item["config"] or {})
        if "graph.k" not in flat:
            continue
        rest = {
            key: value
            for key, value in flat.items()
            if key not in ignored and not key.startswith(("logger.", "variants."))
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


def _flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    flat = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return {key.rstrip("."): value for key, value in flat.items()}


# ---------------------------------------------------------------------------------------------
# figures


def _new_figure(width: float, height: float):
    # Figure + the Agg canvas directly: no pyplot state, no GUI backend, safe on a cluster node.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: Path) -> Path:
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
    figure = _new_figure(size + 1.8, size)
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
    figure = _new_figure(max(6.0, 0.35 * len(folds) * len(collected) + 2.0), 4.0)
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
    figure = _new_figure(5.5, 4.0)
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


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "label"


# ---------------------------------------------------------------------------------------------
# Markdown


def _percent(value: float, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{100 * value:.2f}"
    if std is not None and not math.isnan(std):
        text += f" ± {100 * std:.2f}"
    return text


def _fold_list(keys: list[tuple[int, str]]) -> str:
    return ", ".join(f"{fold} ({speakers})" for fold, speakers in keys)


def format_report(
    name: str,
    rows: list[dict],
    best: str,
    tests: list[dict],
    figures: list[str],
    same_folds: bool = True,
    unfinished: list[str] = (),
) -> str:
    lines = [
        f"# {name}: speaker-held-out results (%)",
        "",
        "| label | model | folds × seeds | WA mean ± std | UA mean ± std | pooled WA | pooled UA |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = f"{row['folds']} × {row['seeds']}"
        if not row["complete"]:
            cells += f" ({row['cells']} cells, incomplete"
            if row.get("missing"):
                cells += f"; missing {row['missing'].replace(' ', ', ')}"
            cells += ")"
        label = f"**{row['label']}**" if row["label"] == best else row["label"]
        lines.append(
            f"| {label} | {row['model']} | {cells} | {_percent(row['wa_mean'], row['wa_std'])} | "
            f"{_percent(row['ua_mean'], row['ua_std'])} | "
            f"{_percent(row['pooled_wa'], row['pooled_wa_std'])} | "
            f"{_percent(row['pooled_ua'], row['pooled_ua_std'])} |"
        )
    n_folds = max(row["folds"] for row in rows)
    lines += [
        "",
        f"A gap of a few points between two rows over {n_folds} speaker folds is often noise "
        "(compare it with the fold-to-fold std and the paired tests below), not a ranking.",
        "",
    ]
    incomplete = [row["label"] for row in rows if not row["complete"]]
    if incomplete:
        lines += [
            f"INCOMPLETE: {', '.join(incomplete)} lack(s) some fold x seed cells, so their "
            "numbers are not final and not comparable with complete rows; finish them with "
            "`sergraph train` (same command) before reporting.",
            "",
        ]
    if unfinished:
        lines += [f"No finished fold yet, so not in the table: {', '.join(unfinished)}.", ""]
    if not same_folds:
        lines += [
            "The labels do not cover the same folds, so their rows average over different "
            "test speakers; the paired comparisons below use shared folds only.",
            "",
        ]
    lines += [
        "WA = accuracy over utterances; UA = mean recall over classes present in the targets. "
        "Mean ± std: over all fold × seed cells (sample std). Pooled: WA/UA over all test "
        "predictions of a seed, averaged over seeds (± sample std over seeds when there are "
        "several). Bold: best pooled UA. Machine-readable: results.csv, folds.csv (fractions).",
        "",
        "## Paired comparisons (UA per fold, seeds averaged first)",
        "",
    ]
    if not tests:
        lines += ["One label only: nothing to compare.", ""]
    else:
        lines += [
            "Δ UA = A − B in points over the folds both labels have; 95% CI: percentile "
            f"bootstrap of the mean over folds ({BOOTSTRAP_RESAMPLES} resamples, seed "
            f"{BOOTSTRAP_SEED}); p: two-sided Wilcoxon signed-rank test (zero differences "
            "dropped), not corrected for multiple comparisons. With few folds the bootstrap "
            "interval is too narrow and the test is weak.",
            "",
            "| A | B | folds paired | Δ UA | 95% CI | Wilcoxon p | note |",
            "| --- | --- | ---: | ---: | --- | ---: | --- |",
        ]
        for test in tests:
            notes = [test["note"]] if test["note"] else []
            if test["only_first"]:
                notes.append(f"unpaired, only in {test['first']}: {_fold_list(test['only_first'])}")
            if test["only_second"]:
                notes.append(
                    f"unpaired, only in {test['second']}: {_fold_list(test['only_second'])}"
                )
            has_ci = not math.isnan(test["ci_low"])
            lines.append(
                f"| {test['first']} | {test['second']} | {test['paired']} | "
                + (f"{100 * test['mean_difference']:+.2f}" if has_ci else "–")
                + " | "
                + (
                    f"[{100 * test['ci_low']:+.2f}, {100 * test['ci_high']:+.2f}]"
                    if has_ci
                    else "–"
                )
                + " | "
                + (f"{test['p_value']:.3g}" if test["p_value"] is not None else "–")
                + f" | {'; '.join(notes)} |"
            )
        lines.append("")
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# entry point


def write_report(
    run_dir: str | Path | list,
    out_dir: str | Path | None = None,
    reference: str | None = None,
) -> dict:
    """Tables, paired tests and figures for every label under ``run_dir``.

    Args:
        run_dir: one label's folder (holding ``seed-*/``) or a folder of label folders; or a
            list of such folders, to compare studies: each label is then prefixed with its
            folder's name (``emodb/svm``, ``best/gin``) and ``out_dir`` is required.
        out_dir: where to write; default ``run_dir/report``.
        reference: the label every other label is paired with (an ablation's full recipe);
            default: the label with the best pooled UA.

    Returns:
        ``rows`` (the table, one dict per label, fractions), ``best`` (label with the best pooled
        UA), ``comparisons`` (see :func:`paired_test`; plus ``first``, ``second``, ``kind``),
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
    collected = [collect(label, root) for label, root in labels.items()]
    rows = [item["row"] for item in collected]
    ranked = [row for row in rows if not math.isnan(row["pooled_ua"])] or rows
    best = max(ranked, key=lambda row: row["pooled_ua"])["label"]  # first of equals wins
    if reference is not None and reference not in labels:
        raise ValueError(f"--reference {reference!r} is not a label here; labels: {list(labels)}")
    tests = comparisons(collected, reference or best)
    groups = k_groups(collected)

    figures: list[Path] = []
    for item in collected:
        title = f"{item['label']}: pooled predictions, row-normalised"
        figure = plot_confusion(item["confusion"], item["classes"], title)
        figures.append(_save_png(figure, out_dir / f"confusion_{_slug(item['label'])}.png"))
    figures.append(_save_png(plot_folds(collected), out_dir / "folds.png"))
    if groups:
        figures.append(
            _save_png(plot_k(groups, {row["label"]: row for row in rows}), out_dir / K_FIGURE)
        )
    else:  # a figure left from an earlier report would describe labels no longer compared
        (out_dir / K_FIGURE).unlink(missing_ok=True)

    folds = pd.concat(
        [item["folds"].assign(label=item["label"]) for item in collected], ignore_index=True
    )[FOLD_COLUMNS]
    paths = {
        "report": out_dir / "report.md",
        "results": out_dir / "results.csv",
        "folds": out_dir / "folds.csv",
    }
    atomic_write_csv(paths["results"], pd.DataFrame(rows, columns=RESULT_COLUMNS))
    atomic_write_csv(paths["folds"], folds)
    same_folds = len({frozenset(item["fold_ua"]) for item in collected}) == 1
    text = format_report(name, rows, best, tests, [f.name for f in figures], same_folds, unfinished)
    atomic_write_text(paths["report"], text)
    return {
        "run_dir": str(run_dir),
        "out_dir": str(out_dir),
        "rows": rows,
        "best": best,
        "comparisons": tests,
        "k_groups": groups,
        "unfinished": unfinished,
        "paths": {key: str(path) for key, path in paths.items()}
        | {"figures": [str(path) for path in figures]},
    }
