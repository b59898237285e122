import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from sergraph.metrics import (
    BEST_VALIDATION,
    METRICS,
    PRIMARY,
    EmotionScores,
    metric,
    pooled_scores,
    primary,
    scores_from_labels,
)


def test_wa_ua_f1_by_hand():
    # targets: 4 of class 0, 2 of class 1, 2 of class 2
    true = [0, 0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 1, 1, 0, 2, 1]
    scores = scores_from_labels(true, pred, 3)
    # WA = 5/8; recalls 3/4, 1/2, 1/2 -> UA = (0.75 + 0.5 + 0.5) / 3
    assert scores["wa"] == pytest.approx(5 / 8)
    assert scores["ua"] == pytest.approx(1.75 / 3)
    assert scores["recall"] == pytest.approx([0.75, 0.5, 0.5])
    assert scores["confusion"] == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    # F1 = 2 TP / (2 TP + FP + FN): class 0 6/8, class 1 2/5, class 2 2/3
    assert scores["f1"] == pytest.approx((6 / 8 + 2 / 5 + 2 / 3) / 3)
    assert scores["f1"] == pytest.approx(f1_score(true, pred, average="macro"))


def test_the_registry_names_wa_ua_f1_and_the_primary_metric():
    assert list(METRICS) == ["wa", "ua", "f1"]
    assert [m.display for m in METRICS.values()] == ["WA", "UA", "F1"]
    assert all(m.higher_is_better and m.mode == "max" for m in METRICS.values())
    assert primary() is METRICS[PRIMARY] is metric("ua")
    assert BEST_VALIDATION == "best_val_ua"  # the key results on disk record it under
    with pytest.raises(KeyError, match=r"registered metrics: \['wa', 'ua', 'f1'\]"):
        metric("accuracy")


def test_each_metric_from_labels_equals_the_scores():
    rng = np.random.default_rng(1)
    true, pred = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    scores = scores_from_labels(true, pred, 4)
    for name, entry in METRICS.items():
        assert entry.from_labels(true, pred, 4) == scores[name]


def test_metric_equals_torchmetrics_when_all_classes_present():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (200,))
    preds = torch.randint(0, 4, (200,))
    metric = EmotionScores(4)
    metric.update(preds[:77], target[:77])
    metric.update(preds[77:], target[77:])  # accumulates over batches
    scores = metric.scores()
    assert scores["wa"] == pytest.approx(
        float(MulticlassAccuracy(4, average="micro")(preds, target))
    )
    assert scores["ua"] == pytest.approx(
        float(MulticlassAccuracy(4, average="macro")(preds, target))
    )
    assert scores["f1"] == pytest.approx(
        float(MulticlassF1Score(4, average="macro")(preds, target))
    )
    assert scores["f1"] == pytest.approx(
        f1_score(target, preds, labels=range(4), average="macro", zero_division=0)
    )
    # each entry's own torchmetrics counterpart agrees too
    for name, entry in METRICS.items():
        assert entry.torchmetric is not None, name
        assert scores[name] == pytest.approx(float(entry.torchmetric(4)(preds, target)))


def test_absent_class_is_left_out_of_ua():
    # class 2 has no targets in this fold but is predicted once
    target = torch.tensor([0, 0, 1, 1, 1])
    preds = torch.tensor([0, 2, 1, 1, 0])
    metric = EmotionScores(3)
    metric.update(preds, target)
    scores = metric.scores()
    # recalls: class 0 = 1/2, class 1 = 2/3, class 2 undefined -> UA = (1/2 + 2/3) / 2
    assert scores["ua"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert np.isnan(scores["recall"][2]) and scores["support"] == [2, 3, 0]
    assert scores["wa"] == pytest.approx(3 / 5)
    # Pinned: torchmetrics' macro average counts the predicted-but-absent class as recall 0.
    assert float(MulticlassAccuracy(3, average="macro")(preds, target)) == pytest.approx(
        (0.5 + 2 / 3) / 3
    )


def test_absent_class_is_left_out_of_f1():
    """F1 follows UA's rule: the mean over the classes present in the targets, whether or not
    the model predicts the absent class (scikit-learn with ``labels`` = the present classes)."""
    # class 2 has no targets but is predicted once
    target = torch.tensor([0, 0, 1, 1, 1])
    preds = torch.tensor([0, 2, 1, 1, 0])
    metric = EmotionScores(3)
    metric.update(preds, target)
    # class 0: TP 1, FN 1 (predicted 2), FP 1 -> 2/4; class 1: TP 2, FN 1, FP 0 -> 4/5
    assert metric.scores()["f1"] == pytest.approx((0.5 + 0.8) / 2)
    assert metric.scores()["f1"] == pytest.approx(
        f1_score(target, preds, labels=[0, 1], average="macro", zero_division=0)
    )
    # Pinned: torchmetrics and scikit-learn over all labels count class 2 with F1 0.
    assert float(MulticlassF1Score(3, average="macro")(preds, target)) == pytest.approx(1.3 / 3)
    assert f1_score(
        target, preds, labels=range(3), average="macro", zero_division=0
    ) == pytest.approx(1.3 / 3)

    # class 2 absent and never predicted: the same rule, the same value as without class 2
    target, preds = [0, 0, 1, 1], [0, 1, 1, 1]
    scores = scores_from_labels(target, preds, 3)
    # class 0: TP 1, FN 1, FP 0 -> 2/3; class 1: TP 2, FN 0, FP 1 -> 4/5
    assert scores["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert scores["f1"] == scores_from_labels(target, preds, 2)["f1"]
    # torchmetrics drops a class with no targets and no predictions; scikit-learn over all
    # labels still counts it as 0 (zero_division=0)
    assert float(
        MulticlassF1Score(3, average="macro")(torch.tensor(preds), torch.tensor(target))
    ) == pytest.approx(scores["f1"])
    assert f1_score(
        target, preds, labels=range(3), average="macro", zero_division=0
    ) == pytest.approx((2 / 3 + 4 / 5) / 3)


def test_a_present_class_never_recognised_has_f1_zero():
    # class 1 is present and never predicted correctly: precision undefined, F1 0
    scores = scores_from_labels([0, 0, 1], [0, 0, 0], 2)
    # class 0: TP 2, FP 1, FN 0 -> 4/5; class 1: TP 0 -> 0
    assert scores["f1"] == pytest.approx(0.4)
    assert scores["f1"] == pytest.approx(
        f1_score([0, 0, 1], [0, 0, 0], labels=[0, 1], average="macro", zero_division=0)
    )
    assert np.isnan(scores_from_labels([], [], 2)["f1"])  # nothing scored: undefined


def test_pooled_scores_from_predictions_frame():
    frame = pd.DataFrame({"true": ["a", "a", "b", "c"], "predicted": ["a", "b", "b", "c"]})
    scores = pooled_scores(frame, ["a", "b", "c"])
    assert scores["wa"] == pytest.approx(3 / 4) and scores["ua"] == pytest.approx((0.5 + 1 + 1) / 3)
    # a: TP 1, FN 1 -> 2/3; b: TP 1, FP 1 -> 2/3; c: 1
    assert scores["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError, match="outside the classes"):
        pooled_scores(frame, ["a", "b"])
