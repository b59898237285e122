"""Studies: every (variant, seed, fold) cell, run one after another, in parallel or one by
``run.cell``; each cell fits with early stopping on the validation speakers, tests the best
checkpoint once on the held-out speakers and writes its result files (see
:mod:`sergraph.results.layout`).

Re-running the same command skips finished cells; a cell whose saved configuration differs
from the current one is refused instead of silently mixed into the summary.

Multi-process (DDP) runs: every process runs the same command; only global rank zero writes
files, see :func:`sergraph.training.distributed.is_global_zero`.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from sergraph.config import compose_study, identity, to_yaml
from sergraph.console import StudyProgress, attach_log_file, log
from sergraph.console import configure as configure_console
from sergraph.data.folds import Fold
from sergraph.data.prepared import PreparedData, prepared
from sergraph.io import atomic_write_csv, atomic_write_json, atomic_write_text
from sergraph.metrics import scores_from_labels
from sergraph.results.layout import (
    failed_files_path,
    finished,
    fold_dir,
    log_file_path,
    run_root,
    study_dir,
)
from sergraph.results.summary import summarize
from sergraph.training.classic import fit_svm
from sergraph.training.distributed import is_global_zero
from sergraph.training.fit import fit_neural, remove_resume_files, resume_checkpoint

SYNTHETIC_NOTE = "NOTE: data=synthetic is a generated corpus, not speech; its numbers say nothing about real SER."


def study_data(cfg: DictConfig, need_features: bool = True) -> PreparedData:
    """The prepared data of a study's variant (memoised), files that failed listed in its folder."""
    return prepared(cfg, need_features, failed_listing=failed_files_path(cfg))


def selected_folds(cfg: DictConfig, folds: list[Fold]) -> list[Fold]:
    if cfg.folds.only is None:
        return folds
    bad = [i for i in cfg.folds.only if not 0 <= i < len(folds)]
    if bad:
        raise ValueError(
            f"folds.only={list(cfg.folds.only)}: fold(s) {bad} do not exist; 0..{len(folds) - 1}"
        )
    return [folds[i] for i in cfg.folds.only]


@dataclass(frozen=True)
class Cell:
    """One unit of work of a study: a variant (label), a seed and a fold."""

    index: int
    label: str
    seed: int
    fold: int


def plan(overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, DictConfig], list[Cell]]:
    """Every (variant, seed, fold) cell of a study, in a fixed order (label, seed, fold).

    The index of a cell is stable for a given configuration, so a SLURM array task can run
    ``run.cell=$SLURM_ARRAY_TASK_ID``.
    """
    configs = compose_study(overrides)
    cells: list[Cell] = []
    for label, cfg in configs.items():
        folds = selected_folds(cfg, study_data(cfg, need_features=False).folds)
        for seed in cfg.run.seeds:
            for fold in folds:
                cells.append(Cell(len(cells), label, int(seed), fold.index))
    return configs, cells


def cell_dir(cfg: DictConfig, cell: Cell) -> Path:
    return fold_dir(cfg, cell.seed, study_data(cfg, need_features=False).folds[cell.fold])


def run_cell(cfg: DictConfig, cell: Cell) -> str | None:
    """Run one cell unless it is finished; returns its one-line result (``None`` when skipped)."""
    directory = cell_dir(cfg, cell)
    if finished(cfg, directory):
        log(f"{cell.label} seed {cell.seed} fold-{cell.fold:02d}: finished earlier, skipped")
        return None
    study = study_data(cfg)
    fold = study.folds[cell.fold]
    result = run_fold(cfg, study, fold, cell.seed, directory)
    return (
        f"{cell.label} seed {cell.seed} {fold.name} test {','.join(fold.test_speakers)}: "
        f"WA {100 * result['wa']:.2f} UA {100 * result['ua']:.2f} "
        f"({result['epochs']} epochs, {result['seconds']:.0f} s)"
        + ("" if fold.speaker_independent else " [NOT speaker-independent]")
    )


def run_cell_in_worker(overrides: list[str], index: int, threads: int) -> str | None:
    import torch

    configure_console()
    torch.set_num_threads(threads)
    configs, cells = plan(overrides)
    cell = cells[index]
    return run_cell(configs[cell.label], cell)


def run_study(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, dict]:
    """Run every unfinished cell of a study (or only ``run.cell``), then summarise each variant.

    Cells run one after another, or ``run.parallel`` at a time in separate processes (each with
    ``cores / run.parallel`` torch threads). Returns the summary of each variant by label
    (empty when only one cell was asked for).
    """
    start = time.perf_counter()
    configs, cells = plan(overrides)
    first = next(iter(configs.values()))
    if is_global_zero():
        attach_log_file(log_file_path(first))
    if first.data.name == "synthetic":
        log(SYNTHETIC_NOTE)
    study = study_data(first, need_features=False)
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
        line = run_cell(configs[cell.label], cell)
        if line is not None and is_global_zero():
            log(line)
        return {}
    pending = [c for c in cells if not finished(configs[c.label], cell_dir(configs[c.label], c))]
    if len(pending) < len(cells):
        log(f"{len(cells) - len(pending)} cell(s) finished earlier, skipped")
    parallel = min(first.run.parallel, max(1, len(pending)))
    with StudyProgress(len(pending), enabled=None if is_global_zero() else False) as progress:
        if parallel == 1:
            for cell in pending:
                progress.cell_started(f"{cell.label} seed {cell.seed} fold-{cell.fold:02d}")
                line = run_cell(configs[cell.label], cell)
                if line is not None and is_global_zero():
                    log(line)
                progress.cell_finished()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            for cfg in configs.values():
                study_data(cfg)  # fill the feature cache once, before the workers read it
            threads = max(1, (os.cpu_count() or 1) // parallel)
            context = multiprocessing.get_context("spawn")
            progress.cell_started(f"{parallel} cells at a time")
            with ProcessPoolExecutor(parallel, mp_context=context) as pool:
                futures = [
                    pool.submit(run_cell_in_worker, list(overrides), c.index, threads)
                    for c in pending
                ]
                for future in as_completed(futures):
                    line = future.result()
                    if line is not None:
                        log(line)
                    progress.cell_finished()
    if not is_global_zero():
        return {}  # the other processes of a DDP run: rank zero writes the summaries
    summaries = {
        label: summarize(run_root(cfg), study_data(cfg, need_features=False).classes)
        for label, cfg in configs.items()
    }
    for summary in summaries.values():
        summary["seconds"] = time.perf_counter() - start
    from sergraph.training.tracking import log_study_summary

    log_study_summary(first, summaries)
    if len(summaries) > 1:
        from sergraph.results.report import write_report

        report = write_report(study_dir(first))
        log(f"study report: {report['paths']['report']}")
    return summaries


def run_fold(cfg: DictConfig, study: PreparedData, fold: Fold, seed: int, directory: Path) -> dict:
    """Train and test one cell; the result files are written atomically, metrics.json last.

    Leftovers of an interrupted attempt are removed, unless they hold a checkpoint to resume
    from (see :func:`resume_checkpoint`). Only global rank zero writes files.
    """
    from sergraph.training.tracking import cell_loggers, log_test_result

    if is_global_zero():
        if directory.exists() and resume_checkpoint(cfg, directory) is None:
            shutil.rmtree(directory)  # leftovers of an attempt that cannot be resumed
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "config.yaml", to_yaml(cfg))
    label = cfg.run.label or cfg.model.name
    with cell_loggers(cfg, directory, label, seed, fold) as loggers:
        result = fit_cell(cfg, study, fold, seed, directory, loggers)
        log_test_result(loggers, result)
    if is_global_zero():
        atomic_write_json(directory / "metrics.json", result)
        remove_resume_files(directory)
    return result


def fit_cell(
    cfg, study: PreparedData, fold: Fold, seed: int, directory: Path, loggers: list
) -> dict:
    start = time.perf_counter()
    if cfg.model.name == "svm":
        predictions, extra = fit_svm(cfg, study, fold, seed)
    else:
        predictions, extra = fit_neural(cfg, study, fold, seed, directory, loggers)
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
        **({} if fold.speaker_independent else {"speaker_independent": False}),
        "classes": study.classes,
        "n_test": len(predictions),
        **scores,
        **extra,
        "seconds": time.perf_counter() - start,
    }
    return result
