"""The run layout: the one owner of result paths, of what "finished" means and of cell iteration.

Layout of a run (``run.out_dir/run.name/label/``)::

    seed-0/fold-00/config.yaml        resolved configuration of the fold
    seed-0/fold-00/predictions.csv    utterance, speaker, true, predicted, p_<class> ...
    seed-0/fold-00/metrics.json       written last: its presence marks the fold finished
    seed-0/fold-00/checkpoints/best.ckpt
    summary.json, summary.md          per-fold, mean +- std over folds and pooled WA/UA

and beside the label folders of a study: ``sergraph.log`` (the study's log file) and
``failed_files.csv`` (files left out under ``features.on_error=skip``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from sergraph.config import identity


def study_dir(cfg: DictConfig) -> Path:
    return Path(cfg.run.out_dir) / (cfg.run.name or cfg.data.name)


def failed_files_path(cfg: DictConfig) -> Path:
    """Where ``features.on_error=skip`` lists the files left out of a study."""
    return study_dir(cfg) / "failed_files.csv"


def log_file_path(cfg: DictConfig) -> Path:
    """The study's log file: library chatter and every console note (``sergraph -v`` shows both)."""
    return study_dir(cfg) / "sergraph.log"


def run_root(cfg: DictConfig) -> Path:
    return study_dir(cfg) / (cfg.run.label or cfg.model.name)


def fold_dir(cfg: DictConfig, seed: int, fold) -> Path:
    return run_root(cfg) / f"seed-{seed}" / fold.name


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


def predictions_frame(utterances, speakers, true, scores, classes) -> pd.DataFrame:
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
