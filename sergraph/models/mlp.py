"""A small MLP on utterance functionals: a classic sibling of the SVM baseline."""

from __future__ import annotations

from sergraph.models.classic import SelectedBaseline
from sergraph.models.registry import register

#: L2 penalties tried by the inner speaker cross-validation.
MLP_ALPHA_GRID = (0.1, 1.0, 10.0, 100.0)


@register("mlp")
class FunctionalsMLP(SelectedBaseline):
    """One hidden ReLU layer (scikit-learn ``MLPClassifier``, Adam, a fixed number of epochs,
    no early stopping) on standardised functionals; the L2 penalty ``alpha``
    (:data:`MLP_ALPHA_GRID`) chosen by the inner leave-one-speaker-out over the training
    speakers (:class:`~sergraph.models.classic.SelectedBaseline`); seeded by the cell's seed;
    scores are its class probabilities.

    Extra ``metrics.json`` fields: ``mlp_alpha``, ``inner_cv_ua``, ``chosen``, ``inner_grid``.

    Args:
        hidden: units of the hidden layer.
        max_iter: training epochs (the solver stops earlier only when the loss stops falling).
    """

    scores_from = "proba"

    def __init__(self, hidden: int = 64, max_iter: int = 200):
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"model.params.hidden={hidden!r} must be a positive integer")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"model.params.max_iter={max_iter!r} must be a positive integer")
        self.hidden = hidden
        self.max_iter = max_iter

    def candidates(self, num_features):
        return [{"alpha": alpha} for alpha in MLP_ALPHA_GRID]

    def estimator(self, params, seed):
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(
            hidden_layer_sizes=(self.hidden,),
            max_iter=self.max_iter,
            random_state=seed,
            **params,
        )

    def record(self, params):
        return {"mlp_alpha": params["alpha"]}
