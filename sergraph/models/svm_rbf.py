"""The RBF-kernel SVM on utterance functionals: a classic sibling of the linear SVM baseline."""

from __future__ import annotations

import numpy as np

from sergraph.models.classic import SelectedBaseline, class_weight_candidates, fitted
from sergraph.models.registry import register

#: Regularisation constants tried by the inner speaker cross-validation.
RBF_C_GRID = (0.1, 1.0, 10.0, 100.0)
#: Kernel widths tried, as multiples of ``1 / D`` (``D`` functionals): on standardised features
#: ``1 / D`` is scikit-learn's ``gamma="scale"``.
RBF_GAMMA_FACTORS = (0.25, 1.0, 4.0)


@register("svm_rbf")
class RbfSVM(SelectedBaseline):
    """SVM with a Gaussian (RBF) kernel (libsvm ``SVC``, one-vs-one) on standardised
    functionals; C (:data:`RBF_C_GRID`), gamma (:data:`RBF_GAMMA_FACTORS` / D) and the class
    weighting chosen together by the inner leave-one-speaker-out over the training speakers
    (:class:`~sergraph.models.classic.SelectedBaseline`); scores are a softmax of the decision
    values. The squared distances between rows (``|x|^2 + |y|^2 - 2 x.y``, as libsvm computes
    them) are computed once per split and shared by every candidate
    (the estimator with ``kernel="precomputed"``, given ``exp(-gamma d^2)``).

    Extra ``metrics.json`` fields: ``svm_C``, ``svm_gamma``, ``svm_class_weight``,
    ``inner_cv_ua``, ``chosen``, ``inner_grid``.

    Args:
        class_weight: ``nested`` (default: unweighted and ``balanced`` both tried), ``null`` or
            ``balanced``.
    """

    def __init__(self, class_weight: str | None = "nested"):
        self.class_weights = class_weight_candidates(class_weight)

    def candidates(self, num_features):
        return [
            {"C": c, "gamma": factor / num_features, "class_weight": w}
            for w in self.class_weights
            for c in RBF_C_GRID
            for factor in RBF_GAMMA_FACTORS
        ]

    def estimator(self, params, seed):
        from sklearn.svm import SVC

        return SVC(kernel="rbf", break_ties=True, **params)

    def score_candidates(self, grid, x_fit, y_fit, x_predict, seed):
        rows = np.asarray(x_fit, dtype=np.float64)
        others = np.asarray(x_predict, dtype=np.float64)
        norms = (rows**2).sum(axis=1)
        fit_distances = norms[:, None] + norms[None, :] - 2 * rows @ rows.T
        cross_distances = (others**2).sum(axis=1)[:, None] + norms[None, :] - 2 * others @ rows.T
        out = []
        for params in grid:
            estimator = self.estimator(params, seed).set_params(kernel="precomputed")
            model = fitted(estimator, np.exp(-params["gamma"] * fit_distances), y_fit)
            kernel = np.exp(-params["gamma"] * cross_distances)
            out.append((model.classes_, self.scores(model, kernel)))
        return out

    def record(self, params):
        return {
            "svm_C": params["C"],
            "svm_gamma": params["gamma"],
            "svm_class_weight": params["class_weight"],
        }
