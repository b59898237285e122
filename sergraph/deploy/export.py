"""Export: a bundle from a finished run's folder alone, checked against its ``predictions.csv``.

Every checkpoint of a fold carries what export needs
(:meth:`~sergraph.data.datamodule.FoldDataModule.export_state`, saved by Lightning with the
data module's state): the training-fold normalisation statistics, the classes, the graph
settings, the run's configuration, training precision and audio pipeline (openSMILE version,
recipe, feature names), and the test speakers' raw node features. So ``sergraph export RUN_DIR``
needs neither the corpus nor the feature cache. Checkpoints written before sergraph stored this
state are exported from the corpus instead (``data_root``, ``--data-root``), with the same data
module as in training.

Verification (:mod:`sergraph.deploy.verify`): each member re-predicts its fold's test inputs
through the bundle's own route and must agree with the run's ``predictions.csv``.

Runs trained with per-speaker statistics are exportable under ``eval.protocol=enrollment``
only (a transductive run normalised each held-out speaker with the utterances it scored, which
new speakers cannot give). Each member's own statistics are then the training speakers'
(``training_normalizer`` of the export state), used for a speaker who brings no enrollment audio;
a speaker with enrollment audio is normalised with it (:mod:`sergraph.deploy.enroll`).

Runs trained with ``features.concat_functionals`` (the recommended model) are exportable under
``eval.protocol=inductive``: their checkpoints also carry the training fold's statistics of the
utterance functionals and the test inputs' raw functionals vectors, which the bundle stores
(``meta["functionals"]`` names the openSMILE set; each member its ``global_mean``/``global_std``)
and verification feeds. Under ``eval.protocol=enrollment`` the functionals are handled like
the node features: each member's own statistics are the training speakers' functionals
(``training_global_normalizer``), and a speaker with enrollment audio is normalised with the
functionals of that audio (:mod:`sergraph.deploy.enroll`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sergraph.data.cross_corpus import is_cross_corpus
from sergraph.deploy.card import evaluation_record, model_card
from sergraph.deploy.ensemble import SUFFIX, Bundle
from sergraph.deploy.pipeline import BundleError
from sergraph.deploy.verify import (
    REDUCED_PRECISION_TOLERANCE,
    VERIFY_TOLERANCE,
    stored_test_inputs,
    verify_bundle,
    verify_tolerance,
)
from sergraph.metrics import BEST_VALIDATION, METRICS
from sergraph.results.layout import (
    CellPaths,
    finished_cells,
    read_json,
    read_metrics,
    read_predictions,
    unfinished_cells,
    variant_dirs,
)

__all__ = [
    "REDUCED_PRECISION_TOLERANCE",
    "VERIFY_TOLERANCE",
    "export_bundle",
    "stored_test_inputs",
    "verify_bundle",
    "verify_tolerance",
]


def export_bundle(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    data_root: str | None = None,
    verify: bool = True,
    partial: bool = False,
) -> tuple[Path, Bundle]:
    """Write a bundle from a finished run; needs only the run folder.

    Args:
        run_dir: a model folder ``runs/NAME/LABEL`` (every finished fold and seed: an ensemble)
            or one ``runs/NAME/LABEL/seed-S/fold-XX`` folder.
        out: the bundle file (default: ``RUN_DIR/bundle.sergraph``).
        folds: only these fold indices.
        seeds: only these seeds.
        data_root: the corpus location, for checkpoints written before checkpoints carried
            their export state (the statistics are then recomputed from the corpus and the
            cached features); not needed otherwise.
        verify: re-predict each fold's test inputs through the bundle and compare with the
            run's ``predictions.csv``.
        partial: accept a study whose folds are not all finished (stopped, or still running);
            the bundle then says which are missing (``meta["partial"]``). Without it such a
            model folder is refused. Choosing folds or seeds (``folds``, ``seeds``) or one fold
            folder is a choice, not a partial study.

    Returns:
        ``(path written, the bundle)``.

    Raises:
        FileNotFoundError: no finished folds under ``run_dir``, or a missing checkpoint.
        BundleError: a study with unfinished folds (without ``partial``), a model or setting
            that cannot be exported (SVM, per-speaker normalisation outside
            ``eval.protocol=enrollment``), folds of different configurations, old checkpoints without
            ``data_root``, or a failed verification (nothing is written then).
    """
    from omegaconf import OmegaConf

    from sergraph.config import (
        Config,
        identity,
        model_spec,
        protocol_of,
        upgrade_saved,
        validate,
    )
    from sergraph.data.protocol import protocol_record
    from sergraph.training.provenance import run_provenance
    from sergraph.version import __version__

    run_dir = Path(run_dir)
    cells = _finished_cells(run_dir, folds, seeds)
    records = [read_json(CellPaths(cell).metrics) for cell in cells]  # verified above
    ids = sorted({record["config_id"] for record in records})
    if len(ids) > 1:
        raise BundleError(f"{run_dir} holds folds of {len(ids)} configurations {ids}")
    saved_path = CellPaths(cells[0]).config
    saved = OmegaConf.load(saved_path)
    try:  # a config.yaml of an older release, in today's spelling (same identity)
        saved = upgrade_saved(saved)
    except ValueError as error:
        raise BundleError(f"{saved_path}: {error}") from None
    cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)
    if is_cross_corpus(cfg):
        # a bundle's metadata and model card describe one training corpus and its
        # cross-validated scores; a cross-corpus cell's are neither
        raise BundleError(
            f"{run_dir} is a cross-corpus study (cross_corpus in its config.yaml); its cells are "
            "not exported as bundles yet. Export a within-corpus run of the training corpus and "
            "score it on the other corpus with `sergraph evaluate`"
        )
    missing = None
    if folds is None and seeds is None and not CellPaths(run_dir).metrics.is_file():
        missing = _missing_folds(run_dir, cfg, records)
        if missing and not partial:
            raise BundleError(
                f"{run_dir} is not finished: {missing}. A bundle of part of a study is not the "
                "model its summary describes. Finish the study (run the same `sergraph train` "
                "again: it resumes), or export what is finished with --partial (the bundle then "
                "says it is partial), or choose folds with --fold/--seed"
            )
    family, model_params = model_spec(cfg)
    protocol = protocol_of(cfg)
    _check_exportable(cfg, family, protocol)
    study_root = cells[0].parents[2]  # <out_dir>/<run.name>
    cfg.run.out_dir = str(study_root.parent)
    cfg.run.name = study_root.name
    if data_root is not None:
        cfg.data.root = str(data_root)
    validate(cfg)

    checkpoints = [
        _read_checkpoint(cell, record) for cell, record in zip(cells, records, strict=True)
    ]
    # A per-speaker fold's state from before enrollment statistics were stored is incomplete:
    # like an old checkpoint, it is recomputed from the corpus.
    states = [_complete(checkpoint["export"]) for checkpoint in checkpoints]
    old = [cell for cell, state in zip(cells, states, strict=True) if state is None]
    if old:
        states = _states_from_corpus(cfg, cells, records, states, data_root)
    first = states[0]
    for cell, state in zip(cells, states, strict=True):
        for key in ("classes", "num_features", "graph"):
            if state[key] != first[key]:
                raise BundleError(
                    f"{cell}: its checkpoint has {key}={state[key]!r} but {cells[0]} has "
                    f"{first[key]!r}; export folds of one configuration together"
                )
    # A data module made outside training may carry no provenance: the run's config.yaml then.
    provenance = first["provenance"] or run_provenance(cfg)
    functionals = _functionals_record(cfg, cells, states, provenance)
    precision = provenance["precision"]
    if "unsupported" in provenance["features"]:
        raise BundleError(
            f"{cells[0]}: bundles cannot reproduce this run's audio pipeline "
            f"({provenance['features']['unsupported']}); they support openSMILE and SSL feature sets"
        )
    meta = {
        "sergraph": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(first["classes"]),
        "model": {
            "name": cfg.model.name,
            "family": family,
            "params": model_params,
            "in_channels": int(first["num_features"]),
            **({"global_channels": len(functionals["names"])} if functionals else {}),
        },
        "features": dict(provenance["features"])
        | _read_seconds(cfg.features.get("max_seconds"), provenance["features"]),
        **({"functionals": functionals} if functionals else {}),
        "graph": dict(first["graph"]),
        "precision": precision,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "config_id": identity(cfg),
        "protocol": protocol_record(
            protocol,
            OmegaConf.select(cfg, "eval.enrollment", default=None),
            OmegaConf.select(cfg, "eval.enrollment_seed", default=0),
        ),
        "source": {
            "run_dir": str(run_dir.resolve()),
            "corpus": cfg.data.name,
            "data_root": cfg.data.root,
            "n_utterances": int(first["corpus"]["n_utterances"]),
            "speakers": list(first["corpus"]["speakers"]),
        },
        "members": [
            _member_provenance(run_dir, cell, record)
            for cell, record in zip(cells, records, strict=True)
        ],
        **({"partial": missing} if missing else {}),
        "evaluation": evaluation_record(cells, records),
    }
    members = [
        {"state_dict": checkpoint["weights"], **_statistics(state)}
        for checkpoint, state in zip(checkpoints, states, strict=True)
    ]
    bundle = Bundle(meta, members, device="cpu")
    if verify:
        meta["verification"] = verify_bundle(bundle, cells, states, precision, from_corpus=old)
    meta["model_card"] = model_card(meta)
    out = Path(out) if out is not None else run_dir / f"bundle{SUFFIX}"
    bundle.save(out)
    return out, bundle


# --------------------------------------------------------------------------------------------
# reading the run


def _check_exportable(cfg, family: str, protocol: str) -> None:
    from sergraph.config import normalization_of
    from sergraph.models import is_classic

    if is_classic(family):
        raise BundleError(
            f"model {cfg.model.name!r} cannot be exported: it is a classic baseline, and bundles "
            "hold neural models only"
        )
    if cfg.model.get("fusion"):
        raise BundleError(
            f"model.fusion={cfg.model.fusion}: this run's predictions fuse the neural model with "
            "an SVM that is not part of a bundle (a bundle would predict with the neural model "
            "alone, not what was evaluated); export a run trained without model.fusion"
        )
    if protocol == "transductive" and normalization_of(cfg) == "speaker":
        raise BundleError(
            "eval.protocol=transductive normalises each held-out speaker with the very "
            "utterances it scores, which a bundle cannot do for new speakers; export a run "
            "trained with eval.protocol=enrollment (speakers then bring enrollment audio) or "
            "eval.protocol=inductive"
        )


def _finished_cells(
    run_dir: Path, folds: Sequence[int] | None, seeds: Sequence[int] | None
) -> list[Path]:
    """Fold folders with a verified metrics.json under ``run_dir`` (one fold folder or a model
    folder), their predictions finite."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if CellPaths(run_dir).metrics.is_file():  # one cell folder
        records = {run_dir: read_metrics(run_dir, checkpoint=True)}
    else:
        records = {cell: read_metrics(cell, checkpoint=True) for cell, _ in finished_cells(run_dir)}
    cells = list(records)
    if not cells:
        models = [p.relative_to(run_dir).as_posix() for p in variant_dirs(run_dir) if p != run_dir]
        if models:
            choices = [str(run_dir / name) for name in models]
            raise BundleError(f"{run_dir} holds several models; export one of them: {choices}")
        raise FileNotFoundError(
            f"no finished folds under {run_dir}: expected RUN_DIR/seed-S/fold-XX/metrics.json "
            "(a model folder runs/NAME/LABEL) or RUN_DIR/metrics.json (one fold folder)"
        )
    if folds is not None:
        cells = [c for c in cells if records[c]["fold"] in set(folds)]
    if seeds is not None:
        cells = [c for c in cells if records[c]["seed"] in set(seeds)]
    if not cells:
        found = sorted({(r["seed"], r["fold"]) for r in records.values()})
        raise BundleError(
            f"no finished fold of {run_dir} matches folds={folds} seeds={seeds}; "
            f"finished (seed, fold): {found}"
        )
    for cell in cells:
        _check_finite_predictions(cell, records[cell]["classes"])
    return cells


def _missing_folds(run_dir: Path, cfg, records: list[dict]) -> str | None:
    """What a model folder lacks of its study, in words, or ``None`` when every cell is finished.

    Needs only the run folder: the seeds are the configuration's ``run.seeds``; the folds its
    ``folds.only``, or else every fold of the corpus, and since every fold scheme tests each
    speaker exactly once, the finished folds of a seed must together test every speaker that
    any fold trained, validated or tested on.
    """
    speakers = sorted(
        {s for r in records for split in ("train", "val", "test") for s in r[f"{split}_speakers"]}
    )
    wanted_folds = None if cfg.folds.only is None else sorted(int(f) for f in cfg.folds.only)
    problems = []
    for seed in [int(s) for s in cfg.run.seeds]:
        done = [r for r in records if r["seed"] == seed]
        if wanted_folds is not None:
            lacking = sorted(set(wanted_folds) - {r["fold"] for r in done})
            if lacking:
                problems.append(f"seed {seed}: fold(s) {lacking} have no results")
            continue
        untested = [s for s in speakers if s not in {t for r in done for t in r["test_speakers"]}]
        if untested:
            problems.append(
                f"seed {seed}: speaker(s) {', '.join(untested)} were never tested (their folds "
                f"have no results; {len(done)} fold(s) finished)"
            )
    running = [cell.relative_to(run_dir).as_posix() for cell in unfinished_cells(run_dir)]
    if running:
        problems.append(f"unfinished cell folder(s) {', '.join(running)}")
    return "; ".join(problems) or None


def _check_finite_predictions(cell: Path, classes: Sequence[str]) -> None:
    """A fold whose test probabilities are not all finite came from a diverged model."""
    saved = read_predictions(cell)
    columns = [f"p_{name}" for name in classes]
    values = saved.reindex(columns=columns).apply(pd.to_numeric, errors="coerce").to_numpy()
    bad = int((~np.isfinite(values)).any(axis=1).sum())
    if bad:
        raise BundleError(
            f"{CellPaths(cell).predictions}: {bad} of {len(saved)} test predictions have no finite "
            "probabilities (nan, inf or empty): this fold's model diverged and cannot be "
            "exported. Train it again with a lower optim.lr, or leave it out (--fold, --seed)."
        )


def _read_checkpoint(cell: Path, record: dict) -> dict:
    """``{"weights": encoder state dict, "export": export state or None}`` of a fold's best
    checkpoint (a :class:`~sergraph.training.module.SERModule` Lightning checkpoint)."""
    from sergraph.data.datamodule import EXPORT_STATE_FORMAT, FoldDataModule

    if not record.get("checkpoint"):
        raise FileNotFoundError(
            f"{CellPaths(cell).metrics} names no checkpoint; train that fold again"
        )
    path = cell / record["checkpoint"]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} is missing; train that fold again")
    # Our own run's checkpoint (it stores Lightning callback state, not only tensors).
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    prefix = "model."
    weights = {
        key[len(prefix) :]: value.detach().clone()
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    state = checkpoint.get(FoldDataModule.__qualname__, {}).get("export")
    if state is not None and state.get("format", 0) > EXPORT_STATE_FORMAT:
        raise BundleError(
            f"{path} was written by a newer sergraph (export state format {state['format']}); "
            "upgrade sergraph to export it"
        )
    if state is not None:
        recorded = [record[f"{split}_speakers"] for split in ("train", "val", "test")]
        stored = [state["fold"][f"{split}_speakers"] for split in ("train", "val", "test")]
        stored_id = (state.get("provenance") or {}).get("config_id", record["config_id"])
        if recorded != stored or stored_id != record["config_id"]:
            raise BundleError(
                f"{path} does not belong to {CellPaths(cell).metrics} (its speakers or "
                "configuration differ); train that fold again"
            )
    return {"weights": weights, "export": state}


def _states_from_corpus(cfg, cells, records, states, data_root) -> list[dict]:
    """Export states for checkpoints that lack them, recomputed from the corpus as training did."""
    from sergraph.data.prepared import prepare
    from sergraph.training.fit import fold_datamodule

    old = [str(cell) for cell, state in zip(cells, states, strict=True) if state is None]
    if data_root is None:
        raise BundleError(
            f"the checkpoints of {old} were written by an older sergraph and do not carry the "
            "normalisation statistics and test inputs that export needs. Train those folds "
            "again (sergraph train ...), or give the training corpus with --data-root "
            f"(data_root=...; it was {cfg.data.root}) to recompute them from the corpus and "
            "the feature cache"
        )
    try:
        study = prepare(cfg)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error}. Exporting the old checkpoints of {old} recomputes the training-fold "
            "normalisation statistics from the corpus; give its current location with "
            "--data-root"
        ) from None
    filled = []
    for cell, record, state in zip(cells, records, states, strict=True):
        if state is None:
            fold = study.folds[record["fold"]]
            recorded = tuple(record[f"{split}_speakers"] for split in ("train", "val", "test"))
            if recorded != tuple(
                list(getattr(fold, f"{split}_speakers")) for split in ("train", "val", "test")
            ):
                raise BundleError(
                    f"{cell}: the corpus no longer gives this fold's speakers (trained with "
                    f"test {record['test_speakers']}, now {list(fold.test_speakers)}); the "
                    "corpus or its failed files changed since training"
                )
            # The same data module the training used: normalisation from the training side.
            datamodule = fold_datamodule(cfg, study, fold, record["seed"])
            datamodule.setup()
            state = datamodule.export_state()
        filled.append(state)
    return filled


def _complete(state: dict | None) -> dict | None:
    """``state``, or ``None`` where it lacks what export needs (per-speaker normalisation
    without the training and enrollment statistics, of the node features or of the utterance
    functionals: written before they were stored)."""
    if state is None or state["graph"]["normalize"] != "speaker":
        return state
    if state.get("training_normalizer") is None or state.get("enrollment_normalizers") is None:
        return None
    if state.get("num_global_features") and (
        state.get("training_global_normalizer") is None
        or state.get("enrollment_global_normalizers") is None
    ):
        return None
    return state


def _functionals_record(cfg, cells, states, provenance) -> dict | None:
    """``meta["functionals"]`` of a ``features.concat_functionals`` run (``None`` otherwise):
    what rebuilds the utterance vector ``u`` of new audio exactly as training's feature cache
    computed it: the openSMILE functionals set, its names, the rate files are resampled to,
    the openSMILE version and sergraph feature recipe and, for a run trained with
    ``features.max_seconds``, ``max_seconds`` (training computed the vector from that first
    part of each file only)."""
    from sergraph.data.features import (
        RECIPE_VERSION,
        FeatureConfig,
        functional_names,
        opensmile_version,
    )

    if not cfg.features.get("concat_functionals", False):
        return None
    for cell, state in zip(cells, states, strict=True):
        statistics = state.get("global_normalizer") or state.get("training_global_normalizer")
        if statistics is None or "functionals" not in state["test"]:
            raise BundleError(
                f"{cell}: its checkpoint carries no utterance-functionals statistics and test "
                "vectors (written by an older sergraph); train that fold again"
            )
    feature_set = str(cfg.features.functionals)
    names = functional_names(feature_set)
    width = {int(state["num_global_features"]) for state in states}
    if width != {len(names)}:
        raise BundleError(
            f"{cells[0]}: the checkpoints hold {sorted(width)} functionals per utterance but "
            f"this openSMILE gives {len(names)} {feature_set} functionals; export the run in "
            "the environment it was trained in"
        )
    # the rate training's feature cache resampled to: the configured one, else the corpus's
    # one rate (as for the node features; None: each file at its own rate)
    rate = FeatureConfig.from_any(cfg.features).sample_rate
    if rate is None:
        rate = provenance["features"].get("sample_rate")
    record = {
        "feature_set": feature_set,
        "names": names,
        "sample_rate": rate,
        "opensmile": opensmile_version(),
        "recipe": RECIPE_VERSION,
    }
    max_seconds = cfg.features.get("max_seconds")
    if max_seconds is not None:  # absent otherwise: the whole file (bundles of earlier runs too)
        record["max_seconds"] = float(max_seconds)
    return record


def _read_seconds(max_seconds, features: dict) -> dict:
    """``{"max_seconds": ...}`` for ``meta["features"]`` of a run of openSMILE features trained
    with ``features.max_seconds`` (training read only that first part of each file; a bundle
    then reads no more, :meth:`~sergraph.deploy.ensemble.Bundle.input_config`), else ``{}``,
    so that bundles of other runs keep their metadata."""
    if max_seconds is None or features.get("ssl") is not None:
        return {}
    return {"max_seconds": float(max_seconds)}


def _statistics(state: dict) -> dict:
    """A member's own statistics: the training fold's, or under per-speaker normalisation the
    training speakers' (the fallback for speakers without enrollment audio); with utterance
    functionals also theirs (``global_mean``, ``global_std``)."""
    normalizer = state["normalizer"]
    if normalizer is None:
        normalizer = state.get("training_normalizer")
    if normalizer is None:  # refused before (_check_exportable, _complete)
        raise BundleError("this fold has no training-fold normalisation statistics")
    statistics = {
        "mean": np.asarray(normalizer["mean"], dtype=np.float32),
        "std": np.asarray(normalizer["std"], dtype=np.float32),
    }
    functionals = state.get("global_normalizer")
    if functionals is None:  # per-speaker: the training speakers' (as for the nodes)
        functionals = state.get("training_global_normalizer")
    if functionals is not None:
        statistics["global_mean"] = np.asarray(functionals["mean"], dtype=np.float32)
        statistics["global_std"] = np.asarray(functionals["std"], dtype=np.float32)
    return statistics


def _member_provenance(run_dir: Path, cell: Path, record: dict) -> dict:
    return {
        "seed": record["seed"],
        "fold": record["fold"],
        "train_speakers": record["train_speakers"],
        "val_speakers": record["val_speakers"],
        "test_speakers": record["test_speakers"],
        **{f"test_{name}": record.get(name) for name in METRICS},
        BEST_VALIDATION: record.get(BEST_VALIDATION),
        "epochs": record.get("epochs"),
        "checkpoint": str(cell.relative_to(run_dir) / record["checkpoint"]),
    }
