"""The linear SVM baseline on utterance functionals (the paper's Table 2)."""

from __future__ import annotations

import numpy as np

from sergraph.models.classic import ClassicBaseline, speaker_standardized
from sergraph.models.registry import register

#: Regularisation constants tried by the inner speaker cross-validation.
SVM_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@register("svm")
class LinearSVM(ClassicBaseline):
    """Linear SVM on utterance functionals, standardised with training-side statistics.

    With ``normalize="speaker"`` every speaker's functionals are first z-scored with that
    speaker's own statistics (the same label-free step the graph models get), computed over the
    rows the evaluation protocol allows (``statistics``).

    The regularisation constant C is chosen from :data:`SVM_C_GRID` by mean UA of an inner
    leave-one-speaker-out loop over the training rows' speakers (the fold's training and
    validation speakers, never the test speakers); the final SVM is then fitted on all training
    rows. The returned scores are a softmax of the decision values (not calibrated
    probabilities). Extra fields: ``svm_C`` (the chosen C) and ``inner_cv_ua`` (its inner UA).
    """

    def fit_predict(
        self,
        values,
        labels,
        speakers,
        train_rows,
        test_rows,
        *,
        num_classes,
        seed,
        normalize,
        statistics=None,
    ):
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        from sergraph.metrics import scores_from_labels  # torchmetrics: only when fitting

        train = train_rows
        if normalize == "speaker":
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
                inner.append(scores_from_labels(labels[train[mask]], predicted, num_classes)["ua"])
            mean_ua = float(np.nanmean(inner))
            if best_ua is None or mean_ua > best_ua:
                best_c, best_ua = c, mean_ua
        model, decision = fit_predict(best_c, train, test_rows)
        decision = decision - decision.max(axis=1, keepdims=True)
        scores = np.exp(decision) / np.exp(decision).sum(axis=1, keepdims=True)
        # Classes never seen in training have no column in the SVM; place scores by class index.
        full = np.zeros((len(test_rows), num_classes))
        full[:, model.classes_] = scores
        return full, {"svm_C": best_c, "inner_cv_ua": best_ua}
