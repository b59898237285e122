"""The model card of a bundle (``MODEL_CARD.md``): what a downstream user must know before use.

Export records the evaluation of the exported cells in the bundle's metadata
(:func:`evaluation_record`, key ``evaluation``) and stores the card's text (:func:`model_card`,
key ``model_card``); ``sergraph predict --info BUNDLE`` prints it. Everything in the card comes
from the run's own files: the cells' ``metrics.json`` (cross-validated scores of every metric of
:data:`sergraph.metrics.METRICS`, the data fingerprint, the code provenance) and
``predictions.csv`` (pooled scores), and the bundle's metadata (task, classes, corpus, speakers,
protocol, audio pipeline). A bundle exported before cards were stored gets a card made from its
metadata at load, without the parts only the run's files give; a metric a bundle does not record
(exported before sergraph computed it) is shown as "–".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sergraph.metrics import METRICS, percent

#: The data fingerprint's study-level hashes named in the card (see
#: :mod:`sergraph.data.fingerprint`).
DATA_HASHES = ("table", "inputs", "folds")


def evaluation_record(cells: Sequence[Path], records: Sequence[dict]) -> dict:
    """The evaluation of the exported cells, from their ``metrics.json`` and ``predictions.csv``.

    Returns:
        ``{"n_cells", "fold_mean": {metric: value}, "fold_std": {metric: value}, "pooled":
        {metric: value}, "data": {hash name: sorted distinct values}, "code": {"sergraph",
        "commits", "dirty"}}`` for every metric of :data:`sergraph.metrics.METRICS`. Fold mean
        and sample standard deviation over every exported (seed, fold) cell, as
        ``summary.json`` computes them (``None`` for a metric some cell does not record);
        pooled: each metric over all test predictions of each seed, averaged over seeds.
    """
    from sergraph.metrics import pooled_scores
    from sergraph.results.layout import read_predictions
    from sergraph.results.summary import fold_scores, fold_statistics, pooled_means

    fold_mean, fold_std = fold_statistics([fold_scores(record) for record in records])
    classes = list(records[0]["classes"])
    by_seed: dict[int, list[pd.DataFrame]] = {}
    for cell, record in zip(cells, records, strict=True):
        by_seed.setdefault(int(record["seed"]), []).append(read_predictions(cell))
    pooled = [pooled_scores(pd.concat(parts), classes) for parts in by_seed.values()]
    states = [record.get("provenance") or {} for record in records]
    return {
        "n_cells": len(records),
        "fold_mean": fold_mean,
        "fold_std": fold_std,
        "pooled": pooled_means(pooled),
        "data": {
            name: sorted({str((r.get("data") or {}).get(name, "unknown")) for r in records})
            for name in DATA_HASHES
        },
        "code": {
            "sergraph": sorted({str(s.get("sergraph", "unknown")) for s in states}),
            "commits": sorted({str(s.get("commit", "unknown")) for s in states}),
            "dirty": sorted({str(s.get("dirty", "unknown")) for s in states}),
        },
    }


def _mean_std(mean: float | None, std: float | None) -> str:
    """``12.34 ± 0.56`` (``± 0.00`` for one cell), ``–`` where the metric is not recorded."""
    if mean is None:
        return percent(None)
    return f"{percent(mean)} ± {percent(std)}"


def model_card(meta: dict) -> str:
    """The Markdown text of a bundle's model card, from its metadata (see module docstring)."""
    members = meta["members"]
    source = meta["source"]
    features = meta["features"]
    protocol = meta.get("protocol") or {"name": "inductive", "note": "not recorded"}
    seeds = sorted({m["seed"] for m in members})
    folds = sorted({m["fold"] for m in members})
    kind = (
        f"an ensemble of {len(members)} fold models (mean of their class probabilities)"
        if len(members) > 1
        else "one fold model"
    )
    lines = [
        f"# Model card: {meta['model']['name']} trained on {source['corpus']}",
        "",
        "## Task",
        "",
        f"Speech emotion recognition: one of {len(meta['classes'])} classes "
        f"({', '.join(meta['classes'])}) per utterance, from audio. The model is {kind}: "
        f"model {meta['model']['name']} (family {meta['model'].get('family', 'unknown')}), "
        f"seeds {seeds}, folds {folds}.",
        "",
        "## Training data",
        "",
        f"- corpus: {source['corpus']} ({source['n_utterances']} utterances, "
        f"{len(source['speakers'])} speakers: {', '.join(map(str, source['speakers']))})",
        "- speakers per member (train / validation / test): "
        + "; ".join(
            f"seed {m['seed']} fold {m['fold']}: {len(m['train_speakers'])} / "
            f"{len(m['val_speakers'])} / {', '.join(map(str, m['test_speakers']))}"
            for m in members
        ),
        f"- audio pipeline: {features['feature_set']} ({len(features['names'])} features per "
        f"node, pool {features['pool']}, sample rate {features.get('sample_rate') or 'as found'}"
        f"), openSMILE {features['opensmile']}, feature recipe {features['recipe']}",
        f"- graph: k={meta['graph']['k']}, max_nodes={meta['graph']['max_nodes']} (longer "
        "audio is cut; `--window` predicts segments)",
        f"- training precision: {meta.get('precision', '32-true')}",
        "",
        "## Protocol",
        "",
        f"- eval.protocol={protocol['name']} ({protocol['note']})",
        "- speaker-independent cross-validation: each member was tested on speakers it "
        "never trained on; no test score chose anything in the bundle",
        "",
        "## Evaluation (cross-validated, on the training corpus)",
        "",
    ]
    evaluation = meta.get("evaluation")
    if evaluation:
        mean, std, pooled = evaluation["fold_mean"], evaluation["fold_std"], evaluation["pooled"]
        lines += [
            f"| over {evaluation['n_cells']} (seed, fold) cells | "
            + " | ".join(f"{m.display} %" for m in METRICS.values())
            + " |",
            "|---|" + "---|" * len(METRICS),
            "| mean ± std over folds | "
            + " | ".join(_mean_std(mean.get(name), std.get(name)) for name in METRICS)
            + " |",
            "| pooled test predictions | "
            + " | ".join(percent(pooled.get(name)) for name in METRICS)
            + " |",
        ]
    else:
        lines.append(
            "Per-member test scores only (exported before model cards recorded the evaluation):"
        )
    lines += [
        "",
        "Per member: "
        + "; ".join(
            f"seed {m['seed']} fold {m['fold']} "
            + " ".join(
                f"{metric.display} {percent(m.get(f'test_{name}'))}"
                for name, metric in METRICS.items()
            )
            for m in members
        ),
        "",
        "These scores are within one corpus. On other recording conditions, languages or "
        "label sets expect lower scores; measure them with `sergraph evaluate`.",
        "",
        "## Provenance",
        "",
        f"- bundle written by sergraph {meta['sergraph']} on {meta['created']}",
        f"- run folder: {source['run_dir']}; configuration id {meta['config_id']}",
    ]
    if evaluation:
        code, data = evaluation["code"], evaluation["data"]
        lines += [
            f"- trained with sergraph {', '.join(code['sergraph'])}, commit(s) "
            f"{', '.join(code['commits'])}, uncommitted changes: {', '.join(code['dirty'])}",
            "- data fingerprint (metrics.json `data`): "
            + "; ".join(f"{name} {', '.join(values)}" for name, values in data.items()),
        ]
    if meta.get("partial"):
        lines.append(f"- PARTIAL: exported from an unfinished study ({meta['partial']})")
    enrollment = protocol["name"] == "enrollment"
    lines += [
        "",
        "## Intended use and known limits",
        "",
        "- research on speech emotion recognition; not for decisions about individuals",
        f"- the classes are those of {source['corpus']}; a corpus with other labels needs an "
        "explicit mapping (`sergraph evaluate --map`)",
        f"- trained on {len(source['speakers'])} speakers of one corpus: its speaking style "
        "(acted, read or spontaneous), language(s) and recording conditions; other speech is "
        "out of domain until scored on it",
        (
            "- speaker adaptation: each new speaker should bring unlabelled enrollment audio "
            "(`--enroll`); without it the training speakers' statistics are used"
            if enrollment
            else "- speaker adaptation: none needed (normalised with the training speakers' "
            "statistics)"
        ),
        f"- the model sees the first {meta['graph']['max_nodes']} nodes of each utterance",
    ]
    return "\n".join(lines) + "\n"
