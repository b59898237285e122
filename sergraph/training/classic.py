"""Fitting one cell of a classic (non-neural) baseline: the fold's rows handed to the registered
:class:`~sergraph.models.classic.ClassicBaseline` as plain arrays, its scores made a
predictions frame.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from sergraph.config import model_spec
from sergraph.data.folds import Fold, split_indices
from sergraph.data.prepared import PreparedData
from sergraph.models import build_baseline
from sergraph.results.layout import predictions_frame


def protocol_rows(table, fold: Fold, protocol: str, normalize: str, enrollment: float, seed: int):
    """A classic baseline's rows under an evaluation protocol: ``(fit rows, scored test rows,
    statistic rows, enrolled rows)``.

    A classic baseline fits on the training and validation speakers together, so only the test
    speakers are held out: under ``enrollment`` their enrollment part is held aside (statistics
    only, never scored). The guard :func:`~sergraph.data.protocol.check_protocol` runs here.
    """
    from sergraph.data.protocol import (
        check_protocol,
        enrollment_rows,
        enrollment_speakers,
        statistic_rows,
    )

    enrolled = None
    if protocol == "enrollment":
        held_out = enrollment_speakers(fold, fits_on_validation=True)
        enrolled = enrollment_rows(table, held_out, enrollment, seed)
    rows = split_indices(table, fold, enrolled)
    fit_rows = np.sort(np.concatenate([rows["train"], rows["val"]]))
    sides = {"train": fit_rows, "test": rows["test"]}
    statistics = statistic_rows(table, sides, protocol, normalize, enrolled)
    check_protocol(protocol, rows["test"], statistics, enrolled, where=fold.name)
    return fit_rows, rows["test"], statistics, enrolled


def fit_classic(cfg: DictConfig, study: PreparedData, fold: Fold, seed: int):
    """Fit the configured classic baseline on the fold's training and validation rows and score
    its test rows (under the evaluation protocol: :func:`protocol_rows`); returns
    ``(predictions frame, extra metrics fields)``."""
    from sergraph.config import normalization_of, protocol_of

    family, params = model_spec(cfg)
    baseline = build_baseline(family, **params)
    train, test_rows, statistics, _ = protocol_rows(
        study.table,
        fold,
        protocol_of(cfg),
        normalization_of(cfg),
        cfg.eval.enrollment,
        cfg.eval.enrollment_seed,
    )
    labels = study.table["label"].map(study.classes.index).to_numpy()
    speakers = study.table["speaker"].astype(str).to_numpy()
    protocol_kwargs = {}
    if _accepts(baseline.fit_predict, "statistics"):
        protocol_kwargs["statistics"] = statistics
    elif protocol_of(cfg) == "enrollment" and normalization_of(cfg) == "speaker":
        raise ValueError(
            f"model {cfg.model.name!r}: its fit_predict takes no `statistics`, so it cannot "
            f"normalise per speaker under eval.protocol={protocol_of(cfg)} (the protocol "
            "decides which rows a held-out speaker's statistics come from); add "
            "`statistics=None` to its fit_predict (see sergraph.models.classic.ClassicBaseline)"
        )
    scores, extra = baseline.fit_predict(
        study.functionals,
        labels,
        speakers,
        train,
        test_rows,
        num_classes=len(study.classes),
        seed=seed,
        normalize=normalization_of(cfg),
        **protocol_kwargs,
    )
    tested = study.table.iloc[test_rows]
    predictions = predictions_frame(
        tested["utterance"].tolist(),
        tested["speaker"].astype(str).tolist(),
        labels[test_rows],
        scores,
        study.classes,
    )
    return predictions, {"epochs": 0, **extra}


def _accepts(function, name: str) -> bool:
    """Whether ``function`` takes keyword ``name`` (baselines written before it existed do not)."""
    import inspect

    parameters = inspect.signature(function).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)
