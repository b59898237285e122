"""Segments of a prediction: windows over a file's nodes and the one row each gets.

:meth:`~sergraph.deploy.ensemble.Bundle.predict` cuts every file into windows of nodes
(:func:`window_starts`; the whole file, up to ``graph.max_nodes``, without a window), classifies
them and writes one row per segment (:func:`chunk_rows`); a file that could not be read gets one
row with its error.
"""

from __future__ import annotations

import numpy as np

from sergraph.deploy.pipeline import BundleError

#: The ``error`` of a prediction whose probabilities are not finite.
NON_FINITE_ERROR = (
    "the model gave non-finite probabilities (nan or inf): no emotion; the bundle's weights "
    "are broken (re-export it from a run whose training converged)"
)


def window_starts(num_nodes: int, window: int, hop: int) -> list[int]:
    """First node of each window; the last window ends at the last node (no lost tail)."""
    if num_nodes <= window:
        return [0]
    starts = list(range(0, num_nodes - window + 1, hop))
    if starts[-1] + window < num_nodes:
        starts.append(num_nodes - window)
    return starts


def segment_nodes(window, hop, node: float, max_nodes: int | None) -> tuple[int | None, int | None]:
    """``(window, hop)`` in nodes of ``node`` seconds; ``(None, None)`` without a window."""
    if window is None:
        if hop is not None:
            raise BundleError("hop needs window: give window (seconds) as well")
        return None, None
    for name, value in (("window", window), ("hop", hop)):
        if value is not None and not (isinstance(value, int | float) and value > 0):
            raise BundleError(f"{name}={value!r} must be a positive number of seconds")
    window_nodes = max(1, int(round(window / node)))
    hop_nodes = window_nodes if hop is None else max(1, int(round(hop / node)))
    if max_nodes is not None and window_nodes > max_nodes:
        raise BundleError(
            f"window={window} s is longer than the {max_nodes * node:g} s ({max_nodes} "
            f"nodes of {node:g} s) the model sees; choose window <= {max_nodes * node:g}"
        )
    return window_nodes, hop_nodes


def duration(path: str) -> float:
    import soundfile as sf

    try:
        return float(sf.info(path).duration)
    except Exception:  # noqa: BLE001 - unreadable files have no duration
        return float("nan")


def segment_row(
    path: str, number: int, first: int, end: int, seconds: float, node: float, classes, scores
) -> dict:
    """One segment's row: its span in seconds, the emotion and one probability per class."""
    row = {
        "path": path,
        "segment": number,
        "start": round(first * node, 3),
        "end": round(min(end * node, seconds), 3),
        "duration": round(seconds, 3),
        "emotion": classes[int(np.argmax(scores))],
    }
    row.update({f"p_{c}": round(float(p), 6) for c, p in zip(classes, scores, strict=True)})
    row["error"] = ""
    return row


def chunk_rows(
    bundle,
    chunk,
    good,
    arrays,
    reasons,
    window_nodes,
    hop_nodes,
    batch_size,
    enrolled=None,
    functionals=None,
) -> list[dict]:
    """The rows of one chunk of files, in the chunk's order: a bundle's predictions of the
    readable files (``good``, their node ``arrays``; ``functionals``: path -> raw utterance
    functionals, for bundles that take them) and one error row per file in ``reasons``."""
    node = bundle.node_seconds
    max_nodes = bundle.meta["graph"]["max_nodes"]
    by_path = dict(zip(good, arrays, strict=True))  # a file listed twice is computed once
    segments: list[tuple[str, int, int, int]] = []  # path, segment, first node, end node
    for path, array in by_path.items():
        if window_nodes is None:
            used = len(array) if max_nodes is None else min(len(array), max_nodes)
            segments.append((path, 0, 0, used))
            continue
        for number, first in enumerate(window_starts(len(array), window_nodes, hop_nodes)):
            segments.append((path, number, first, min(first + window_nodes, len(array))))
    probabilities = bundle.predict_features(
        [by_path[p][first:end] for p, _, first, end in segments],
        batch_size,
        normalizers=[enrolled[p][1] for p, *_ in segments] if enrolled else None,
        functionals=None if functionals is None else [functionals[p] for p, *_ in segments],
        functionals_normalizers=[enrolled[p][3] for p, *_ in segments] if enrolled else None,
    )
    durations = {p: duration(p) for p in by_path}
    predicted: dict[str, list[dict]] = {}
    for (path, number, first, end), scores in zip(segments, probabilities, strict=True):
        row = segment_row(path, number, first, end, durations[path], node, bundle.classes, scores)
        if not np.isfinite(scores).all():  # a broken model: no class is better than a guess
            row["emotion"] = ""
            row["error"] = NON_FINITE_ERROR
        if enrolled is not None:
            row["speaker"], row["normalised_with"] = enrolled[path][0], enrolled[path][2]
        predicted.setdefault(path, []).append(row)
    rows = []
    for path in chunk:
        if path in reasons:
            failed = {"path": path, "segment": 0, "start": np.nan, "end": np.nan}
            failed.update({"duration": duration(path), "emotion": ""})
            failed.update({f"p_{c}": np.nan for c in bundle.classes})
            failed["error"] = reasons[path]
            if enrolled is not None:
                failed["speaker"], failed["normalised_with"] = enrolled[path][0], ""
            rows.append(failed)
        else:
            rows += predicted[path]
    return rows
