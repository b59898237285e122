"""A finished cell is reused only for the data it was computed from.

Before any work, ``sergraph train`` compares every finished cell of each variant folder (every
seed and fold there, not only the ones this command runs: the summary pools them all) with the
current data through :func:`sergraph.data.fingerprint.changes`: the fold of that number (its
test speakers: a new speaker shifts the numbering), the utterances, labels and audio (or
feature arrays) of its speakers. A changed cell stops the run naming the cell and what changed,
and the two ways on: a new ``run.name``, or ``sergraph train --rerun-changed``, which moves the
changed cells aside (:func:`sergraph.results.layout.aside_path`) and computes them again. Cells
of different data are so never pooled. Cells finished before cells recorded their data cannot
be checked and are reused as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from sergraph.config import identity, protocol_of
from sergraph.console import log
from sergraph.data.fingerprint import cell_fingerprint, changes
from sergraph.data.prepared import PreparedData, data_fingerprint
from sergraph.results.layout import CellPaths, aside_path, finished_cells, run_root


class DataChangedError(RuntimeError):
    """Finished cells whose data differ from the current data."""


def changed_cells(
    configs: dict[str, DictConfig], study_of: Callable[[DictConfig], PreparedData]
) -> list[tuple[Path, list[str]]]:
    """(cell folder, what changed) of every finished cell whose data changed, for every variant
    of ``configs``; ``study_of(cfg)`` gives a variant's prepared data (no features needed)."""
    out = []
    for cfg in configs.values():
        root = run_root(cfg)
        if not root.is_dir():
            continue
        cells = [
            (cell, metrics)
            for cell, metrics in finished_cells(root)
            # cells of another configuration are refused by name when they are run; cells of
            # releases that recorded no data cannot be checked
            if "data" in metrics and metrics.get("config_id") == identity(cfg)
        ]
        if not cells:
            continue
        study = study_of(cfg)
        fingerprint = data_fingerprint(cfg, study)
        for cell, metrics in cells:
            number = int(metrics["fold"])
            fold = study.folds[number] if number < len(study.folds) else None
            now = (
                None if fold is None else cell_fingerprint(fingerprint, fold, [], protocol_of(cfg))
            )
            what = changes(metrics, fold, now)
            if what:
                out.append((cell, what))
    return out


def check_finished_data(
    configs: dict[str, DictConfig],
    study_of: Callable[[DictConfig], PreparedData],
    rerun_changed: bool = False,
    writer: bool = True,
) -> None:
    """Refuse (or with ``rerun_changed`` move aside) finished cells whose data changed.

    Every process of a multi-process (DDP) run checks, so that all of them stop alike; only the
    ``writer`` (global rank zero) moves cells aside, and the others wait until it has.

    Raises:
        DataChangedError: naming each changed cell, what changed and the two ways on.
    """
    changed = changed_cells(configs, study_of)
    if not changed:
        return
    listed = "\n".join(f"  {cell}: {'; '.join(what)}" for cell, what in changed)
    if not rerun_changed:
        raise DataChangedError(
            f"the data changed since {len(changed)} finished cell(s) ran, so their results "
            f"cannot be reused nor pooled with new ones:\n{listed}\n"
            "Either choose a new run.name (a new study folder), or run the same command with "
            "`sergraph train --rerun-changed` to move these cells aside and compute them again"
        )
    if not writer:
        _wait_until_moved([cell for cell, _ in changed])
        return
    for cell, _ in changed:
        aside = aside_path(cell, "changed")
        os.replace(cell, aside)
        log(f"{cell}: its data changed; moved aside to {aside.name}, computed again if run")
    log(f"--rerun-changed: {len(changed)} cell(s) of changed data moved aside:\n{listed}")


def _wait_until_moved(cells: list[Path], timeout: float = 300.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while any(CellPaths(cell).metrics.exists() for cell in cells):
        if time.monotonic() > deadline:
            raise DataChangedError(
                f"rank zero did not move the changed cells aside within {timeout:.0f} s: "
                f"{[str(cell) for cell in cells]}"
            )
        time.sleep(0.5)
