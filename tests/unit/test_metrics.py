import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from sergraph.metrics import EmotionScores, pooled_scores, scores_from_labels


def test_wa_ua_by_hand():
    # targets: 4 of class 0, 2 of class 1, 2 of class 2
    true = [0, 0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 1, 1, 0, 2, 1]
    scores = scores_from_labels(true, pred, 3)
    # WA = 5/8; recalls 3/4, 1/2, 1/2 -> UA = (0.75 + 0.5 + 0.5) / 3
    assert scores["wa"] == pytest.approx(5 / 8)
    assert scores["ua"] == pytest.approx(1.75 / 3)
    assert scores["recall"] == pytest.approx([0.75, 0.5, 0.5])
    assert scores["confusion"] == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]


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


def test_pooled_scores_from_predictions_frame():
    frame = pd.DataFrame({"true": ["a", "a", "b", "c"], "predicted": ["a", "b", "b", "c"]})
    scores = pooled_scores(frame, ["a", "b", "c"])
    assert scores["wa"] == pytest.approx(3 / 4) and scores["ua"] == pytest.approx((0.5 + 1 + 1) / 3)
    with pytest.raises(ValueError, match="outside the classes"):
        pooled_scores(frame, ["a", "b"])
