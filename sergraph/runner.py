"""Cross-validation runs: for each seed and fold, fit with early stopping on the validation
speakers, test the best checkpoint once on the held-out speakers, write the results.

Layout of a run (``run.out_dir/run.name/model/``)::

    seed-0/fold-00/config.yaml        resolved configuration of the fold
    seed-0/fold-00/predictions.csv    utterance, speaker, true, predicted, p_<class> ...
    seed-0/fold-00/metrics.json       written last: its presence marks the fold finished
    seed-0/fold-00/checkpoints/best.ckpt
    summary.json, summary.md          per-fold, mean +- std over folds and pooled WA/UA

Re-running the same command skips finished folds; a fold whose saved configuration differs
from the current one is refused instead of silently mixed into the summary. A fold interrupted
after at least one epoch (killed, or preempted and requeued by SLURM) resumes from its
``checkpoints/last.ckpt`` and ends with the same results as an uninterrupted run.

Multi-process (DDP) runs: every process runs the same command; only global rank zero writes
files, see :func:`is_global_zero`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sergraph.config import compose_study, identity, to_yaml
from sergraph.folds import Fold, make_folds, split_indices
from sergraph.io import atomic_write_csv, atomic_write_json, atomic_write_text
from sergraph.metrics import pooled_scores, scores_from_labels

SYNTHETIC_NOTE = "NOTE: data=synthetic is a generated corpus, not speech; its numbers say nothing about real SER."


@dataclass
class Study:
    """Everything a fold needs that does not depend on the fold."""

    table: pd.DataFrame
    classes: list[str]
    folds: list[Fold]
    features: list[np.ndarray] | None = None
    functionals: np.ndarray | None = None


def default_cache_dir() -> Path:
    return Path(os.environ.get("SERGRAPH_CACHE", Path.home() / ".cache" / "sergraph"))


def feature_cache(cfg: DictConfig):
    from sergraph.features import FeatureCache, FeatureConfig

    root = (
        Path(cfg.features.cache_dir) if cfg.features.cache_dir else default_cache_dir() / "features"
    )
    config = FeatureConfig(
        feature_set=cfg.features.feature_set, deltas=cfg.features.deltas, pool=cfg.features.pool
    )
    return FeatureCache(root, config)


def load_table(cfg: DictConfig) -> tuple[pd.DataFrame, list[str]]:
    """The corpus table after the label map, and the class names in index order."""
    from sergraph.corpora import load_corpus

    table = load_corpus(
        cfg.data.name,
        root=cfg.data.root,
        classes=list(cfg.data.classes) if cfg.data.classes is not None else None,
        merge=dict(cfg.data.merge) if cfg.data.merge else None,
        **OmegaConf.to_container(cfg.data.options),
    )
    classes = list(table.attrs["classes"])
    return table.reset_index(drop=True), classes


def prepare(cfg: DictConfig, need_features: bool = True) -> Study:
    """Load the corpus, fetch (cached) features and make the folds.

    Files whose features fail are handled as ``features.on_error`` says. ``stop`` (default)
    raises one :class:`~sergraph.features.FeatureError` listing every failed file with its
    reason, after all the other files are cached. ``skip`` leaves them out of the table *before*
    the folds are made, lists them with their reasons in ``<study dir>/failed_files.csv``
    (header only when none failed) and on stderr. Under ``skip`` the features are fetched even
    when ``need_features`` is false, because the folds depend on which files are left.
    """
    from sergraph.features import FeatureError

    table, classes = load_table(cfg)

    def folds_of(table: pd.DataFrame) -> list[Fold]:
        return make_folds(
            table,
            scheme=cfg.folds.scheme,
            val_speakers=cfg.folds.val_speakers,
            n_groups=cfg.folds.n_groups,
            seed=cfg.folds.seed,
        )

    folds = folds_of(table)  # before any extraction: an impossible fold setup fails at once
    skip = cfg.features.get("on_error", "stop") == "skip"
    values = None
    failed = table.iloc[:0].assign(reason=[])
    if need_features or skip:
        cache = feature_cache(cfg)

        def functionals(paths: list[str]) -> np.ndarray:
            return np.asarray(
                cache.functionals(
                    paths, workers=cfg.features.workers, feature_set=cfg.features.functionals
                )
            )

        def fetch(paths: list[str]):
            if cfg.model.name == "svm":
                return functionals(paths)
            if cfg.features.get("concat_functionals", False):
                return cache.get(paths, workers=cfg.features.workers), functionals(paths)
            return cache.get(paths, workers=cfg.features.workers)

        try:
            values = fetch(table["path"].tolist())
        except FeatureError as error:
            if not skip:
                raise FeatureError(
                    error.failures,
                    hint="Fix or remove these files, or set features.on_error=skip to leave them "
                    f"out of the study (they are then listed in {study_dir(cfg)}/failed_files.csv).",
                ) from None
            reasons = dict(error.failures)
            is_failed = table["path"].isin(list(reasons))
            failed = table[is_failed].assign(reason=table.loc[is_failed, "path"].map(reasons))
            table = table[~is_failed].reset_index(drop=True)
        if skip:
            listing = study_dir(cfg) / "failed_files.csv"
            atomic_write_csv(listing, failed.reset_index(drop=True))
            if len(failed):
                shown = [f"  {row.path}: {row.reason}" for row in failed.head(20).itertuples()]
                more = [f"  ... and {len(failed) - 20} more"] if len(failed) > 20 else []
                log(
                    f"features.on_error=skip: left out {len(failed)} of "
                    f"{len(failed) + len(table)} file(s) whose features failed (listed in "
                    f"{listing}):\n" + "\n".join(shown + more)
                )
                if table.empty:
                    raise ValueError(f"every file of the corpus failed; see {listing}")
                values = fetch(table["path"].tolist())  # all cache hits now
    if len(failed):
        folds = folds_of(table)
    study = Study(table=table, classes=classes, folds=folds)
    if values is not None and cfg.model.name == "svm":
        study.functionals = values
    elif isinstance(values, tuple):
        study.features, study.functionals = values
    elif values is not None:
        study.features = values
    return study


def study_dir(cfg: DictConfig) -> Path:
    return Path(cfg.run.out_dir) / (cfg.run.name or cfg.data.name)


def run_root(cfg: DictConfig) -> Path:
    return study_dir(cfg) / (cfg.run.label or cfg.model.name)


def fold_dir(cfg: DictConfig, seed: int, fold: Fold) -> Path:
    return run_root(cfg) / f"seed-{seed}" / fold.name


def selected_folds(cfg: DictConfig, folds: list[Fold]) -> list[Fold]:
    if cfg.folds.only is None:
        return folds
    bad = [i for i in cfg.folds.only if not 0 <= i < len(folds)]
    if bad:
        raise ValueError(
            f"folds.only={list(cfg.folds.only)}: fold(s) {bad} do not exist; 0..{len(folds) - 1}"
        )
    return [folds[i] for i in cfg.folds.only]


def finished(cfg: DictConfig, directory: Path) -> bool:
    """True if the fold has results for this configuration; raises if they are for another."""
    metrics = directory / "metrics.json"
    if not metrics.is_file():
        return False
    saved = json.loads(metrics.read_text()).get("config_id")
    if saved != identity(cfg):
        raise RuntimeError(
            f"{directory} holds results of a different configuration (id {saved}, now "
            f"{identity(cfg)}); choose another run.name or remove that folder"
        )
    return True


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Cell:
    """One unit of work of a study: a variant (label), a seed and a fold."""

    index: int
    label: str
    seed: int
    fold: int


_STUDIES: dict[str, Study] = {}


def _study(cfg: DictConfig, need_features: bool = True) -> Study:
    """:func:`prepare`, memoised per (data, features, folds) so variants share one load."""
    sections = {key: OmegaConf.to_container(cfg[key]) for key in ("data", "features", "folds")}
    sections["svm"] = cfg.model.name == "svm"
    key = json.dumps(sections, sort_keys=True, default=str)
    study = _STUDIES.get(key)
    if study is None or (need_features and study.features is None and study.functionals is None):
        study = prepare(cfg, need_features=need_features)
        _STUDIES[key] = study
    return study


def plan(overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, DictConfig], list[Cell]]:
    """Every (variant, seed, fold) cell of a study, in a fixed order (label, seed, fold).

    The index of a cell is stable for a given configuration, so a SLURM array task can run
    ``run.cell=$SLURM_ARRAY_TASK_ID``.
    """
    configs = compose_study(overrides)
    cells: list[Cell] = []
    for label, cfg in configs.items():
        folds = selected_folds(cfg, _study(cfg, need_features=False).folds)
        for seed in cfg.run.seeds:
            for fold in folds:
                cells.append(Cell(len(cells), label, int(seed), fold.index))
    return configs, cells


def cell_dir(cfg: DictConfig, cell: Cell) -> Path:
    return fold_dir(cfg, cell.seed, _study(cfg, need_features=False).folds[cell.fold])


def run_cell(cfg: DictConfig, cell: Cell) -> dict | None:
    """Run one cell unless it is finished; returns its metrics (``None`` when skipped)."""
    directory = cell_dir(cfg, cell)
    if finished(cfg, directory):
        log(f"{cell.label} seed {cell.seed} fold-{cell.fold:02d}: finished earlier, skipped")
        return None
    study = _study(cfg)
    fold = study.folds[cell.fold]
    result = run_fold(cfg, study, fold, cell.seed, directory)
    log(
        f"{cell.label} seed {cell.seed} {fold.name} test {','.join(fold.test_speakers)}: "
        f"WA {100 * result['wa']:.2f} UA {100 * result['ua']:.2f} "
        f"({result['epochs']} epochs, {result['seconds']:.0f} s)"
    )
    return result


def _run_cell_in_worker(overrides: list[str], index: int, threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    configs, cells = plan(overrides)
    cell = cells[index]
    run_cell(configs[cell.label], cell)
    return index


def run_study(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, dict]:
    """Run every unfinished cell of a study (or only ``run.cell``), then summarise each variant.

    Cells run one after another, or ``run.parallel`` at a time in separate processes (each with
    ``cores / run.parallel`` torch threads). Returns the summary of each variant by label
    (empty when only one cell was asked for).
    """
    start = time.perf_counter()
    configs, cells = plan(overrides)
    first = next(iter(configs.values()))
    if first.data.name == "synthetic":
        log(SYNTHETIC_NOTE)
    study = _study(first, need_features=False)
    log(
        f"{len(study.table)} utterances, {study.table['speaker'].nunique()} speakers, "
        f"classes {study.classes}; {len(cells)} cell(s) in {len(configs)} variant(s)"
    )
    if first.run.cell is not None:
        if not 0 <= first.run.cell < len(cells):
            raise ValueError(
                f"run.cell={first.run.cell} is out of range; this study has cells 0..{len(cells) - 1}"
            )
        cell = cells[first.run.cell]
        run_cell(configs[cell.label], cell)
        return {}
    pending = [c for c in cells if not finished(configs[c.label], cell_dir(configs[c.label], c))]
    if len(pending) < len(cells):
        log(f"{len(cells) - len(pending)} cell(s) finished earlier, skipped")
    parallel = min(first.run.parallel, max(1, len(pending)))
    if parallel == 1:
        for cell in pending:
            run_cell(configs[cell.label], cell)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        for cfg in configs.values():
            _study(cfg)  # fill the feature cache once, before the workers read it
        threads = max(1, (os.cpu_count() or 1) // parallel)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(parallel, mp_context=context) as pool:
            futures = [
                pool.submit(_run_cell_in_worker, list(overrides), c.index, threads) for c in pending
            ]
            for future in futures:
                future.result()
    if not is_global_zero():
        return {}  # the other processes of a DDP run: rank zero writes the summaries
    summaries = {
        label: summarize(run_root(cfg), _study(cfg, need_features=False).classes)
        for label, cfg in configs.items()
    }
    for summary in summaries.values():
        summary["seconds"] = time.perf_counter() - start
    from sergraph.tracking import log_study_summary

    log_study_summary(first, summaries)
    if len(summaries) > 1:
        from sergraph.report import write_report

        report = write_report(study_dir(first))
        log(f"study report: {report['paths']['report']}")
    return summaries


def run_fold(cfg: DictConfig, study: Study, fold: Fold, seed: int, directory: Path) -> dict:
    """Train and test one cell; the result files are written atomically, metrics.json last.

    Leftovers of an interrupted attempt are removed, unless they hold a checkpoint to resume
    from (see :func:`resume_checkpoint`). Only global rank zero writes files.
    """
    from sergraph.tracking import cell_loggers, log_test_result

    if is_global_zero():
        if directory.exists() and resume_checkpoint(cfg, directory) is None:
            shutil.rmtree(directory)  # leftovers of an attempt that cannot be resumed
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "config.yaml", to_yaml(cfg))
    label = cfg.run.label or cfg.model.name
    with cell_loggers(cfg, directory, label, seed, fold) as loggers:
        result = _run_fold(cfg, study, fold, seed, directory, loggers)
        log_test_result(loggers, result)
    if is_global_zero():
        atomic_write_json(directory / "metrics.json", result)
        _remove_resume_files(directory)
    return result


def _run_fold(cfg, study: Study, fold: Fold, seed: int, directory: Path, loggers: list) -> dict:
    start = time.perf_counter()
    if cfg.model.name == "svm":
        predictions, extra = _fit_svm(cfg, study, fold, seed)
    else:
        predictions, extra = _fit_neural(cfg, study, fold, seed, directory, loggers)
    scores = scores_from_labels(
        predictions["true"].map(study.classes.index),
        predictions["predicted"].map(study.classes.index),
        len(study.classes),
    )
    if is_global_zero():
        atomic_write_csv(directory / "predictions.csv", predictions)
    result = {
        "config_id": identity(cfg),
        "model": cfg.model.name,
        "seed": seed,
        "fold": fold.index,
        "train_speakers": list(fold.train_speakers),
        "val_speakers": list(fold.val_speakers),
        "test_speakers": list(fold.test_speakers),
        "classes": study.classes,
        "n_test": len(predictions),
        **scores,
        **extra,
        "seconds": time.perf_counter() - start,
    }
    return result


def _fit_neural(
    cfg: DictConfig, study: Study, fold: Fold, seed: int, directory: Path, loggers: list
):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from sergraph.module import SERModule

    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = fold_datamodule(cfg, study, fold, seed)
    datamodule.setup()
    module = SERModule(
        model=cfg.model.name,
        model_params=OmegaConf.to_container(cfg.model.params),
        in_channels=datamodule.num_features,
        class_names=study.classes,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        class_weights=datamodule.class_weights if cfg.optim.class_weights else None,
        label_smoothing=cfg.optim.label_smoothing,
        global_channels=datamodule.num_global_features,
        optimizer=cfg.optim.optimizer,
        schedule=cfg.optim.schedule,
        warmup_epochs=cfg.optim.warmup_epochs,
        augment=OmegaConf.to_container(cfg.augment),
    )
    has_val = bool(fold.val_speakers)
    # best.ckpt: the best val/ua so far (the val/ua of every rank is the same synchronised value).
    checkpoint = ModelCheckpoint(
        dirpath=directory / "checkpoints",
        filename="best",
        monitor="val/ua" if has_val else None,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # last.ckpt: the end of every epoch (Lightning's save_last writes only when best.ckpt is
    # written), after early stopping and best.ckpt have decided, with their states: a cell
    # resumed from it makes the same best-checkpoint and stopping decisions.
    resume_point = ModelCheckpoint(
        dirpath=directory / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks = [checkpoint, resume_point, _keep_early_stop_callback()]
    if has_val:
        callbacks.append(EarlyStopping(monitor="val/ua", mode="max", patience=cfg.trainer.patience))
    devices, num_nodes = trainer_topology(cfg)
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        min_epochs=cfg.trainer.min_epochs,
        accelerator=cfg.trainer.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        deterministic=cfg.trainer.deterministic,
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=_attempt_dir(directory),
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_val else 0,
    )
    resume = resume_checkpoint(cfg, directory)
    if resume is not None and is_global_zero():
        log(f"{directory}: resuming from {resume.relative_to(directory)}")
        # Lightning's CSV logger starts a new metrics.csv; keep the interrupted attempt's rows.
        csv_log = directory / "logs" / "metrics.csv"
        if csv_log.is_file():
            attempt = len(list(csv_log.parent.glob("metrics.interrupted-*.csv"))) + 1
            csv_log.rename(csv_log.with_name(f"metrics.interrupted-{attempt}.csv"))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    best = checkpoint.best_model_path
    predictions, tested = _test_and_predict(trainer, module, datamodule, best, study.classes)
    # Independent route: scores from the predictions file must equal the torchmetrics ones.
    check = scores_from_labels(
        predictions["true"].map(study.classes.index),
        predictions["predicted"].map(study.classes.index),
        len(study.classes),
    )
    if check["confusion"] != tested["confusion"]:
        raise RuntimeError(
            f"{directory}: torchmetrics and predictions disagree; please report this"
        )
    best_score = checkpoint.best_model_score
    extra = {
        "epochs": int(trainer.current_epoch),
        "best_val_ua": float(best_score) if best_score is not None else None,
        "checkpoint": str(Path(best).resolve().relative_to(directory.resolve())) if best else None,
    }
    if trainer.world_size > 1:
        extra["world_size"] = int(trainer.world_size)
    return predictions, extra


def fold_datamodule(cfg: DictConfig, study: Study, fold: Fold, seed: int):
    from sergraph.datamodule import FoldDataModule

    return FoldDataModule(
        study.table,
        study.features,
        fold,
        study.classes,
        k=cfg.graph.k,
        max_nodes=cfg.graph.max_nodes,
        pad=cfg.graph.pad,
        normalize=cfg.graph.normalize,
        batch_size=cfg.optim.batch_size,
        num_workers=cfg.trainer.num_workers,
        seed=seed,
        utterance_features=study.functionals
        if cfg.features.get("concat_functionals", False)
        else None,
    )


def _test_and_predict(trainer, module, datamodule, checkpoint: str, classes: list[str]):
    """Test scores (torchmetrics, synchronised over ranks) and the predictions of every rank.

    Returns the predictions frame in test-table order (the same on every rank) and the test
    scores of :class:`~sergraph.module.SERModule`.
    """
    import torch

    trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    tested = trainer.lightning_module.test_result
    outputs = trainer.predict(
        module, dataloaders=datamodule.test_dataloader(), ckpt_path=checkpoint
    )
    outputs = _gather_from_ranks(outputs)
    predictions = _predictions_frame(
        [u for o in outputs for u in o["utterance"]],
        [s for o in outputs for s in o["speaker"]],
        torch.cat([o["true"] for o in outputs]).numpy(),
        torch.cat([o["probabilities"] for o in outputs]).numpy(),
        classes,
    )
    # The evaluation shards are disjoint; de-duplicating by utterance guards the invariant that
    # every test utterance is counted exactly once whatever the sampler did.
    predictions = predictions.drop_duplicates("utterance", ignore_index=True)
    expected = [graph.utterance for graph in datamodule.datasets["test"]]
    if predictions["utterance"].tolist() != expected:
        raise RuntimeError(
            f"{datamodule.fold.name}: predictions of {len(predictions)} utterances, expected "
            f"the {len(expected)} test utterances in order; please report this"
        )
    return predictions, tested


def _gather_from_ranks(outputs: list) -> list:
    """The prediction batches of every DDP rank, concatenated in rank order (as is without DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return outputs
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, outputs)
    return [batch for rank_outputs in gathered for batch in rank_outputs]


def evaluate_checkpoint(
    cfg: DictConfig, study: Study, fold: Fold, seed: int, checkpoint: str | Path
) -> tuple[pd.DataFrame, dict]:
    """Test a fold's checkpoint in this process alone: (predictions frame, test scores).

    The same evaluation as at the end of training, on one device; a DDP run's results equal it.
    """
    import lightning as L

    from sergraph.module import SERModule

    datamodule = fold_datamodule(cfg, study, fold, seed)
    datamodule.setup()
    module = SERModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        num_nodes=1,
        precision=cfg.trainer.precision,
        deterministic=cfg.trainer.deterministic,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=Path(checkpoint).parent,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return _test_and_predict(trainer, module, datamodule, str(checkpoint), study.classes)


def is_global_zero() -> bool:
    """Whether this process writes files: global rank zero of a DDP run, or the only process.

    Known before the Trainer exists from the variables that Lightning's launcher (LOCAL_RANK,
    NODE_RANK), torchrun (RANK) and srun (SLURM_PROCID) set; from torch.distributed once running.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if "LOCAL_RANK" in os.environ or "NODE_RANK" in os.environ:
        return (
            int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0
        )
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_PROCID", 0)) == 0
    return True


def trainer_topology(cfg: DictConfig) -> tuple[object, int]:
    """(devices, num_nodes) for the Trainer.

    Inside a SLURM job step (srun, detected by Lightning's ``SLURMEnvironment``) these come from
    SLURM: processes per node from ``--ntasks-per-node`` (one task per GPU), nodes from
    ``--nodes``. Lightning itself does not take them from SLURM (``devices="auto"`` means every
    visible GPU, and it refuses a ``num_nodes`` that differs from the job's), so they are read
    here instead of being written twice, in the job script and in the configuration.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return cfg.trainer.devices, cfg.trainer.num_nodes
    nodes = int(os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or 1)
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
    if per_node:
        devices = int(per_node.split("(")[0].split(",")[0])
    else:
        devices = max(1, int(os.environ.get("SLURM_NTASKS", "1")) // nodes)
    configured = (cfg.trainer.devices, cfg.trainer.num_nodes)
    if configured != (devices, nodes) and is_global_zero():
        log(
            f"SLURM job step: {devices} process(es) per node on {nodes} node(s) from SLURM "
            f"(trainer.devices={configured[0]!r}, trainer.num_nodes={configured[1]} are not used)"
        )
    return devices, nodes


def resume_checkpoint(cfg: DictConfig, directory: Path) -> Path | None:
    """The end-of-epoch checkpoint an unfinished cell resumes from, or ``None`` to start afresh.

    ``checkpoints/last.ckpt`` is written at the end of every epoch with the model, optimiser,
    loop counters, early-stopping and best-checkpoint state, the training shuffle's and the
    global random states; resuming from it reproduces the uninterrupted run exactly. It is used
    only when the cell's saved configuration has the current identity.

    Lightning's SLURM requeue handler (SIGUSR1) also saves ``hpc_ckpt_N.ckpt``, at whatever
    moment the signal arrives: in the middle of an epoch, possibly inside an optimiser step.
    Resuming there could not reproduce the uninterrupted run (the rest of the epoch would see
    another shuffle and dropout stream), so it is not used: at most one epoch is repeated.
    """
    last = directory / "checkpoints" / "last.ckpt"
    saved = directory / "config.yaml"
    if not (last.is_file() and saved.is_file()):
        return None
    try:
        same = identity(OmegaConf.load(saved)) == identity(cfg)
    except Exception:  # noqa: BLE001 - an unreadable leftover is not resumed
        return None
    return last if same else None


def _attempt_dir(directory: Path) -> Path:
    """Lightning's ``default_root_dir``: where its SLURM handler saves ``hpc_ckpt_N.ckpt``.

    One folder per SLURM job attempt, so that Lightning never resumes from an earlier attempt's
    mid-epoch checkpoint by itself (it does when it finds one in ``default_root_dir``).
    """
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return directory
    return directory / "hpc" / f"job-{job}-restart-{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def _remove_resume_files(directory: Path) -> None:
    """After metrics.json: the resume checkpoint and Lightning's requeue checkpoints."""
    (directory / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
    shutil.rmtree(directory / "hpc", ignore_errors=True)


def _keep_early_stop_callback():
    from lightning.pytorch.callbacks import Callback

    class KeepEarlyStop(Callback):
        """Resumed from a checkpoint saved after early stopping fired: stay stopped."""

        def on_train_start(self, trainer, pl_module) -> None:
            if any(callback.stopped_epoch > 0 for callback in trainer.early_stopping_callbacks):
                trainer.should_stop = True

    return KeepEarlyStop()


def _predictions_frame(utterances, speakers, true, scores, classes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "utterance": utterances,
            "speaker": speakers,
            "true": [classes[i] for i in true],
            "predicted": [classes[i] for i in np.asarray(scores).argmax(axis=1)],
        }
    )
    for i, name in enumerate(classes):
        frame[f"p_{name}"] = np.round(np.asarray(scores)[:, i], 6)
    return frame


SVM_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def speaker_standardized(values: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Each speaker's rows z-scored with that speaker's own mean and std (unlabelled; the
    transductive ``graph.normalize=speaker`` step). Constant columns keep std 1."""
    out = np.empty_like(values, dtype=np.float64)
    for speaker in np.unique(speakers):
        mask = speakers == speaker
        block = np.asarray(values[mask], dtype=np.float64)
        std = block.std(axis=0)
        std[~(std > 1e-8)] = 1.0
        out[mask] = (block - block.mean(axis=0)) / std
    return out


def _fit_svm(cfg: DictConfig, study: Study, fold: Fold, seed: int):
    """Linear SVM on utterance functionals, standardised with training-side statistics.

    With ``graph.normalize=speaker`` every speaker's functionals are first z-scored with that
    speaker's own statistics (the same transductive, label-free step the graph models get).

    The regularisation constant C is chosen from :data:`SVM_C_GRID` by mean UA of an inner
    leave-one-speaker-out loop over the fold's training and validation speakers (never the
    test speakers); the final SVM is then fitted on all of them. The reported "probabilities"
    are a softmax of the decision values (scores, not calibrated probabilities).
    """
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rows = split_indices(study.table, fold)
    labels = study.table["label"].map(study.classes.index).to_numpy()
    speakers = study.table["speaker"].astype(str).to_numpy()
    train = np.sort(np.concatenate([rows["train"], rows["val"]]))
    values = study.functionals
    if cfg.graph.normalize == "speaker":
        values = speaker_standardized(values, speakers)

    def fit_predict(c: float, fit_rows: np.ndarray, predict_rows: np.ndarray):
        scaler = StandardScaler().fit(values[fit_rows])
        x_fit = np.nan_to_num(scaler.transform(values[fit_rows]))
        x_predict = np.nan_to_num(scaler.transform(values[predict_rows]))
        model = LinearSVC(C=c, max_iter=20000, random_state=seed).fit(x_fit, labels[fit_rows])
        return model, model.decision_function(x_predict)

    inner_speakers = sorted(set(speakers[train]))
    best_c, best_ua = SVM_C_GRID[-1], None
    for c in SVM_C_GRID:
        inner = []
        for held_out in inner_speakers:
            mask = speakers[train] == held_out
            model, decision = fit_predict(c, train[~mask], train[mask])
            predicted = model.classes_[decision.argmax(axis=1)]
            inner.append(
                scores_from_labels(labels[train[mask]], predicted, len(study.classes))["ua"]
            )
        mean_ua = float(np.nanmean(inner))
        if best_ua is None or mean_ua > best_ua:
            best_c, best_ua = c, mean_ua
    model, decision = fit_predict(best_c, train, rows["test"])
    decision = decision - decision.max(axis=1, keepdims=True)
    scores = np.exp(decision) / np.exp(decision).sum(axis=1, keepdims=True)
    # Classes never seen in training have no column in the SVM; place scores by class index.
    full = np.zeros((len(rows["test"]), len(study.classes)))
    full[:, model.classes_] = scores
    test_rows = study.table.iloc[rows["test"]]
    predictions = _predictions_frame(
        test_rows["utterance"].tolist(),
        test_rows["speaker"].astype(str).tolist(),
        labels[rows["test"]],
        full,
        study.classes,
    )
    return predictions, {"epochs": 0, "svm_C": best_c, "inner_cv_ua": best_ua}


def _mean_std(values) -> tuple[float, float]:
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
    rows, pooled = [], []
    for path in cells:
        metrics = json.loads(path.read_text())
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
    wa_mean, wa_std = _mean_std(folds["wa"])
    ua_mean, ua_std = _mean_std(folds["ua"])
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
    return "\n".join(lines)
