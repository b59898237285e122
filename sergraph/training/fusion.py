"""Late fusion of a neural cell with the linear SVM (``model.fusion=svm``).

After the neural model is trained and its best checkpoint chosen, a
:class:`~sergraph.models.svm_linearsvc.LiblinearSVM` (liblinear ``LinearSVC``: the form the
graph-value study's fused cells were measured with, not the standard libsvm ``model=svm``) is
fitted on the utterance functionals vectors ``u`` of the fold's *training* speakers only (the
very vectors the neural model receives: ``u`` of each graph of
:class:`~sergraph.data.datamodule.FoldDataModule`, normalised under the cell's protocol), with
its usual inner leave-one-speaker-out choice of C over those speakers. The SVM
then scores the validation and test utterances.

The fused probabilities of an utterance are ``w * p_graph + (1 - w) * p_svm``. The weight ``w``
is chosen from :data:`FUSION_WEIGHTS` (0.0, 0.1, ..., 1.0) by the UA (the primary metric,
:func:`sergraph.metrics.primary`) of the fused predictions on the *validation* speakers only;
ties go to the larger ``w`` (the graph model is preferred when
the SVM adds nothing on validation). Test utterances never enter any choice: neither C nor ``w``
depends on a test speaker's labels or features.

``predictions.csv`` then holds the fused probabilities (so pooled scores, reports and paired
tests use the fused model), ``fusion.csv`` the parts (graph and SVM probabilities of every
validation and test utterance), and ``metrics.json`` a ``fusion`` record with the weight, the
validation UA of every weight, the SVM's C and the unfused test UAs of both parts.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from sergraph.metrics import primary

#: The weights of the graph model tried on the validation speakers, in increasing order.
FUSION_WEIGHTS = tuple(round(i / 10, 1) for i in range(11))

#: The file of a fused cell holding both parts of every fused validation and test prediction.
FUSION_PARTS = "fusion.csv"


def fused(p_graph: np.ndarray, p_svm: np.ndarray, weight: float) -> np.ndarray:
    """``weight * p_graph + (1 - weight) * p_svm``."""
    return weight * np.asarray(p_graph, dtype=np.float64) + (1.0 - weight) * np.asarray(
        p_svm, dtype=np.float64
    )


def choose_weight(
    p_graph: np.ndarray, p_svm: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[float, dict[str, float]]:
    """The weight of :data:`FUSION_WEIGHTS` whose fused predictions have the highest UA on the
    given (validation) utterances, and the UA of every weight (keyed ``"0.0"`` ... ``"1.0"``).

    Ties go to the larger weight (prefer the graph model). A predicted class is the first
    largest fused probability (``argmax``).
    """
    p_graph, p_svm = np.asarray(p_graph), np.asarray(p_svm)
    labels = np.asarray(labels)
    if p_graph.shape != p_svm.shape or p_graph.ndim != 2 or len(labels) != len(p_graph):
        raise ValueError(
            f"fusion needs graph and SVM scores of the same [n, classes] shape and n labels; got "
            f"{p_graph.shape}, {p_svm.shape} and {len(labels)} labels"
        )
    if len(labels) == 0:
        raise ValueError("fusion needs at least one validation utterance to choose its weight")
    judge = primary()
    table = {}
    for weight in FUSION_WEIGHTS:
        predicted = fused(p_graph, p_svm, weight).argmax(axis=1)
        table[f"{weight:.1f}"] = judge.from_labels(labels, predicted, num_classes)
    best = max(FUSION_WEIGHTS, key=lambda w: (judge.sort_key(table[f"{w:.1f}"]), w))
    return best, table


def split_vectors(datamodule, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(u [n, D], labels [n], speakers [n])`` of a set-up data module's split, in its order."""
    graphs = datamodule.datasets[split]
    if graphs and getattr(graphs[0], "u", None) is None:
        raise ValueError(
            "model.fusion=svm fits the SVM on the utterance functionals the graph model gets; "
            "set features.concat_functionals=true (features.functionals names the set)"
        )
    width = datamodule.num_global_features
    u = np.concatenate([g.u.numpy() for g in graphs]) if graphs else np.zeros((0, width))
    labels = np.array([int(g.y) for g in graphs], dtype=np.int64)
    speakers = np.array([str(g.speaker) for g in graphs], dtype=object)
    return u.astype(np.float64), labels, speakers


#: Seed of the fusion's SVM, the same for every cell: its part of a fusion depends only on the
#: fold's data, so the cells of one fold (every seed, graph and no-graph alike) share one fit.
FUSION_SVM_SEED = 0
#: The SVM scores of the last folds fused in this process, keyed by a hash of their inputs.
_SVM_MEMO: dict[str, tuple[dict[str, np.ndarray], dict]] = {}
_SVM_MEMO_SIZE = 16


def _inputs_key(*arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.tobytes() if array.dtype != object else "\0".join(array).encode())
    return digest.hexdigest()


def svm_scores(datamodule) -> tuple[dict[str, np.ndarray], dict]:
    """The SVM's scores of the validation and test utterances (split -> ``[n, classes]``), and
    its extra fields (``svm_C``, ``inner_cv_ua``).

    Fitted on the training split's ``u`` alone; validation and test rows are only scored. The
    vectors are already normalised as the graph model sees them, so the SVM adds only its own
    standardisation on the training rows (``normalize="train"``). Seeded with
    :data:`FUSION_SVM_SEED`; a fit is kept in memory for the next cells with the same inputs
    (the same fold under another seed, or the no-graph control), so it is computed once.
    """
    from sergraph.models.svm_linearsvc import LiblinearSVM

    parts = {split: split_vectors(datamodule, split) for split in ("train", "val", "test")}
    values = np.concatenate([parts[s][0] for s in ("train", "val", "test")])
    labels = np.concatenate([parts[s][1] for s in ("train", "val", "test")])
    speakers = np.concatenate([parts[s][2] for s in ("train", "val", "test")])
    training_speakers = sorted(set(parts["train"][2]))
    if len(training_speakers) < 2:
        raise ValueError(
            f"{datamodule.fold.name}: model.fusion=svm chooses the SVM's C by leave-one-speaker-"
            f"out over the training speakers, and this fold has {len(training_speakers)} "
            f"({training_speakers}); use more speakers or fewer folds.val_speakers"
        )
    n_train, n_val = len(parts["train"][1]), len(parts["val"][1])
    key = _inputs_key(values, labels, speakers, np.array([n_train, n_val, datamodule.num_classes]))
    if key not in _SVM_MEMO:
        train_rows = np.arange(n_train)
        scored_rows = np.arange(n_train, len(labels))
        scores, extra = LiblinearSVM().fit_predict(
            values,
            labels,
            speakers,
            train_rows,
            scored_rows,
            num_classes=datamodule.num_classes,
            seed=FUSION_SVM_SEED,
            normalize="train",
        )
        while len(_SVM_MEMO) >= _SVM_MEMO_SIZE:
            _SVM_MEMO.pop(next(iter(_SVM_MEMO)))
        _SVM_MEMO[key] = ({"val": scores[:n_val], "test": scores[n_val:]}, extra)
    scores, extra = _SVM_MEMO[key]
    return {split: array.copy() for split, array in scores.items()}, dict(extra)


def fuse(datamodule, graph: dict[str, np.ndarray]) -> tuple[np.ndarray, dict, pd.DataFrame]:
    """Fuse a cell's graph probabilities (``graph``: split -> ``[n, classes]`` for ``val`` and
    ``test``, in the data module's order) with the SVM.

    Returns ``(fused test probabilities, the metrics.json "fusion" record, the parts frame)``.
    The parts frame has one row per validation and test utterance: ``split``, ``utterance``,
    ``speaker``, ``true`` (class name), ``graph_<class>`` and ``svm_<class>`` (rounded to 6
    places, as predictions.csv).
    """
    classes = list(datamodule.classes)
    svm, extra = svm_scores(datamodule)
    _, val_labels, _ = split_vectors(datamodule, "val")
    _, test_labels, _ = split_vectors(datamodule, "test")
    weight, val_ua = choose_weight(graph["val"], svm["val"], val_labels, len(classes))

    def score(scores, labels) -> float:
        return primary().from_labels(labels, scores.argmax(axis=1), len(classes))

    record = {
        "with": "svm",
        "weight": weight,
        "weights_tried": list(FUSION_WEIGHTS),
        "val_ua": val_ua,
        "svm_C": extra["svm_C"],
        "svm_inner_cv_ua": extra["inner_cv_ua"],
        "graph_test_ua": score(graph["test"], test_labels),
        "svm_test_ua": score(svm["test"], test_labels),
        "parts": FUSION_PARTS,
    }
    frames = []
    for split, labels in (("val", val_labels), ("test", test_labels)):
        graphs = datamodule.datasets[split]
        frame = pd.DataFrame(
            {
                "split": split,
                "utterance": [str(g.utterance) for g in graphs],
                "speaker": [str(g.speaker) for g in graphs],
                "true": [classes[i] for i in labels],
            }
        )
        for name, scores in (("graph", graph[split]), ("svm", svm[split])):
            for i, c in enumerate(classes):
                frame[f"{name}_{c}"] = np.round(np.asarray(scores)[:, i], 6)
        frames.append(frame)
    return fused(graph["test"], svm["test"], weight), record, pd.concat(frames, ignore_index=True)
