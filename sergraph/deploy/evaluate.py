"""Score a bundle on a labelled corpus (``sergraph evaluate``), e.g. another corpus than its own.

The bundle predicts every utterance of the corpus (``data=...``, ``data.root=...``, any other
``data.*`` override) under the bundle's own protocol: a bundle trained with
``eval.protocol=enrollment`` takes each speaker's enrollment subset exactly as training drew
it (:func:`~sergraph.data.protocol.enrollment_rows`, the same amount and seed), uses it
unlabelled for that speaker's normalisation and never scores it. The corpus's labels are mapped
onto the bundle's classes with an explicit, validated mapping
(:func:`sergraph.data.cross_corpus.label_mapping`, which cross-corpus studies use too): a corpus
class the bundle cannot predict is refused by name unless it is mapped (``--map FROM=TO``) or
dropped (``--drop CLASS``), never silently.

The result is one cell in the run layout (:mod:`sergraph.results.layout`):
``OUT_DIR/NAME/LABEL/seed-0/fold-00/`` with ``predictions.csv`` (one row per scored utterance,
plus its ``corpus_label``), ``metrics.json`` (every metric of :data:`sergraph.metrics.METRICS`,
per-class recall and support, confusion, the data fingerprint of the evaluated corpus, the
provenance of the bundle and of the code, ``evaluation``: what was mapped and dropped) and
``config.yaml``, so ``sergraph report OUT_DIR/NAME`` reads it like a study.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from sergraph.data.cross_corpus import label_mapping

__all__ = ["evaluate_bundle", "label_mapping", "parse_mapping", "run_evaluate"]

#: The cell an evaluation writes (seed and fold of the one scored "fold": every speaker).
EVALUATION_SEED = 0


def parse_mapping(items: Sequence[str] | None) -> dict[str, str]:
    """``["excited=happy", "calm=neutral,boredom=neutral"]`` as ``{corpus class: bundle class}``.

    Raises:
        ValueError: an item without ``=``, or a class mapped twice to different classes.
    """
    mapping: dict[str, str] = {}
    for item in items or []:
        for part in str(item).split(","):
            if not part.strip():
                continue
            source, sep, target = part.partition("=")
            source, target = source.strip(), target.strip()
            if not sep or not source or not target:
                raise ValueError(
                    f"--map {part!r}: write CORPUS_CLASS=BUNDLE_CLASS (e.g. --map excited=happy)"
                )
            if mapping.get(source, target) != target:
                raise ValueError(
                    f"--map maps {source!r} to both {mapping[source]!r} and {target!r}; give one"
                )
            mapping[source] = target
    return mapping


def _label_map_override(
    overrides: Sequence[str], mapping: dict[str, str] | None
) -> tuple[list[str], dict[str, str]]:
    """``eval.label_map={excited: happy, calm: neutral}`` among the overrides, spelled as in
    experiment files, merged with ``--map``; the other overrides."""
    import yaml

    mapping, rest = dict(mapping or {}), []
    for override in overrides:
        if not override.startswith("eval.label_map="):
            rest.append(override)
            continue
        value = yaml.safe_load(override.split("=", 1)[1])
        if not isinstance(value, dict):
            raise ValueError(
                f"{override}: write eval.label_map={{CORPUS_CLASS: BUNDLE_CLASS, ...}}"
            )
        for source, target in value.items():
            parse_mapping([f"{source}={target}"])  # the same checks as --map
            if mapping.get(str(source), str(target)) != str(target):
                raise ValueError(
                    f"{override} maps {source!r} to {target!r} but --map to {mapping[source]!r}"
                )
            mapping[str(source)] = str(target)
    return rest, mapping


def evaluate_bundle(
    bundle_path: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    mapping: dict[str, str] | None = None,
    drop: Sequence[str] | None = None,
    out_dir: str | os.PathLike = "runs",
    name: str = "evaluate",
    label: str | None = None,
    workers: int = 1,
    cache_dir: str | os.PathLike | None = None,
    device: str | None = "cpu",
    progress: bool = False,
) -> tuple[Path, dict]:
    """Score a bundle on a labelled corpus; write one result cell (see module docstring).

    Args:
        bundle_path: a ``.sergraph`` bundle.
        overrides: ``data=NAME`` and ``data.*=VALUE`` overrides choosing the corpus; also
            ``eval.label_map={FROM: TO, ...}`` (the same as ``mapping``).
        mapping: corpus class -> bundle class (validated, :func:`label_mapping`).
        drop: corpus classes whose utterances are left out (counted in ``metrics.json``).
        out_dir, name, label: the cell is ``out_dir/name/label/seed-0/fold-00`` (label
            default: ``<bundle file stem>-on-<corpus name>``).
        workers, cache_dir, device, progress: as :meth:`~sergraph.deploy.ensemble.Bundle.predict`.

    Returns:
        ``(cell folder, metrics as written)``.

    Raises:
        ValueError: an override outside ``data`` (and ``eval.label_map``); an invalid label
            mapping; no utterance left to score; an enrollment amount a speaker of the corpus
            cannot honour.
    """
    from omegaconf import OmegaConf

    from sergraph.config import compose
    from sergraph.data.fingerprint import cell_fingerprint, study_fingerprint
    from sergraph.data.prepared import load_table
    from sergraph.data.protocol import enrollment_rows, protocol_record
    from sergraph.deploy.bundle import load_bundle
    from sergraph.io import atomic_write_text, file_sha256
    from sergraph.metrics import scores_from_labels
    from sergraph.results.layout import CellPaths, cell_dir, predictions_frame, write_cell
    from sergraph.results.provenance import now, provenance

    started = now()
    overrides, mapping = _label_map_override(overrides, mapping)
    bad = [o for o in overrides if not (o.startswith("data=") or o.startswith("data."))]
    if bad:
        raise ValueError(
            f"sergraph evaluate takes corpus overrides only (data=NAME, data.root=PATH, "
            f"data.*=VALUE, and eval.label_map={{FROM: TO}}); got {bad}"
        )
    bundle = load_bundle(bundle_path, map_location=device)
    cfg = compose(list(overrides))
    table, corpus_classes = load_table(cfg)
    table = table.reset_index(drop=True)
    classes = list(bundle.classes)
    targets = label_mapping(corpus_classes, classes, mapping, drop)

    protocol = bundle.meta.get("protocol") or protocol_record("inductive")
    speakers = sorted({str(s) for s in table["speaker"]})
    enrollment: dict[str, list[str]] = {}
    held_aside = np.zeros(len(table), dtype=bool)
    if protocol["name"] == "enrollment":
        rows = enrollment_rows(
            table, speakers, protocol["enrollment"], int(protocol.get("enrollment_seed", 0))
        )
        held_aside[rows] = True
        for row in rows:
            enrollment.setdefault(str(table.at[row, "speaker"]), []).append(
                str(table.at[row, "path"])
            )
    mapped = table["label"].astype(str).map(targets)
    dropped = (~held_aside) & mapped.isna().to_numpy()
    scored = table[(~held_aside) & ~dropped].reset_index(drop=True)
    if scored.empty:
        raise ValueError(f"no utterance of {cfg.data.name} is left to score after --drop {drop}")
    frame = bundle.predict(
        scored["path"].astype(str).tolist(),
        workers=workers,
        cache_dir=cache_dir,
        progress=progress,
        speakers=scored["speaker"].astype(str).tolist(),
        enrollment=enrollment or None,
    )
    if frame["path"].astype(str).tolist() != scored["path"].astype(str).tolist():
        raise RuntimeError("the bundle's predictions are not one row per scored file, in order")
    probabilities = frame[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)
    true = [classes.index(t) for t in mapped[(~held_aside) & ~dropped]]
    predictions = predictions_frame(
        scored["utterance"].astype(str).tolist(),
        scored["speaker"].astype(str).tolist(),
        true,
        probabilities,
        classes,
    )
    predictions["corpus_label"] = scored["label"].astype(str).tolist()
    scores = scores_from_labels(
        true, predictions["predicted"].map(classes.index).to_numpy(), len(classes)
    )

    fold = SimpleNamespace(index=0, train_speakers=[], val_speakers=[], test_speakers=speakers)
    study = study_fingerprint(
        table, [file_sha256(p) for p in table["path"].astype(str)], [fold], "audio"
    )
    meta = bundle.meta
    evaluated_config = dict(meta["config"])
    evaluated_config["data"] = OmegaConf.to_container(cfg.data, resolve=True)
    label = label or f"{Path(bundle_path).stem}-on-{cfg.data.name}"
    cell = cell_dir(Path(out_dir) / name / label, EVALUATION_SEED, fold.index)
    cell.mkdir(parents=True, exist_ok=True)
    atomic_write_text(CellPaths(cell).config, OmegaConf.to_yaml(OmegaConf.create(evaluated_config)))
    counts = table["label"].astype(str).value_counts()
    record = {
        "config_id": meta["config_id"],
        "model": meta["model"]["name"],
        "seed": EVALUATION_SEED,
        "fold": 0,
        "train_speakers": list(meta["source"]["speakers"]),
        "val_speakers": [],
        "test_speakers": speakers,
        "classes": classes,
        "n_test": len(predictions),
        "protocol": protocol,
        **scores,
        "data": cell_fingerprint(
            study,
            fold,
            predictions["utterance"].tolist(),
            protocol["name"],
            protocol.get("enrollment"),
            protocol.get("enrollment_seed"),
        ),
        "evaluation": {
            "cross_corpus": True,
            "corpus": cfg.data.name,
            "data_root": cfg.data.root,
            "overrides": list(overrides),
            "corpus_classes": list(corpus_classes),
            "label_map": {k: v for k, v in targets.items() if v is not None and v != k},
            "dropped": {c: int(counts.get(c, 0)) for c, v in targets.items() if v is None},
            "n_dropped": int(dropped.sum()),
            "n_enrollment": int(held_aside.sum()),
            "classes_absent": [c for c, n in zip(classes, scores["support"], strict=True) if not n],
            "bundle": {
                "path": str(Path(bundle_path).resolve()),
                "sha256": file_sha256(Path(bundle_path)),
                "config_id": meta["config_id"],
                "sergraph": meta["sergraph"],
                "created": meta["created"],
                "trained_on": meta["source"]["corpus"],
                "members": [[m["seed"], m["fold"]] for m in meta["members"]],
                "training_data": (meta.get("evaluation") or {}).get("data"),
            },
        },
        "provenance": provenance(cfg, started),
    }
    return cell, write_cell(cell, predictions, record)


def run_evaluate(args) -> int:
    """The ``sergraph evaluate`` verb."""
    cell, metrics = evaluate_bundle(
        args.bundle,
        args.overrides,
        mapping=parse_mapping(args.map),
        drop=args.drop,
        out_dir=args.out_dir,
        name=args.name,
        label=args.label,
        workers=args.workers,
        cache_dir=args.cache_dir,
        device=None if args.device == "auto" else args.device,
        progress=not args.quiet,
    )
    from sergraph.metrics import METRICS

    evaluation = metrics["evaluation"]
    scores = " ".join(f"{m.display} {100 * metrics[m.name]:.2f}" for m in METRICS.values())
    print(
        f"{evaluation['bundle']['trained_on']} -> {evaluation['corpus']}: "
        f"{metrics['n_test']} utterances scored, {scores}"
        + (
            f"; {evaluation['n_enrollment']} held aside for enrollment"
            if evaluation["n_enrollment"]
            else ""
        )
        + (
            f"; {evaluation['n_dropped']} dropped ({evaluation['dropped']})"
            if evaluation["n_dropped"]
            else ""
        )
    )
    recall = ", ".join(
        f"{c} {'-' if n == 0 else f'{100 * r:.1f}'}"
        for c, r, n in zip(metrics["classes"], metrics["recall"], metrics["support"], strict=True)
    )
    print(f"recall %: {recall}")
    if evaluation["classes_absent"]:
        print(
            f"note: no utterance of class(es) {evaluation['classes_absent']} was scored; UA and "
            "F1 are means over the classes present",
            file=sys.stderr,
        )
    print(f"written: {cell} (sergraph report {cell.parents[2]})", file=sys.stderr)
    return 0
