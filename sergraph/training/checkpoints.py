"""A neural cell's checkpoints and resume: which ``last.ckpt`` to resume from, an unreadable one
moved aside, atomic checkpoint writes, the per-attempt folder of SLURM requeues, and the CSV log
kept whole across a resume (see :mod:`sergraph.training.fit`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sergraph.config import identity
from sergraph.console import log
from sergraph.io import atomic_write_bytes
from sergraph.results.layout import CSV_LOG_BEFORE_RESUME, LAST, CellPaths
from sergraph.training.distributed import is_global_zero


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

    A ``last.ckpt`` that cannot be read (a file copied in part, or one that an operating-system
    crash left unwritten: it is not fsync'd, see :func:`atomic_checkpoint_io`) is moved aside,
    out of the cell folder (``seed-S/corrupt-fold-XX-last-N.ckpt``), with a note, and the cell
    starts afresh.
    """
    paths = CellPaths(directory)
    last, saved = paths.last, paths.config
    if not (last.is_file() and saved.is_file()):
        return None
    try:
        same = identity(OmegaConf.load(saved)) == identity(cfg)
    except Exception:  # noqa: BLE001 - an unreadable leftover is not resumed
        return None
    if not same:
        return None
    problem = unreadable_checkpoint(last)
    if problem is None:
        return last
    if is_global_zero():  # the other ranks of a DDP run read the same file and also start afresh
        aside = move_aside(last, directory)
        log(
            f"NOTE: {last} cannot be read ({problem}); moved aside to {aside}. The cell "
            "starts again from its first epoch."
        )
    return None


def unreadable_checkpoint(path: Path) -> str | None:
    """Why a checkpoint file cannot be loaded, or ``None`` when it loads."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure to load means: do not resume
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def move_aside(path: Path, directory: Path) -> Path:
    number = 1
    while (aside := CellPaths(directory).last_aside(number)).exists():
        number += 1
    os.replace(path, aside)
    return aside


def set_aside_csv_log(csv_log: Path) -> Path | None:
    """Before a resumed fit: keep the earlier attempts' rows of ``logs/metrics.csv``.

    Lightning's CSV logger starts a new file; the earlier rows are kept in
    ``metrics.before-resume.csv`` (merged with any left by an attempt interrupted again) and
    put back in front of the new rows by :func:`restore_csv_log` when the cell ends (after its
    loggers are closed: Lightning's CSV writer rewrites the file with the columns it knows).
    """
    aside = csv_log.with_name(CSV_LOG_BEFORE_RESUME)
    if csv_log.is_file():
        if aside.is_file():
            merge_csv_logs(aside, csv_log)
        os.replace(csv_log, aside)
    return aside if aside.is_file() else None


def restore_csv_log(directory: Path) -> None:
    """After a resumed cell's loggers are closed: one ``logs/metrics.csv`` with every epoch."""
    paths = CellPaths(directory)
    csv_log, earlier = paths.csv_log, paths.csv_log_before_resume
    if earlier.is_file():
        merge_csv_logs(earlier, csv_log)


def merge_csv_logs(earlier: Path, csv_log: Path) -> None:
    """One ``metrics.csv``: the earlier rows of the epochs before the new rows, then the new.

    The epoch a run was interrupted in is trained again after the resume; its earlier rows
    are dropped so that each epoch appears once. ``earlier`` is removed.
    """
    from sergraph.io import atomic_write_csv

    before = pd.read_csv(earlier)
    if csv_log.is_file():
        after = pd.read_csv(csv_log)
        if len(after) and "epoch" in after and "epoch" in before:
            before = before[before["epoch"] < after["epoch"].min()]
        merged = pd.concat([before, after], ignore_index=True)
        columns = sorted(merged.columns, key=lambda c: (c not in ("epoch", "step"), c))
        atomic_write_csv(csv_log, merged[columns])
        earlier.unlink()
    else:
        os.replace(earlier, csv_log)


def atomic_checkpoint_io(clock=None):
    """Lightning's checkpoint IO with atomic writes; their wall time goes to the
    ``checkpointing`` phase of ``clock`` (a :class:`~sergraph.training.timing.PhaseClock`)."""
    from contextlib import nullcontext

    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicIO(TorchCheckpointIO):
        """Checkpoints written to a temporary file and renamed (the project's atomic writer):
        a kill or a full disk during a save leaves the previous checkpoint, never a partial one.

        ``last.ckpt``, rewritten every epoch, is not fsync'd (a few milliseconds per epoch,
        more on network file systems): after a crash of the operating system it may be
        unreadable, and :func:`resume_checkpoint` then moves it aside and starts the cell
        afresh. ``best.ckpt``, which the cell's results come from, is fsync'd.
        """

        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            import io

            import torch

            with clock.phase("checkpointing") if clock is not None else nullcontext():
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                atomic_write_bytes(path, buffer.getvalue(), durable=Path(path).name != LAST)

    return AtomicIO()


def attempt_dir(directory: Path) -> Path:
    """Lightning's ``default_root_dir``: where its SLURM handler saves ``hpc_ckpt_N.ckpt``.

    One folder per SLURM job attempt, so that Lightning never resumes from an earlier attempt's
    mid-epoch checkpoint by itself (it does when it finds one in ``default_root_dir``).
    """
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return directory
    return CellPaths(directory).attempt(job, os.environ.get("SLURM_RESTART_COUNT", "0"))


def remove_resume_files(directory: Path) -> None:
    """After metrics.json: the resume checkpoint and Lightning's requeue checkpoints."""
    paths = CellPaths(directory)
    paths.last.unlink(missing_ok=True)
    shutil.rmtree(paths.requeue, ignore_errors=True)
