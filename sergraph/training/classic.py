"""Classic (non-neural) baselines fitted on utterance vectors: the linear SVM."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from sergraph.data.folds import Fold, split_indices
from sergraph.data.prepared import PreparedData
from sergraph.metrics import scores_from_labels
from sergraph.results.layout import predictions_frame

SVM_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def speaker_standardized(values: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Each speaker's rows z-scored with that speaker's own mean and std (unlabelled; the
    transductive ``graph.normalize=speaker`` step). Constant columns keep std 1."""
    out = np.empty_like(values, dtype=np.float64)
    for speaker in np.unique(speakers):
        mask = speakers == speaker
        block = np.asarray(values[mask], dtype=np.float64)
        std = block.std(axis=0)
        std[~(std > 1e-8)] = 1.0
        out[mask] = (block - block.mean(axis=0)) / std
    return out


def fit_svm(cfg: DictConfig, study: PreparedData, fold: Fold, seed: int):
    """Linear SVM on utterance functionals, standardised with training-side statistics.

    With ``graph.normalize=speaker`` every speaker's functionals are first z-scored with that
    speaker's own statistics (the same transductive, label-free step the graph models get).

    The regularisation constant C is chosen from :data:`SVM_C_GRID` by mean UA of an inner
    leave-one-speaker-out loop over the fold's training and validation speakers (never the
    test speakers); the final SVM is then fitted on all of them. The reported "probabilities"
    are a softmax of the decision values (scores, not calibrated probabilities).
    """
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rows = split_indices(study.table, fold)
    labels = study.table["label"].map(study.classes.index).to_numpy()
    speakers = study.table["speaker"].astype(str).to_numpy()
    train = np.sort(np.concatenate([rows["train"], rows["val"]]))
    values = study.functionals
    if cfg.graph.normalize == "speaker":
        values = speaker_standardized(values, speakers)

    def fit_predict(c: float, fit_rows: np.ndarray, predict_rows: np.ndarray):
        scaler = StandardScaler().fit(values[fit_rows])
        x_fit = np.nan_to_num(scaler.transform(values[fit_rows]))
        x_predict = np.nan_to_num(scaler.transform(values[predict_rows]))
        model = LinearSVC(C=c, max_iter=20000, random_state=seed).fit(x_fit, labels[fit_rows])
        return model, model.decision_function(x_predict)

    inner_speakers = sorted(set(speakers[train]))
    best_c, best_ua = SVM_C_GRID[-1], None
    for c in SVM_C_GRID:
        inner = []
        for held_out in inner_speakers:
            mask = speakers[train] == held_out
            model, decision = fit_predict(c, train[~mask], train[mask])
            predicted = model.classes_[decision.argmax(axis=1)]
            inner.append(
                scores_from_labels(labels[train[mask]], predicted, len(study.classes))["ua"]
            )
        mean_ua = float(np.nanmean(inner))
        if best_ua is None or mean_ua > best_ua:
            best_c, best_ua = c, mean_ua
    model, decision = fit_predict(best_c, train, rows["test"])
    decision = decision - decision.max(axis=1, keepdims=True)
    scores = np.exp(decision) / np.exp(decision).sum(axis=1, keepdims=True)
    # Classes never seen in training have no column in the SVM; place scores by class index.
    full = np.zeros((len(rows["test"]), len(study.classes)))
    full[:, model.classes_] = scores
    test_rows = study.table.iloc[rows["test"]]
    predictions = predictions_frame(
        test_rows["utterance"].tolist(),
        test_rows["speaker"].astype(str).tolist(),
        labels[rows["test"]],
        full,
        study.classes,
    )
    return predictions, {"epochs": 0, "svm_C": best_c, "inner_cv_ua": best_ua}
