"""The metrics registry: every score sergraph computes, records, logs, tabulates and chooses by.

Each :class:`Metric` of :data:`METRICS` says what a score is called (its key in
``metrics.json``, ``summary.json``, ``results.csv`` and the logged ``val/<key>``,
``test/<key>``), how it is printed (``WA``), which way is better, and how it is computed from a
confusion matrix (rows = true class, columns = predicted class). The results files, summaries,
report and Markdown tables, W&B runs, bundles and model cards, the LightningModule's logged
scores and the choices made on validation speakers all read the entries from here, so a new
metric is one new entry (tests/unit/test_metric_registry.py adds one and finds it everywhere).

Definitions (printed under every results table):

- **WA** (weighted accuracy) = correct predictions / all predictions. This equals torchmetrics'
  ``MulticlassAccuracy(average="micro")``.
- **UA** (unweighted accuracy) = mean of per-class recalls **over the classes present in the
  targets**. With every class present this equals ``MulticlassAccuracy(average="macro")``.
- **F1** (macro F1) = mean of per-class F1 = 2 TP / (2 TP + FP + FN) **over the classes present
  in the targets**; a present class's F1 is 0 when none of its utterances is recognised. This is
  scikit-learn's ``f1_score(targets, predictions, labels=<classes present in the targets>,
  average="macro", zero_division=0)`` (``zero_division`` never applies: a present class has
  TP + FN > 0); with every class present it equals ``f1_score(..., labels=range(n_classes))``
  and torchmetrics' ``MulticlassF1Score(average="macro")``.

A class absent from the targets of a test fold (possible with one held-out speaker) has no
defined recall. torchmetrics' macro average then still counts that class with recall 0 whenever
the model predicts it (it only drops classes with no targets *and* no predictions), so its value
depends on what the model wrongly predicts. sergraph leaves such classes out of the mean, which
is the textbook definition (and scikit-learn's ``balanced_accuracy_score``). F1 follows the same
rule: an absent class's F1 is 0 whenever the model predicts it and undefined otherwise, so
counting it would make a fold's score depend on how the model errs on a class it cannot get
right (torchmetrics) or on how many classes the corpus has (scikit-learn with
``labels=range(n_classes)``). The errors still count: a present class's utterance predicted as
an absent class is a false negative of the present class. Pooled scores over all folds'
predictions have every class present and are the numbers to report.

:data:`PRIMARY` names the metric sergraph decides and compares by: checkpointing and early
stopping on validation speakers, nested selection (:data:`BEST_VALIDATION`), the fusion weight
and the classic baselines' inner grid optimise it, in its :attr:`Metric.higher_is_better`
direction, and the report's paired tests compare it per fold. The keys that record it under its
name (``best_val_ua``, a fusion's ``val_ua``, a classic baseline's ``inner_cv_ua``) are kept as
results on disk spell them.

The module-level state (:class:`EmotionScores`) is a torchmetrics ``MulticlassConfusionMatrix``:
a sum-reduced count matrix, so it is computed on the model's device and synchronised across DDP
ranks for free; every metric is then computed from it by the same function as from the
predictions files, so a logged ``test/ua`` equals ``metrics.json``'s ``ua`` also on a fold
with an absent class. Each entry also names its torchmetrics counterpart
(:attr:`Metric.torchmetric`), equal to it whenever every class is present in the targets
(tests/unit/test_metrics.py checks both the agreement and the pinned difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: reading results imports neither torch nor pandas here
    import pandas as pd
    import torch


@dataclass(frozen=True)
class Metric:
    """One score of a set of predictions, as every reader of results needs it.

    Args:
        name: the key in ``metrics.json``, ``summary.json`` and ``results.csv`` (``wa``); logged
            as ``val/<name>`` and ``test/<name>``.
        display: how tables, figures and console lines print it (``WA``).
        definition: one clause for the notes under a table ("accuracy over utterances").
        from_confusion: the score of a ``[C, C]`` float64 CPU ``torch.Tensor`` confusion
            matrix (rows = true class): the one definition, used alike for the on-device
            :class:`EmotionScores`, a cell's ``metrics.json`` and pooled predictions; ``nan``
            where it is undefined (no targets at all).
        torchmetric: ``num_classes -> torchmetrics.Metric`` that equals it whenever every class
            is present in the targets (imported when called: reading results needs no
            torchmetrics); ``None`` where torchmetrics has none. The LightningModule does not
            use it (see the module docstring); tests check the agreement.
        higher_is_better: the direction every choice by this metric takes.
    """

    name: str
    display: str
    definition: str
    from_confusion: Callable[[torch.Tensor], float]
    torchmetric: Callable[[int], object] | None = None
    higher_is_better: bool = True

    @property
    def mode(self) -> str:
        """``"max"`` or ``"min"``: Lightning's checkpoint and early-stopping ``mode``."""
        return "max" if self.higher_is_better else "min"

    def sort_key(self, value: float) -> float:
        """``value`` oriented so that larger is better (for ``max`` and ``argmax``)."""
        return value if self.higher_is_better else -value

    def from_labels(self, targets, predictions, num_classes: int) -> float:
        """The score of integer class arrays (numpy or lists) of ``num_classes`` classes."""
        return self.from_confusion(
            _as_float64(confusion_from_labels(targets, predictions, num_classes))
        )


def _as_float64(confusion) -> torch.Tensor:
    import torch

    return torch.as_tensor(confusion, dtype=torch.float64).cpu()


def _support(confusion: torch.Tensor) -> torch.Tensor:
    return confusion.sum(dim=1)


def weighted_accuracy(confusion: torch.Tensor) -> float:
    """WA: correct predictions / all predictions."""
    total = confusion.sum()
    return float(confusion.diagonal().sum() / total) if total > 0 else float("nan")


def per_class_recall(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class; ``nan`` for a class without targets."""
    import torch

    support = _support(confusion)
    return torch.where(support > 0, confusion.diagonal() / support.clamp(min=1), torch.nan)


def unweighted_accuracy(confusion: torch.Tensor) -> float:
    """UA: the mean recall over the classes present in the targets."""
    present = _support(confusion) > 0
    return float(per_class_recall(confusion)[present].mean()) if present.any() else float("nan")


def macro_f1(confusion: torch.Tensor) -> float:
    """Macro F1: the mean per-class F1 over the classes present in the targets."""
    support = _support(confusion)
    present = support > 0
    if not present.any():
        return float("nan")
    true_positives = confusion.diagonal()
    # 2 TP / (2 TP + FP + FN) = 2 TP / (targets + predictions of the class); > 0 where present
    f1 = 2 * true_positives / (support + confusion.sum(dim=0)).clamp(min=1)
    return float(f1[present].mean())


def _accuracy(average: str) -> Callable[[int], object]:
    def build(num_classes: int):
        from torchmetrics.classification import MulticlassAccuracy

        return MulticlassAccuracy(num_classes, average=average)

    return build


def _f1_score(num_classes: int):
    from torchmetrics.classification import MulticlassF1Score

    return MulticlassF1Score(num_classes, average="macro")


#: Every metric, in the order of table columns and logged keys (see the module docstring).
METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("wa", "WA", "accuracy over utterances", weighted_accuracy, _accuracy("micro")),
        Metric(
            "ua",
            "UA",
            "mean recall over the classes present in the targets",
            unweighted_accuracy,
            _accuracy("macro"),
        ),
        Metric(
            "f1",
            "F1",
            "mean F1 over the classes present in the targets",
            macro_f1,
            _f1_score,
        ),
    )
}

#: The metrics sergraph itself defines; others are registered at run time (tests, plugins).
BUILT_IN_METRICS = frozenset(METRICS)

#: The metric sergraph decides and compares by (see the module docstring).
PRIMARY = "ua"
#: The ``metrics.json`` key of a cell's best validation score of :data:`PRIMARY` (the score of
#: the checkpoint tested; what nested selection and a sweep compare).
BEST_VALIDATION = "best_val_ua"


def metric(name: str) -> Metric:
    """The registered metric ``name``; an unknown name lists the valid ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; registered metrics: {list(METRICS)}") from None


def primary() -> Metric:
    """The metric of :data:`PRIMARY`."""
    return metric(PRIMARY)


def percent(value: float | None, std: float | None = None) -> str:
    """A score as tables print it: ``12.34`` (percent), ``12.34 ± 0.56`` with a std, ``–``
    where it is missing (not recorded) or nan."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{100 * value:.2f}"
    if std is not None and not math.isnan(std):
        text += f" ± {100 * std:.2f}"
    return text


def definitions() -> str:
    """``WA = ...; UA = ...; F1 = ...`` for the notes under a table."""
    return "; ".join(f"{m.display} = {m.definition}" for m in METRICS.values())


def confusion_from_labels(targets, predictions, num_classes: int) -> np.ndarray:
    """The ``[C, C]`` int64 confusion matrix (rows = true) of integer class arrays."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(targets, dtype=int), np.asarray(predictions, dtype=int)), 1)
    return confusion


def scores_from_confusion(confusion: torch.Tensor | np.ndarray) -> dict[str, object]:
    """Every metric of :data:`METRICS` and per-class recall from a confusion matrix (rows = true,
    columns = predicted).

    Returns:
        ``{<metric name>: float, ..., "recall": list[float | nan], "support": list[int]}``;
        recall is ``nan`` for a class without targets, and such classes are left out of UA and
        F1.
    """
    cm = _as_float64(confusion)
    return {
        **{name: m.from_confusion(cm) for name, m in METRICS.items()},
        "recall": [float(r) for r in per_class_recall(cm)],
        "support": [int(s) for s in _support(cm)],
    }


def _emotion_scores_class() -> type:
    """:class:`EmotionScores`, defined on first use: torchmetrics (and what it imports) is not
    imported by the verbs that only read results (``sergraph report``, ``config``, ``folds``)."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    class EmotionScores(MulticlassConfusionMatrix):
        """A confusion matrix metric whose :meth:`scores` gives every registered metric and the
        per-class recall, as defined above."""

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
    cm = confusion_from_labels(true, predicted, num_classes)
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
