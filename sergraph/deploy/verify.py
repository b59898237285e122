"""Verification of a bundle being exported: its probabilities against the run's predictions.

Each member re-predicts its fold's test inputs (stored in the checkpoint,
:func:`stored_test_inputs`) through the bundle's own route (normalisation, graph, model, in
float32 on the CPU) and must agree with the run's ``predictions.csv`` within
:func:`verify_tolerance` of the training precision. A run trained in reduced precision
(``bf16-mixed``, ``16-mixed``, ...) computed its ``predictions.csv`` in that precision, so it
differs from the float32 bundle by more than float32 rounding; a difference above float32's
tolerance but within the precision's is reported with ``cause: "precision"``.

Runs trained with ``features.concat_functionals`` also carry each test utterance's raw
functionals vector (``test["functionals"]`` of the export state), which verification gives the
bundle with the node features.

Runs trained under ``eval.protocol=enrollment`` (per-speaker statistics) normalised each
test utterance with its speaker's enrollment statistics; their checkpoints carry those
statistics (``enrollment_normalizers`` of the export state; with utterance functionals also
``enrollment_global_normalizers``), and verification uses them, as a user of the bundle does
with the speaker's enrollment audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sergraph.deploy.ensemble import Bundle
from sergraph.deploy.pipeline import BundleError
from sergraph.results.layout import read_predictions

#: Largest |difference| of a probability between the bundle and the predictions.csv of a run
#: trained in float32 (``32-true``, ``64-true``).
VERIFY_TOLERANCE = 1e-3
#: The same for runs trained with 16-bit floats: their predictions.csv came from a 16-bit forward
#: pass while the bundle predicts in float32. Measured on CPU under bf16-mixed with
#: benchmarks/bench_export_precision.py: the largest difference was 3.0e-2 (LSTM-GIN and ChebNet,
#: 30 epochs on two EmoDB folds; 2.4e-2 over all 12 models, 10 epochs on the synthetic corpus),
#: while normalising with another fold's statistics gave 1.0e-1 to 2.1e-1 on EmoDB (k=2: > 0.7).
#: float16 (16-mixed; on the CPU Lightning runs it as bf16-mixed) has 3 more mantissa bits than
#: bfloat16, so its differences are expected to be smaller; not yet measured on a GPU.
REDUCED_PRECISION_TOLERANCE = 5e-2


def verify_tolerance(precision: str | int | None) -> float:
    """The verification tolerance for a training precision (``trainer.precision``).

    ``None``, ``32``/``"32-true"``, ``"64-true"``, ...: :data:`VERIFY_TOLERANCE`; any 16-bit
    setting (``"bf16-mixed"``, ``"16-mixed"``, ``"bf16-true"``, ``"16"``, ...):
    :data:`REDUCED_PRECISION_TOLERANCE`.
    """
    text = "" if precision is None else str(precision)
    return REDUCED_PRECISION_TOLERANCE if "16" in text else VERIFY_TOLERANCE


def verify_bundle(
    bundle: Bundle,
    cells: Sequence[Path],
    states: Sequence[dict],
    precision: str,
    from_corpus: Sequence[Path] = (),
) -> dict:
    """Re-predict each member's test inputs through ``bundle``; compare with predictions.csv.

    Args:
        bundle: the bundle being exported; member ``i`` belongs to ``cells[i]``.
        cells: fold folders, each with its ``predictions.csv``.
        states: the members' export states (their ``test`` inputs are re-predicted; under
            ``eval.protocol=enrollment`` each normalised with its speaker's enrollment
            statistics, as in training).
        precision: the training precision, which sets the tolerance (:func:`verify_tolerance`).
        from_corpus: cells whose inputs were recomputed from the corpus (for the message).

    Returns:
        ``{"n", "max_abs_diff", "precision", "tolerance", "cause"}``; ``cause`` is
        ``"precision"`` when the largest difference is above float32's tolerance but within
        the training precision's, else ``None``.

    Raises:
        BundleError: a difference above the tolerance, test utterances missing from the
            checkpoint, or (per-speaker bundles) a test speaker without enrollment statistics,
            naming the fold and the likely cause.
    """
    tolerance = verify_tolerance(precision)
    classes = bundle.classes
    total, largest = 0, 0.0
    for index, (cell, state) in enumerate(zip(cells, states, strict=True)):
        saved = read_predictions(cell)
        inputs = stored_test_inputs(state)
        missing = [u for u in saved["utterance"].astype(str) if u not in inputs]
        if missing:
            raise BundleError(
                f"{cell}: predictions.csv lists test utterances {missing[:5]} that its "
                "checkpoint's test inputs lack; predictions.csv and the checkpoint are not "
                "from the same training"
            )
        utterances = saved["utterance"].astype(str).tolist()
        mine = bundle.predict_features(
            [inputs[u] for u in utterances],
            member=index,
            normalizers=enrollment_normalizers(state, utterances, cell),
            functionals=stored_test_functionals(state, utterances),
            functionals_normalizers=enrollment_normalizers(
                state, utterances, cell, "enrollment_global_normalizers"
            ),
        )
        theirs = saved[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)
        difference = float(np.abs(mine - theirs).max()) if len(saved) else 0.0
        if difference > tolerance:
            cause = (
                "the features or the corpus changed since training"
                if cell in from_corpus
                else "the graph or model code differs from training's, or predictions.csv "
                "no longer belongs to this checkpoint"
            )
            raise BundleError(
                f"{cell}: the bundle's probabilities for the test speakers differ from "
                f"predictions.csv by up to {difference:.3g} (> {tolerance:g}, the tolerance "
                f"for training precision {precision}); {cause}. Nothing was written."
            )
        total += len(saved)
        largest = max(largest, difference)
    return {
        "n": total,
        "max_abs_diff": largest,
        "precision": precision,
        "tolerance": tolerance,
        "cause": "precision" if largest > VERIFY_TOLERANCE else None,
    }


def stored_test_inputs(state: dict) -> dict[str, np.ndarray]:
    """``{utterance: raw node features [T, F] float32}`` of an export state's test speakers."""
    test = state["test"]
    features = np.asarray(test["features"], dtype=np.float32)
    ends = np.cumsum(np.asarray(test["lengths"], dtype=np.int64))
    starts = ends - np.asarray(test["lengths"], dtype=np.int64)
    return {
        str(utterance): features[start:end]
        for utterance, start, end in zip(test["utterances"], starts, ends, strict=True)
    }


def stored_test_functionals(state: dict, utterances: Sequence[str]) -> np.ndarray | None:
    """The raw utterance functionals ``[N, D]`` float32 of ``utterances`` (test utterances of
    an export state of a ``features.concat_functionals`` fold), or ``None`` for a fold
    trained without them."""
    test = state["test"]
    if "functionals" not in test:
        return None
    vectors = np.asarray(test["functionals"], dtype=np.float32)
    row = {str(u): i for i, u in enumerate(test["utterances"])}
    return vectors[[row[u] for u in utterances]].reshape(len(utterances), vectors.shape[1])


def enrollment_normalizers(
    state: dict,
    utterances: Sequence[str],
    where: Path | str = "",
    key: str = "enrollment_normalizers",
) -> list | None:
    """Per test utterance, the :class:`~sergraph.data.graphs.Normalizer` of its speaker's
    enrollment statistics (export state ``key``: ``enrollment_normalizers`` of the node
    features, ``enrollment_global_normalizers`` of the utterance functionals), or ``None`` for
    a fold trained without them (then every member uses its own statistics)."""
    from sergraph.data.graphs import Normalizer

    stored = state.get(key)
    if not stored:
        return None
    test = state["test"]
    speaker_of = dict(zip(test["utterances"], test["speakers"], strict=True))
    fitted = {
        speaker: Normalizer(
            np.asarray(values["mean"], dtype=np.float32),
            np.asarray(values["std"], dtype=np.float32),
        )
        for speaker, values in stored.items()
    }
    missing = sorted({speaker_of[u] for u in utterances} - set(fitted))
    if missing:
        raise BundleError(
            f"{where}: the checkpoint holds no enrollment statistics of test speaker(s) "
            f"{missing}; train that fold again"
        )
    return [fitted[speaker_of[u]] for u in utterances]
