"""The standard linear SVM baseline on utterance functionals (the paper's Table 2).

libsvm's linear SVM (``sklearn.svm.SVC(kernel="linear")``: one-vs-one, hinge loss), the classic
openSMILE baseline of the INTERSPEECH challenges and of the SER toolkits. The project's earlier
``LinearSVC`` (liblinear: one-vs-rest, squared hinge) stays available as ``svm_linearsvc``
(:mod:`sergraph.models.svm_linearsvc`) for comparison.
"""

from __future__ import annotations

import numpy as np

from sergraph.models.classic import SelectedBaseline, class_weight_candidates, fitted
from sergraph.models.registry import register

#: Regularisation constants tried by the inner speaker cross-validation.
SVM_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@register("svm")
class LinearSVM(SelectedBaseline):
    """Linear SVM (libsvm, one-vs-one, hinge) on utterance functionals, standardised with
    training-side statistics.

    With ``normalize="speaker"`` every speaker's functionals are first z-scored with that
    speaker's own statistics (the same label-free step the graph models get), computed over the
    rows the evaluation protocol allows (``statistics``).

    C (from :data:`SVM_C_GRID`) and, with ``class_weight="nested"``, the class weighting (none or
    ``"balanced"``) are chosen together by mean UA of an inner leave-one-speaker-out loop over
    the training rows' speakers (the fold's training and validation speakers, never the test
    speakers); ties go to the unweighted SVM, then to the smaller C. The final SVM is then fitted
    on all training rows (:class:`~sergraph.models.classic.SelectedBaseline`).

    Speed: the linear kernel (the Gram matrix of the standardised rows, the same dot products
    libsvm computes, to rounding) is computed once per split and shared by every candidate
    (the estimator with ``kernel="precomputed"``), instead of once per fit. ``break_ties`` is
    on, so a prediction is the largest one-vs-rest-shaped decision value (libsvm's vote, its rare
    ties broken by the decision values instead of by class order). The returned scores are a
    softmax of the decision values (not calibrated probabilities).

    Extra ``metrics.json`` fields: ``svm_C`` and ``svm_class_weight`` (the choice),
    ``inner_cv_ua`` (its inner UA), ``chosen`` and ``inner_grid`` (every candidate's inner UA).

    Args:
        class_weight: ``nested`` (default: unweighted and ``balanced`` both tried by the inner
            selection), ``null`` (unweighted) or ``balanced``.
    """

    def __init__(self, class_weight: str | None = "nested"):
        self.class_weights = class_weight_candidates(class_weight)

    def candidates(self, num_features):
        return [{"C": c, "class_weight": w} for w in self.class_weights for c in SVM_C_GRID]

    def estimator(self, params, seed):
        from sklearn.svm import SVC

        return SVC(kernel="linear", break_ties=True, **params)

    def score_candidates(self, grid, x_fit, y_fit, x_predict, seed):
        rows = np.asarray(x_fit, dtype=np.float64)
        gram, cross = rows @ rows.T, np.asarray(x_predict, dtype=np.float64) @ rows.T
        out = []
        for params in grid:
            estimator = self.estimator(params, seed).set_params(kernel="precomputed")
            model = fitted(estimator, gram, y_fit)
            out.append((model.classes_, self.scores(model, cross)))
        return out

    def record(self, params):
        return {"svm_C": params["C"], "svm_class_weight": params["class_weight"]}
