"""Weighted and unweighted accuracy, per-class recall and confusion matrices.

Definitions used everywhere in sergraph (and printed in every results table):

- **WA** (weighted accuracy) = correct predictions / all predictions. This equals torchmetrics'
  ``MulticlassAccuracy(average="micro")``.
- **UA** (unweighted accuracy) = mean of per-class recalls **over the classes present in the
  targets**. With every class present this equals ``MulticlassAccuracy(average="macro")``.

A class absent from the targets of a test fold (possible with one held-out speaker) has no
defined recall. torchmetrics' macro average then still counts that class with recall 0 whenever
the model predicts it (it only drops classes with no targets *and* no predictions), so its value
depends on what the model wrongly predicts. sergraph leaves such classes out of the mean, which
is the textbook definition (and scikit-learn's ``balanced_accuracy_score``). Pooled UA over all
folds' predictions has every class present and is the number to report.

The module-level state (:class:`EmotionScores`) is a torchmetrics ``MulticlassConfusionMatrix``: a sum-reduced count
matrix, so it is computed on the model's device and synchronised across DDP ranks for free.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def scores_from_confusion(confusion: torch.Tensor | np.ndarray) -> dict[str, object]:
    """WA, UA and per-class recall from a confusion matrix (rows = true, columns = predicted).

    Returns:
        ``{"wa": float, "ua": float, "recall": list[float | nan], "support": list[int]}``;
        recall is ``nan`` for a class without targets, and such classes are left out of UA.
    """
    cm = torch.as_tensor(confusion, dtype=torch.float64).cpu()
    support = cm.sum(dim=1)
    total = support.sum()
    correct = torch.diagonal(cm).sum()
    wa = float(correct / total) if total > 0 else float("nan")
    recall = torch.where(support > 0, torch.diagonal(cm) / support.clamp(min=1), torch.nan)
    present = support > 0
    ua = float(recall[present].mean()) if present.any() else float("nan")
    return {
        "wa": wa,
        "ua": ua,
        "recall": [float(r) for r in recall],
        "support": [int(s) for s in support],
    }


def _emotion_scores_class() -> type:
    """:class:`EmotionScores`, defined on first use: torchmetrics (and what it imports) is not
    imported by the verbs that only read results (``sergraph report``, ``config``, ``folds``)."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    class EmotionScores(MulticlassConfusionMatrix):
        """A confusion matrix metric whose :meth:`scores` gives WA/UA/recall as defined above."""

        def __init__(self, num_classes: int, **kwargs) -> None:
            super().__init__(num_classes=num_classes, normalize=None, **kwargs)

        def scores(self) -> dict[str, object]:
            confusion = self.compute()
            out = scores_from_confusion(confusion)
            out["confusion"] = confusion.cpu().long().tolist()
            return out

    EmotionScores.__module__ = __name__
    EmotionScores.__qualname__ = "EmotionScores"
    return EmotionScores


def __getattr__(name: str):
    # PEP 562: ``sergraph.metrics.EmotionScores`` (import, pickling) defines the class once.
    if name == "EmotionScores":
        cls = globals()["EmotionScores"] = _emotion_scores_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def scores_from_labels(
    true: np.ndarray | list, predicted: np.ndarray | list, num_classes: int
) -> dict[str, object]:
    """Same scores from integer label arrays (used for pooling predictions files)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(true, dtype=int), np.asarray(predicted, dtype=int)), 1)
    out = scores_from_confusion(cm)
    out["confusion"] = cm.tolist()
    return out


def pooled_scores(predictions: pd.DataFrame, classes: list[str]) -> dict[str, object]:
    """Scores over all rows of concatenated ``predictions.csv`` files (columns true, predicted)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(
        set(predictions["true"]) - set(index) | set(predictions["predicted"]) - set(index)
    )
    if unknown:
        raise ValueError(f"predictions contain labels {unknown} outside the classes {classes}")
    return scores_from_labels(
        predictions["true"].map(index).to_numpy(),
        predictions["predicted"].map(index).to_numpy(),
        len(classes),
    )
