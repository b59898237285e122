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
