"""The project's earlier linear SVM (liblinear ``LinearSVC``), kept for comparison with the
standard ``svm`` (:mod:`sergraph.models.svm`)."""

from __future__ import annotations

from sergraph.models.classic import SelectedBaseline, class_weight_candidates
from sergraph.models.registry import register
from sergraph.models.svm import LinearSVM


@register("svm_linearsvc")
class LiblinearSVM(LinearSVM):
    """``sklearn.svm.LinearSVC`` (liblinear: one-vs-rest, squared hinge, ``max_iter=20000``) on
    standardised functionals, C from :data:`~sergraph.models.svm.SVM_C_GRID` by the inner
    leave-one-speaker-out, as :class:`~sergraph.models.svm.LinearSVM`. This was ``model=svm``
    until the standard libsvm form replaced it (the README says which rows used which).

    Extra ``metrics.json`` fields: as :class:`~sergraph.models.svm.LinearSVM`.

    Args:
        class_weight: ``null`` (default, the earlier form), ``balanced`` or ``nested``.
    """

    def __init__(self, class_weight: str | None = None):
        self.class_weights = class_weight_candidates(class_weight)

    # liblinear has no kernel: each candidate is fitted on the rows themselves
    score_candidates = SelectedBaseline.score_candidates

    def estimator(self, params, seed):
        from sklearn.svm import LinearSVC

        return LinearSVC(max_iter=20000, random_state=seed, **params)
