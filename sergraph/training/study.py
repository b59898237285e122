"""Studies: every (variant, seed, fold) cell, run one after another, in parallel or one by
``run.cell``; each cell fits with early stopping on the validation speakers, tests the best
checkpoint once on the held-out speakers and writes its result files (see
:mod:`sergraph.results.layout`).

Re-running the same command skips finished cells; a cell whose saved configuration differs
from the current one is refused instead of silently mixed into the summary, so is one whose data
changed since it ran (:mod:`sergraph.training.data_check`), and one whose result files were
damaged stops the run naming the file (see :mod:`sergraph.results.layout`).

A cell is claimed with a lock before it runs (:mod:`sergraph.training.lock`), so that two
``sergraph train`` processes on one study (a study submitted twice, ``run.parallel`` beside an
array job) share its cells; the process that finishes the last cell writes the summaries.

Multi-process (DDP) runs: every process runs the same command; only global rank zero writes
files, see :func:`sergraph.training.distributed.is_global_zero`.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from sergraph.config import compose_study, identity, model_family, protocol_of, to_yaml
from sergraph.console import StudyProgress, attach_log_file, log, notes_to_file_only
from sergraph.console import configure as configure_console
from sergraph.data.cross_corpus import fold_record, training_classes_remedy
from sergraph.data.fingerprint import cell_fingerprint
from sergraph.data.folds import Fold, check_fold, check_training_classes, fold_name
from sergraph.data.prepared import PreparedData, data_fingerprint, prepared
from sergraph.data.protocol import check_enrollment_sizes, check_predictions, protocol_record
from sergraph.io import atomic_write_text, ensure_folder
from sergraph.metrics import METRICS, scores_from_labels
from sergraph.models import is_classic, model_inputs
from sergraph.results.layout import (
    CellPaths,
    failed_files_path,
    finished,
    fold_dir,
    log_file_path,
    own_folder,
    run_root,
    study_dir,
    write_cell,
)
from sergraph.results.provenance import now, provenance
from sergraph.results.summary import summarize
from sergraph.training.capabilities import (
    WORKER_PRELOAD,
    require_precision_kernels,
    study_workers,
    torch_threads,
)
from sergraph.training.checkpoints import (
    remove_resume_files,
    restore_csv_log,
    resume_checkpoint,
)
from sergraph.training.classic import fit_classic
from sergraph.training.data_check import check_finished_data
from sergraph.training.distributed import is_global_zero
from sergraph.training.fit import fit_neural
from sergraph.training.lock import CellLocked, cell_lock
from sergraph.training.parallel import run_in_workers
from sergraph.training.stopping import RESUME_HINT, stopped_from

SYNTHETIC_NOTE = "NOTE: data=synthetic is a generated corpus, not speech; its numbers say nothing about real SER."


def study_data(cfg: DictConfig, need_features: bool = True) -> PreparedData:
    """The prepared data of a study's variant (memoised), files that failed listed in its folder."""
    return prepared(
        cfg,
        need_features,
        failed_listing=failed_files_path(cfg),
        inputs=model_inputs(model_family(cfg)),
    )


def selected_folds(cfg: DictConfig, folds: list[Fold]) -> list[Fold]:
    if cfg.folds.only is None:
        return folds
    if len(cfg.folds.only) == 0:
        raise ValueError(
            f"folds.only=[] selects no fold; give fold indices from 0..{len(folds) - 1} "
            "(e.g. folds.only=[0,1]), or leave folds.only unset for every fold"
        )
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


def cell_name(cell: Cell) -> str:
    return f"{cell.label} seed {cell.seed} {fold_name(cell.fold)}"


def plan(
    overrides: list[str] | tuple[str, ...] = (), composed: dict[str, DictConfig] | None = None
) -> tuple[dict[str, DictConfig], list[Cell]]:
    """Every (variant, seed, fold) cell of a study, in a fixed order (label, seed, fold).

    The index of a cell is stable for a given configuration, so a SLURM array task can run
    ``run.cell=$SLURM_ARRAY_TASK_ID``. ``composed``: ``compose_study(overrides)`` where the
    caller has it already.
    """
    if composed is None:
        composed = compose_study(overrides)
    configs = own_folder(composed, overrides)
    cells: list[Cell] = []
    for label, cfg in configs.items():
        study = study_data(cfg, need_features=False)
        folds = selected_folds(cfg, study.folds)
        check_before_work(cfg, study, folds)
        for seed in cfg.run.seeds:
            for fold in folds:
                cells.append(Cell(len(cells), label, int(seed), fold.index))
    return configs, cells


def check_before_work(cfg: DictConfig, study: PreparedData, folds: list[Fold]) -> None:
    """What every fold of the study needs, checked for all of them before the first cell: each
    class among its training utterances, an enrollment amount each held-out speaker can honour,
    and padded graphs that fit in memory (:mod:`sergraph.training.memory`)."""
    from sergraph.data.features.opensmile import num_features
    from sergraph.data.prepared import feature_cache
    from sergraph.training.memory import check_memory

    if study.cross_corpus is None:
        check_training_classes(study.table, folds, study.classes)
    else:
        remedy = training_classes_remedy(study.cross_corpus["scheme"])
        check_training_classes(study.table, folds, study.classes, remedy)
    if protocol_of(cfg) == "enrollment":
        held_out = sorted({str(s) for f in folds for s in (*f.val_speakers, *f.test_speakers)})
        check_enrollment_sizes(study.table, held_out, cfg.eval.enrollment)
    if not is_classic(model_family(cfg)):
        features = feature_cache(cfg).config  # the width is known before extraction for openSMILE
        width = num_features(features) if features.is_opensmile else 0  # else: a lower bound
        check_memory(cfg, len(study.table), width)


def cell_dir(cfg: DictConfig, cell: Cell) -> Path:
    return fold_dir(cfg, cell.seed, study_data(cfg, need_features=False).folds[cell.fold])


def run_cell(cfg: DictConfig, cell: Cell) -> str | None:
    """Run one cell unless it is finished or another process runs it; returns its one-line
    result (``None`` when skipped)."""
    directory = cell_dir(cfg, cell)
    name = cell_name(cell)
    if finished(cfg, directory):
        log(f"{name}: finished earlier, skipped")
        return None
    if not is_global_zero():  # the other ranks of a DDP run follow rank zero's claim
        return _run_claimed(cfg, cell, directory)
    try:
        with cell_lock(directory):
            if finished(cfg, directory):  # by another process, between the check and the lock
                log(f"{name}: finished by another process, skipped")
                return None
            return _run_claimed(cfg, cell, directory)
    except CellLocked as error:
        log(f"{name}: skipped, {error}")
        return None


def _run_claimed(cfg: DictConfig, cell: Cell, directory: Path) -> str:
    study = study_data(cfg)
    fold = study.folds[cell.fold]
    result = run_fold(cfg, study, fold, cell.seed, directory)
    scores = " ".join(f"{m.display} {100 * result[m.name]:.2f}" for m in METRICS.values())
    return (
        f"{cell.label} seed {cell.seed} {fold.name} test {','.join(fold.test_speakers)}: "
        f"{scores} ({result['epochs']} epochs, {result['seconds']:.0f} s)"
        + ("" if fold.speaker_independent else " [NOT speaker-independent]")
    )


def worker_devices(parallel: int, accelerator: str, devices) -> list[str | None]:
    """The CUDA device of each of ``parallel`` worker processes: round robin over the visible ones.

    Entries are ``CUDA_VISIBLE_DEVICES`` values (an index or a UUID from the parent's
    ``CUDA_VISIBLE_DEVICES``, else ``0..n-1``); each worker then sees one GPU as ``cuda:0``.
    ``None`` for all workers where no CUDA device is visible, the accelerator is ``cpu``/``mps``,
    or ``trainer.devices`` names devices itself (a list or ``"0,2"``: used as written).
    """
    import torch

    if accelerator not in ("auto", "gpu", "cuda") or devices not in (1, "1", "auto"):
        return [None] * parallel
    count = torch.cuda.device_count()
    if count == 0:
        return [None] * parallel
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [d.strip() for d in listed.split(",")] if listed else [str(i) for i in range(count)]
    visible = visible[:count]
    return [visible[worker % len(visible)] for worker in range(parallel)]


def worker_start(
    configs: dict[str, DictConfig], cells: list[Cell], threads: int, log_path: str
) -> tuple[dict[str, DictConfig], list[Cell]]:
    """A ``run.parallel`` worker's start: its share of the cores, the study's log file (library
    chatter such as W&B's goes there, as in the parent), then the data of the parent's plan
    (once; notes only to the log file, the parent printed them)."""
    import torch

    configure_console()
    torch.set_num_threads(threads)
    attach_log_file(Path(log_path))
    with notes_to_file_only():
        for cfg in configs.values():  # the features too (the parent filled the cache)
            study_data(cfg)
    return configs, cells


def run_cell_in_worker(state: tuple[dict[str, DictConfig], list[Cell]], index: int) -> str | None:
    configs, cells = state
    cell = cells[index]
    return run_cell(configs[cell.label], cell)


def run_study(
    overrides: list[str] | tuple[str, ...] = (), rerun_changed: bool = False
) -> dict[str, dict]:
    """Run every unfinished cell of a study (or only ``run.cell``), then summarise each variant.

    Cells run one after another, or several at a time in separate processes
    (:func:`~sergraph.training.capabilities.study_workers`: ``run.parallel``, by default as
    many as the allotted cores hold), each with ``cores / workers`` torch threads and, on a
    node with several GPUs, its own GPU (:func:`worker_devices`). Returns the summary of each
    variant by label (empty when only one cell was asked for).

    Finished cells whose data changed are refused before any work, or with ``rerun_changed``
    moved aside and computed again (:mod:`sergraph.training.data_check`).
    """
    start = time.perf_counter()
    composed = compose_study(overrides)
    first = next(iter(composed.values()))
    if is_global_zero():  # before the corpus is read: its errors are kept in the log file too
        attach_log_file(log_file_path(first))
    configs, cells = plan(overrides, composed)
    for cfg in configs.values():  # before any work: a kernel this CPU lacks stops step one
        require_precision_kernels(cfg)
    check_finished_data(
        configs, lambda cfg: study_data(cfg, False), rerun_changed, writer=is_global_zero()
    )
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
    try:
        _run_cells(configs, cells, pending)
    except BaseException as error:
        stop = stopped_from(error)
        if stop is not None and is_global_zero():
            done = sum(finished(configs[c.label], cell_dir(configs[c.label], c)) for c in cells)
            log(
                f"{stop}: {done} of {len(cells)} cell(s) finished "
                f"({done - (len(cells) - len(pending))} in this run); {RESUME_HINT}"
            )
            stop.reported = True
        raise
    if not is_global_zero():
        return {}  # the other processes of a DDP run: rank zero writes the summaries
    left = [c for c in cells if not finished(configs[c.label], cell_dir(configs[c.label], c))]
    if left:
        log(
            f"{len(left)} cell(s) are not finished (run by another process, see above); the "
            "process that finishes the last one writes the summaries (or run this command again)"
        )
        return {}
    summaries = {
        label: summarize(run_root(cfg), study_data(cfg, need_features=False).classes)
        for label, cfg in configs.items()
    }
    for summary in summaries.values():
        summary["seconds"] = time.perf_counter() - start
    from sergraph.training.tracking import log_study_summary

    log_study_summary(first, summaries, configs)
    if len(summaries) > 1:
        from sergraph.results.report import write_report

        report = write_report(study_dir(first))
        log(f"study report: {report['paths']['report']}")
    return summaries


def _run_cells(configs: dict[str, DictConfig], cells: list[Cell], pending: list[Cell]) -> None:
    """The unfinished cells of a study: one after another, or in ``run.parallel`` workers."""
    first = next(iter(configs.values()))
    parallel, why_parallel = study_workers(first, len(pending))
    threads, why = torch_threads(first, parallel)
    if parallel == 1:
        import torch

        torch.set_num_threads(threads)
    log(
        f"cells at a time: {parallel} ({why_parallel}); "
        f"torch threads: {threads} per process ({why})"
    )
    with StudyProgress(len(pending), enabled=None if is_global_zero() else False) as progress:
        if parallel == 1:
            for cell in pending:
                progress.cell_started(cell_name(cell))
                try:
                    line = run_cell(configs[cell.label], cell)
                except BaseException as error:
                    if stopped_from(error) is not None and is_global_zero():
                        log(f"interrupted: {cell_name(cell)}")
                    raise
                if line is not None and is_global_zero():
                    log(line)
                progress.cell_finished()
        else:
            for cfg in configs.values():
                study_data(cfg)  # fill the feature cache once, before the workers read it
            gpus = worker_devices(parallel, first.trainer.accelerator, first.trainer.devices)
            if gpus[0] is not None:
                log(f"run.parallel={parallel}: worker GPUs (CUDA_VISIBLE_DEVICES) {gpus}")
            progress.cell_started(f"{parallel} cells at a time")

            def done(index: int, line: str | None) -> None:
                if line is not None:
                    log(line)
                progress.cell_finished()

            run_in_workers(
                [c.index for c in pending],
                parallel,
                worker_start,
                (configs, cells, threads, str(log_file_path(first))),
                run_cell_in_worker,
                lambda index: cell_name(cells[index]),
                done,
                gpus,
                WORKER_PRELOAD,
            )


def run_fold(cfg: DictConfig, study: PreparedData, fold: Fold, seed: int, directory: Path) -> dict:
    """Train and test one cell; the result files are written atomically, metrics.json last.

    Leftovers of an interrupted attempt are removed, unless they hold a checkpoint to resume
    from (see :func:`resume_checkpoint`). Only global rank zero writes files.
    """
    from sergraph.training.tracking import cell_loggers, log_test_result

    if is_global_zero():
        if directory.exists() and resume_checkpoint(cfg, directory) is None:
            shutil.rmtree(directory)  # leftovers of an attempt that cannot be resumed
        ensure_folder(directory)
        atomic_write_text(CellPaths(directory).config, to_yaml(cfg))
    label = cfg.run.label or cfg.model.name
    with cell_loggers(cfg, directory, label, seed, fold) as loggers:
        result, predictions = fit_cell(cfg, study, fold, seed, directory, loggers)
        log_test_result(loggers, result)
    if is_global_zero():
        restore_csv_log(directory)  # a resumed cell: the earlier epochs' rows back in front
        # predictions.csv, then metrics.json (last) with the hashes of it and of the checkpoint
        result = write_cell(directory, predictions, result, result.get("checkpoint"))
        remove_resume_files(directory)
    return result


def fit_cell(
    cfg, study: PreparedData, fold: Fold, seed: int, directory: Path, loggers: list
) -> tuple[dict, pd.DataFrame]:
    start, started = time.perf_counter(), now()
    check_fold(fold, study.table)  # again before every cell, neural and classic alike
    if is_classic(model_family(cfg)):
        fitting = time.perf_counter()
        predictions, extra = fit_classic(cfg, study, fold, seed)
        extra = {**extra, "timing": {"fit": round(time.perf_counter() - fitting, 4)}}
    else:
        predictions, extra = fit_neural(cfg, study, fold, seed, directory, loggers)
    check_predictions(
        study.table,
        predictions["utterance"],
        fold.test_speakers,
        protocol_of(cfg),
        cfg.eval.enrollment,
        cfg.eval.enrollment_seed,
        where=str(directory),
    )
    scores = scores_from_labels(
        predictions["true"].map(study.classes.index),
        predictions["predicted"].map(study.classes.index),
        len(study.classes),
    )
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
        "protocol": protocol_record(
            protocol_of(cfg), cfg.eval.enrollment, cfg.eval.enrollment_seed
        ),
        **scores,
        **extra,
        "seconds": time.perf_counter() - start,
        "data": cell_fingerprint(
            data_fingerprint(cfg, study),
            fold,
            predictions["utterance"].tolist(),
            protocol_of(cfg),
            cfg.eval.enrollment,
            cfg.eval.enrollment_seed,
        ),
    }
    if study.cross_corpus is not None:
        data_fingerprint(cfg, study)  # computed above; it also holds each corpus's hashes
        result["evaluation"] = fold_record(study.cross_corpus, fold, study.corpus_fingerprints)
        # each scored utterance's label in its own corpus, before the label mapping
        corpus_labels = dict(
            zip(study.table["utterance"], study.table["corpus_label"], strict=True)
        )
        predictions = predictions.assign(corpus_label=predictions["utterance"].map(corpus_labels))
    result["provenance"] = provenance(cfg, started)
    return result, predictions
