"""Logistic regression on utterance functionals: a classic sibling of the SVM baseline."""

from __future__ import annotations

from sergraph.models.classic import SelectedBaseline, class_weight_candidates
from sergraph.models.registry import register

#: Inverse regularisation strengths tried by the inner speaker cross-validation.
LOGREG_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@register("logreg")
class LogisticRegressionBaseline(SelectedBaseline):
    """Multinomial logistic regression (L2, lbfgs) on standardised functionals; C (from
    :data:`LOGREG_C_GRID`) and the class weighting chosen by the inner leave-one-speaker-out
    over the training speakers (:class:`~sergraph.models.classic.SelectedBaseline`); scores are
    its class probabilities.

    Extra ``metrics.json`` fields: ``logreg_C``, ``logreg_class_weight``, ``inner_cv_ua``,
    ``chosen``, ``inner_grid``.

    Args:
        class_weight: ``nested`` (default: unweighted and ``balanced`` both tried), ``null`` or
            ``balanced``.
        max_iter: lbfgs iterations at most.
    """

    scores_from = "proba"

    def __init__(self, class_weight: str | None = "nested", max_iter: int = 2000):
        self.class_weights = class_weight_candidates(class_weight)
        self.max_iter = max_iter

    def candidates(self, num_features):
        return [{"C": c, "class_weight": w} for w in self.class_weights for c in LOGREG_C_GRID]

    def estimator(self, params, seed):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=self.max_iter, **params)

    def record(self, params):
        return {"logreg_C": params["C"], "logreg_class_weight": params["class_weight"]}
