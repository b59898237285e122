"""Fitting one cell of a classic (non-neural) baseline: the fold's rows handed to the registered
:class:`~sergraph.models.classic.ClassicBaseline` as plain arrays, its scores made a
predictions frame.

``SVM_C_GRID`` and ``speaker_standardized`` (now in :mod:`sergraph.models.svm` and
:mod:`sergraph.models.classic`) stay importable from here.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from sergraph.config import model_spec
from sergraph.data.folds import Fold, split_indices
from sergraph.data.prepared import PreparedData
from sergraph.models import build_baseline
from sergraph.models.classic import speaker_standardized
from sergraph.models.svm import SVM_C_GRID
from sergraph.results.layout import predictions_frame

__all__ = ["SVM_C_GRID", "fit_classic", "speaker_standardized"]


def fit_classic(cfg: DictConfig, study: PreparedData, fold: Fold, seed: int):
    """Fit the configured classic baseline on the fold's training and validation rows and score
    its test rows; returns ``(predictions frame, extra metrics fields)``."""
    family, params = model_spec(cfg)
    baseline = build_baseline(family, **params)
    rows = split_indices(study.table, fold)
    labels = study.table["label"].map(study.classes.index).to_numpy()
    speakers = study.table["speaker"].astype(str).to_numpy()
    train = np.sort(np.concatenate([rows["train"], rows["val"]]))
    scores, extra = baseline.fit_predict(
        study.functionals,
        labels,
        speakers,
        train,
        rows["test"],
        num_classes=len(study.classes),
        seed=seed,
        normalize=cfg.graph.normalize,
    )
    test_rows = study.table.iloc[rows["test"]]
    predictions = predictions_frame(
        test_rows["utterance"].tolist(),
        test_rows["speaker"].astype(str).tolist(),
        labels[rows["test"]],
        scores,
        study.classes,
    )
    return predictions, {"epochs": 0, **extra}
