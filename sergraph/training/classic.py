"""Classic (non-neural) baselines fitted on utterance vectors: the linear SVM."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from sergraph.data.folds import Fold, split_indices
from sergraph.data.prepared import PreparedData
from sergraph.metrics import scores_from_labels
from sergraph.results.layout import predictions_frame

SVM_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def speaker_standardized(
    values: np.ndarray, speakers: np.ndarray, statistics: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Each speaker's rows z-scored with that speaker's mean and std (unlabelled), computed
    over ``statistics[speaker]`` (row positions) or, without it, over all of its rows (the
    transductive step). Constant columns keep std 1."""
    out = np.empty_like(values, dtype=np.float64)
    for speaker in np.unique(speakers):
        mask = speakers == speaker
        rows = np.flatnonzero(mask) if statistics is None else statistics.get(str(speaker))
        if rows is None or not len(rows):
            out[mask] = np.nan  # a speaker outside the fold: never used
            continue
        fitted = np.asarray(values[rows], dtype=np.float64)
        std = fitted.std(axis=0)
        std[~(std > 1e-8)] = 1.0
        out[mask] = (np.asarray(values[mask], dtype=np.float64) - fitted.mean(axis=0)) / std
    return out


def protocol_rows(table, fold: Fold, protocol: str, normalize: str, enrollment: float, seed: int):
    """The SVM's rows under an evaluation protocol: ``(fit rows, scored test rows, statistic
    rows, enrolled rows)``.

    The SVM fits on the training and validation speakers together, so only the test speakers
    are held out: under ``enrollment`` their enrollment part is held aside (statistics only,
    never scored). The guard :func:`~sergraph.data.protocol.check_protocol` runs here.
    """
    from sergraph.data.protocol import check_protocol, enrollment_rows, statistic_rows

    enrolled = None
    if protocol == "enrollment":
        enrolled = enrollment_rows(table, fold.test_speakers, enrollment, seed)
    rows = split_indices(table, fold, enrolled)
    fit_rows = np.sort(np.concatenate([rows["train"], rows["val"]]))
    sides = {"train": fit_rows, "test": rows["test"]}
    statistics = statistic_rows(table, sides, protocol, normalize, enrolled)
    check_protocol(protocol, rows["test"], statistics, enrolled, where=fold.name)
    return fit_rows, rows["test"], statistics, enrolled


def fit_svm(cfg: DictConfig, study: PreparedData, fold: Fold, seed: int):
    """Linear SVM on utterance functionals, standardised with training-side statistics.

    With ``graph.normalize=speaker`` every speaker's functionals are first z-scored with that
    speaker's own statistics (the same label-free step the graph models get); a test speaker's
    statistics come from the protocol (:func:`protocol_rows`): its enrollment part, or under
    ``transductive`` all its utterances.

    The regularisation constant C is chosen from :data:`SVM_C_GRID` by mean UA of an inner
    leave-one-speaker-out loop over the fold's training and validation speakers (never the
    test speakers); the final SVM is then fitted on all of them. The reported "probabilities"
    are a softmax of the decision values (scores, not calibrated probabilities).
    """
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from sergraph.config import protocol_of

    train, test_rows, statistics, _ = protocol_rows(
        study.table,
        fold,
        protocol_of(cfg),
        cfg.graph.normalize,
        cfg.eval.enrollment,
        cfg.eval.enrollment_seed,
    )
    labels = study.table["label"].map(study.classes.index).to_numpy()
    speakers = study.table["speaker"].astype(str).to_numpy()
    values = study.functionals
    if cfg.graph.normalize == "speaker":
        values = speaker_standardized(values, speakers, statistics)

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
    model, decision = fit_predict(best_c, train, test_rows)
    decision = decision - decision.max(axis=1, keepdims=True)
    scores = np.exp(decision) / np.exp(decision).sum(axis=1, keepdims=True)
    # Classes never seen in training have no column in the SVM; place scores by class index.
    full = np.zeros((len(test_rows), len(study.classes)))
    full[:, model.classes_] = scores
    tested = study.table.iloc[test_rows]
    predictions = predictions_frame(
        tested["utterance"].tolist(),
        tested["speaker"].astype(str).tolist(),
        labels[test_rows],
        full,
        study.classes,
    )
    return predictions, {"epochs": 0, "svm_C": best_c, "inner_cv_ua": best_ua}
