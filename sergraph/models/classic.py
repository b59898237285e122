"""``ClassicBaseline``: the interface of a non-neural baseline (plain numpy in, scores out).

A classic baseline is registered like a neural family::

    @register("svm")
    class LinearSVM(ClassicBaseline):
        def fit_predict(self, values, labels, speakers, train_rows, test_rows, *,
                        num_classes, seed, normalize):
            ...
            return scores, {"svm_C": best_c}

The study code hands it the whole corpus as arrays plus the row indices of one fold, so it can
be tested on a few made-up rows without a corpus, a cache or a config.
"""

from __future__ import annotations

import numpy as np

from sergraph.metrics import PRIMARY, primary


class ClassicBaseline:
    """A baseline fitted on one vector per utterance (not a ``torch.nn.Module``).

    A subclass takes its options (``model.params``) as keyword arguments of ``__init__`` with
    defaults, and implements :meth:`fit_predict`.

    Attributes:
        inputs: what the baseline is fitted on; ``"functionals"``: the utterance functionals of
            ``features.functionals`` (the only kind the study code prepares for it today).
    """

    inputs = "functionals"

    def fit_predict(
        self,
        values: np.ndarray,
        labels: np.ndarray,
        speakers: np.ndarray,
        train_rows: np.ndarray,
        test_rows: np.ndarray,
        *,
        num_classes: int,
        seed: int,
        normalize: str,
        statistics: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, dict]:
        """Fit on ``train_rows`` (training and validation speakers of the fold) and score
        ``test_rows`` (never seen before).

        Args:
            values: ``[U, D]`` one vector per utterance of the corpus.
            labels: ``[U]`` class indices.
            speakers: ``[U]`` speaker ids (strings).
            train_rows: indices of the rows to fit on (sorted).
            test_rows: indices of the rows to score, in the order of the returned scores.
            num_classes: number of classes (columns of the scores).
            seed: the cell's seed.
            normalize: ``graph.normalize`` (``train``, ``speaker`` (per-speaker, label-free)
                or ``none``).
            statistics: under ``normalize="speaker"``, for each speaker the rows its
                statistics may come from (the evaluation protocol's choice: a held-out
                speaker's enrollment part, or all its rows under ``transductive``); ``None``:
                all of a speaker's rows. A baseline that normalises per speaker must use it.

        Returns:
            ``(scores [len(test_rows), num_classes], extra)``: rows of class scores that sum to
            1, and extra fields written to the cell's ``metrics.json``.
        """
        raise NotImplementedError(f"{type(self).__name__} must define fit_predict")


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


#: ``class_weight`` options of the baselines that take one: never, always, or chosen per fold by
#: the inner leave-one-speaker-out together with the other hyperparameters.
CLASS_WEIGHTS = (None, "balanced", "nested")


def class_weight_candidates(class_weight: str | None) -> tuple[str | None, ...]:
    """The class weightings the inner selection tries for option ``class_weight`` (one of
    :data:`CLASS_WEIGHTS`), unweighted first (it wins ties); raise naming the accepted values."""
    if class_weight not in CLASS_WEIGHTS:
        raise ValueError(
            f"model.params.class_weight={class_weight!r} is not valid; choose null (unweighted), "
            "balanced (weights inversely proportional to class frequency) or nested (both tried, "
            "chosen per fold by the inner leave-one-speaker-out)"
        )
    return (None, "balanced") if class_weight == "nested" else (class_weight,)


class SelectedBaseline(ClassicBaseline):
    """A scikit-learn classifier on standardised functionals whose hyperparameters are chosen by
    an inner leave-one-speaker-out over the fit rows.

    The steps, for one fold: (with ``normalize="speaker"``) each speaker's functionals z-scored
    with its own protocol-allowed statistics (:func:`speaker_standardized`); a ``StandardScaler``
    fitted on the rows a model is fitted on; every candidate of :meth:`candidates` scored by the
    mean UA over the fit rows' speakers, each held out in turn (their own inner scaler, never a
    test speaker: the test rows are not among the fit rows); the first candidate with the highest
    mean UA refitted on all fit rows; the test rows scored. This is scikit-learn's
    ``GridSearchCV(Pipeline([StandardScaler(), estimator]), grid, scoring="balanced_accuracy",
    cv=LeaveOneGroupOut())`` with the speakers as groups (``tests/unit/test_classic_baselines.py``
    pins it).

    Subclasses define :meth:`candidates` (the grid in tie-breaking order) and :meth:`estimator`,
    and may set :attr:`scores_from` and override :meth:`score_candidates` (e.g. to compute a
    kernel once for every candidate).

    Attributes:
        scores_from: ``"decision"`` (a softmax of ``decision_function``, not calibrated
            probabilities) or ``"proba"`` (``predict_proba``).
    """

    scores_from = "decision"

    def candidates(self, num_features: int) -> list[dict]:
        """The hyperparameter settings tried, in order (the first of equal inner UAs wins).

        Args:
            num_features: ``D``, the width of the functionals (for grids relative to it).
        """
        raise NotImplementedError(f"{type(self).__name__} must define candidates")

    def estimator(self, params: dict, seed: int):
        """A fresh unfitted scikit-learn classifier with one candidate's ``params``."""
        raise NotImplementedError(f"{type(self).__name__} must define estimator")

    def record(self, params: dict) -> dict:
        """Extra ``metrics.json`` fields naming the chosen setting (default: none)."""
        return {}

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
        if normalize == "speaker":
            values = speaker_standardized(values, speakers, statistics)
        grid = self.candidates(values.shape[1])
        chosen, inner_ua, table = inner_selection(
            self, grid, values, labels, speakers, train_rows, num_classes, seed
        )
        x_fit, x_test = standardized(values, train_rows, test_rows)
        ((classes, scores),) = self.score_candidates(
            [chosen], x_fit, labels[train_rows], x_test, seed
        )
        full = np.zeros((len(test_rows), num_classes))
        full[:, classes] = scores  # classes never seen in training keep score 0
        extra = {
            **self.record(chosen),
            "chosen": chosen,
            "inner_cv_ua": inner_ua,
            "inner_grid": [
                {"params": p, PRIMARY: score} for p, score in zip(grid, table, strict=True)
            ],
        }
        return full, extra

    def score_candidates(
        self, grid: list[dict], x_fit: np.ndarray, y_fit: np.ndarray, x_predict: np.ndarray, seed
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Fit every candidate of ``grid`` on standardised rows and score others.

        Returns:
            per candidate, ``(classes [k], scores [len(x_predict), k])``: the class indices the
            model knows and its scores of them (rows sum to 1).
        """
        out = []
        for params in grid:
            model = fitted(self.estimator(params, seed), x_fit, y_fit)
            out.append((model.classes_, self.scores(model, x_predict)))
        return out

    def scores(self, model, x: np.ndarray) -> np.ndarray:
        """Class scores of a fitted model (columns in ``model.classes_`` order, rows sum to 1)."""
        if self.scores_from == "proba":
            return model.predict_proba(x)
        decision = model.decision_function(x)
        if decision.ndim == 1:  # two classes: one signed distance, positive for classes_[1]
            decision = np.column_stack([-decision, decision]) / 2
        decision = decision - decision.max(axis=1, keepdims=True)
        return np.exp(decision) / np.exp(decision).sum(axis=1, keepdims=True)


def fitted(estimator, x: np.ndarray, y: np.ndarray):
    """``estimator`` fitted on ``(x, y)``; convergence warnings of a capped solver are silenced
    (they would print once per inner fit; the inner UA already judges the result)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(x, y)


def standardized(
    values: np.ndarray, fit_rows: np.ndarray, predict_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(fit rows, predict rows)`` of ``values`` standardised with a ``StandardScaler`` fitted on
    the fit rows alone (constant columns keep scale 1; non-finite values become 0)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(values[fit_rows])
    return (
        np.nan_to_num(scaler.transform(values[fit_rows])),
        np.nan_to_num(scaler.transform(values[predict_rows])),
    )


def inner_selection(
    baseline: SelectedBaseline,
    grid: list[dict],
    values: np.ndarray,
    labels: np.ndarray,
    speakers: np.ndarray,
    fit_rows: np.ndarray,
    num_classes: int,
    seed: int,
) -> tuple[dict, float, list[float]]:
    """The candidate of ``grid`` with the highest mean UA over the speakers of ``fit_rows``, each
    held out in turn (fitted on the others, after their own scaler).

    Args:
        baseline: what fits and scores the candidates (:meth:`SelectedBaseline.score_candidates`).
        grid: the candidates, in tie-breaking order (the first of equal mean UAs wins).
        values: ``[U, D]`` functionals of the corpus (already speaker-normalised if asked).
        labels: ``[U]`` class indices.
        speakers: ``[U]`` speaker ids.
        fit_rows: the rows selection may use (a fold's training and validation speakers).
        num_classes: for UA (classes absent from a held-out speaker are left out of its UA).
        seed: the cell's seed.

    Returns:
        ``(chosen candidate, its mean inner UA, every candidate's mean inner UA in grid order)``.
    """
    judge = primary()
    fit_rows = np.asarray(fit_rows)
    inner_speakers = sorted(set(speakers[fit_rows]))
    if len(inner_speakers) < 2:
        raise ValueError(
            f"the inner leave-one-speaker-out needs at least 2 speakers on the training side; "
            f"got {inner_speakers}"
        )
    per_candidate = [[] for _ in grid]
    for held_out in inner_speakers:
        mask = speakers[fit_rows] == held_out
        inner_fit, inner_test = fit_rows[~mask], fit_rows[mask]
        x_fit, x_test = standardized(values, inner_fit, inner_test)
        scored = baseline.score_candidates(grid, x_fit, labels[inner_fit], x_test, seed)
        for k, (classes, scores) in enumerate(scored):
            predicted = classes[scores.argmax(axis=1)]
            per_candidate[k].append(judge.from_labels(labels[inner_test], predicted, num_classes))
    means = [float(np.nanmean(held_out_scores)) for held_out_scores in per_candidate]
    best = int(np.argmax([judge.sort_key(mean) for mean in means]))  # the first of equal best
    return grid[best], means[best], means
